"""CPU time of `trtq quantize` (in this process) against the FP32 onnxruntime floor, with a breakdown of
`--method auto`'s extra work.

    python bench/bench_auto_cost.py resnet50 auto        # ResNet-50, bench_cpu's 64 samples
    python bench/bench_auto_cost.py ppocr-det entropy --repeat 5

The floor runs the FP32 model over the same samples twice: with onnxruntime's defaults (idle threads
spin, as `bench/bench_cpu.py`'s floor does) and without spinning (trtq's own sessions do not spin).
On a loaded machine spinning can double the floor's CPU time, so both ratios are printed. CPU time is
this process's user+sys (robust to other load, unlike wall time). The floor's thread pool is sized to the
CPUs this process may run on (onnxruntime's default takes every core of the host, escaping `taskset`), as
`bench/bench_cpu.py`'s floor is, so `taskset -c 0,1 python bench/bench_auto_cost.py ...` is a fair 2-core run.

Floor and quantize run `--repeat` times (default 3) in turn and the median ratio is the figure: on the
project's virtual machines a page of memory the process touches for the first time costs tens of
microseconds of system time, and how many pages are fresh varies from run to run (one repetition of
ResNet-50 auto read 1.9x to 2.6x). The breakdown is the mean over repetitions; phases that run on
threads beside others (the candidates) count the whole process's CPU while they run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench_cpu

from trtq import api
from trtq.calibrate import (
    auto,
    backend_ort,
    judge,
    runner,
)
from trtq.evaluate import tables


def _floor(model: Path, feeds: list[dict], spin: bool) -> float:
    """CPU seconds of the FP32 model over `feeds` in a plain onnxruntime session."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    start = time.process_time()
    for feed in feeds:
        session.run(None, feed)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=("resnet50", "ppocr-det"))
    parser.add_argument("method", nargs="?", default="auto")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    key, method = args.model, args.method
    model, calib, _, _, _extra = bench_cpu.prepare(key, 64)
    shapes = {"x": (1, 3, 640, 640)} if key == "ppocr-det" else {}
    prepared = api.prepare_model(model)
    data = api.DataOptions(shapes=shapes)
    feeds = [dict(b) for b in api.open_data(prepared.model, calib, data).batches(1)]
    phases: dict[str, float] = {}

    def timed(owner: object, name: str, label: str) -> None:
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.process_time()
            try:
                return real(*args, **kwargs)
            finally:
                phases[label] = phases.get(label, 0.0) + time.process_time() - start

        setattr(owner, name, wrapper)

    timed(api, "smooth_prepared", "depthwise equalization (channel maxima, rewrite, FP32 check)")
    timed(runner, "make_backend", "calibration session")
    timed(backend_ort.OrtBackend, "observe", "calibration runs (statistics folded in)")
    timed(runner, "all_candidates", "candidates (every method's amax per tensor)")
    timed(runner, "choose_ranges", "choose_ranges (end-to-end checks; local judge with --judge-layers)")
    timed(judge.Judge, "add", "  local judge runs")
    timed(auto, "check", "  end-to-end checks")
    timed(tables.TableRunner, "__init__", "  Q/DQ model and session for the checks")
    rows = []
    for _ in range(args.repeat):
        floors = {label: _floor(model, feeds, spin) for label, spin in (("defaults", True), ("no spinning", False))}
        start = time.process_time()
        result = api.quantize(model, calib, data=data, progress=False, options=api.QuantizeOptions(
            method=method, output_dir=str(ROOT / "out" / "bench_auto_cost")))
        total = time.process_time() - start
        rows.append((total, floors["defaults"], floors["no spinning"]))
        print(f"  quantize {total:.2f} s CPU; floor {floors['defaults']:.2f} s (defaults), {floors['no spinning']:.2f} s "
              f"(no spinning): {total / floors['defaults']:.2f}x / {total / floors['no spinning']:.2f}x")
    by_defaults = statistics.median(t / d for t, d, _ in rows)
    by_quiet = statistics.median(t / q for t, _, q in rows)
    quiet = statistics.mean(q for _, _, q in rows)
    print(f"{key}, {len(feeds)} samples, --method {method}, {len(rows)} runs: quantize / floor, median "
          f"{by_defaults:.2f}x (onnxruntime defaults), {by_quiet:.2f}x (no spinning); quantize "
          f"{statistics.mean(t for t, _, _ in rows):.2f} s CPU on average, floor {quiet:.2f} s (no spinning)")
    for label, seconds in phases.items():
        mean = seconds / len(rows)
        print(f"  {label}: {mean:.2f} s ({mean / quiet:.2f}x of the no-spinning floor)")
    if result.range_table:
        print(f"  table kept: {result.range_table}; checks: " + ", ".join(
            f"{name} {c.samples} samples" for name, c in result.table_checks.items()))


if __name__ == "__main__":
    main()
