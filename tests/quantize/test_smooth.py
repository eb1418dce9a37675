"""Outlier smoothing (`--smooth`): the factors, where the division goes (LayerNorm or a Mul), that the
smoothed FP32 model equals the original within float rounding (relative 1e-5 here, 1e-3 allowed in
use), that broken smoothing is refused, and that smoothing helps INT8 where outlier channels hurt it."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq.calibrate.grids import INT8
from trtq.errors import TrtqError
from trtq.model import normalize_model
from trtq.quantize import insert_qdq, plan_placement
from trtq.quantize.smooth import (
    SmoothResult,
    check_equivalent,
    group_factors,
    smooth_model,
    smoothing_factors,
    smoothing_groups,
)

K, N, ROWS = 16, 8, 64
OUTLIERS = (3, 11)


def _run(model, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _model(nodes, inits, outputs=("y",)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "smooth", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", ROWS, K])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return normalize_model(model)


def _norm_inits(rng, gain=40.0):
    """A LayerNorm with large gains on two channels and weights that read those channels with small
    rows, as trained transformers have them: the outliers dominate the activation, not the product."""
    gamma = np.ones(K, np.float32)
    gamma[list(OUTLIERS)] = gain
    weights = [(rng.standard_normal((K, N)) * 0.3).astype(np.float32) for _ in range(2)]
    for w in weights:
        w[list(OUTLIERS)] /= gain
    return [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(np.full(K, 0.1, np.float32), "beta"),
            numpy_helper.from_array(weights[0], "w"), numpy_helper.from_array(weights[1], "w2")]


def pre_ln_net(seed=0) -> onnx.ModelProto:
    """x [B,64,16] -> LayerNorm (two channels with gain 40) -> h -> MatMul w -> y, MatMul w2 -> y2.

    h's only readers are the two MatMuls: the division folds into the LayerNorm."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="mm"),
             helper.make_node("MatMul", ["h", "w2"], ["y2"], name="mm2")]
    return _model(nodes, _norm_inits(rng), ("y", "y2"))


def post_ln_net(seed=0, gain=40.0) -> onnx.ModelProto:
    """x -> LayerNorm -> h -> MatMul w -> y; h also feeds a residual Add (h + x -> r), as in post-LN BERT.

    The Add must keep reading h itself: a Mul by 1/s goes on the MatMul's side only."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="mm"),
             helper.make_node("Add", ["h", "x"], ["r"], name="residual")]
    return _model(nodes, _norm_inits(rng, gain), ("y", "r"))


def gelu_gemm_net(seed=0) -> onnx.ModelProto:
    """x -> Relu -> a -> Gemm (w_t [N,K], transB) -> y (2-D input: x reshaped to [B*64, 16] first)."""
    rng = np.random.default_rng(seed)
    shape = numpy_helper.from_array(np.array([-1, K], np.int64), "shape")
    w_t = numpy_helper.from_array((rng.standard_normal((N, K)) * 0.3).astype(np.float32), "w_t")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["x2"], name="flatten"),
             helper.make_node("Relu", ["x2"], ["a"], name="act"),
             helper.make_node("Gemm", ["a", "w_t"], ["y"], name="gemm", transB=1)]
    return _model(nodes, [shape, w_t])


def _data(seed=1, batch=8):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, ROWS, K)).astype(np.float32)
    x[..., OUTLIERS] *= 30.0  # outlier channels also in the raw input (the Relu/Gemm net reads them directly)
    return x


def _channel_max(model, tensors, x):
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    values = _run(exposed, {"x": x})[-len(tensors):]
    return {t: np.abs(v.reshape(-1, v.shape[-1])).max(axis=0) for t, v in zip(tensors, values)}


def _smoothed(model, alpha=0.5, x=None):
    x = _data() if x is None else x
    groups = smoothing_groups(model, plan_placement(model))
    maxima = _channel_max(model, [g.tensor for g in groups], x)
    factors = group_factors(model, groups, maxima, alpha)
    return groups, factors, smooth_model(model, groups, factors, alpha, maxima)


def test_factors_balance_activation_and_weight_maxima():
    x_max = np.array([40.0, 1.0, 0.0, 2.0], np.float32)
    w_max = np.array([0.1, 0.4, 0.3, 0.0], np.float32)
    s = smoothing_factors(x_max, w_max, 0.5)
    assert s[2] == 1.0 and s[3] == 1.0  # dead channels stay as they are
    assert np.allclose((x_max / s)[:2], (w_max * s)[:2])  # alpha 0.5: both sides end with equal maxima
    assert np.allclose(smoothing_factors(x_max, w_max, 1.0)[:2], x_max[:2])  # all difficulty to the weights
    assert np.allclose(smoothing_factors(x_max, w_max, 0.0)[:2], 1.0 / w_max[:2])


def test_pre_ln_folds_into_the_layernorm_and_keeps_the_function():
    model = pre_ln_net()
    groups, factors, result = _smoothed(model)
    assert [g.tensor for g in groups] == ["h"] and {r.node for r in groups[0].readers} == {"mm", "mm2"}
    assert [t.folded_into for t in result.tensors] == ["ln"]
    assert [n.op_type for n in result.model.graph.node] == [n.op_type for n in model.graph.node]  # no new node
    s = factors["h"][1]
    inits = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    original = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert np.allclose(inits["gamma"], original["gamma"] / s) and np.allclose(inits["beta"], original["beta"] / s)
    assert np.allclose(inits["w"], original["w"] * s[:, None]) and np.allclose(inits["w2"], original["w2"] * s[:, None])
    x = _data(seed=2)
    for before, after in zip(_run(model, {"x": x}), _run(result.model, {"x": x})):
        assert np.abs(after - before).max() <= 1e-5 * np.abs(before).max()
    assert result.tensors[0].outliers_after < result.tensors[0].outliers_before / 3


def test_post_ln_gets_a_mul_on_the_matmul_side_only():
    model = post_ln_net()
    _, factors, result = _smoothed(model)
    smoothed = result.tensors[0]
    assert smoothed.folded_into is None and smoothed.smoothed != "h"
    nodes = {n.name: n for n in result.model.graph.node}
    mul = next(n for n in result.model.graph.node if n.op_type == "Mul")
    assert mul.input[0] == "h" and mul.output[0] == smoothed.smoothed
    assert np.allclose(numpy_helper.to_array(next(i for i in result.model.graph.initializer if i.name == mul.input[1])),
                       1.0 / factors["h"][1])
    assert nodes["mm"].input[0] == smoothed.smoothed and nodes["residual"].input[0] == "h"
    x = _data(seed=2)
    for before, after in zip(_run(model, {"x": x}), _run(result.model, {"x": x})):
        assert np.abs(after - before).max() <= 1e-5 * np.abs(before).max()
    # placement quantizes the Mul's output (what the MatMul reads), not h (the residual's input)
    placement = plan_placement(result.model)
    assert smoothed.smoothed in placement.activation_tensors and "h" not in placement.activation_tensors


def test_gemm_with_transposed_weight_scales_its_columns():
    model = gelu_gemm_net()
    groups, factors, result = _smoothed(model, alpha=0.75)
    assert groups[0].readers[0].axis == 1  # w_t is [N, K]: input channels on axis 1
    s = factors["a"][1]
    original = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w_t"))
    scaled = numpy_helper.to_array(next(i for i in result.model.graph.initializer if i.name == "w_t"))
    assert np.allclose(scaled, original * s[None, :])
    x = _data(seed=3)
    (before,), (after,) = _run(model, {"x": x}), _run(result.model, {"x": x})
    assert np.abs(after - before).max() <= 1e-5 * np.abs(before).max()


def test_smoothing_lets_int8_keep_the_small_channels():
    model = post_ln_net()
    _, _, result = _smoothed(model, alpha=0.5)
    x, held = _data(), _data(seed=4)

    def int8_snr(m):
        placement = plan_placement(m)
        exposed = _run(_exposing(m, placement), {"x": x})[2:]
        amax = {t: float(np.abs(v).max()) for t, v in zip(placement.activation_tensors, exposed)}
        ref = _run(model, {"x": held})[0]
        out = _run(insert_qdq(m, placement, amax), {"x": held})[0]
        return 10 * np.log10((ref**2).sum() / ((ref - out) ** 2).sum())

    plain, smoothed = int8_snr(model), int8_snr(result.model)
    assert smoothed > plain + 10.0, (plain, smoothed)


def _exposing(model, placement):
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                                for t in placement.activation_tensors)
    return exposed


def test_per_layer_choice_leaves_well_behaved_inputs_alone():
    model = post_ln_net()
    groups = smoothing_groups(model, plan_placement(model))
    flat = np.random.default_rng(5).standard_normal((8, ROWS, K)).astype(np.float32)
    no_outliers = post_ln_net(gain=1.0)
    maxima = _channel_max(no_outliers, ["h"], flat)
    rows = {"h": _run(_exposing_named(no_outliers, "h"), {"x": flat})[-1].reshape(-1, K)}
    assert group_factors(no_outliers, groups, maxima, None, rows, INT8) == {}  # nothing to gain: left alone
    maxima = _channel_max(model, ["h"], flat)
    rows = {"h": _run(_exposing_named(model, "h"), {"x": flat})[-1].reshape(-1, K)}
    chosen = group_factors(model, groups, maxima, None, rows, INT8)
    assert set(chosen) == {"h"} and chosen["h"][0] in (0.5, 0.75, 0.9)


def _exposing_named(model, name):
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return exposed


def test_a_smoothed_model_that_changed_the_function_is_refused():
    model = post_ln_net()
    _, _, result = _smoothed(model)
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    for init in broken.graph.initializer:
        if init.name == "w":  # the weights lose their factors: the MatMul now computes (x / s) w
            init.CopyFrom(next(i for i in model.graph.initializer if i.name == "w"))
    bad = SmoothResult(broken, result.alpha, result.tensors)
    with pytest.raises(TrtqError, match="changed its FP32 output 'y'"):
        check_equivalent(model, bad, [{"x": _data(seed=6)}])
    good = check_equivalent(model, result, [{"x": _data(seed=6)}])
    assert good.deviation < 1e-5 and good.checked_samples == 8


def test_alpha_out_of_range_is_a_user_error():
    model = post_ln_net()
    groups = smoothing_groups(model, plan_placement(model))
    with pytest.raises(TrtqError, match="alpha must be in"):
        group_factors(model, groups, {"h": np.ones(K, np.float32)}, 1.5)
