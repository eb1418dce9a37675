"""Evaluations on the GPU: `trtq compare`, `trtq sensitivity` and `quantize --target` with
`--device cuda` against `--device cpu` (onnxruntime on every core), on the same model and data.

ResNet-50 (bench/resnet50_onnx.py, random weights, built offline) at 224, smooth random images;
each command a fresh process, wall clock (it includes the start-up: torch import, CUDA context).

    python bench/bench_gpu_eval.py [--samples 256]        # on a machine with a CUDA GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "out" / "bench_gpu_eval"
sys.path.insert(0, str(ROOT / "bench"))


def prepare(samples: int) -> tuple[Path, Path]:
    """The ResNet-50 model and `samples` smooth random images (ImageNet-normalised, NCHW)."""
    import onnx
    from bench_cpu import _images
    from resnet50_onnx import build_resnet50

    WORK.mkdir(parents=True, exist_ok=True)
    model = WORK / "resnet50.onnx"
    if not model.exists():
        onnx.save(build_resnet50(), str(model))
    data = WORK / f"images_{samples}.npy"
    if not data.exists():
        np.save(data, _images(samples, (1, 3, 224, 224), seed=0))
    return model, data


def timed(*args: str) -> tuple[float, dict]:
    """Wall seconds of one `trtq` command in a fresh process, and its --json result."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "trtq", *args, "--quiet", "--json"], capture_output=True, text=True,
                          cwd=ROOT, check=False)
    seconds = time.perf_counter() - start
    print(f"  trtq {args[0]} {' '.join(a for a in args[1:] if a.startswith('--'))}: {seconds:.1f} s", flush=True)
    if proc.returncode:
        raise SystemExit(f"trtq {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return seconds, json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--target", default="snr>=30")
    args = parser.parse_args()
    model, data = prepare(args.samples)
    out = WORK / "out"
    shape = ["--shape", "input:32x3x224x224"]
    _, plain = timed("quantize", str(model), "--calib", str(data), "--method", "max", "--output-dir", str(out), *shape)
    rows = []
    print(f"ResNet-50 224, {args.samples} samples, batch 32, {os.cpu_count()} CPU cores; wall s per command "
          "(fresh process, start-up included)", flush=True)
    for device in ("cuda", "cpu"):
        dev = ["--device", device]
        compare_s, report = timed("compare", str(model), plain["onnx_path"], "--data", str(data), "--batch-size", "32",
                                  "--output-dir", str(out), *dev)
        local_s, _ = timed("sensitivity", str(model), "--calib", str(data), "--calib-method", "max",
                           "--batch-size", "32", "--output-dir", str(out), *shape, *dev)
        exact_s, _ = timed("sensitivity", str(model), "--calib", str(data), "--calib-method", "max", "--method", "exact",
                           "--batch-size", "32", "--output-dir", str(out), *shape, *dev)
        target_s, mixed = timed("quantize", str(model), "--calib", str(data), "--method", "max", "--target", args.target,
                                "--output-dir", str(out / device), *shape, *dev)
        rows.append((device, compare_s, report["outputs"][0]["snr_db"], local_s, exact_s, target_s,
                     mixed["mixed"]["final_metric"], len(mixed["mixed"]["excluded"])))
        print(rows[-1], flush=True)
    print(f"{'device':<6} {'compare':>8} {'SNR dB':>7} {'sens local':>11} {'sens exact':>11} {'--target':>9} "
          f"{'final':>7} {'kept out':>9}")
    for device, c, snr, loc, ex, tg, final, kept in rows:
        print(f"{device:<6} {c:>8.1f} {snr:>7.2f} {loc:>11.1f} {ex:>11.1f} {tg:>9.1f} {final:>7.2f} {kept:>9}")
    gpu, cpu = rows
    print(f"cuda / cpu speed-up: compare {cpu[1] / gpu[1]:.1f}x, sensitivity local {cpu[3] / gpu[3]:.1f}x, "
          f"exact {cpu[4] / gpu[4]:.1f}x, --target {cpu[5] / gpu[5]:.1f}x")


if __name__ == "__main__":
    main()
