"""Calibration speed and memory on the CPU: trtq vs the FP32 floor vs onnxruntime's quantize_static.

Prints, for one model and one set of samples, in one run (each tool in a fresh process):
  (a) trtq's calibration wall time over plain FP32 onnxruntime inference on the same samples (target <= 1.5),
  (b) onnxruntime quantize_static (same method, same samples) time and peak memory over trtq's
      (targets: >= 5x faster, <= 1/3 the memory), and
  (c) the output SNR of each quantized model against FP32 on held-out samples (trtq's must be >= ORT's).

    python bench/bench_cpu.py --model resnet50 --samples 64
    python bench/bench_cpu.py --model ppocr-det --samples 32       # fetches the rapidocr wheel with pip
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "out" / "bench"


def _images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Smooth random images (low-frequency noise, upsampled), ImageNet-normalised, NCHW float32."""
    rng = np.random.default_rng(seed)
    _, c, h, w = shape
    small = rng.uniform(0, 1, size=(n, c, max(h // 16, 2), max(w // 16, 2))).astype(np.float32)
    big = small.repeat(16, axis=2).repeat(16, axis=3)[:, :, :h, :w]
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((big - mean) / std)


def _text_pages(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Pages of rendered words (what a text detector sees), BGR, (x/255 - 0.5) / 0.5 as PaddleOCR feeds them."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    _, _, h, w = shape
    fonts = sorted(Path("/usr/share/fonts/truetype").glob("*/*.ttf"))
    words = ["trtq", "tensor", "range", "int8", "calibrate", "engine", "quantize", "layer", "scale", "detect",
             "text", "line", "page", "model"]
    out = np.empty((n, 3, h, w), np.float32)
    for i in range(n):
        page = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(180, 256, 3)))
        draw = ImageDraw.Draw(page)
        for _ in range(int(rng.integers(4, 12))):
            size = int(rng.integers(14, 48))
            font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), size) if fonts else ImageFont.load_default()
            text = " ".join(rng.choice(words, int(rng.integers(1, 5))))
            draw.text((int(rng.integers(0, w - 100)), int(rng.integers(0, h - size))), text, font=font,
                      fill=tuple(int(v) for v in rng.integers(0, 90, 3)))
        bgr = np.asarray(page, np.float32)[:, :, ::-1].transpose(2, 0, 1)
        out[i] = (bgr / 255.0 - 0.5) / 0.5
    return out


def prepare(model: str, samples: int) -> tuple[Path, Path, Path, str, list[str]]:
    """Model file, calibration .npy, held-out .npy, input name, extra trtq args."""
    WORK.mkdir(parents=True, exist_ok=True)
    if model == "resnet50":
        sys.path.insert(0, str(ROOT / "bench"))
        import onnx
        from resnet50_onnx import build_resnet50

        path = WORK / "resnet50.onnx"
        if not path.exists():
            onnx.save(build_resnet50(), str(path))
        shape, name, extra = (1, 3, 224, 224), "input", []
    elif model == "ppocr-det":
        sys.path.insert(0, str(ROOT / "examples" / "models"))
        from fetch_rapidocr import fetch

        path = fetch(WORK, models=("det",))["det"]
        shape, name, extra = (1, 3, 640, 640), "x", ["--shape", "x:1x3x640x640"]
    else:
        raise SystemExit(f"unknown model {model}")
    calib, held = WORK / f"{model}_calib_{samples}.npy", WORK / f"{model}_val.npy"
    make = _text_pages if model == "ppocr-det" else _images
    if not calib.exists():
        np.save(calib, make(samples, shape, seed=0))
    if not held.exists():
        np.save(held, make(16, shape, seed=1))
    return Path(path), calib, held, name, extra


def job(kind: str, model: Path, data: Path, name: str, out: Path, method: str, extra: list[str]) -> dict:
    """Run one job in this (fresh) process; report wall and CPU seconds and peak RSS."""
    start = time.perf_counter()
    if kind == "floor":
        import onnxruntime as ort

        options = ort.SessionOptions()
        # onnxruntime's default pool pins one thread per host core, escaping `taskset`; sized by the
        # affinity mask, the floor runs on the cores trtq gets (on an unrestricted machine: the default)
        options.intra_op_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        x = np.load(data, mmap_mode="r")
        for i in range(len(x)):
            session.run(None, {name: np.ascontiguousarray(x[i:i + 1])})
    elif kind == "trtq":
        from trtq.cli import main

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            rc = main(["quantize", str(model), "--calib", str(data), "--method", method, "--output-dir", str(out),
                       "--quiet", "--json", *extra])
        if rc:
            raise SystemExit(rc)
        calibration_s = json.loads(printed.getvalue())["calibration_seconds"]
    elif kind.startswith("ort"):
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        x = np.load(data, mmap_mode="r")

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.i = 0

            def get_next(self):
                if self.i >= len(x):
                    return None
                self.i += 1
                return {name: np.ascontiguousarray(x[self.i - 1:self.i])}

        calibrate_method = {"entropy": CalibrationMethod.Entropy, "max": CalibrationMethod.MinMax,
                            "percentile": CalibrationMethod.Percentile}[method]
        src = model
        if extra:  # fixed shapes for dynamic-dim models, as trtq's --shape does
            import onnx
            from onnx import shape_inference, version_converter

            m = onnx.load(str(model))
            for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim, x.shape[1:] and (1, *x.shape[1:])):
                d.dim_value = v
            if m.opset_import[0].version < 13:
                m = version_converter.convert_version(m, 13)
            src = out / "ort_input.onnx"
            onnx.save(shape_inference.infer_shapes(m), str(src))
        quantize_static(str(src), str(out / f"{model.stem}.ort.int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=calibrate_method,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024}
    if kind == "trtq":
        result["calibration_s"] = calibration_s
    return result


def run_job(kind: str, *args: str) -> dict:
    """Run `job` in a fresh Python process and parse its JSON line."""
    cmd = [sys.executable, __file__, "--job", kind, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def snr(reference: Path, candidate: Path, held: Path, extra: list[str]) -> float | None:
    """Aggregate output SNR (dB) of `candidate` vs FP32 on the held-out samples, via trtq.api.compare."""
    if not candidate.exists():
        return None
    from trtq import api
    from trtq.model import parse_shapes

    shapes = parse_shapes(extra[1]) if extra else {}
    report = api.compare(reference, candidate, held, data=api.DataOptions(shapes=shapes), progress=False)
    return min(o.snr_db for o in report.outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50", choices=("resnet50", "ppocr-det"))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--method", default="entropy", choices=("auto", "entropy", "max", "percentile", "mse"))
    parser.add_argument("--skip-ort", action="store_true", help="skip onnxruntime quantize_static (it can need >20 GiB "
                        "with entropy on 640x640 detectors)")
    parser.add_argument("--repeat", type=int, default=5, help="floor/trtq pairs to run; the median ratio is reported")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--args", nargs="*", default=[], help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.job:
        model, data, name, out, method, *extra = rest
        print(json.dumps(job(args.job, Path(model), Path(data), name, Path(out), method, extra)))
        return
    model, calib, held, name, extra = prepare(args.model, args.samples)
    out = WORK / f"{args.model}_{args.method}"
    out.mkdir(parents=True, exist_ok=True)
    common = [str(model), str(calib), name, str(out), args.method, *extra]
    # floor and trtq alternate, `--repeat` times, so that drift on a shared machine hits both alike
    pairs = [(run_job("floor", *common), run_job("trtq", *common)) for _ in range(args.repeat)]
    ok = [(f, t) for f, t in pairs if "error" not in f and "error" not in t]
    median_pair = sorted(ok, key=lambda p: p[1]["wall_s"] / p[0]["wall_s"])[len(ok) // 2] if ok else pairs[0]
    results = {"floor": median_pair[0], "trtq": median_pair[1]}
    if not args.skip_ort:
        results["onnxruntime"] = run_job("ort", *common)
    stem = model.stem
    snrs = {"trtq": snr(model, out / f"{stem}.int8.onnx", held, extra),
            "onnxruntime": snr(model, out / f"{stem}.ort.int8.onnx", held, extra) if not args.skip_ort else None}
    from trtq.devices import usable_cpus

    cores = usable_cpus()  # what trtq sizes its pools by (the floor job inlines it so as not to import trtq)
    print(f"{args.model}, {args.samples} samples, method {args.method}, batch 1, CPU ({cores} of {os.cpu_count()} cores), "
          f"median of {len(ok)} floor/trtq pairs")
    spreads = {"floor": [f for f, _ in ok], "trtq": [t for _, t in ok]}
    print(f"{'tool':<12} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9} {'SNR dB':>8}   spread over the pairs (wall s; cpu s)")
    for tool, r in results.items():
        if "error" in r:
            print(f"{tool:<12} failed: {r['error']}")
            continue
        s = snrs.get(tool)
        runs = spreads.get(tool, [])
        spread = (f"   {min(x['wall_s'] for x in runs):.2f}-{max(x['wall_s'] for x in runs):.2f}; "
                  f"{min(x['cpu_s'] for x in runs):.2f}-{max(x['cpu_s'] for x in runs):.2f}") if len(runs) > 1 else ""
        print(f"{tool:<12} {r['wall_s']:>8.2f} {r['cpu_s']:>8.2f} {r['peak_mib']:>9.0f} {s if s is None else round(s, 2)!s:>8}"
              f"{spread}")
    if ok:
        whole = [t["wall_s"] / f["wall_s"] for f, t in ok]
        stage = [t["calibration_s"] / f["wall_s"] for f, t in ok]
        f, t = results["floor"], results["trtq"]
        print(f"(a) trtq quantize, whole command / FP32 floor: {statistics.median(whole):.2f}x "
              f"(target <= 1.5 in every pair: {'met' if max(whole) <= 1.5 else 'NOT met'}; "
              f"runs {', '.join(f'{r:.2f}' for r in whole)}); peak memory / floor: "
              f"{t['peak_mib'] / f['peak_mib']:.2f}x")
        cpu = [t["cpu_s"] / f["cpu_s"] for f, t in ok]
        print(f"    CPU time (user+sys), whole command / FP32 floor: {statistics.median(cpu):.2f}x "
              f"(runs {', '.join(f'{r:.2f}' for r in cpu)}; robust to other load on a shared machine)")
        print(f"    calibration stage alone (session, passes, ranges; no model load or output writing): "
              f"{statistics.median(stage):.2f}x")
    o = results.get("onnxruntime", {})
    if o and "error" not in o and "error" not in t:
        print(f"(b) onnxruntime / trtq: time {o['wall_s'] / t['wall_s']:.1f}x (target >= 5), "
              f"peak memory {o['peak_mib'] / t['peak_mib']:.1f}x (target >= 3)")
    if snrs["trtq"] is not None and snrs["onnxruntime"] is not None:
        print(f"(c) SNR trtq {snrs['trtq']:.2f} dB vs onnxruntime {snrs['onnxruntime']:.2f} dB "
              f"({'ok' if snrs['trtq'] >= snrs['onnxruntime'] - 0.05 else 'WORSE'})")


if __name__ == "__main__":
    main()
