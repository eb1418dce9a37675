"""Quantization grids in numpy against onnxruntime's own QuantizeLinear/DequantizeLinear."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq.calibrate.grids import FP8_E4M3, INT8


def qdq_session(dtype: int, scale: np.ndarray, axis: int | None = None, opset: int = 19) -> ort.InferenceSession:
    """x -> QuantizeLinear(scale, zero point 0 of `dtype`) -> DequantizeLinear -> y."""
    zero = helper.make_tensor("zero", dtype, list(scale.shape), [0] * scale.size)
    extra = {"axis": axis} if axis is not None else {}
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], **extra),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], **extra)]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(scale.astype(np.float32), "scale"), zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture
def values() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6, 5, 5)).astype(np.float32) * 3
    x[0, 0, 0, :3] = [40.0, -40.0, 0.0]  # saturating values and an exact zero
    return x


def test_int8_per_tensor_matches_onnxruntime_exactly(values):
    amax = 7.3
    expected = qdq_session(TensorProto.INT8, np.array(amax / 127, np.float32)).run(None, {"x": values})[0]
    np.testing.assert_array_equal(INT8.fake_quantize(values, amax), expected)


def test_int8_per_channel_weight_matches_onnxruntime_exactly(values):
    amax = np.abs(values).max(axis=(0, 2, 3))
    expected = qdq_session(TensorProto.INT8, amax / 127, axis=1).run(None, {"x": values})[0]
    np.testing.assert_array_equal(INT8.fake_quantize_weight(values, axis=1), expected)


def test_fp8_matches_onnxruntime_exactly(values):
    amax = 7.3
    expected = qdq_session(TensorProto.FLOAT8E4M3FN, np.array(amax / 448, np.float32)).run(None, {"x": values})[0]
    np.testing.assert_array_equal(FP8_E4M3.fake_quantize(values, amax), expected)


def test_a_zero_range_keeps_a_positive_scale():
    out = INT8.fake_quantize(np.array([0.0, 1e-12], np.float32), 0.0)
    assert np.all(np.isfinite(out))
