"""CPU time of `trtq quantize` (in this process) against the FP32 onnxruntime floor, with a breakdown of
`--method auto`'s extra work.

    python bench/bench_auto_cost.py resnet50 auto        # ResNet-50, bench_cpu's 64 samples
    python bench/bench_auto_cost.py ppocr-det entropy

The floor runs the FP32 model over the same samples twice: with onnxruntime's defaults (idle threads
spin, as `bench/bench_cpu.py`'s floor does) and without spinning (trtq's own sessions do not spin).
On a loaded machine spinning can double the floor's CPU time, so both ratios are printed. CPU time is
this process's user+sys (robust to other load, unlike wall time). The floor's thread pool is sized to the
CPUs this process may run on (onnxruntime's default takes every core of the host, escaping `taskset`), as
`bench/bench_cpu.py`'s floor is, so `taskset -c 0,1 python bench/bench_auto_cost.py ...` is a fair 2-core run.
"""

from __future__ import annotations

import os
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
    judge,
    runner,
)
from trtq.evaluate import tables


def main() -> None:
    key, method = sys.argv[1], sys.argv[2]
    model, calib, _, _, _extra = bench_cpu.prepare(key, 64)
    shapes = {"x": (1, 3, 640, 640)} if key == "ppocr-det" else {}
    prepared = api.prepare_model(model)
    data = api.DataOptions(shapes=shapes)
    feeds = [dict(b) for b in api.open_data(prepared.model, calib, data).batches(1)]
    floors = {}
    for label, spin in (("defaults", True), ("no spinning", False)):
        options = ort.SessionOptions()
        options.intra_op_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        start = time.process_time()
        for feed in feeds:
            session.run(None, feed)
        floors[label] = time.process_time() - start
        del session
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
    timed(runner, "all_candidates", "candidates (every method's amax per tensor)")
    timed(runner, "choose_ranges", "choose_ranges (local judge and end-to-end checks)")
    timed(judge.Judge, "add", "  local judge runs")
    timed(auto, "check", "  end-to-end checks")
    timed(tables.TableRunner, "__init__", "  Q/DQ model and session for the checks")
    start = time.process_time()
    result = api.quantize(model, calib, data=data, progress=False,
                          options=api.QuantizeOptions(method=method, output_dir=str(ROOT / "out" / "bench_auto_cost")))
    total = time.process_time() - start
    print(f"{key}, {len(feeds)} samples, --method {method}: quantize {total:.2f} s CPU; floor {floors['defaults']:.2f} s "
          f"(onnxruntime defaults), {floors['no spinning']:.2f} s (no spinning)")
    print(f"  quantize / floor: {total / floors['defaults']:.2f}x (defaults), {total / floors['no spinning']:.2f}x "
          "(no spinning)")
    for label, seconds in phases.items():
        print(f"  {label}: {seconds:.2f} s ({seconds / floors['no spinning']:.2f}x of the no-spinning floor)")
    if result.range_table:
        print(f"  table kept: {result.range_table}; checks: " + ", ".join(
            f"{name} {c.samples} samples" for name, c in result.table_checks.items()))


if __name__ == "__main__":
    main()
