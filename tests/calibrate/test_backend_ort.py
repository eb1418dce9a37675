"""The CPU backend's IO-bound, double-buffered runs give exactly the statistics of plain runs."""

import numpy as np
import onnxruntime as ort

from tiny_models import residual_conv_net
from trtq.calibrate.backend_ort import OrtBackend
from trtq.calibrate.ort_session import expose_tensors
from trtq.calibrate.collector import StatsCollector
from trtq.model import normalize_model
from trtq.quantize import plan_placement


def test_double_buffered_statistics_equal_plain_runs():
    model = normalize_model(residual_conv_net(batch="N"))
    tensors = list(plan_placement(model).calibrated_tensors)
    fetch = [t for t in tensors if t != "input"]
    rng = np.random.default_rng(0)
    # five full batches (the buffers swap several times), then a partial one (new shapes, re-sized buffers)
    batches = [rng.standard_normal((4, 3, 16, 16)).astype(np.float32) * (i + 1) for i in range(5)]
    batches.append(rng.standard_normal((2, 3, 16, 16)).astype(np.float32) * 9)

    backend = OrtBackend(model, tensors)
    for x in batches:
        backend.observe({"input": x})
    got = backend.stats()

    session = ort.InferenceSession(expose_tensors(model, fetch).SerializeToString())
    expected = StatsCollector(tensors)
    for x in batches:
        for name, value in zip(fetch, session.run(fetch, {"input": x})):
            expected.update(name, value)
        expected.update("input", x)
    want = expected.stats()
    assert set(got) == set(want)
    for name in tensors:
        assert got[name] == want[name], name
    assert got["r2"].count == sum(len(x) for x in batches) * 8 * 16 * 16

