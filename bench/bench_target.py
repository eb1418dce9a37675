"""Cost of the mixed-precision search: `trtq quantize --target` against a plain `trtq quantize`.

Prints, for a real recogniser (PaddleOCR PP-OCRv6 rec from the rapidocr wheel, 48x320, 200
rendered text lines), the wall and CPU time of a plain quantize and of the same command with
`--target`, their ratio (issue target: <= 10x), the number of evaluations and how many passes
over the data they added up to, the final metric and the layers kept out of INT8. Each run is a
fresh process; CPU time (user + sys of the process) is the robust measure on a shared machine.

    python bench/bench_target.py                          # --target "snr>=30", 200 lines
    python bench/bench_target.py --target "snr>=25" --samples 100
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "out" / "bench"


def text_lines(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """Rendered text lines as a PaddleOCR recogniser sees them: BGR, (x/255 - 0.5) / 0.5, NCHW."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = sorted(Path("/usr/share/fonts/truetype").glob("*/*.ttf"))
    words = ["trtq", "tensor", "range", "int8", "calibrate", "engine", "quantize", "layer", "scale", "detect",
             "text", "line", "page", "model", "2026", "invoice", "total"]
    out = np.empty((n, 3, height, width), np.float32)
    for i in range(n):
        image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(190, 256, 3)))
        draw = ImageDraw.Draw(image)
        size = int(rng.integers(22, 34))
        font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), size) if fonts else ImageFont.load_default()
        draw.text((int(rng.integers(0, 20)), int(rng.integers(0, max(1, height - size - 6)))),
                  " ".join(rng.choice(words, int(rng.integers(1, 4)))), font=font,
                  fill=tuple(int(v) for v in rng.integers(0, 80, 3)))
        bgr = np.asarray(image, np.float32)[:, :, ::-1].transpose(2, 0, 1)
        out[i] = (bgr / 255.0 - 0.5) / 0.5
    return out


def prepare(samples: int) -> tuple[Path, Path]:
    """The recogniser (fetched from the rapidocr wheel with pip) and the rendered lines."""
    WORK.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "examples" / "models"))
    from fetch_rapidocr import fetch

    model = Path(fetch(WORK, models=("rec",))["rec"])
    data = WORK / f"rec_lines_{samples}.npy"
    if not data.exists():
        np.save(data, text_lines(samples, 48, 320, seed=0))
    return model, data


def job(model: str, data: str, out: str, extra: list[str]) -> dict:
    """One `trtq quantize` in this (fresh) process: wall and CPU seconds, and its JSON result."""
    import contextlib
    import io

    from trtq.cli import main

    start = time.perf_counter()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["quantize", model, "--calib", data, "--shape", "x:1x3x48x320", "--output-dir", out,
                     "--quiet", "--json", *extra])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"code": code, "wall_s": time.perf_counter() - start, "cpu_s": usage.ru_utime + usage.ru_stime,
            "result": json.loads(printed.getvalue()) if code == 0 else None}


def run_job(*args: str) -> dict:
    """`job` in a fresh Python process."""
    proc = subprocess.run([sys.executable, __file__, "--job", "--", *args], capture_output=True, text=True, cwd=ROOT,
                          check=False)
    if proc.returncode:
        raise SystemExit(f"job failed: {proc.stderr.strip()[-400:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="snr>=30")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--method", help="range method for both runs (default: trtq's default)")
    parser.add_argument("--job", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        model, data, out, *extra = args.rest
        print(json.dumps(job(model, data, out, extra)))
        return
    model, data = prepare(args.samples)
    method = ["--method", args.method] if args.method else []
    plain = run_job(str(model), str(data), str(WORK / "target_plain"), *method)
    target = run_job(str(model), str(data), str(WORK / "target_search"), *method, "--target", args.target)
    mixed = target["result"]["mixed"]
    print(f"PP-OCRv6 rec 48x320, {args.samples} rendered lines, --target \"{args.target}\", "
          f"CPU ({os.cpu_count()} cores); fresh process each")
    print(f"{'run':<26} {'wall s':>8} {'cpu s':>8}")
    print(f"{'trtq quantize':<26} {plain['wall_s']:>8.2f} {plain['cpu_s']:>8.2f}")
    print(f"{'trtq quantize --target':<26} {target['wall_s']:>8.2f} {target['cpu_s']:>8.2f}")
    print(f"--target / plain: {target['cpu_s'] / plain['cpu_s']:.1f}x CPU time, "
          f"{target['wall_s'] / plain['wall_s']:.1f}x wall (target <= 10x)")
    int8, final = mixed["int8"], mixed["final"]
    print(f"search: {mixed['evaluations']} evaluations, {mixed['full_evaluations']} passes over the "
          f"{final['samples']} samples; INT8 {mixed['int8_metric']:.2f} dB (on {int8['samples']} samples) -> "
          f"{mixed['final_metric']:.2f} dB with {len(mixed['excluded'])} layers kept out of INT8 "
          f"({sum(layer['macs_share'] for layer in mixed['excluded']):.0%} of the INT8 MACs)")
    for phase, seconds in mixed.get("phase_seconds", {}).items():
        print(f"  {phase:<10} {seconds:>7.2f} s")


if __name__ == "__main__":
    main()
