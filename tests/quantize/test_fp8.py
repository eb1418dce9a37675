"""FP8 (E4M3) Q/DQ: float8e4m3fn zero points, scale = amax / 448, opset >= 19, per-channel weights,
ModelOpt's FP8 placement rules, and numerics under onnxruntime's CPU FP8 kernels."""

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_models import gemm_matmul_net

from trtq.calibrate.grids import FP8_E4M3, INT8
from trtq.model import default_opset, normalize_model
from trtq.quantize import insert_qdq, plan_placement

QDQ = ("QuantizeLinear", "DequantizeLinear")


def _inits(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _fp8(model, amax=4.0):
    model = normalize_model(model, min_opset=19)
    placement = plan_placement(model, grid=FP8_E4M3)
    return model, placement, insert_qdq(model, placement, {t: amax for t in placement.activation_tensors})


def _session(model):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_fp8_pairs_have_float8_zero_points_and_scales_over_448():
    model, placement, q = _fp8(gemm_matmul_net(), amax=2.24)
    onnx.checker.check_model(q)
    assert default_opset(model) == 19  # raised from 17 by the version converter
    inits = _inits(q)
    pairs = [n for n in q.graph.node if n.op_type in QDQ]
    assert len(pairs) == 2 * len(placement.targets) == 2 * 6  # gemm x/gw, matmul gr/mw, gram xr/xt
    for node in pairs:
        scale, zero = inits[node.input[1]], inits[node.input[2]]
        assert zero.dtype == ml_dtypes.float8_e4m3fn and not zero.astype(np.float32).any()
        axis = {a.name: a.i for a in node.attribute}.get("axis")
        if node.input[0] in ("gw", "mw") or (node.input[0].endswith("_quantized") and scale.ndim):
            assert scale.ndim == 1 and axis is not None
        else:
            assert scale.ndim == 0 and axis is None and scale == np.float32(2.24 / 448)
    weights = _inits(model)
    assert np.allclose(inits["gw_scale"], np.abs(weights["gw"]).max(axis=1) / 448)  # Gemm transB: axis 0
    assert np.allclose(inits["mw_scale"], np.abs(weights["mw"]).max(axis=0) / 448)  # MatMul [K, N]: axis 1
    zero_types = {i.data_type for i in q.graph.initializer if i.name.endswith("_zero_point")}
    assert zero_types == {TensorProto.FLOAT8E4M3FN}


def test_onnxruntime_rounds_to_the_nearest_e4m3_value():
    # x [1,32] -> Q/DQ at amax 448 (scale 1) -> the nearest float8e4m3fn value, saturating at 448
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="id"),
                               helper.make_node("MatMul", ["y", "w"], ["out"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 32])],
                              [numpy_helper.from_array(np.eye(32, dtype=np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = normalize_model(model, min_opset=19)
    placement = plan_placement(model, grid=FP8_E4M3)
    q = insert_qdq(model, placement, {"y": 448.0})
    x = np.array([[0.3, -1.7, 3.1, 17.0, 100.0, 300.0, 500.0, -900.0, 1e-4, *np.linspace(-5, 5, 23)]], np.float32)
    out = _session(q).run(None, {"x": x})[0]
    expected = np.clip(x, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)  # identity weights are exact
    assert np.array_equal(out, expected)
    assert np.array_equal(out, FP8_E4M3.fake_quantize(x, 448.0))


def test_insert_refuses_fp8_below_opset_19():
    model = normalize_model(gemm_matmul_net())  # opset 17
    placement = plan_placement(model, grid=FP8_E4M3)
    with pytest.raises(ValueError, match="opset >= 19"):
        insert_qdq(model, placement, {t: 1.0 for t in placement.activation_tensors})


def _placement_net() -> onnx.ModelProto:
    """Convs FP8 keeps (wide, small filter) and leaves out (narrow, 7x7, ConvTranspose), a residual
    Add and a MaxPool.

        x [1,32,8,8] -> conv_wide (32->32, 3x3) -> add (+ x, the skip) -> relu -> maxpool (2x2)
          -> conv_narrow (32->8, 1x1) -> conv_t (ConvTranspose 8->32, 2x2 stride 2)
          -> conv_big (32->32, 7x7) -> y [1,32,8,8]
    """
    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w_wide"], ["c1"], name="conv_wide", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "x"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r1"], name="relu"),
        helper.make_node("MaxPool", ["r1"], ["p"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w_narrow"], ["c2"], name="conv_narrow"),
        helper.make_node("ConvTranspose", ["c2", "w_t"], ["c3"], name="conv_t", strides=[2, 2]),
        helper.make_node("Conv", ["c3", "w_big"], ["y"], name="conv_big", pads=[3, 3, 3, 3]),
    ]
    graph = helper.make_graph(nodes, "placement", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8, 8])],
                              [w("w_wide", 32, 32, 3, 3), w("w_narrow", 8, 32, 1, 1), w("w_t", 8, 32, 2, 2),
                               w("w_big", 32, 32, 7, 7)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_fp8_placement_follows_modelopt_fp8_mode():
    model = normalize_model(_placement_net(), min_opset=19)
    int8 = plan_placement(model, grid=INT8)
    fp8 = plan_placement(model, grid=FP8_E4M3)
    readers = {node for t in fp8.targets for node, _ in t.consumers}
    assert readers == {"conv_wide", "add"}  # the skip input x of the residual Add fuses into conv_wide
    assert set(fp8.excluded_nodes) == {"conv_narrow", "conv_t", "conv_big"}
    assert fp8.cache_tensors == () and fp8.grid is FP8_E4M3
    int8_readers = {node for t in int8.targets for node, _ in t.consumers}
    assert int8_readers == {"conv_wide", "add", "maxpool", "conv_narrow", "conv_t", "conv_big"}
    assert int8.cache_tensors and int8.excluded_nodes == ()
    x = np.random.default_rng(1).standard_normal((1, 32, 8, 8)).astype(np.float32)
    q = insert_qdq(model, fp8, {t: float(np.abs(x).max()) for t in fp8.activation_tensors})  # only x is quantized
    ref, out = _session(model).run(None, {"x": x})[0], _session(q).run(None, {"x": x})[0]
    assert 10 * np.log10((ref**2).sum() / ((ref - out) ** 2).sum()) > 25  # E4M3 on one conv's input and weights
