"""Transformers end to end through the Python API: tiny BERT and ViT (random weights, planted
activation outliers; tests/support/transformer_models.py), exported by both torch exporters.

`--precision fp8`: structure (FP8 zero points, opset >= 19, per-channel weight axes, every MatMul
input quantized, no calibration cache, strongly typed build lines only) and numerics: on models
with outlier channels FP8 E4M3 keeps far more of the signal than INT8 (measured here: BERT 23.6 vs
11.8 dB, ViT 22.7 vs 8.9 dB over real tokens/all positions), so the tests ask for FP8 >= INT8 + 6 dB
and >= 18 dB. SNR is over real tokens (attention_mask == 1) for BERT, all positions for ViT.
"""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from transformer_models import image_data, masked_snr_db, token_data

from trtq import api
from trtq.errors import TrtqError


def _data(tmp_path, kind):
    """Calibration (32) and held-out (16) files for `kind`, and the held-out feeds."""
    if kind == "bert":
        np.savez(tmp_path / "calib.npz", **token_data(32, seed=5))
        held = token_data(16, seed=6)
        np.savez(tmp_path / "held.npz", **held)
        return tmp_path / "calib.npz", tmp_path / "held.npz", held
    np.save(tmp_path / "calib.npy", image_data(32, seed=5))
    held = {"pixel_values": image_data(16, seed=6)}
    np.save(tmp_path / "held.npy", held["pixel_values"])
    return tmp_path / "calib.npy", tmp_path / "held.npy", held


def _run(path, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _snr(model, candidate, held):
    return masked_snr_db(_run(model, held), _run(candidate, held), held.get("attention_mask"))


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_fp8_artifacts_and_structure(transformer_onnx, tmp_path, kind, dynamo):
    model = transformer_onnx(kind, dynamo)
    calib, _, _ = _data(tmp_path, kind)
    result = api.quantize(model, calib, options=api.QuantizeOptions(precision="fp8", output_dir=str(tmp_path / "out")),
                          progress=False)
    stem = model.stem
    assert {p.name for p in (tmp_path / "out").iterdir()} == {f"{stem}.fp8.onnx", f"{stem}.fp8.json"}
    assert result.cache_path is None and result.cache_entries == 0 and result.quant_type == "fp8"
    assert result.method == "max" and any("no calibration cache" in note for note in result.notes)
    assert set(result.commands) == {"tensorrt-11", "tensorrt-10-strongly-typed"}
    assert all("--int8" not in c and "--calib" not in c for c in result.commands.values())
    ranges = json.loads((tmp_path / "out" / f"{stem}.fp8.json").read_text())
    assert ranges["options"]["precision"] == "fp8"
    q = onnx.load(result.onnx_path)
    assert q.opset_import[0].version >= 19
    zero_points = {i.name: i for i in q.graph.initializer if i.name.endswith("_zero_point")}
    assert zero_points and {z.data_type for z in zero_points.values()} == {TensorProto.FLOAT8E4M3FN}
    producer = {o: n for n in q.graph.node for o in n.output}
    matmuls = [n for n in q.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert len(matmuls) == 2 * 8  # per layer: Q, K, V, Q.K^T, P.V, attention out, FFN1, FFN2
    for node in matmuls:  # both inputs of every MatMul (weights per channel, activations per tensor)
        for name in node.input[:2]:
            dq = producer[name]
            assert dq.op_type == "DequantizeLinear", (node.name, name)
            source = producer[dq.input[0]].input[0]
            axis = [a.i for a in dq.attribute if a.name == "axis"]
            assert bool(axis) == (source in {i.name for i in q.graph.initializer}), (node.name, name)
    if kind == "vit":  # the patch embedding (3 input channels) has no FP8 kernel worth having
        assert len(result.excluded_nodes) == 1 and "Conv" in result.excluded_nodes[0]


@pytest.mark.parametrize(("kind", "dynamo"), [("bert", False), ("vit", True)])
def test_fp8_beats_int8_on_outlier_channels(transformer_onnx, tmp_path, kind, dynamo):
    model = transformer_onnx(kind, dynamo)
    calib, _, held = _data(tmp_path, kind)
    snr = {}
    for precision in ("int8", "fp8"):
        options = api.QuantizeOptions(method="max", precision=precision, output_dir=str(tmp_path))
        snr[precision] = _snr(model, api.quantize(model, calib, options=options, progress=False).onnx_path, held)
    assert snr["fp8"] >= 18.0 and snr["fp8"] >= snr["int8"] + 6.0, snr


def test_fp8_with_fp16_and_the_accuracy_tools(transformer_onnx, tmp_path):
    model = transformer_onnx("bert", False)
    calib, held_path, held = _data(tmp_path, "bert")
    plain = api.quantize(model, calib, options=api.QuantizeOptions(precision="fp8", output_dir=str(tmp_path / "a")),
                         progress=False)
    half = api.quantize(model, calib, progress=False, options=api.QuantizeOptions(
        precision="fp8", high_precision="fp16", output_dir=str(tmp_path / "b")))
    assert half.precision.fp16_qdq_pairs > 0  # FP8 Q/DQ with FP16 scales, as opset 19 allows
    q = onnx.load(half.onnx_path)
    scale_types = {i.data_type for i in q.graph.initializer if i.name.endswith("_scale")}
    assert TensorProto.FLOAT16 in scale_types
    assert abs(_snr(model, half.onnx_path, held) - _snr(model, plain.onnx_path, held)) < 2.0

    report = api.compare(model, plain.onnx_path, held_path, progress=False)
    assert report.samples == 16 and report.outputs[0].snr_db > 15.0

    run = api.sensitivity(model, calib=calib, options=api.QuantizeOptions(precision="fp8"), progress=False)
    assert len(run.result.layers) == 16 and run.commands == {}
    assert run.ranges.options["precision"] == "fp8"

    mixed = api.quantize(model, calib, progress=False, options=api.QuantizeOptions(
        precision="fp8", target=f"snr>={_snr(model, plain.onnx_path, held) + 1.0:.2f}", target_data=str(held_path),
        output_dir=str(tmp_path / "c")))
    assert mixed.mixed.holds and mixed.mixed.excluded  # FP8 alone misses the bar by 1 dB
    kept = onnx.load(mixed.onnx_path)
    assert {i.data_type for i in kept.graph.initializer if i.name.endswith("_zero_point")} == {TensorProto.FLOAT8E4M3FN}


def _int8_matmul_inputs(path):
    """How many MatMul/Gemm inputs read a DequantizeLinear, and how many there are."""
    q = onnx.load(str(path))
    producer = {o: n for n in q.graph.node for o in n.output}
    inputs = [name for n in q.graph.node if n.op_type in ("MatMul", "Gemm") for name in n.input[:2]]
    return sum(producer.get(name) is not None and producer[name].op_type == "DequantizeLinear" for name in inputs), len(inputs)


@pytest.mark.parametrize(("kind", "dynamo"), [("bert", False), ("bert", True), ("vit", False)])
def test_smooth_keeps_every_matmul_int8_and_recovers_the_outliers(transformer_onnx, tmp_path, kind, dynamo):
    # measured: BERT 11.8 -> 34.2 dB, ViT 8.9 -> 32.1 dB (max ranges; entropy, the default, alike)
    model = transformer_onnx(kind, dynamo)
    calib, _, held = _data(tmp_path, kind)
    plain = api.quantize(model, calib, options=api.QuantizeOptions(output_dir=str(tmp_path / "plain")), progress=False)
    smooth = api.quantize(model, calib, options=api.QuantizeOptions(smooth="auto", output_dir=str(tmp_path / "s")),
                          progress=False)
    quantized, total = _int8_matmul_inputs(smooth.onnx_path)
    assert quantized == total == 32 and smooth.qdq_pairs == plain.qdq_pairs
    before, after = _snr(model, plain.onnx_path, held), _snr(model, smooth.onnx_path, held)
    assert after >= 25.0 and after >= before + 15.0, (before, after)
    info = smooth.smoothing
    assert info.alpha is None and len(info.tensors) == 8 and info.deviation < 1e-4  # alpha per layer
    assert info.checked_samples == 8
    if kind == "vit":  # pre-LN: both LayerNorms of each layer take the division, no Mul
        assert info.folded_into_layernorm == 4 and info.mul_nodes == 4
    else:  # post-LN: the LayerNorm outputs also feed the residual Adds
        assert info.folded_into_layernorm == 0 and info.mul_nodes == 8
    assert _snr(model, smooth.smoothed_path, held) > 100.0  # the FP32 model the cache belongs to is the original
    assert smooth.commands["tensorrt-10-implicit"].startswith(f"trtexec --onnx={smooth.smoothed_path} ")
    ranges = json.loads(Path(smooth.ranges_path).read_text())
    assert ranges["options"]["smooth"] == "auto" and len(ranges["smoothing"]) == 8

    again = api.quantize(model, ranges=smooth.ranges_path, progress=False,
                         options=api.QuantizeOptions(output_dir=str(tmp_path / "again")))
    assert again.smoothing.checked_samples == 0  # no data to check on; the factors are the saved ones
    assert np.array_equal(_run(again.onnx_path, held), _run(smooth.onnx_path, held))


def test_smooth_with_fp8_sensitivity_and_errors(transformer_onnx, tmp_path):
    model = transformer_onnx("bert", False)
    calib, _, held = _data(tmp_path, "bert")
    fp8 = api.quantize(model, calib, progress=False,
                       options=api.QuantizeOptions(precision="fp8", output_dir=str(tmp_path / "fp8")))
    both = api.quantize(model, calib, progress=False,
                        options=api.QuantizeOptions(precision="fp8", smooth="auto", output_dir=str(tmp_path / "both")))
    assert both.smoothed_path is None and both.cache_path is None  # FP8 has no cache, so no smoothed FP32 file
    assert _snr(model, both.onnx_path, held) >= _snr(model, fp8.onnx_path, held) - 0.5
    run = api.sensitivity(model, calib=calib, options=api.QuantizeOptions(smooth=0.5), progress=False)
    assert len(run.result.layers) == 16 and run.commands == {} and run.ranges.options["smooth"] == 0.5
    with pytest.raises(TrtqError, match="alpha must be in"):
        api.QuantizeOptions(smooth=1.5)
    with pytest.raises(TrtqError, match="--smooth needs --calib"):
        plain = api.quantize(model, calib, options=api.QuantizeOptions(output_dir=str(tmp_path / "p")), progress=False)
        api.quantize(model, ranges=plain.ranges_path, options=api.QuantizeOptions(smooth="auto"), progress=False)


def _qdq_inputs(model, node):
    """Which inputs of `node` read a DequantizeLinear output."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return [i for i, name in enumerate(node.input) if name in producer and producer[name].op_type == "DequantizeLinear"]


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_residual_qdq_on_both_exports(transformer_onnx, tmp_path, kind, dynamo):
    from trtq.model import normalize_model
    from trtq.quantize.placement import attention_matmuls

    model = transformer_onnx(kind, dynamo)
    calib, _, _ = _data(tmp_path, kind)
    blocks = attention_matmuls(normalize_model(onnx.load(model)))
    assert len(blocks) == 2 and all(probs is not None for _, probs in blocks)  # Q.K^T and softmax.V per layer
    plain = api.quantize(model, calib, progress=False, options=api.QuantizeOptions(
        method="max", output_dir=str(tmp_path / "plain")))
    both = api.quantize(model, calib, progress=False, options=api.QuantizeOptions(
        method="max", output_dir=str(tmp_path / "residual"), residual_qdq=True))
    # BERT (post-norm) reads the LayerNorm output feeding Q/K/V through the same DQ, so one pair per
    # residual Add is new; ViT (pre-norm) quantizes the stream too: two per Add
    assert both.qdq_pairs == plain.qdq_pairs + (4 if kind == "bert" else 8)
    q, p = onnx.load(both.onnx_path), onnx.load(plain.onnx_path)
    residual = [n for n in q.graph.node if n.op_type == "Add" and _qdq_inputs(q, n) == [0, 1]]
    assert len(residual) == 4  # two residual Adds per layer
    assert not [n for n in p.graph.node if n.op_type == "Add" and _qdq_inputs(p, n) == [0, 1]]
    assert not [n for n in q.graph.node if n.op_type in ("LayerNormalization", "Softmax") and _qdq_inputs(q, n)]


def test_int8_attention_beyond_512_tokens_stays_in_high_precision(tmp_path):
    from tiny_models import attention_block, save

    model = save(attention_block(), tmp_path / "block.onnx")
    rng = np.random.default_rng(0)
    for seq in (64, 600):
        np.save(tmp_path / f"x{seq}.npy", rng.standard_normal((4, seq, 8)).astype(np.float32))
    short = api.quantize(model, tmp_path / "x64.npy", progress=False,
                         options=api.QuantizeOptions(method="max", output_dir=str(tmp_path / "short")))
    long = api.quantize(model, tmp_path / "x600.npy", progress=False,
                        options=api.QuantizeOptions(method="max", output_dir=str(tmp_path / "long")))
    nodes = {n.name: n for n in onnx.load(short.onnx_path).graph.node}
    assert _qdq_inputs(onnx.load(short.onnx_path), nodes["scores"]) == [0, 1] and not short.excluded_nodes
    q = onnx.load(long.onnx_path)
    nodes = {n.name: n for n in q.graph.node}
    assert _qdq_inputs(q, nodes["scores"]) == [] and _qdq_inputs(q, nodes["context"]) == []
    assert _qdq_inputs(q, nodes["q"]) == [0, 1]  # the projections stay INT8
    assert set(long.excluded_nodes) == {"scores", "context"}
    assert any("600 tokens, longer than the 512" in note for note in long.notes)
    assert "--layerPrecisions=context:fp32,scores:fp32" in long.commands["tensorrt-10-implicit"]
    fp8 = api.quantize(model, tmp_path / "x600.npy", progress=False,  # the 512 limit is INT8's
                       options=api.QuantizeOptions(precision="fp8", output_dir=str(tmp_path / "fp8")))
    assert not fp8.excluded_nodes
    run = api.sensitivity(model, calib=tmp_path / "x600.npy", options=api.QuantizeOptions(method="max"),
                          progress=False)
    assert {layer.node for layer in run.result.layers} == {"q", "k", "v", "o", "fc"} and run.notes
