"""Depthwise equalization (default for INT8, `--no-equalize` off): which convolutions it finds, the factors,
that the equalized FP32 model equals the original, and that INT8 keeps the small channels with it.

The model, as MobileNet / PP-LCNet / PicoDet blocks are built:

    x [B,4,8,8] -> Conv 1x1 (channel gains 1, 0.04, 0.3, 0.035) -> a -> Clip(0, 6) -> h
      -> depthwise Conv 3x3 (group 4, 2 filters per channel: weight [8,1,3,3]) -> d
      -> Mul by per-channel gains (1 .. 29, an unfolded BatchNormalization) -> y

h's channels span 29x; the gains after the depthwise conv make the small ones matter as much as the large.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from trtq import api
from trtq.formats.ranges import RangesTable
from trtq.model import normalize_model
from trtq.quantize import plan_placement
from trtq.quantize.smooth import DEPTHWISE_MIN_FACTOR, depthwise_factors, smooth_model, smoothing_groups

C, M = 4, 2
CHANNEL_GAINS = np.array([1.0, 0.04, 0.3, 0.035], np.float32)


def _net(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    pointwise = np.diag(CHANNEL_GAINS).reshape(C, C, 1, 1) + rng.normal(0, 1e-4, (C, C, 1, 1)).astype(np.float32)
    pointwise *= (np.abs(pointwise) > 1e-3)  # no cross-talk from the large channel into the small ones
    depthwise = rng.normal(0, 1, (C * M, 1, 3, 3)).astype(np.float32)
    gains = np.repeat(1.0 / CHANNEL_GAINS, M).reshape(1, C * M, 1, 1).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "pw", "pb"], ["a"], name="pw_conv"),
             helper.make_node("Clip", ["a", "lo", "hi"], ["h"], name="relu6"),
             helper.make_node("Conv", ["h", "dw"], ["d"], name="dw_conv", group=C, pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["d", "gains"], ["y"], name="bn")]
    inits = [numpy_helper.from_array(pointwise.astype(np.float32), "pw"),
             numpy_helper.from_array(np.full(C, 0.5, np.float32) * CHANNEL_GAINS, "pb"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"), numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
             numpy_helper.from_array(depthwise, "dw"), numpy_helper.from_array(gains, "gains")]
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", C, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", C * M, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return normalize_model(model)


def _data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(1.0, 1.0, (n, C, 8, 8)).astype(np.float32)


def _run(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _depthwise_input(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """h, the depthwise convolution's input, as the FP32 model computes it on `x`."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, None))
    return ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"]).run(["h"], {"x": x})[0]


def _snr(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10((ref**2).sum() / ((ref - out) ** 2).sum()))


def test_only_depthwise_convolutions_are_found():
    model = _net()
    placement = plan_placement(model)
    assert smoothing_groups(model, placement) == ()  # MatMul smoothing alone: nothing here
    groups = smoothing_groups(model, placement, matmuls=False, depthwise=True)
    assert [(g.tensor, g.channel_axis, [r.node for r in g.readers]) for g in groups] == [("h", 1, ["dw_conv"])]


def test_factors_scale_every_channel_to_the_largest():
    factors = depthwise_factors(np.array([4.0, 1.0, 0.0, 1e-6], np.float32))
    assert np.allclose(factors, [1.0, 0.25, 1.0, DEPTHWISE_MIN_FACTOR])  # dead: 1; tiny: floored
    assert DEPTHWISE_MIN_FACTOR == 1.0 / 32


def test_equalized_model_equals_the_original_and_spreads_the_channels():
    model = _net()
    groups = smoothing_groups(model, plan_placement(model), matmuls=False, depthwise=True)
    x = _data(4, seed=1)
    h = _depthwise_input(model, x)
    channel_max = np.abs(h).max(axis=(0, 2, 3))
    assert channel_max.max() / channel_max.min() > 20
    scale = depthwise_factors(channel_max)
    result = smooth_model(model, groups, {"h": (1.0, scale)}, None, {"h": channel_max})
    (done,) = result.tensors
    assert done.depthwise and done.folded_into is None and done.channels == C
    assert done.outliers_after is not None and done.outliers_after < 1.01  # every channel as large as the largest
    muls = [n for n in result.model.graph.node if n.op_type == "Mul" and n.output[0] == done.smoothed]
    inverse = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}[muls[0].input[1]]
    assert inverse.shape == (C, 1, 1)
    weight = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}["dw"]
    original = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "dw"))
    assert np.allclose(weight, original * np.repeat(scale, M).reshape(-1, 1, 1, 1))  # both filters of a channel
    ref = _run(model, x)
    assert np.abs(_run(result.model, x) - ref).max() <= 1e-5 * np.abs(ref).max()


def test_int8_keeps_the_small_channels_only_when_equalized(tmp_path):
    onnx.save(_net(), tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", _data(32, seed=2))
    held = _data(16, seed=3)
    ref = _run(_net(), held)
    equalized = api.quantize(tmp_path / "m.onnx", tmp_path / "calib.npy", progress=False,
                             options=api.QuantizeOptions(method="max", output_dir=str(tmp_path / "eq")))
    plain = api.quantize(tmp_path / "m.onnx", tmp_path / "calib.npy", progress=False,
                         options=api.QuantizeOptions(method="max", equalize=False, output_dir=str(tmp_path / "plain")))
    eq_snr, plain_snr = _snr(ref, _run(equalized.onnx_path, held)), _snr(ref, _run(plain.onnx_path, held))
    assert eq_snr > plain_snr + 15.0 and eq_snr > 30.0, (eq_snr, plain_snr)
    assert equalized.smoothing is not None and equalized.smoothing.equalized == 1 and plain.smoothing is None
    view = json.loads(json.dumps(equalized.to_dict()))["smoothing"]
    assert view["depthwise_equalized"] == 1 and view["alpha"] is None
    # the implicit TensorRT build reads the equalized FP32 model with the cache, whose tensors are that model's
    assert equalized.smoothed_path is not None and plain.smoothed_path is None
    table = RangesTable.load(equalized.ranges_path)
    assert set(table.smoothing) == {"h"} and "smooth" not in table.options
    again = api.quantize(tmp_path / "m.onnx", ranges=equalized.ranges_path, progress=False,
                         options=api.QuantizeOptions(output_dir=str(tmp_path / "again")))
    assert np.array_equal(_run(again.onnx_path, held), _run(equalized.onnx_path, held))
    unequalized = api.quantize(tmp_path / "m.onnx", ranges=plain.ranges_path, progress=False,
                               options=api.QuantizeOptions(output_dir=str(tmp_path / "again-plain")))
    assert unequalized.smoothing is None  # a table calibrated without equalization is reused as it was


def test_fp8_is_not_equalized(tmp_path):
    onnx.save(_net(), tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", _data(8, seed=2))
    result = api.quantize(tmp_path / "m.onnx", tmp_path / "calib.npy", progress=False,
                          options=api.QuantizeOptions(precision="fp8", output_dir=str(tmp_path / "fp8")))
    assert result.smoothing is None


def test_the_command_line_says_what_it_equalized_and_no_equalize_leaves_it(tmp_path, capsys):
    from trtq.cli import main

    onnx.save(_net(), tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", _data(8, seed=2))
    assert main(["quantize", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy"), "--quiet",
                 "--output-dir", str(tmp_path / "eq")]) == 0
    printed = capsys.readouterr().out
    assert "equalized 1 depthwise convolution inputs" in printed and "m.smoothed.onnx" in printed
    assert "smoothed 0 MatMul" not in printed  # --smooth was not asked for
    assert main(["quantize", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy"), "--quiet",
                 "--no-equalize", "--output-dir", str(tmp_path / "plain")]) == 0
    assert "equalized" not in capsys.readouterr().out and not (tmp_path / "plain" / "m.smoothed.onnx").exists()
    assert (tmp_path / "eq" / "m.smoothed.onnx").exists()


def test_channel_maxima_on_axis_1_agree_between_onnxruntime_and_the_torch_executor():
    """The depthwise inputs' maxima per channel (axis 1), from onnxruntime and from the PyTorch executor that
    `--device cuda` uses (run here on the CPU), equal the maxima numpy takes of the tensor itself."""
    import pytest

    pytest.importorskip("torch")
    from trtq.calibrate.channels import _on_cpu, _on_torch, _Rows

    model = _net()
    x = _data(6, seed=4)
    h = _depthwise_input(model, x)
    expected = np.abs(h).max(axis=(0, 2, 3))

    class Bar:
        def update(self, n: int) -> None:
            pass

    for run in (_on_cpu, _on_torch):
        found: dict[str, np.ndarray] = {}
        batches = iter([{"x": x[:3]}, {"x": x[3:]}])
        args = (model, ["h"], batches, found, _Rows(0, 2), Bar())
        if run is _on_torch:
            _on_torch(*args, "cpu", {"h": 1})
        else:
            _on_cpu(*args, {"h": 1})
        assert found["h"].shape == (C,) and np.allclose(found["h"], expected, rtol=1e-6), run.__name__
