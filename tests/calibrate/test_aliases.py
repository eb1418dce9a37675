"""Reshaped, transposed and copied tensors are observed once and get their source's statistics."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtq.calibrate.aliases import value_roots
from trtq.calibrate.runner import run_calibration
from trtq.data.sources import open_dataset
from trtq.model import graph_inputs, normalize_model


def _chain() -> onnx.ModelProto:
    """input [2,4,3,3] -> Relu = r -> Identity = i -> Transpose = t -> Reshape [2,36] = s -> Abs = a --> Add = output
                                               initializer w -> Identity = wi ---------------------^

    i, t and s hold r's elements; a does not (Abs changes values); wi comes from an initializer."""
    nodes = [
        helper.make_node("Relu", ["input"], ["r"]),
        helper.make_node("Identity", ["r"], ["i"]),
        helper.make_node("Transpose", ["i"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["s"]),
        helper.make_node("Abs", ["s"], ["a"]),
        helper.make_node("Identity", ["w"], ["wi"]),
        helper.make_node("Add", ["a", "wi"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 4, 3, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2, 36])],
        [numpy_helper.from_array(np.array([2, 36], np.int64), "shape"),
         numpy_helper.from_array(np.linspace(-1, 1, 36, dtype=np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every onnxruntime >= 1.17 reads, whatever onnx made this
    return model


def test_value_roots_follow_rearranging_chains():
    roots = value_roots(_chain(), ["r", "i", "t", "s", "a", "wi", "input", "output"])
    assert roots == {"r": "r", "i": "r", "t": "r", "s": "r", "a": "a", "wi": "wi", "input": "input",
                     "output": "output"}


def test_aliases_get_their_roots_statistics(tmp_path):
    model = normalize_model(_chain())
    x = np.random.default_rng(0).standard_normal((6, 4, 3, 3)).astype(np.float32) * 3
    np.save(tmp_path / "x.npy", x)
    inputs = graph_inputs(model)
    dataset = open_dataset(tmp_path / "x.npy", inputs, {"input": (2, 4, 3, 3)})
    result = run_calibration(model, ["r", "i", "t", "s", "a"], dataset, model_sha256="0" * 64, batch_size=2,
                             progress=False)
    relu = np.maximum(x, 0)
    for name in ("r", "i", "t", "s"):
        stats = result.stats[name]
        assert stats.name == name and stats.count == relu.size and stats.amax == float(relu.max())
        assert np.array_equal(stats.hist, result.stats["r"].hist)
        assert result.ranges.amax[name] == result.ranges.amax["r"]
    assert result.stats["a"].count == relu.size and result.stats["a"].name == "a"
