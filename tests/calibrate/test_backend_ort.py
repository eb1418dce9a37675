"""The CPU backend's IO-bound, double-buffered runs give exactly the statistics of plain runs."""

import numpy as np
from reference_stats import plain_exposure_stats
from tiny_models import residual_conv_net

from trtq.calibrate.backend_ort import OrtBackend
from trtq.model import normalize_model
from trtq.quantize import plan_placement


def test_double_buffered_statistics_equal_plain_runs():
    model = normalize_model(residual_conv_net(batch="N"))
    tensors = list(plan_placement(model).calibrated_tensors)
    rng = np.random.default_rng(0)
    # five full batches (the buffers swap several times), then a partial one (new shapes, re-sized buffers)
    batches = [rng.standard_normal((4, 3, 16, 16)).astype(np.float32) * (i + 1) for i in range(5)]
    batches.append(rng.standard_normal((2, 3, 16, 16)).astype(np.float32) * 9)

    backend = OrtBackend(model, tensors)
    for x in batches:
        backend.observe({"input": x})
    got = backend.stats()

    want = plain_exposure_stats(model, tensors, batches)
    assert set(got) == set(want)
    for name in tensors:
        assert got[name] == want[name], name
    assert got["r2"].count == sum(len(x) for x in batches) * 8 * 16 * 16

