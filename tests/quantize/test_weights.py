"""FP8 weight ranges judged by the layer's output error, and bias correction (trtq.quantize.weights)."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq import api
from trtq.calibrate.grids import FP8_E4M3
from trtq.errors import TrtqError
from trtq.quantize import plan_placement
from trtq.quantize.weights import (
    apply_weight_ranges,
    choose_weight_ranges,
    weight_layers,
)

K, N = 32, 16


def _model(seed=0):
    #   x [B, 8, K] -> MatMul(w [K, N]) -> Add(b [N]) -> y [B, 8, N]
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((K, N)) * np.exp(rng.standard_normal((K, 1)))).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Add", ["h", "b"], ["y"], name="add")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8, N])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def _rows(n, seed=1):
    rng = np.random.default_rng(seed)
    # channels with a common offset (a mean the bias correction can absorb) and unequal scales
    return (rng.standard_normal((n, K)) * np.linspace(0.2, 3.0, K) + np.linspace(-2.0, 2.0, K)).astype(np.float32)


def _weights(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_chosen_ranges_cut_the_output_error_and_the_bias_takes_its_mean():
    model = _model()
    placement = plan_placement(model, grid=FP8_E4M3)
    assert weight_layers(model, placement) == {"x": [("mm", "w", 1)]}
    rows, held = _rows(2048), _rows(2048, seed=2)
    choices = choose_weight_ranges(model, placement, {"x": rows}, FP8_E4M3)
    choice = choices["w"]
    w, b = _weights(model)["w"], _weights(model)["b"]
    top = np.abs(w).max(axis=0)
    assert choice.bias == "b" and choice.axis == 1 and np.all(choice.amax <= top) and np.any(choice.amax < top)
    changed = _weights(apply_weight_ranges(model, choices, FP8_E4M3))
    # the rounded weights are already on the grid that trtq's Q/DQ (scale = max |w| / 448) gives them
    assert np.allclose(np.abs(changed["w"]).max(axis=0), choice.amax, rtol=1e-6)
    assert np.array_equal(FP8_E4M3.fake_quantize_weight(changed["w"], axis=1), changed["w"])
    exact = held @ w + b
    plain = held @ FP8_E4M3.fake_quantize_weight(w, axis=1) + b
    tuned = held @ changed["w"] + changed["b"]
    assert np.square(tuned - exact).sum() < 0.8 * np.square(plain - exact).sum()  # held-out rows, not the judged ones
    assert np.abs((tuned - exact).mean(axis=0)).max() < 0.2 * np.abs((plain - exact).mean(axis=0)).max()


def test_fp8_quantize_writes_and_reuses_the_weight_ranges(tmp_path):
    model = _model()
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", _rows(512).reshape(64, 8, K))
    result = api.quantize(tmp_path / "m.onnx", tmp_path / "calib.npy", progress=False,
                          options=api.QuantizeOptions(precision="fp8", output_dir=str(tmp_path / "a")))
    from trtq.formats.ranges import RangesTable

    table = RangesTable.load(result.ranges_path)
    assert set(table.weights) == {"w"} and table.weights["w"]["bias"] == "b"
    summary = result.weight_ranges  # typed in the result, a plain object in its JSON
    assert summary is not None and summary.layers == 1 and summary.bias_corrected == 1 and summary.mean_gain_db > 0
    assert json.loads(json.dumps(result.to_dict()))["weight_ranges"] == {
        "layers": 1, "mean_gain_db": summary.mean_gain_db, "bias_corrected": 1}
    again = api.quantize(tmp_path / "m.onnx", ranges=result.ranges_path, progress=False,
                         options=api.QuantizeOptions(precision="fp8", output_dir=str(tmp_path / "b")))
    first, second = _weights(onnx.load(result.onnx_path)), _weights(onnx.load(again.onnx_path))
    assert np.array_equal(first["w"], second["w"]) and np.array_equal(first["b"], second["b"])
    assert not np.array_equal(first["w"], _weights(model)["w"])
    plain = api.quantize(tmp_path / "m.onnx", tmp_path / "calib.npy", progress=False, options=api.QuantizeOptions(
        precision="fp8", weight_ranges="max", output_dir=str(tmp_path / "c")))
    assert np.array_equal(_weights(onnx.load(plain.onnx_path))["w"], _weights(model)["w"])
    assert not RangesTable.load(plain.ranges_path).weights
    feeds = {"x": _rows(256, seed=3).reshape(32, 8, K)}
    exact = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]

    def error(path):
        out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        return float(np.square(out - exact).sum())

    assert error(result.onnx_path) < error(plain.onnx_path)


def test_mse_weight_ranges_are_fp8_only():
    with pytest.raises(TrtqError, match="fp8 only"):
        api.QuantizeOptions(weight_ranges="mse")
    with pytest.raises(TrtqError, match="not max or mse"):
        api.QuantizeOptions(precision="fp8", weight_ranges="entropy")
