"""Model loading, inspection, shapes and normalisation."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_models import residual_conv_net, save

from trtq.errors import TrtqError
from trtq.model import (
    default_opset,
    inspect_model,
    load_model,
    normalize_model,
    parse_shapes,
    resolve_input_shapes,
)


def test_inspect_reports_io_ops_and_quantizable(tmp_path):
    path = save(residual_conv_net(batch="N"), tmp_path / "m.onnx")
    info = inspect_model(path)
    assert info.opset == 17
    assert info.inputs[0].name == "input" and info.inputs[0].shape == ("N", 3, 16, 16) and info.inputs[0].is_dynamic
    assert info.op_counts["Conv"] == 4 and info.op_counts["Add"] == 1
    assert info.quantizable_nodes == ("conv1", "conv2", "conv3", "conv_head")
    assert len(info.sha256) == 64


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(TrtqError, match="does not exist"):
        load_model(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(TrtqError, match=f"{bad} is not a readable ONNX model"):
        load_model(bad)


def test_parse_shapes_trtexec_style():
    assert parse_shapes("images:1x3x640x640,mask:1x640") == {"images": (1, 3, 640, 640), "mask": (1, 640)}
    assert parse_shapes(["a::b:2x3"]) == {"a::b": (2, 3)}
    with pytest.raises(TrtqError, match="name:AxBxC"):
        parse_shapes("images=1x3")


def test_dynamic_batch_defaults_to_one_other_dynamic_dims_need_shape(tmp_path):
    spec = inspect_model(save(residual_conv_net(batch="N"), tmp_path / "m.onnx")).inputs
    assert resolve_input_shapes(spec) == {"input": (1, 3, 16, 16)}
    assert resolve_input_shapes(spec, {"input": (4, 3, 16, 16)}) == {"input": (4, 3, 16, 16)}
    with pytest.raises(TrtqError, match="fixes it at 3"):
        resolve_input_shapes(spec, {"input": (1, 4, 16, 16)})
    with pytest.raises(TrtqError, match="rank 2, expected rank 4"):
        resolve_input_shapes(spec, {"input": (1, 3)})
    with pytest.raises(TrtqError, match="model's inputs are"):
        resolve_input_shapes(spec, {"images": (1, 3, 16, 16)})
    model = residual_conv_net()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    from trtq.model import graph_inputs

    with pytest.raises(TrtqError, match=r"\(1x3xHx16\) has dynamic dims and no --shape was given"):
        resolve_input_shapes(graph_inputs(model))


def test_normalize_names_nodes_and_folds_constants():
    model = residual_conv_net()
    model.graph.node[1].name = ""
    const = onnx.helper.make_node("Constant", [], ["w1c"], value=model.graph.initializer[0])
    model.graph.node.insert(0, const)
    model.graph.node[1].input[1] = "w1c"
    normalized = normalize_model(model)
    assert all(n.name for n in normalized.graph.node)
    assert "Constant" not in {n.op_type for n in normalized.graph.node}
    assert "w1c" in {i.name for i in normalized.graph.initializer}


def _big_weights_net() -> onnx.ModelProto:
    """residual_conv_net plus one initializer above the 4 KiB streaming threshold (unused by any node)."""
    import numpy as np
    from onnx import numpy_helper

    model = residual_conv_net()
    big = np.random.default_rng(9).standard_normal((64, 64)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(big, "unused_big"))
    return model


def test_serialized_chunks_parse_to_the_same_model():
    """Streamed pieces concatenate to a model with the same graph and every initializer's bytes."""
    from trtq.model import serialized_chunks, split_initializers

    model = normalize_model(_big_weights_net())
    _, large = split_initializers(model)
    assert [init.name for init in large] == ["unused_big"]  # at least one initializer is streamed
    chunks = list(serialized_chunks(model))
    assert len(chunks) == 1 + len(large)
    parsed = onnx.load_from_string(b"".join(chunks))
    assert parsed.graph.node == model.graph.node and parsed.graph.input == model.graph.input
    assert parsed.opset_import == model.opset_import and parsed.ir_version == model.ir_version
    assert {i.name: i.SerializeToString() for i in parsed.graph.initializer} == {
        i.name: i.SerializeToString() for i in model.graph.initializer}
    onnx.checker.check_model(parsed)


def test_check_structure_catches_a_dangling_input_without_copying_weights():
    from trtq.model import check_structure

    model = normalize_model(_big_weights_net())
    check_structure(model)
    model.graph.node[1].input[0] = "nowhere"
    with pytest.raises(onnx.checker.ValidationError, match="nowhere"):
        check_structure(model)



def _constant_heavy_chain(n: int = 40) -> onnx.ModelProto:
    """x -> [Constant c_i; Add(x_i, c_i) named /add_i/Add] x n -> y, as torch's legacy exporter writes.

    Every second node is a Constant that normalisation folds into an initializer.
    """
    nodes, previous = [], "x"
    for i in range(n):
        value = numpy_helper.from_array(np.full((1,), float(i), np.float32), f"c{i}")
        nodes.append(helper.make_node("Constant", [], [f"c{i}"], name=f"/c{i}/Constant", value=value))
        nodes.append(helper.make_node("Add", [previous, f"c{i}"], [f"x{i}"], name=f"/add{i}/Add"))
        previous = f"x{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_normalized_node_names_match_the_normalized_model_on_constant_heavy_graphs():
    # Regression: nodes were identified by id() of protobuf wrappers, which upb reuses once freed,
    # so unrelated nodes collided with folded Constants and names went missing (KeyError '/fc/Gemm').
    from trtq.model import normalized_node_names

    model = _constant_heavy_chain()
    names = normalized_node_names(model)
    normalized = normalize_model(model)
    assert list(names) == [node.name for node in normalized.graph.node]
    assert list(names) == [f"/add{i}/Add" for i in range(40)]
    assert all(names[name].name == name for name in names)


def test_missing_shape_error_names_every_input_in_the_commands_words():
    from trtq.model import TensorSpec, requested_shapes

    tokens = [TensorSpec(n, ("batch", "seq"), "int64") for n in ("input_ids", "attention_mask", "token_type_ids")]
    with pytest.raises(TrtqError) as info:
        resolve_input_shapes(tokens, purpose="compare")
    assert info.value.message == ("Inputs 'input_ids' (batchxseq), 'attention_mask' (batchxseq) and 'token_type_ids' "
                                  "(batchxseq) have dynamic dims and no --shape was given.")
    assert info.value.hint.startswith("pass --shape input_ids:1xseq --shape attention_mask:1xseq "
                                      "--shape token_type_ids:1xseq, with seq replaced by the size to compare at")
    with pytest.raises(TrtqError, match="--shape token_type_ids:1xseq, with seq replaced by the size to calibrate at"):
        resolve_input_shapes(tokens, {"input_ids": (1, 8)})
    # --shape on one input sets the batch of the others; their open dims stay open for the data
    assert requested_shapes(tokens, {"input_ids": (4, 8)}) == {
        "input_ids": (4, 8), "attention_mask": (4, None), "token_type_ids": (4, None)}


def _opset11_unnamed_softmax() -> onnx.ModelProto:
    """An opset-11 graph of unnamed nodes whose upgrade to opset 13 inserts nodes (Softmax's adapter):

        x [1,2,3,4] -> Conv 1x1 (2->2, weight in a Constant node) -> Softmax (axis 1, opset-11 semantics) -> y
    """
    weight = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Constant", [], ["w"], value=weight),
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Softmax", ["c"], ["y"], axis=1),
    ]
    graph = helper.make_graph(nodes, "softmax11", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    return model


def test_normalized_node_names_survive_the_opset_upgrade():
    # Regression: normalize_model named unnamed nodes after onnx's version converter had inserted its own
    # (Flatten/Reshape around an opset-11 Softmax), so the names shifted away from normalized_node_names
    # and `quantize --exclude-nodes` died with KeyError 'Flatten_257' on PaddleOCR's classifier.
    from trtq.model import normalized_node_names

    model = _opset11_unnamed_softmax()
    names = normalized_node_names(model)
    assert list(names) == ["Conv_0", "Softmax_1"]
    normalized = normalize_model(model)
    ops = {node.name: node.op_type for node in normalized.graph.node}
    assert {name: ops.get(name) for name in names} == {"Conv_0": "Conv", "Softmax_1": "Softmax"}
    assert len(ops) == len(normalized.graph.node) > 2  # the converter's nodes have unique names of their own
    assert all(ops)


def test_inspect_counts_parameters_in_constant_nodes(tmp_path):
    # paddle2onnx keeps weights in Constant nodes: inspect printed "0 parameters" for them
    path = tmp_path / "constants.onnx"
    onnx.save(_opset11_unnamed_softmax(), str(path))
    info = inspect_model(path)
    assert (info.num_parameters, info.constant_parameters) == (4, 4)
    assert info.quantizable_nodes == ("Conv_0",)  # the names --exclude-nodes matches


def test_question_mark_dims_are_unknown_not_a_shared_name():
    # paddle2onnx writes dim_param "?" for every dynamic dim; read as a name, H and W had to be equal
    from trtq.model import tensor_spec

    vi = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["?", 3, "?", "?"])
    assert tensor_spec(vi).shape == (None, 3, None, None)
    assert tensor_spec(vi).shape_str() == "?x3x?x?"


def test_version_conversion_without_the_weights_gives_the_same_model():
    # opset 11: x -> Conv(w: 64x64x3x3, 147 KB) -> Split(axis 1, split attr) -> Squeeze(axes attr) ...
    # the 11 -> 13 adapters turn Split's and Squeeze's attributes into inputs; the weight must come back
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, version_converter

    from trtq.model.normalize import _convert_version_weightless

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Split", ["c"], ["a", "b"], axis=1, split=[32, 32]),
        helper.make_node("ReduceSum", ["a"], ["s"], axes=[2, 3], keepdims=1),
        helper.make_node("Squeeze", ["s"], ["y"], axes=[2, 3]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 32, 8, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    whole = version_converter.convert_version(model, 13)
    light = _convert_version_weightless(model, 13, version_converter.convert_version)
    assert light.SerializeToString(deterministic=True) == whole.SerializeToString(deterministic=True)
    split = next(n for n in light.graph.node if n.op_type == "Split")
    assert len(split.input) == 2 and [a.name for a in split.attribute] == ["axis"]  # sizes are an input now
    assert numpy_helper.to_array(next(i for i in light.graph.initializer if i.name == "w")).shape == (64, 64, 3, 3)


def _function_model() -> onnx.ModelProto:
    """Two calls of a local function, as onnxscript and torch's `export_modules_as_functions` write them:

        x [N,3,8,8] -> block1 = local.ConvRelu(Conv 3x3 3->4, Relu) -> block2 = local.ConvRelu(4->4)
          -> ReduceMean (H,W) -> fc (MatMul 4->2) -> y [N,2]
    """
    body = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    function = helper.make_function("local", "ConvRelu", ["x", "w", "b"], ["y"], body,
                                    opset_imports=[helper.make_opsetid("", 18)])
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w1", (4, 3, 3, 3)), ("b1", (4,)), ("w2", (4, 4, 3, 3)), ("b2", (4,)), ("fc", (4, 2)))]
    inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
    nodes = [
        helper.make_node("ConvRelu", ["x", "w1", "b1"], ["h1"], domain="local", name="block1"),
        helper.make_node("ConvRelu", ["h1", "w2", "b2"], ["h2"], domain="local", name="block2"),
        helper.make_node("ReduceMean", ["h2", "axes"], ["m"], name="mean", keepdims=0),
        helper.make_node("MatMul", ["m", "fc"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(nodes, "functions", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
                              functions=[function])
    model.ir_version = 9
    return model


def test_local_functions_are_inlined_so_their_layers_are_quantizable(tmp_path):
    # The Convs inside the function were invisible to the placement, and raising the opset (FP8 needs 19)
    # dropped the functions, so onnxruntime could not load the model ("local:ConvRelu is not a registered op").
    from trtq import api
    from trtq.model import normalized_node_names

    model = _function_model()
    normalized = normalize_model(model, min_opset=19)
    assert not normalized.functions and default_opset(normalized) == 19
    assert [n.op_type for n in normalized.graph.node] == ["Conv", "Relu", "Conv", "Relu", "ReduceMean", "MatMul"]
    assert list(normalized_node_names(model)) == [node.name for node in normalized.graph.node]
    path = tmp_path / "functions.onnx"
    onnx.save(model, str(path))
    assert inspect_model(path).quantizable_nodes == ("Conv_0", "Conv_2", "fc")
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32))
    for precision in ("int8", "fp8"):
        result = api.quantize(path, str(data), options=api.QuantizeOptions(output_dir=str(tmp_path), precision=precision,
                                                                           method="max"), progress=False)
        written = onnx.load(result.onnx_path)
        dq = {o for n in written.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        int8_convs = {n.name for n in written.graph.node if n.op_type == "Conv" and n.input[0] in dq}
        assert int8_convs == ({"Conv_0", "Conv_2"} if precision == "int8" else set())  # FP8 leaves convs this small out
        session = ort.InferenceSession(result.onnx_path, providers=["CPUExecutionProvider"])
        assert np.isfinite(session.run(None, {"x": np.load(data)})[0]).all()


def test_placeholder_dims_shared_by_several_dims_get_names_of_their_own():
    """paddle2onnx names every dynamic dim '?', and TensorRT reads dims of one name as one dim (batch = H = W):
    such names are replaced by `<input>_dim<axis>`; meaningful shared names (a batch 'N' on two inputs) stay."""
    from trtq.model import distinct_placeholder_dims

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "m"], ["y"], name="add")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "?", "?"]),
         helper.make_tensor_value_info("m", TensorProto.FLOAT, ["N", 1, "?", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "?", "?"])])
    model = helper.make_model(graph)
    note = distinct_placeholder_dims(model)
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    assert dims == [["N", 3, "x_dim2", "x_dim3"], ["N", 1, "m_dim2", 1]]
    assert note == ("3 dynamic input dims shared the placeholder name '?', which TensorRT reads as one dim; renamed "
                    "x_dim2, x_dim3, m_dim2")
    assert distinct_placeholder_dims(model) is None  # nothing left to rename
    single = helper.make_model(helper.make_graph([], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                        [1, "?"])], []))
    assert distinct_placeholder_dims(single) is None  # one '?' alone is read as one dim anyway
