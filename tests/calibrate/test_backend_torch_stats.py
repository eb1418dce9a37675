"""DeviceStats (torch engine, on CPU) gives exactly the CPU collector's statistics.

The CUDA kernels implement the same steps and are checked against the collector on the GPU
machine (test_backend_torch_gpu.py); here the algorithm itself is pinned down bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from trtq.calibrate.collector import StatsCollector
from trtq.calibrate.gpu_stats import DeviceStats


def stream() -> list[dict[str, np.ndarray]]:
    """Batches that exercise every rule: ReLU zeros, growth by 2^k, NaN/Inf, all-zero first batches."""
    rng = np.random.default_rng(3)
    relu = lambda *s: np.maximum(rng.standard_normal(s), 0).astype(np.float32)  # noqa: E731
    batches = []
    for i in range(6):
        grow = np.float32(1.0 if i < 2 else 3.0 ** i)  # later batches exceed the range: 2^k merges
        late = np.zeros((4, 8), np.float32) if i < 3 else rng.standard_normal((4, 8)).astype(np.float32)
        bad = rng.standard_normal((5, 7)).astype(np.float32)
        bad[0, :3] = [np.nan, np.inf, -np.inf]
        batches.append({
            "relu": relu(2, 3, 17, 19) * grow,                       # many exact zeros, odd size
            "signed": (rng.standard_normal((3, 1000)) * grow).astype(np.float32),
            "late": late,                                            # all zeros until batch 3
            "bad": bad,                                              # non-finite values ignored
            "half": (rng.standard_normal((4, 33)) * 100).astype(np.float16),
            "tiny": (rng.standard_normal(64) * 1e-38).astype(np.float32),  # denormals
            "jump": (rng.standard_normal(300) * (1e5 if i == 2 else 1.0)).astype(np.float32),  # 2^k > bins
        })
    batches[4]["bad"][:] = np.nan                                    # a batch with nothing finite
    return batches


@pytest.mark.parametrize("histogram", [True, False])
def test_torch_engine_equals_collector_bit_for_bit(histogram):
    batches = stream()
    names = list(batches[0])
    ref = StatsCollector(names, histogram=histogram)
    dev = DeviceStats(names, "cpu", histogram=histogram)
    assert dev.engine == "torch"
    for batch in batches:
        for i, name in enumerate(names):
            ref.update(name, batch[name])
            dev.update(i, torch.from_numpy(batch[name]))
        dev.end_batch()
    expected, got = ref.stats(), dev.stats()
    for name in names:
        assert got[name] == expected[name], name
    assert expected["bad"].nan_count == 5 * 3 + 35 and expected["late"].count == 6 * 32
    if histogram:
        first = float(np.abs(batches[0]["signed"]).max())
        growth = np.log2(expected["signed"].hist_max / first)
        assert growth >= 3 and growth == int(growth)  # the range doubled several times, exactly
        assert got["relu"].hist[0] > got["relu"].count // 3  # the zeros landed in bin 0


def test_views_and_empty_tensors():
    # Non-contiguous views are read correctly and empty tensors change nothing.
    base = torch.randn(6, 10)
    ref = StatsCollector(["t"])
    dev = DeviceStats(["t"], "cpu")
    view = base[:, ::3]
    ref.update("t", view.numpy())
    dev.update(0, view)
    dev.update(0, torch.empty(0))
    dev.end_batch()
    dev.end_batch()  # a batch that saw nothing
    assert dev.stats()["t"] == ref.stats()["t"]


def test_unknown_engine_is_rejected():
    with pytest.raises(ValueError, match="engine"):
        DeviceStats(["t"], "cpu", engine="fast")
