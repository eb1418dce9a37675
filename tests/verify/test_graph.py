"""The quantized layers and Q/DQ pairs are read from any Q/DQ graph, named as TensorRT's parser names them."""

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtq.verify.graph import analyze


def _qdq(tensor: str, scale: str, zero: str, prefix: str, axis: int | None = None) -> list[onnx.NodeProto]:
    kw = {} if axis is None else {"axis": axis}
    return [helper.make_node("QuantizeLinear", [tensor, scale, zero], [f"{tensor}_q"], name=f"{prefix}_Q", **kw),
            helper.make_node("DequantizeLinear", [f"{tensor}_q", scale, zero], [f"{tensor}_dq"], name=f"{prefix}_DQ",
                             **kw)]


def mixed_model() -> onnx.ModelProto:
    """x -Q/DQ-> conv (W -Q/DQ, per channel) -> relu -> r
    r -Q/DQ-> Transpose -> mm1 <- DQ(int8 constant B)              (DQ through a shape op; a pre-quantized weight)
    r -----------------> mm2 <- Q/DQ(W2) -> Cast(fp16)              (weight only: input 0 stays float)
    r -Q/DQ(fp8)-------> (unnamed Gemm) <- Q/DQ(fp8, W3)            (FP8, no node name)
    """
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"), numpy_helper.from_array(np.zeros(4, np.int8), "wz"),
        numpy_helper.from_array(rng.integers(-5, 5, (8, 8)).astype(np.int8), "B"),
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W2"),
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W3"),
        numpy_helper.from_array(np.zeros((), ml_dtypes.float8_e4m3fn), "z8"),
    ]
    nodes = [
        *_qdq("x", "s", "z", "x"), *_qdq("W", "ws", "wz", "W", axis=0),
        helper.make_node("Conv", ["x_dq", "W_dq"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r4"], name="relu"),
        helper.make_node("Reshape", ["r4", "shape"], ["r"], name="flat"),
        *_qdq("r", "s", "z", "r"),
        helper.make_node("Transpose", ["r_dq"], ["rt"], name="t", perm=[1, 0]),
        helper.make_node("DequantizeLinear", ["B", "s", "z"], ["B_dq"], name="B_DQ"),
        helper.make_node("MatMul", ["rt", "B_dq"], ["m1"], name="mm1"),
        *_qdq("W2", "s", "z", "W2"),
        helper.make_node("Cast", ["W2_dq"], ["W2_h"], name="W2_cast", to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["r", "W2_h"], ["m2"], name="mm2"),
        helper.make_node("QuantizeLinear", ["r", "s", "z8"], ["r8_q"], name="r8_Q"),
        helper.make_node("DequantizeLinear", ["r8_q", "s", "z8"], ["r8_dq"], name="r8_DQ"),
        *_qdq("W3", "s", "z8", "W3"),
        helper.make_node("Gemm", ["r8_dq", "W3_dq"], ["g"]),
    ]
    inits.append(numpy_helper.from_array(np.array([8, 8], np.int64), "shape"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 4])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("m1", "m2", "g")],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_quantized_layers_found_from_the_graph():
    graph = analyze(mixed_model())
    nodes = {n.layer: n for n in graph.nodes}
    assert set(nodes) == {"conv", "mm1", "mm2", "node_of_g"}
    assert nodes["conv"].quantized_inputs == (0, 1) and nodes["conv"].dequantize == ("x_DQ", "W_DQ")
    assert nodes["mm1"].quantized_inputs == (0, 1)  # through the Transpose, and a DQ of an int8 constant
    assert nodes["mm2"].quantized_inputs == (1,) and nodes["mm2"].unquantized_inputs == (0,)
    assert nodes["node_of_g"].precision == "fp8" and nodes["conv"].precision == "int8"
    assert graph.precisions == ("fp8", "int8")


def test_pairs_with_kind_precision_and_readers():
    pairs = {p.quantize or p.dequantize[0]: p for p in analyze(mixed_model()).pairs}
    assert set(pairs) == {"x_Q", "W_Q", "r_Q", "B_DQ", "W2_Q", "r8_Q", "W3_Q"}
    assert pairs["W_Q"].kind == "weight" and pairs["x_Q"].kind == "activation"
    assert pairs["B_DQ"].quantize is None and pairs["B_DQ"].tensor == "B" and pairs["B_DQ"].kind == "weight"
    assert pairs["r_Q"].tensor == "r" and pairs["r_Q"].consumers == ("mm1",)  # read through the Transpose
    assert pairs["W2_Q"].consumers == ("mm2",)  # read through the Cast to FP16
    assert pairs["W3_Q"].precision == "fp8" and pairs["W3_Q"].consumers == ("node_of_g",)
    assert pairs["r8_Q"].precision == "fp8" and pairs["r8_Q"].consumers == ("node_of_g",)
    assert pairs["x_Q"].precision == "int8" and pairs["x_Q"].dequantize == ("x_DQ",)


def test_a_model_without_qdq_has_nothing_quantized():
    graph = analyze(helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"], name="mm")], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 2]) for n in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, 2])])))
    assert graph.nodes == () and graph.pairs == () and graph.op_types == {"mm": "MatMul"}
