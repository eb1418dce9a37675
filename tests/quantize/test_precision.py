"""--high-precision fp16: FP16 where safe, FP32 where ranges overflow or score heads need it; runs in onnxruntime."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_models import residual_conv_net

from trtq.errors import TrtqError
from trtq.model import default_opset, normalize_model, tensor_types
from trtq.quantize import insert_qdq, plan_placement
from trtq.quantize.precision import FP16_MAX, apply_high_precision, convert_to_fp16, final_score_nodes

F16, F32 = TensorProto.FLOAT16, TensorProto.FLOAT


def _run(model, feed):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _snr(ref, out):
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref.astype(np.float64) - out) ** 2))


def overflow_net(up: float = 300.0):
    """A tensor beyond FP16's range (for inputs of ~1000) between two well-behaved ones.

    x [2,8] -> relu -> r -> Mul (x up) -> big -> Mul (x 1/up) -> back -> Add (+1) -> y [2,8]
    """
    inits = [
        numpy_helper.from_array(np.array(up, np.float32), "up"),
        numpy_helper.from_array(np.array(1 / up, np.float32), "down"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "up"], ["big"], name="scale_up"),
        helper.make_node("Mul", ["big", "down"], ["back"], name="scale_down"),
        helper.make_node("Add", ["back", "one"], ["y"], name="add_one"),
    ]
    graph = helper.make_graph(
        nodes,
        "overflow",
        [helper.make_tensor_value_info("x", F32, [2, 8])],
        [helper.make_tensor_value_info("y", F32, [2, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return normalize_model(model)


def test_overflowing_tensor_stays_fp32():
    model = overflow_net()
    x = (np.abs(np.random.default_rng(0).standard_normal((2, 8))) * 500).astype(np.float32)
    amax = {"r": float(x.max()), "big": float(x.max()) * 300, "back": float(x.max()), "y": float(x.max()) + 1}
    assert amax["r"] < FP16_MAX / 2 < FP16_MAX < amax["big"]
    result = convert_to_fp16(model, amax)
    types = tensor_types(result.model)
    assert types["big"] == F32  # 300 * |x| would be inf in FP16
    kept = {k.node: k.reason for k in result.kept_fp32}
    assert set(kept) == {"scale_up", "scale_down"} and "'big' reaches" in kept["scale_up"]
    assert set(result.fp16_nodes) == {"relu", "add_one"}
    assert types["r"] == F16 and types["x"] == F32 and types["y"] == F32  # graph IO stays float32
    (y,) = _run(result.model, {"x": x})
    assert np.isfinite(y).all() and np.allclose(y, x + 1, rtol=2e-3)
    unprotected = convert_to_fp16(model, {})  # without observed ranges nothing says `big` overflows
    assert tensor_types(unprotected.model)["big"] == F16


def test_headroom_keeps_fp32_below_the_hard_limit():
    model = overflow_net(up=1.0)
    near = {"big": FP16_MAX * 0.75}  # fits FP16, but not with the default 2x headroom
    assert tensor_types(convert_to_fp16(model, near).model)["big"] == F32
    assert tensor_types(convert_to_fp16(model, near, headroom=1.0).model)["big"] == F16


def test_final_sigmoid_and_its_input_stay_fp32_and_the_rest_runs_fp16():
    model = normalize_model(residual_conv_net())
    assert [n.name for n in final_score_nodes(model)] == ["sigmoid"]
    result = convert_to_fp16(model, {})
    kept = {k.node for k in result.kept_fp32}
    assert kept == {"sigmoid", "conv_head"}
    types = tensor_types(result.model)
    assert types["logits"] == F32 and types["r1"] == F16 and types["pool"] == F16
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    (ref,) = _run(model, {"input": x})
    (out,) = _run(result.model, {"input": x})
    assert out.dtype == np.float32 and _snr(ref, out) > 50  # FP16 rounding only


def test_qdq_model_gets_fp16_scales_at_opset_19_and_still_runs():
    model = normalize_model(residual_conv_net())
    placement = plan_placement(model)
    quantized = insert_qdq(model, placement, {t: 4.0 for t in placement.activation_tensors})
    result = apply_high_precision(quantized, "fp16", amax={})
    converted = result.model
    assert default_opset(converted) == 19 and any("opset raised" in n for n in result.notes)
    inits = {i.name: i for i in converted.graph.initializer}
    dq_scales = [inits[n.input[1]].data_type for n in converted.graph.node if n.op_type == "DequantizeLinear"]
    # conv_head stays FP32 (it feeds the final Sigmoid), so its two pairs keep float32 scales
    assert dq_scales.count(F16) == result.fp16_qdq_pairs == len(placement.targets) - 2
    assert dq_scales.count(F32) == 2
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    (int8,) = _run(quantized, {"input": x})
    (int8_fp16,) = _run(converted, {"input": x})
    assert _snr(int8, int8_fp16) > 30  # FP16 changes rounding at a few Q/DQ boundaries, no more


def mean_head_net():
    """A legacy-export-style head: ReduceMean with an `axes` attribute, which becomes an input at opset 18.

    input [1,4,6,6] -> conv (4->4, 3x3) -> relu -> ReduceMean (axes 2,3) -> gemm (4->3) -> logits [1,3]
    """
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w", (4, 4, 3, 3)), ("fc_w", (3, 4)), ("fc_b", (3,)))]
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], name="/conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="/relu/Relu"),
        helper.make_node("ReduceMean", ["r"], ["m"], name="/ReduceMean", axes=[2, 3], keepdims=0),
        helper.make_node("Gemm", ["m", "fc_w", "fc_b"], ["logits"], name="/fc/Gemm", transB=1),
    ]
    graph = helper.make_graph(nodes, "mean_head", [helper.make_tensor_value_info("input", F32, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("logits", F32, [1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return normalize_model(model)


def test_nodes_the_opset_upgrade_adds_unnamed_get_names_and_the_graph_stays_ssa():
    # Regression: raising opset 17 to 19 turns ReduceMean's axes into an unnamed Constant node; Casts meant
    # for the graph's start were keyed by the empty name and spliced after every unnamed node, so the
    # input's Cast was written twice ("'input_fp16' has been used as output names multiple times").
    model = mean_head_net()
    placement = plan_placement(model)
    quantized = insert_qdq(model, placement, {t: 4.0 for t in placement.activation_tensors})
    result = apply_high_precision(quantized, "fp16", amax={})
    names = [node.name for node in result.model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert {k.node for k in result.kept_fp32} <= set(names)
    assert "/ReduceMean" in result.fp16_nodes
    x = np.random.default_rng(1).standard_normal((1, 4, 6, 6)).astype(np.float32)
    (int8,) = _run(quantized, {"input": x})
    (int8_fp16,) = _run(result.model, {"input": x})
    assert _snr(int8, int8_fp16) > 30


def test_schema_fixed_float_inputs_stay_float32():
    """Resize's `scales` input is tensor(float) in every opset: it must not become FP16."""
    inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["up"], name="resize", mode="nearest"),
        helper.make_node("Relu", ["up"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "resize",
        [helper.make_tensor_value_info("x", F32, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", F32, [1, 2, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    result = convert_to_fp16(normalize_model(model), {})
    types = tensor_types(result.model)
    assert types["scales"] == F32 and types["up"] == F16
    x = np.random.default_rng(2).standard_normal((1, 2, 4, 4)).astype(np.float32)
    (y,) = _run(result.model, {"x": x})
    assert np.allclose(y, np.maximum(x, 0).repeat(2, 2).repeat(2, 3), atol=1e-3)


def test_fp32_mode_is_a_no_op_and_unknown_modes_fail():
    model = overflow_net()
    assert apply_high_precision(model, "fp32").model is model
    with pytest.raises(TrtqError, match="'bf16' is not one of fp16, fp32"):
        apply_high_precision(model, "bf16")
    onnx.checker.check_model(convert_to_fp16(model, {}, keep_nodes={"relu"}).model)
    kept = convert_to_fp16(model, {}, keep_nodes={"relu"}).kept_fp32
    assert [(k.node, k.reason) for k in kept] == [("relu", "kept by the caller")]


def test_raising_the_opset_without_the_converter_gives_the_converters_model(monkeypatch):
    """When no op of the model changed by opset 19 (Q/DQ and Cast changed for float8 only), the opset is raised
    by declaring it, and the weights never go through onnx's C++: the FP16 model is byte for byte the one the
    version converter's route gives. A model with an op that did change (Reshape, 19) still takes the converter."""
    from accuracy_models import large_bias_net
    from onnx import version_converter
    from tiny_models import gemm_matmul_net

    from trtq.quantize import precision

    for net in (residual_conv_net(), large_bias_net()):
        model = normalize_model(net)
        placement = plan_placement(model)
        amax = {t: 4.0 for t in placement.calibrated_tensors}
        quantized = insert_qdq(model, placement, amax)
        assert precision._same_up_to(quantized, 19)
        fast = convert_to_fp16(quantized, amax)
        note = fast.notes[0]
        with monkeypatch.context() as patched:
            patched.setattr(precision, "_raise_opset", lambda m, note=note: (version_converter.convert_version(m, 19), note))
            slow = convert_to_fp16(quantized, amax)
        assert fast.model.SerializeToString() == slow.model.SerializeToString()
    assert not precision._same_up_to(normalize_model(gemm_matmul_net()), 19)


def test_an_fp32_pair_before_an_fp16_conv_gets_a_cast():
    """A pair whose scale is below FP16's smallest normal stays FP32 while the conv reading it runs FP16:
    the dequantized value needs a Cast to FP16, though trtq's Q/DQ outputs carry no value_info (the
    missing Cast made TensorRT reject a dynamo-exported YOLO: conv input Float, kernel Half). Opset 19,
    so no opset upgrade re-infers the types on the way."""
    model = normalize_model(residual_conv_net(opset=19))
    placement = plan_placement(model)
    amax = {t: 4.0 for t in placement.activation_tensors}
    amax["r2"] = 1e-6  # scale 8e-9 < 2**-14: this pair keeps FP32 scales
    quantized = insert_qdq(model, placement, amax)
    converted = apply_high_precision(quantized, "fp16", amax={}).model
    onnx.checker.check_model(converted, full_check=True)  # Conv's X and W share one type
    conv3 = next(n for n in converted.graph.node if n.name == "conv3")
    types = tensor_types(onnx.shape_inference.infer_shapes(converted))
    assert types[conv3.input[0]] == types[conv3.input[1]] == TensorProto.FLOAT16


def test_constant_of_shape_in_fp16_writes_fp16_values():
    """ConstantOfShape's dtype comes from its `value` attribute: converted to FP16 with the node, or the
    MatMul after it reads float32 beside FP16 weights (DETR's zero queries, torch legacy export).

        x [2,4] -> Shape -> ConstantOfShape(0.5) -> c [2,4] -> Add(x) -> s -> MatMul(w [4,3]) -> y [2,3]
    """
    w = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("ConstantOfShape", ["shape"], ["c"], name="fill",
                         value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Add", ["c", "x"], ["s"], name="add"),
        helper.make_node("MatMul", ["s", "w"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(nodes, "fill", [helper.make_tensor_value_info("x", F32, [2, 4])],
                              [helper.make_tensor_value_info("y", F32, [2, 3])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    result = convert_to_fp16(normalize_model(model), {})
    onnx.checker.check_model(result.model, full_check=True)
    assert tensor_types(result.model)["c"] == F16
    x = np.random.default_rng(4).standard_normal((2, 4)).astype(np.float32)
    (y,) = _run(result.model, {"x": x})
    np.testing.assert_allclose(y, (x + 0.5) @ w, atol=2e-2)


def test_a_layer_reading_two_pairs_gets_one_scale_type():
    """Attention's MatMul of two activations: one pair's scale is below FP16's normal range, so that pair stays
    FP32, and the other must too: TensorRT refuses a MatMul whose operand scales differ in type ("type mismatch
    between matmul operand scales", seen on transformers' RT-DETR).

        a [2,8,8] -> Relu -> ra --+
        b [2,8,8] -> Relu -> rb --+-> MatMul -> y [2,8,8]
    """
    nodes = [helper.make_node("Relu", ["a"], ["ra"], name="relu_a"), helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
             helper.make_node("MatMul", ["ra", "rb"], ["y"], name="matmul")]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info(n, F32, [2, 8, 8]) for n in "ab"],
                              [helper.make_tensor_value_info("y", F32, [2, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = normalize_model(model)
    placement = plan_placement(model)
    assert set(placement.activation_tensors) == {"ra", "rb"}
    quantized = insert_qdq(model, placement, {"ra": 4.0, "rb": 127 * 2.0**-16})  # rb's scale 2^-16 < 2^-14
    converted = apply_high_precision(quantized, "fp16", amax={}).model
    inits = {i.name: i for i in converted.graph.initializer}
    scales = {n.input[0]: inits[n.input[1]].data_type for n in converted.graph.node if n.op_type == "DequantizeLinear"}
    assert len(scales) == 2 and set(scales.values()) == {F32}


def wrongly_declared_output_net():
    """An opset-12 export whose graph output is declared [1, seq] but computed [1, 2, 2] (a torch export with
    a wrong `dynamic_axes`; onnxruntime only warns); its new shape comes from the data, so the input model
    passes strict shape inference:

    x [1,4] -> MatMul(w) -> m -------------------------------------------> Reshape -> y  (declared [1, seq])
    x -> Shape -> Gather(0) -> Unsqueeze(axes=[0]) -> Concat(., [2], [2]) -----^
    """
    inits = [numpy_helper.from_array(np.eye(4, dtype=np.float32), "w"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([2], np.int64), "two")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["g"], name="gather"),
             helper.make_node("Unsqueeze", ["g"], ["u"], axes=[0], name="unsqueeze"),
             helper.make_node("Concat", ["u", "two", "two"], ["dims"], axis=0, name="concat"),
             helper.make_node("Reshape", ["m", "dims"], ["y"], name="reshape")]
    graph = helper.make_graph(nodes, "declared", [helper.make_tensor_value_info("x", F32, [1, 4])],
                              [helper.make_tensor_value_info("y", F32, [1, "seq"])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    return model


def test_a_wrongly_declared_output_shape_does_not_stop_the_conversion():
    model = wrongly_declared_output_net()
    onnx.shape_inference.infer_shapes(model, strict_mode=True)  # the input passes the strict check
    result = convert_to_fp16(model, {"x": 1.0, "m": 1.0, "y": 1.0})
    assert result.fp16_nodes and "mm" in result.fp16_nodes
    declared = result.model.graph.output[0].type.tensor_type
    assert declared.elem_type == F32 and [d.dim_value or d.dim_param for d in declared.shape.dim] == [1, "seq"]
    x = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)
    (y,) = _run(result.model, {"x": x})
    assert y.shape == (1, 2, 2) and np.allclose(y.reshape(1, 4), x, atol=1e-3)
