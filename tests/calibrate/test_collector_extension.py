"""The optional C histogram pass gives exactly the numpy path's statistics."""

import numpy as np
import pytest

from trtq.calibrate import collector as collector_module
from trtq.calibrate.collector import StatsCollector

pytestmark = pytest.mark.skipif(collector_module._ceil_counts is None, reason="C extension not built (pip install -e .)")


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
    fast, slow = StatsCollector(["t"]), StatsCollector(["t"])
    slow.use_extension = False
    for b in batches:
        fast.update("t", b)
        slow.update("t", b)
    assert fast.stats()["t"] == slow.stats()["t"]
    assert fast.stats()["t"].hist.sum() == sum(b.size for b in batches)
