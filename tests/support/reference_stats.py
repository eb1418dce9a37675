"""The statistics calibration must reproduce, computed the plain way: every observed tensor
exposed as an ONNX graph output (NCHW), run batch by batch, folded into a StatsCollector."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from trtq.calibrate.collector import StatsCollector, TensorStats
from trtq.runtime.ort_session import expose_tensors


def plain_exposure_stats(model: onnx.ModelProto, tensors: Sequence[str], batches: Sequence[np.ndarray],
                         input_name: str = "input") -> dict[str, TensorStats]:
    """Statistics of `tensors` (the input included if listed) over `batches` of the single input."""
    fetch = [t for t in tensors if t != input_name]
    session = ort.InferenceSession(expose_tensors(model, fetch).SerializeToString())
    expected = StatsCollector(tensors)
    for x in batches:
        for name, value in zip(fetch, session.run(fetch, {input_name: x})):
            expected.update(name, value)
        if input_name in tensors:
            expected.update(input_name, x)
    return expected.stats()
