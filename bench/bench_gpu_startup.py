"""Start-up of `trtq quantize --device cuda`, and from how many samples the GPU beats `--device cpu`.

Two measurements, each run in fresh processes so imports and CUDA initialisation count:

* phases: one calibration in-process, timed step by step (model preparation, torch import, CUDA
  context, executor set-up, statistics kernels, first eager batch, CUDA graph capture, the rest
  of the batches), with an empty kernel cache ("cold") and again with the cache it left ("warm");
* crossover: the whole `python -m trtq quantize` command, wall clock, for `--device cuda` (kernel
  cache filled; one run with an empty cache is printed too) and `--device cpu` at several sample
  counts. A straight line (fixed cost + per-sample cost) is fitted to each device; the crossover
  is where they meet.

Models build offline: ResNet-50 (bench/resnet50_onnx.py, random weights, dynamic batch) and
PP-OCRv6 det (the rapidocr wheel's model, given with --ppocr PATH or fetched with pip).

    python bench/bench_gpu_startup.py phases --model ppocr-det --ppocr PP-OCRv6_det_small.onnx
    python bench/bench_gpu_startup.py crossover --model resnet50 --batch 32 --samples 32,128,512
    (--src DIR picks the trtq source tree the runs import: compare two checkouts)
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "out" / "bench_startup"


def _images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Smooth random images (low-frequency noise, upsampled), ImageNet-normalised, NCHW float32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    _, c, h, w = shape
    small = rng.uniform(0, 1, size=(n, c, max(h // 16, 2), max(w // 16, 2))).astype(np.float32)
    big = small.repeat(16, axis=2).repeat(16, axis=3)[:, :, :h, :w]
    return np.ascontiguousarray((big - 0.45) / 0.225)


def prepare(model: str, samples: int, batch: int, ppocr: str | None) -> tuple[Path, Path, list[str]]:
    """Model file, a calibration .npy of `samples` samples, and the quantize arguments for the shape."""
    import numpy as np

    WORK.mkdir(parents=True, exist_ok=True)
    if model == "resnet50":
        sys.path.insert(0, str(ROOT / "bench"))
        import onnx
        from resnet50_onnx import build_resnet50

        path = WORK / "resnet50.onnx"
        if not path.exists():
            onnx.save(build_resnet50(), str(path))
        hw, name = (224, 224), "input"
    else:
        if ppocr:
            path = Path(ppocr)
        else:
            sys.path.insert(0, str(ROOT / "examples" / "models"))
            from fetch_rapidocr import fetch

            path = fetch(WORK, models=("det",))["det"]
        hw, name = (640, 640), "x"
    data = WORK / f"{model}_{samples}.npy"
    if not data.exists():
        np.save(data, _images(samples, (samples, 3, *hw), seed=0))
    return path, data, ["--shape", f"{name}:{batch}x3x{hw[0]}x{hw[1]}"]


def _env(src: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(src), TRTQ_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    env.pop("CUPY_CACHE_DIR", None)
    return env


# --- phases ------------------------------------------------------------------------------------

def run_phases(model: Path, data: Path, batch: int, cudnn_benchmark: str) -> dict[str, float]:
    """One calibration in this process, timed step by step (seconds); the GPU is synchronised after each step."""
    marks: dict[str, float] = {}
    last = [time.perf_counter()]

    def mark(name: str) -> None:
        now = time.perf_counter()
        marks[name] = marks.get(name, 0.0) + now - last[0]
        last[0] = now

    import numpy as np

    from trtq.api import prepare_model
    from trtq.calibrate.aliases import value_roots

    mark("import trtq (CPU side)")
    prepared = prepare_model(model)
    roots = value_roots(prepared.model, prepared.placement.calibrated_tensors)
    observed = list(dict.fromkeys(roots.values()))
    x = np.load(data, mmap_mode="r")
    mark("prepare model")
    import torch

    mark("import torch")
    torch.empty(1, device="cuda")
    torch.cuda.synchronize()
    mark("CUDA context")
    import trtq.calibrate.backend_torch as bt

    mark("import GPU backend")
    if cudnn_benchmark != "default":  # force autotuning on or off, whatever the backend would choose
        original = bt._fp32_math

        @contextlib.contextmanager
        def forced(*a: object) -> Iterator[None]:
            with original(*a):
                torch.backends.cudnn.benchmark = cudnn_benchmark == "on"
                yield

        bt._fp32_math = forced
    for cls_name, phase in (("OnnxModule", "executor set-up (weights to GPU)"), ("DeviceStats", "statistics kernels")):
        cls = getattr(bt, cls_name)

        def timed(*a: object, _cls: type = cls, _phase: str = phase, **k: object) -> object:
            mark("backend set-up (other)")
            value = _cls(*a, **k)
            torch.cuda.synchronize()
            mark(_phase)
            return value

        setattr(bt, cls_name, timed)
    batches = [np.ascontiguousarray(x[i:i + batch]) for i in range(0, len(x), batch)]
    told = {"expected_batches": len(batches)} if "expected_batches" in inspect.signature(bt.TorchBackend).parameters else {}
    backend = bt.TorchBackend(prepared.model, observed, histogram=True, device="cuda", **told)  # as calibration makes it
    mark("backend set-up (other)")
    for i, b in enumerate(batches):
        backend.observe({prepared.model.graph.input[0].name: b})
        torch.cuda.synchronize()
        mark("first batch (eager)" if i == 0 else "second batch (capture + replay)" if i == 1 else "later batches")
    backend.stats()
    mark("statistics to host")
    marks["engine"] = backend.stats_engine  # type: ignore[assignment]
    marks["notes"] = " | ".join(backend.notes())  # type: ignore[assignment]
    marks["later batches, ms each"] = 1000 * marks.get("later batches", 0.0) / max(1, len(batches) - 2)
    return marks


def phases_main(args: argparse.Namespace) -> None:
    model, data, _ = prepare(args.model, args.samples, args.batch, args.ppocr)
    src = Path(args.src).resolve()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("cold", "default"), ("warm", "default")]
        runs += [(f"warm, cudnn.benchmark {x}", x) for x in args.cudnn]
        for label, bench in runs:
            command = [sys.executable, __file__, "_phases", str(model), str(data), str(args.batch), bench]
            start = time.perf_counter()
            out = subprocess.run(command, env=_env(src, Path(tmp)), capture_output=True, text=True, check=False)
            wall = time.perf_counter() - start
            if out.returncode:
                raise SystemExit(out.stderr)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["process wall"] = wall
            results[label] = result
    keys = list(dict.fromkeys(k for r in results.values() for k in r if k not in ("engine", "notes")))
    print(f"{args.model}, {args.samples} samples, batch {args.batch}, trtq from {src}")
    print(f"{'phase':40s}" + "".join(f"{label:>28s}" for label in results))
    for key in keys:
        print(f"{key:40s}" + "".join(f"{r.get(key, 0.0):28.3f}" for r in results.values()))
    for label, r in results.items():
        print(f"  {label}: {r['notes']}")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "samples": args.samples, "batch": args.batch,
                                              "src": str(src), "results": results}, indent=1))


# --- crossover ---------------------------------------------------------------------------------

def quantize_wall(src: Path, cache: Path, model: Path, data: Path, device: str, extra: list[str]) -> tuple[float, float]:
    """(wall seconds of `python -m trtq quantize`, its calibration_seconds)."""
    with tempfile.TemporaryDirectory() as out_dir:
        command = [sys.executable, "-m", "trtq", "quantize", str(model), "--calib", str(data), "--device", device,
                   "--output-dir", out_dir, "--quiet", "--json", *extra]
        start = time.perf_counter()
        out = subprocess.run(command, env=_env(src, cache), capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
    if out.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{out.stderr}")
    return wall, float(json.loads(out.stdout)["calibration_seconds"])


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (fixed seconds, seconds per sample)."""
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    var = sum((p[0] - mx) ** 2 for p in points)
    slope = sum((p[0] - mx) * (p[1] - my) for p in points) / var if var else 0.0
    return my - slope * mx, slope


def crossover_main(args: argparse.Namespace) -> None:
    src = Path(args.src).resolve()
    counts = [int(c) for c in args.samples_list.split(",")]
    rows: dict[str, list[tuple[int, float, float]]] = {"cuda": [], "cpu": []}
    with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as cold:
        model, data, extra = prepare(args.model, counts[0], args.batch, args.ppocr)
        empty = quantize_wall(src, Path(cold), model, data, "cuda", extra)  # compiles and fills `cold`
        for n in counts:
            model, data, extra = prepare(args.model, n, args.batch, args.ppocr)
            rows["cuda"].append((n, *quantize_wall(src, Path(cold), model, data, "cuda", extra)))
            rows["cpu"].append((n, *quantize_wall(src, Path(warm), model, data, "cpu", extra)))
            print(f"{n:6d} samples: " + ", ".join(f"{k} {v[-1][1]:.2f} s" for k, v in rows.items()), flush=True)
    fits = {k: _fit([(n, wall) for n, wall, _ in v]) for k, v in rows.items()}
    print(f"\n{args.model}, batch {args.batch}, trtq from {src}: wall seconds of `python -m trtq quantize` "
          "(calibration seconds in brackets); --device cuda with the kernel cache filled")
    print(f"{'samples':>8s}" + "".join(f"{k:>24s}" for k in rows))
    for i, n in enumerate(counts):
        print(f"{n:8d}" + "".join(f"{v[i][1]:12.2f} ({v[i][2]:6.2f} s)" for v in rows.values()))
    print(f"--device cuda with an empty kernel cache, {counts[0]} samples: {empty[0]:.2f} s ({empty[1]:.2f} s)")
    print("fit: " + "; ".join(f"{k}: {a:.2f} s + {1000 * b:.2f} ms/sample" for k, (a, b) in fits.items()))
    (gpu_a, gpu_b), (cpu_a, cpu_b) = fits["cuda"], fits["cpu"]
    crossover = (gpu_a - cpu_a) / (cpu_b - gpu_b) if cpu_b > gpu_b else None
    print("GPU pays off from about " + (f"{crossover:.0f} samples" if crossover is not None
                                        else "never (the CPU is as fast per sample)"))
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "batch": args.batch, "src": str(src), "rows": rows,
                                              "empty_cache": empty, "fits": fits, "crossover": crossover}, indent=1))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_phases":  # the child process of `phases`
        model, data, batch, bench = sys.argv[2:6]
        print(json.dumps(run_phases(Path(model), Path(data), int(batch), bench)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("phases", "crossover"))
    parser.add_argument("--model", default="ppocr-det", choices=("ppocr-det", "resnet50"))
    parser.add_argument("--ppocr", help="PP-OCRv6_det_small.onnx (default: fetched from the rapidocr wheel with pip)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--samples", type=int, default=8, help="phases: samples calibrated")
    parser.add_argument("--samples-list", default="8,32,128", help="crossover: sample counts, comma-separated")
    parser.add_argument("--cudnn", nargs="*", default=[], choices=("on", "off"),
                        help="phases: also run warm with cuDNN autotuning forced on / off")
    parser.add_argument("--src", default=str(ROOT / "src"), help="trtq source tree the runs import")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    (phases_main if args.mode == "phases" else crossover_main)(args)


if __name__ == "__main__":
    main()
