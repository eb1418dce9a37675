"""bench/bench_ranges.py sees the held-out models of bench/heldout_cases.py, run as a script and imported by name.

heldout_cases imports Case from bench_ranges while bench_ranges imports it: a second copy of bench_ranges (when
run as __main__) would give two Case classes and run its top level twice. Both ways are checked in a subprocess,
so this test process's sys.path and modules stay as they were. Nothing is downloaded: no case is built.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = ("orient", "layout", "rnet", "onet", "det-v4", "rec-v4")


def _in_bench(code: str) -> str:
    """What `code` prints, run in its own process with bench/ first on sys.path."""
    prelude = f"import sys; sys.path.insert(0, {str(REPO / 'bench')!r})\n"
    proc = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                          check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_script_offers_the_held_out_models():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_ranges.py"), "--help"],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    usage = proc.stdout.split("--models")[1].split("}")[0]
    for name in (*HELD_OUT, "cls", "det"):
        assert name in usage.split("{")[1].split(","), (name, usage)


def test_imported_by_name_there_is_one_bench_ranges_and_one_case_class():
    code = (
        "import bench_ranges, heldout_cases\n"
        "assert heldout_cases.Case is bench_ranges.Case\n"
        "print(' '.join(sorted(bench_ranges.CASES)))\n"
    )
    assert set(HELD_OUT) <= set(_in_bench(code).split())


def test_bench_draws_draws_only_bench_ranges_models_and_its_interval_is_students_t():
    code = (
        "import numpy as np, bench_draws, bench_ranges\n"
        "assert set(bench_draws.DRAWERS) <= set(bench_ranges.CASES), sorted(bench_draws.DRAWERS)\n"
        "low, high = bench_draws.interval(np.array([1.0, 2.0, 3.0]))\n"
        "print(f'{low:.3f} {high:.3f}')\n"
    )
    printed = _in_bench(code)
    # mean 2, sample std 1, 3 draws: 2 -+ t(0.95, 2 dof) 2.920 / sqrt(3)
    assert printed.split() == ["0.314", "3.686"]


def test_bench_resolution_offers_every_bench_ranges_model():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_resolution.py"), "--help"],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    offered = proc.stdout.split("--models")[1].split("}")[0].split("{")[1].split(",")
    for name in (*HELD_OUT, "cls", "digits"):
        assert name in offered, (name, offered)
