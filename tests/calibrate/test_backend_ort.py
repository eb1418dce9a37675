"""The CPU backend's IO-bound, double-buffered runs give exactly the statistics of plain runs."""

import numpy as np
import pytest
from reference_stats import plain_exposure_stats
from tiny_models import residual_conv_net

from trtq.calibrate import backend_ort
from trtq.calibrate.backend_ort import OrtBackend, stats_threads
from trtq.calibrate.ort_observe import observer_library
from trtq.model import normalize_model
from trtq.quantize import plan_placement


@pytest.mark.parametrize(("binners", "extension", "ops"), [(1, True, False), (3, True, False), (3, False, False),
                                                          (1, True, True)])
def test_double_buffered_statistics_equal_plain_runs(binners, extension, ops, monkeypatch):
    """With one binning thread or several (tensors in parallel, as on many-core machines), with
    the C pass or numpy's; and with trtq's observer ops folding them inside onnxruntime."""
    monkeypatch.setattr(backend_ort, "stats_threads", lambda cores: binners)
    model = normalize_model(residual_conv_net(batch="N"))
    tensors = list(plan_placement(model).calibrated_tensors)
    rng = np.random.default_rng(0)
    # five full batches (the buffers swap several times), then a partial one (new shapes, re-sized buffers)
    batches = [rng.standard_normal((4, 3, 16, 16)).astype(np.float32) * (i + 1) for i in range(5)]
    batches.append(rng.standard_normal((2, 3, 16, 16)).astype(np.float32) * 9)

    backend = OrtBackend(model, tensors, observer_ops=ops)
    assert (backend._observing is not None) == (ops and observer_library() is not None)
    assert (backend._binners is None) == (binners == 1)
    backend._collector.use_extension = extension
    for x in batches:
        backend.observe({"input": x})
    got = backend.stats()

    want = plain_exposure_stats(model, tensors, batches)
    assert set(got) == set(want)
    for name in tensors:
        assert got[name] == want[name], name
    assert got["r2"].count == sum(len(x) for x in batches) * 8 * 16 * 16



def test_one_binning_thread_per_four_cores():
    assert [stats_threads(n) for n in (1, 2, 4, 8, 16, 64)] == [1, 1, 1, 2, 4, 8]
