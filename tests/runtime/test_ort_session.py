"""Sessions for in-memory models: weights as external initializers, and exposed tensors in
onnxruntime's blocked (NCHWc) layout giving exactly the statistics of plain NCHW exposure."""

import gc
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from reference_stats import plain_exposure_stats
from tiny_models import wide_conv_net

from trtq.calibrate.backend_ort import OrtBackend
from trtq.model import normalize_model, split_initializers
from trtq.quantize import plan_placement
from trtq.runtime.ort_session import (
    NCHWC_DOMAIN,
    ExposingSession,
    OrtSession,
    bypass_reorders,
    expose_tensors,
    has_nchwc,
    make_exposing_session,
    make_session,
)


def _weights_model() -> onnx.ModelProto:
    """input (1x64) -> MatMul(W) -> Add(bias) -> Cast(fp16) -> Mul(H) -> Cast(fp32) = p -> MatMul(Cast(B)) -> output

    W: large float32 (external), B: large bfloat16 (no numpy type: kept inline), H (float16) and
    bias (float32): small, kept inline.
    """
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    h = rng.standard_normal((1, 64)).astype(np.float16)
    bits = (rng.standard_normal(64 * 64).astype(np.float32).view(np.uint32) >> 16).astype("<u2")  # bfloat16 bit patterns
    bf = onnx.helper.make_tensor("B", onnx.TensorProto.BFLOAT16, (64, 64), bits.tobytes(), raw=True)
    nodes = [
        onnx.helper.make_node("MatMul", ["input", "W"], ["m"]),
        onnx.helper.make_node("Add", ["m", "bias"], ["a"]),
        onnx.helper.make_node("Cast", ["a"], ["a16"], to=onnx.TensorProto.FLOAT16),
        onnx.helper.make_node("Mul", ["a16", "H"], ["p16"]),
        onnx.helper.make_node("Cast", ["p16"], ["p"], to=onnx.TensorProto.FLOAT),
        onnx.helper.make_node("Cast", ["B"], ["b32"], to=onnx.TensorProto.FLOAT),
        onnx.helper.make_node("MatMul", ["p", "b32"], ["output"]),
    ]
    graph = onnx.helper.make_graph(
        nodes, "weights",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, (1, 64))],
        [onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, (1, 64))],
        [onnx.numpy_helper.from_array(w, "W"), onnx.numpy_helper.from_array(h.repeat(64, 0)[:1], "H"), bf,
         onnx.numpy_helper.from_array(np.full(64, 0.5, np.float32), "bias")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every onnxruntime >= 1.17 reads, whatever onnx made this
    return model


def test_make_session_passes_weights_without_serialising_them():
    """Same outputs as a session from the serialised model; the model is untouched and may be dropped."""
    model = _weights_model()
    before = model.SerializeToString()
    x = np.random.default_rng(4).standard_normal((1, 64)).astype(np.float32)
    want = ort.InferenceSession(expose_tensors(model, ["p"]).SerializeToString()).run(["output", "p"], {"input": x})
    session = make_session(model, outputs=["p"])
    assert model.SerializeToString() == before
    del model
    gc.collect()
    got = session.run(["output", "p"], {"input": x})
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_sessions_own_what_onnxruntime_reads():
    """The weight buffers and the folder of optimised files are the session's own (`OrtSession.keep`),
    nothing attached to onnxruntime's object from outside; the folder goes when the session does."""
    session = make_session(_weights_model())
    assert isinstance(session, OrtSession) and isinstance(session, ort.InferenceSession)
    arrays, values = session.keep
    assert [a.size for a in arrays] == [64 * 64] and len(values) == 1  # W; B (bfloat16) stays in the graph
    model, tensors, _ = _wide()
    exposing = make_exposing_session(model, [t for t in tensors if t != "input"])
    assert not [name for name in vars(exposing.session) if name.startswith("_trtq")]
    if not exposing.renamed:
        pytest.skip("the blocked-layout route (and its folder) is only used on x86-64 CPUs with NCHWc kernels")
    (folder,) = exposing.session.keep
    files = Path(folder.name)
    assert (files / "exposing.onnx").is_file()
    del exposing, folder
    gc.collect()
    assert not files.exists()


def test_split_initializers_moves_only_large_raw_weights():
    model = _weights_model()
    skeleton, large = split_initializers(model)
    assert sorted(init.name for init in large) == ["B", "W"]  # H (1x64 fp16, 128 bytes) and bias are small
    assert sorted(init.name for init in skeleton.graph.initializer) == ["H", "bias"]
    assert [n.op_type for n in skeleton.graph.node] == [n.op_type for n in model.graph.node]
    assert skeleton.opset_import == model.opset_import and skeleton.graph.input == model.graph.input


def _wide() -> tuple[onnx.ModelProto, list[str], list[np.ndarray]]:
    model = normalize_model(wide_conv_net())
    tensors = list(plan_placement(model).calibrated_tensors)
    rng = np.random.default_rng(7)
    return model, tensors, [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) * (i + 1) for i in range(4)]


def test_blocked_exposure_gives_the_statistics_of_plain_exposure():
    model, tensors, batches = _wide()
    assert {"r1", "r2", "r3"} <= set(tensors)
    backend = OrtBackend(model, tensors, observer_ops=False)
    for x in batches:
        backend.observe({"input": x})
    got, want = backend.stats(), plain_exposure_stats(model, tensors, batches)
    for name in tensors:
        assert got[name] == want[name], name


def test_blocked_exposure_is_used_for_whole_blocks_only():
    """On an x86-64 CPU with AVX2 (onnxruntime's NCHWc kernels), the 16- and 32-channel tensors
    are exposed blocked, the model's own output included; the 8-channel one keeps its reorder
    (it could hold padding lanes)."""
    from trtq.calibrate import collector

    if not has_nchwc(wide_conv_net()) or collector._fasthist_best is None or collector._fasthist_best() < 1:
        pytest.skip("onnxruntime uses NCHWc only on x86-64 CPUs with AVX2 (and the C extension detects it)")
    model, tensors, _ = _wide()
    exposing = make_exposing_session(model, [t for t in tensors if t != "input"])
    assert "output" in tensors  # the head's output is observed too (the cache lists it)
    assert set(exposing.renamed) == {"r1", "r2", "output"}
    assert exposing.channels == {"r1": 16, "r2": 32, "output": 16}
    produced = {o.name for o in exposing.session.get_outputs()}
    assert {exposing.output_name(t) for t in ("r1", "r2", "r3")} <= produced and "r1" not in produced


def test_backend_falls_back_to_plain_exposure_when_a_block_has_padding():
    """A blocked tensor whose dim 1 is not its channel count (a larger block size) switches the
    backend to plain exposure on the first batch, with unchanged statistics."""
    model, tensors, batches = _wide()
    backend = OrtBackend(model, tensors, observer_ops=False)
    if not backend._exposing.renamed:
        pytest.skip("no tensor is exposed blocked on this CPU")
    backend._exposing = ExposingSession(backend._exposing.session, backend._exposing.renamed,
                                        {t: c + 1 for t, c in backend._exposing.channels.items()})
    for x in batches:
        backend.observe({"input": x})
    assert backend._exposing.renamed == {}
    got, want = backend.stats(), plain_exposure_stats(model, tensors, batches)
    for name in tensors:
        assert got[name] == want[name], name


def test_bypass_reorders_edits_only_output_only_whole_block_reorders():
    """conv (nchwc) -> t16 --ReorderOutput(16)--> a  (graph output, observed: bypassed)
                    -> t8  --ReorderOutput(8)---> b  (graph output, observed: 8 is not a whole block)
                    -> t32 --ReorderOutput(32)--> c  (graph output, observed, but also read by d)
                    -> t48 --ReorderOutput(48)--> e  (graph output, not observed)"""
    def reorder(src: str, dst: str, channels: int) -> onnx.NodeProto:
        return onnx.helper.make_node("ReorderOutput", [src], [dst], domain=NCHWC_DOMAIN, channels=channels)

    nodes = [onnx.helper.make_node("Conv", ["x", "w"], ["t16", "t8", "t32", "t48"], domain=NCHWC_DOMAIN),
             reorder("t16", "a", 16), reorder("t8", "b", 8), reorder("t32", "c", 32), reorder("t48", "e", 48),
             onnx.helper.make_node("Relu", ["c"], ["d"])]
    outs = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in "abcde"]
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [], outs))
    renamed, channels = bypass_reorders(model, ["a", "b", "c", "d"])
    assert renamed == {"a": "t16"} and channels == {"a": 16}
    assert [o.name for o in model.graph.output] == ["t16", "b", "c", "d", "e"]
    assert [n.output[0] for n in model.graph.node] == ["t16", "b", "c", "e", "d"]
    assert bypass_reorders(model, ["b"]) == ({}, {})


def test_blocked_route_that_cannot_write_falls_back_to_plain_exposure(monkeypatch):
    """A temporary folder that cannot be written (disk full, say) gives the plain session and a note."""
    import tempfile

    import trtq.runtime.ort_session as ort_session

    model, tensors, _ = _wide()
    if not has_nchwc(model):
        pytest.skip("the blocked-layout route is only tried on x86-64")

    class Unwritable(tempfile.TemporaryDirectory):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.name = self.name + "/missing/folder"

    monkeypatch.setattr(ort_session.tempfile, "TemporaryDirectory", Unwritable)
    fetch = [t for t in tensors if t != "input"]
    exposing = make_exposing_session(model, fetch)
    assert exposing.renamed == {} and "blocked-layout route failed" in exposing.note
    assert {o.name for o in exposing.session.get_outputs()} >= set(fetch)


def test_an_ir_version_onnxruntime_refuses_is_a_user_error():
    """onnx packages newer than the installed onnxruntime write IR versions it cannot read."""
    from trtq.errors import TrtqError

    model = _weights_model()
    model.ir_version = 99
    with pytest.raises(TrtqError, match="IR version 99") as info:
        make_session(model)
    assert "upgrade onnxruntime" in info.value.hint


def _fp16_qdq(tmp_path):
    """large_bias_net quantized with FP16 Q/DQ scales (--high-precision fp16), its FP32 model, and data."""
    from accuracy_models import large_bias_net

    from trtq.quantize import insert_qdq
    from trtq.quantize.precision import convert_to_fp16

    model = normalize_model(large_bias_net())
    x = np.random.default_rng(1).standard_normal((8, 4, 8, 8)).astype(np.float32)
    amax = {"x": float(np.abs(x).max()), "c1": 2.0, "r1": 2.0, "y": 2.0}
    int8 = insert_qdq(model, plan_placement(model), amax)
    return model, int8, convert_to_fp16(int8, amax).model, x


def test_fp16_qdq_models_run_without_the_bias_folding_that_overflows(tmp_path):
    """onnxruntime's WeightBiasQuantization folds Conv biases to int32 in the scales' dtype: with FP16 scales
    that overflows. trtq's sessions skip it there (so the output is the graph's, as with all optimizations
    off) and keep it for FP32 scales (whose results must not move)."""
    from trtq.runtime.ort_session import disabled_optimizers, session_from_file

    model, int8, fp16, x = _fp16_qdq(tmp_path)
    assert disabled_optimizers(model) == [] and disabled_optimizers(int8) == []
    assert disabled_optimizers(fp16) == ["WeightBiasQuantization"]
    ref = make_session(model).run(None, {"x": x})[0]

    def snr(out):
        return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - out).astype(np.float64) ** 2))

    off = ort.SessionOptions()
    off.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    as_defined = ort.InferenceSession(fp16.SerializeToString(), off).run(None, {"x": x})[0]
    onnx.save(fp16, tmp_path / "fp16.onnx")
    mine = make_session(fp16).run(None, {"x": x})[0]
    from_file = session_from_file(tmp_path / "fp16.onnx").run(None, {"x": x})[0]
    # onnxruntime 1.32 at default settings: 0.017 off (37.7 dB instead of 42.8); FP16 rounding alone: 0.0002
    np.testing.assert_allclose(mine, as_defined, rtol=0, atol=2e-3)
    assert snr(mine) > 40
    np.testing.assert_array_equal(from_file, mine)
    int8_default = ort.InferenceSession(int8.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(make_session(int8).run(None, {"x": x})[0], int8_default)  # FP32 scales: unchanged
