"""Q/DQ insertion: structure (counts, axes, dtypes, zero points, scales) and numerics under onnxruntime."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper
from tiny_models import residual_conv_net

from trtq.model import normalize_model
from trtq.quantize import insert_qdq, plan_placement
from trtq.quantize.qdq import weight_amax


def _quantized(model, amax=None):
    model = normalize_model(model)
    placement = plan_placement(model)
    amax = amax or {t: 4.0 for t in placement.activation_tensors}
    return model, placement, insert_qdq(model, placement, amax)


def _inits(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_one_pair_per_target_with_symmetric_int8_params():
    _, placement, q = _quantized(residual_conv_net(), {t: 2.54 for t in ("input", "r1", "r2", "r3", "pool")})
    onnx.checker.check_model(q)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == len(placement.targets) == 9
    inits = _inits(q)
    for node in q.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale, zp = inits[node.input[1]], inits[node.input[2]]
        assert zp.dtype == np.int8 and not zp.any()
        assert (scale > 0).all() and scale.dtype == np.float32
        axis = {a.name: a.i for a in node.attribute}.get("axis")
        if node.input[0] in ("w1", "w2", "w3", "wh") or (node.input[0].endswith("_quantized") and scale.ndim):
            assert scale.ndim == 1 and axis == 0
        else:
            assert scale.ndim == 0 and axis is None
            assert scale == np.float32(2.54 / 127)


def test_weight_scales_are_per_channel_max_over_127():
    model, _, q = _quantized(residual_conv_net())
    w1 = _inits(model)["w1"]
    assert np.allclose(_inits(q)["w1_scale"], np.abs(w1).reshape(8, -1).max(axis=1) / 127)
    assert np.allclose(weight_amax(w1, 0), np.abs(w1).max(axis=(1, 2, 3)))


def test_graph_stays_topologically_sorted_and_outputs_unquantized():
    _, _, q = _quantized(residual_conv_net())
    seen = {i.name for i in q.graph.input} | {i.name for i in q.graph.initializer}
    for node in q.graph.node:
        assert all(name in seen for name in node.input if name), node.name
        seen.update(node.output)
    assert [o.name for o in q.graph.output] == ["scores"]
    assert q.graph.node[-1].op_type == "Sigmoid"


def test_numerics_close_to_fp32():
    # Ranges from the data itself (max): the INT8 model must stay within 25 dB SNR of FP32.
    model = normalize_model(residual_conv_net())
    placement = plan_placement(model)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    from trtq.runtime.ort_session import expose_tensors

    names = list(placement.activation_tensors)
    probe = ort.InferenceSession(expose_tensors(model, [n for n in names if n != "input"]).SerializeToString())
    values = dict(zip([o.name for o in probe.get_outputs()], probe.run(None, {"input": x})))
    values["input"] = x
    amax = {n: float(np.abs(values[n]).max()) for n in names}
    q = insert_qdq(model, placement, amax)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})[0]
    out = ort.InferenceSession(q.SerializeToString()).run(None, {"input": x})[0]
    snr = 10 * np.log10((ref**2).sum() / ((ref - out) ** 2).sum())
    assert snr > 25, snr
    assert not np.array_equal(ref, out)  # it really is quantized


def test_opset_11_model_is_upgraded_for_per_channel():
    model = normalize_model(residual_conv_net(opset=11))
    assert model.opset_import[0].version >= 13
    q = insert_qdq(model, plan_placement(model), {t: 3.0 for t in ("input", "r1", "r2", "r3", "pool")})
    ort.InferenceSession(q.SerializeToString())  # loads: per-channel axis is valid at this opset


def test_float16_model_gets_float16_scales():
    from onnx import helper

    # input fp16 [1,2] -> Gemm(W fp16 [3,2], transB) -> out fp16 [1,3]
    w = numpy_helper.from_array(np.ones((3, 2), np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="g", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 3])], initializer=[w])
    model = normalize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    q = insert_qdq(model, plan_placement(model), {"x": 1.0})
    assert _inits(q)["x_scale"].dtype == np.float16 and _inits(q)["w_scale"].dtype == np.float16
