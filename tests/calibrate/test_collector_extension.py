"""The optional C histogram pass gives exactly the numpy path's statistics."""

import numpy as np
import pytest

from trtq.calibrate import collector as collector_module
from trtq.calibrate.collector import StatsCollector

pytestmark = pytest.mark.skipif(collector_module._ceil_counts is None, reason="C extension not built (pip install -e .)")


def _fast_and_slow(batches: list[np.ndarray]) -> tuple:
    """The statistics of `batches` with the C extension and with the numpy path."""
    fast, slow = StatsCollector(["t"]), StatsCollector(["t"])
    slow.use_extension = False
    for b in batches:
        fast.update("t", b)
        slow.update("t", b)
    return fast.stats()["t"], slow.stats()["t"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_extension_equals_numpy_path(seed):
    rng = np.random.default_rng(seed)
    batches = [
        np.maximum(rng.standard_normal((2, 8, 33, 17)).astype(np.float32) * scale, 0) if i % 2 else
        rng.laplace(size=(3, 1001)).astype(np.float32) * scale
        for i, scale in enumerate((1.0, 3.0, 0.5, 40.0))
    ]
    batches.append(np.zeros(100, np.float32))
    batches.append(np.full(7, batches[3].max(), np.float32))  # values exactly on the top edge
    fast, slow = _fast_and_slow(batches)
    assert fast == slow
    assert fast.hist.sum() == sum(b.size for b in batches)


def _kernels() -> list[int]:
    return list(range(collector_module._fasthist_best() + 1)) if collector_module._ceil_counts else []


@pytest.mark.parametrize("kernel", [0, 1, 2], ids=["portable", "avx2", "avx512"])
def test_every_kernel_counts_like_numpy(kernel):
    """Each SIMD kernel gives the portable kernel's counts, amax and NaN flag, tails and all."""
    if kernel not in _kernels():
        pytest.skip(f"this CPU has no kernel {kernel} (best: {max(_kernels())})")
    rng = np.random.default_rng(kernel)
    n = 2048
    # 4096 * 3 + 21 values: full blocks, a partial block and a scalar tail; zeros, negatives,
    # values exactly on bin edges, on the top edge, above it, and NaN/Inf in separate arrays.
    x = np.maximum(rng.laplace(size=3 * 4096 + 21).astype(np.float32), -0.5)
    x[::7] = 0.0
    scale = np.float32(n / 4.0)
    x[:50] = np.arange(50, dtype=np.float32) / scale  # exact edges
    x[60] = 4.0
    ceil = np.ceil(np.minimum(np.abs(x) * scale, np.float32(n + 1))).astype(np.int64)
    expected = np.bincount(ceil, minlength=n + 2)
    counts = np.zeros(n + 2, np.int64)
    amax, nonfinite = collector_module._ceil_counts(x, float(scale), counts, kernel)
    assert np.array_equal(counts, expected)
    assert counts[-1] == np.count_nonzero(np.abs(x) > 4.0) and counts[-1] > 0
    assert amax == float(np.abs(x).max()) and not nonfinite
    for bad in (np.nan, np.inf, -np.inf):
        for where in (5, x.size - 3):  # in a vector lane and in the scalar tail
            y = x.copy()
            y[where] = bad
            counts[:] = 0
            _, nonfinite = collector_module._ceil_counts(y, float(scale), counts, kernel)
            assert nonfinite and counts.sum() == y.size and counts[-1] == expected[-1] + (abs(x[where]) <= 4.0)


def test_unsupported_kernel_is_refused():
    best = collector_module._fasthist_best()
    if best == 2:
        pytest.skip("every kernel is supported on this CPU")
    with pytest.raises(ValueError, match="not supported"):
        collector_module._ceil_counts(np.zeros(4, np.float32), 1.0, np.zeros(4, np.int64), best + 1)


def test_fused_pass_falls_back_when_a_batch_leaves_the_range():
    """A later batch above the range or with NaN goes through the general path: same stats as numpy."""
    batches = [np.linspace(-1, 1, 5000, dtype=np.float32), np.linspace(0, 3, 5000, dtype=np.float32),
               np.array([np.nan, 0.5, np.inf, -2.0], np.float32), np.linspace(-0.1, 0.1, 9000, dtype=np.float32)]
    fast, slow = _fast_and_slow(batches)
    assert fast == slow
    assert fast.nan_count == 2
