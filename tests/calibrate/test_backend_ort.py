"""The CPU backend's IO-bound, double-buffered runs give exactly the statistics of plain runs."""

import gc

import numpy as np
import onnx
import onnxruntime as ort

from tiny_models import residual_conv_net
from trtq.calibrate.backend_ort import OrtBackend, expose_tensors, make_session
from trtq.calibrate.collector import StatsCollector
from trtq.model import normalize_model, split_initializers
from trtq.quantize import plan_placement


def test_double_buffered_statistics_equal_plain_runs():
    model = normalize_model(residual_conv_net(batch="N"))
    tensors = list(plan_placement(model).calibrated_tensors)
    fetch = [t for t in tensors if t != "input"]
    rng = np.random.default_rng(0)
    # five full batches (the buffers swap several times), then a partial one (new shapes, re-sized buffers)
    batches = [rng.standard_normal((4, 3, 16, 16)).astype(np.float32) * (i + 1) for i in range(5)]
    batches.append(rng.standard_normal((2, 3, 16, 16)).astype(np.float32) * 9)

    backend = OrtBackend(model, tensors)
    for x in batches:
        backend.observe({"input": x})
    got = backend.stats()

    session = ort.InferenceSession(expose_tensors(model, fetch).SerializeToString())
    expected = StatsCollector(tensors)
    for x in batches:
        for name, value in zip(fetch, session.run(fetch, {"input": x})):
            expected.update(name, value)
        expected.update("input", x)
    want = expected.stats()
    assert set(got) == set(want)
    for name in tensors:
        assert got[name] == want[name], name
    assert got["r2"].count == sum(len(x) for x in batches) * 8 * 16 * 16


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
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


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


def test_split_initializers_moves_only_large_raw_weights():
    model = _weights_model()
    skeleton, large = split_initializers(model)
    assert sorted(init.name for init in large) == ["B", "W"]  # H (1x64 fp16, 128 bytes) and bias are small
    assert sorted(init.name for init in skeleton.graph.initializer) == ["H", "bias"]
    assert [n.op_type for n in skeleton.graph.node] == [n.op_type for n in model.graph.node]
    assert skeleton.opset_import == model.opset_import and skeleton.graph.input == model.graph.input
