"""Discrete choices pinned to the original's: --smooth's equivalence check on models that pick queries
by TopK/ArgMax (RT-DETR), where float rounding alone flips near-tied scores and changes everything after."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq.errors import TrtqError
from trtq.quantize.selections import pin_selections
from trtq.quantize.smooth import SmoothResult, check_equivalent

BOXES = np.arange(16, dtype=np.float32).reshape(4, 4) * 10.0
TIED = np.array([[1.0, 1.0, 0.5, 0.2]], np.float32)
"""Scores whose first two queries tie exactly: a 1e-6 change decides which comes first."""


def picking_model(nudge: float = 0.0) -> onnx.ModelProto:
    """x [1,4] -> Add(nudge on query 1) -> scores -> TopK(k=4) -> values [1,4], indices [1,4]
                                            -> ArgMax -> best [1]
       indices -> Gather(boxes [4,4], axis 0) -> picked [1,4,4] (rows far apart: a flip changes them wholesale)
    `nudge` stands for float rounding in a transformed copy."""
    nodes = [
        helper.make_node("Add", ["x", "nudge"], ["scores"], name="add"),
        helper.make_node("TopK", ["scores", "k"], ["values", "indices"], name="topk", axis=-1),
        helper.make_node("ArgMax", ["scores"], ["best"], name="argmax", axis=1, keepdims=0),
        helper.make_node("Gather", ["boxes", "indices"], ["picked"], name="gather", axis=0),
    ]
    inits = [numpy_helper.from_array(np.array([[0.0, nudge, 0.0, 0.0]], np.float32), "nudge"),
             numpy_helper.from_array(np.array([4], np.int64), "k"), numpy_helper.from_array(BOXES, "boxes")]
    graph = helper.make_graph(nodes, "pick", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("values", TensorProto.FLOAT, [1, 4]),
                               helper.make_tensor_value_info("picked", TensorProto.FLOAT, [1, 4, 4]),
                               helper.make_tensor_value_info("best", TensorProto.INT64, [1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_pinned_model_takes_its_indices_from_inputs():
    pinned, choices = pin_selections(picking_model(1e-6))
    assert choices == ("indices", "best")
    ops = [node.op_type for node in pinned.graph.node]
    assert "TopK" not in ops and "ArgMax" not in ops and ops.count("GatherElements") == 1
    assert [i.name for i in pinned.graph.input] == ["x", "indices", "best"]
    session = ort.InferenceSession(pinned.SerializeToString(), providers=["CPUExecutionProvider"])
    values, picked, best = session.run(None, {"x": TIED, "indices": np.array([[0, 1, 2, 3]], np.int64),
                                              "best": np.array([0], np.int64)})
    np.testing.assert_allclose(values, [[1.0, 1.000001, 0.5, 0.2]], rtol=1e-7)  # gathered in the given order
    np.testing.assert_array_equal(picked[0], BOXES)
    assert best.tolist() == [0]


def test_equivalence_check_compares_under_the_originals_choices():
    """The nudged copy flips the tie (query 1 before 0): unpinned, `picked` moves by 40 of its 150 range."""
    original, nudged = picking_model(), picking_model(1e-6)
    picked = ort.InferenceSession(nudged.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["picked"], {"x": TIED})[0]
    np.testing.assert_array_equal(picked[0, :2], BOXES[[1, 0]])  # the premise: a rounding-sized change flips it
    result = check_equivalent(original, SmoothResult(nudged, 0.5, ()), [{"x": TIED}])
    assert result.deviation < 1e-5 and result.checked_samples == 1
    moved = picking_model(1e-6)
    moved.graph.initializer[2].CopyFrom(numpy_helper.from_array(BOXES + 1.0, "boxes"))  # a real change after the choice
    with pytest.raises(TrtqError, match="changed its FP32 output 'picked'"):
        check_equivalent(original, SmoothResult(moved, 0.5, ()), [{"x": TIED}])
