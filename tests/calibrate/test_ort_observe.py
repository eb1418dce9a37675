"""trtq's onnxruntime observer ops fold exactly StatsCollector's statistics inside the forward pass."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from reference_stats import plain_exposure_stats
from tiny_models import residual_conv_net, wide_conv_net

import trtq.calibrate.ort_observe as ort_observe
from trtq.calibrate.backend_ort import OrtBackend
from trtq.calibrate.ort_observe import DOMAIN, insert_observers, make_observing_session, observer_library
from trtq.model import normalize_model
from trtq.quantize import plan_placement
from trtq.runtime.ort_session import NCHWC_DOMAIN

needs_ops = pytest.mark.skipif(observer_library() is None,
                               reason="trtq's observer ops are not built (no C compiler) or onnxruntime < 1.18")


def _batches(shape: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    """A zero batch first (no range yet), batches that grow the range, one with NaN and Inf, one smaller."""
    rng = np.random.default_rng(seed)
    batches = [np.zeros(shape, np.float32)]
    batches += [rng.standard_normal(shape).astype(np.float32) * (i + 1) for i in range(4)]
    bad = rng.standard_normal(shape).astype(np.float32)
    bad.flat[3], bad.flat[7] = np.nan, np.inf
    batches += [bad, rng.standard_normal(shape).astype(np.float32) * 0.5]
    return batches


def _inner(model: onnx.ModelProto) -> list[str]:
    inputs = {i.name for i in model.graph.input}
    return [t for t in plan_placement(model).calibrated_tensors if t not in inputs]


@needs_ops
@pytest.mark.parametrize("build", [wide_conv_net, lambda: residual_conv_net(batch="N")], ids=["wide", "residual"])
def test_observed_statistics_equal_plain_exposure(build):
    """Blocked NCHWc tensors, pass-through and sink observers, range growth, NaN/Inf, a zero first
    batch and (residual: dynamic batch) a batch of another size: bit-identical statistics."""
    model = normalize_model(build())
    tensors = _inner(model)
    shape = (1, 3, 16, 16)
    batches = _batches(shape)
    if model.graph.input[0].type.tensor_type.shape.dim[0].dim_param:
        batches.append(np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32) * 7)
    session, note = make_observing_session(model, tensors, threads=2)
    assert session is not None, note
    for x in batches:
        session.run({"input": x})
    got, want = session.stats(), plain_exposure_stats(model, tensors, batches)
    for name in tensors:
        assert got[name] == want[name], name
    assert any(got[name].nan_count for name in tensors)


@needs_ops
def test_observed_amax_only_equals_collector_without_histograms():
    """Method max needs no histogram: the ops keep amax, counts and NaN/Inf counts only."""
    model = normalize_model(wide_conv_net())
    tensors = _inner(model)
    batches = _batches((1, 3, 16, 16), seed=3)
    session, note = make_observing_session(model, tensors, histogram=False)
    assert session is not None, note
    exposed = plain_exposure_stats(model, tensors, batches)  # for the counts of the same runs
    for x in batches:
        session.run({"input": x})
    got = session.stats()
    for name in tensors:
        assert got[name].hist.size == 0 and got[name].hist_max == 0.0
        assert (got[name].amax, got[name].count, got[name].nan_count) == (
            exposed[name].amax, exposed[name].count, exposed[name].nan_count), name


@needs_ops
def test_large_tensors_split_across_threads_give_the_same_statistics():
    """input [2,3,96,96] -> Conv(3->32, 3x3) -> Relu = r (589,824 values a batch: 9 chunks of 65,536)
    -> Neg = output. Each chunk is binned on some onnxruntime thread; the sums must not depend on which."""
    rng = np.random.default_rng(4)
    w = helper.make_tensor("w", TensorProto.FLOAT, [32, 3, 3, 3], rng.standard_normal(864).astype(np.float32) * 0.3)
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Neg", ["r"], ["output"])]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3, 96, 96])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2, 32, 96, 96])], [w])
    model = normalize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    batches = _batches((2, 3, 96, 96), seed=5)[1:5]
    session, note = make_observing_session(model, ["c", "r"], threads=4)
    assert session is not None, note
    for x in batches:
        session.run({"input": x})
    got, want = session.stats(), plain_exposure_stats(model, ["c", "r"], batches)
    assert got["r"] == want["r"] and got["c"] == want["c"]
    assert got["r"].count == 4 * 2 * 32 * 96 * 96


@needs_ops
@pytest.mark.parametrize("dims, want", [([2, 3, 4], [2, 3, 4]), (["N", 3, 4], ["N", 3, 4]), ([None, 3, 4], [])],
                         ids=["static", "symbolic", "unknown"])
def test_observe_outputs_have_their_inputs_shape(dims, want):
    """x -> Observe -> y (output declared without a shape), x -> ObserveSink -> z.
    onnxruntime's planner writes a Conv's fused residual Add in place only where shapes are known and
    equal, so Observe must pass its input's shape on (an unnamed unknown dim stays unknown, not -1)."""
    state = np.zeros((2, 8 + 16), np.int64)
    nodes = [helper.make_node("Observe", ["x"], ["y"], domain=DOMAIN, state=state.ctypes.data, bins=16, channels=0),
             helper.make_node("ObserveSink", ["x"], ["z"], domain=DOMAIN, state=state.ctypes.data + state.strides[0],
                              bins=16, channels=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
                              ir_version=8)
    options = ort.SessionOptions()
    options.register_custom_ops_library(observer_library())
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    y, z = session.get_outputs()
    assert y.shape == want and z.shape == [1]  # [] is onnxruntime's 'shape unknown'
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    got_y, got_z = session.run(None, {"x": x})
    np.testing.assert_array_equal(got_y, x)
    assert got_z.shape == (1,) and state[0, 0] == state[1, 0] == 24


def test_insert_observers_places_pass_throughs_sinks_and_blocked_reads():
    """conv (nchwc) -> t16 --ReorderOutput(16)--> a  (exposed only: reorder dropped, sink on blocked t16)
                    -> t8  --ReorderOutput(8)---> b  (exposed only, 8 channels may pad: reorder kept, sink on b)
    x -> Relu -> c -> Neg -> d                       (c read by Neg: pass-through, Neg reads the observed copy)
                            d                        (the model's own output: sink, d stays an output)"""
    def reorder(src: str, dst: str, channels: int) -> onnx.NodeProto:
        return helper.make_node("ReorderOutput", [src], [dst], domain=NCHWC_DOMAIN, channels=channels)

    nodes = [helper.make_node("Conv", ["x", "w"], ["t16", "t8"], domain=NCHWC_DOMAIN),
             reorder("t16", "a", 16), reorder("t8", "b", 8),
             helper.make_node("Relu", ["x"], ["c"]), helper.make_node("Neg", ["c"], ["d"])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "abcd"]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)], outs)
    sinks, blocked = insert_observers(graph, ["a", "b", "c", "d"], [11, 12, 13, 14], 2048, keep_outputs={"d"})
    assert blocked == ["a"] and sinks == ["a/trtq_sink", "b/trtq_sink", "d/trtq_sink"]
    ops = [(n.op_type, list(n.input), list(n.output)) for n in graph.node]
    assert ops == [
        ("Conv", ["x", "w"], ["t16", "t8"]),
        ("ObserveSink", ["t16"], ["a/trtq_sink"]),
        ("ReorderOutput", ["t8"], ["b"]),
        ("ObserveSink", ["b"], ["b/trtq_sink"]),
        ("Relu", ["x"], ["c"]),
        ("Observe", ["c"], ["c/trtq_observed"]),
        ("Neg", ["c/trtq_observed"], ["d"]),
        ("ObserveSink", ["d"], ["d/trtq_sink"]),
    ]
    observers = {n.output[0]: {a.name: helper.get_attribute_value(a) for a in n.attribute}
                 for n in graph.node if n.domain == DOMAIN}
    assert observers["a/trtq_sink"] == {"state": 11, "bins": 2048, "channels": 16}
    assert observers["b/trtq_sink"]["channels"] == 0 and observers["c/trtq_observed"]["state"] == 13
    assert [o.name for o in graph.output] == ["d", "a/trtq_sink", "b/trtq_sink", "d/trtq_sink"]


@needs_ops
def test_backend_exposes_the_tensors_when_the_observed_run_fails(monkeypatch):
    """A blocked tensor whose dim 1 is not its channel count fails the first run (the op checks it):
    the backend notes why, exposes the tensors instead, and the statistics are unchanged."""
    original = ort_observe.insert_observers

    def wrong_channels(graph, *args, **kwargs):
        found = original(graph, *args, **kwargs)
        for node in graph.node:
            for attribute in node.attribute:
                if node.domain == DOMAIN and attribute.name == "channels" and attribute.i:
                    attribute.i += 1
        return found

    monkeypatch.setattr(ort_observe, "insert_observers", wrong_channels)
    model = normalize_model(wide_conv_net())
    tensors = list(plan_placement(model).calibrated_tensors)
    batches = _batches((1, 3, 16, 16), seed=6)
    backend = OrtBackend(model, tensors)
    if backend._observing is None or not backend._observing.blocked:
        pytest.skip("no tensor is observed in the blocked layout on this CPU")
    for x in batches:
        backend.observe({"input": x})
    assert backend._observing is None and "observer ops failed" in backend.notes()[0]
    got, want = backend.stats(), plain_exposure_stats(model, tensors, batches)
    for name in tensors:
        assert got[name] == want[name], name


def test_without_the_ops_the_backend_exposes_the_tensors_and_says_why(monkeypatch):
    monkeypatch.setattr(ort_observe, "observer_library", lambda: None)
    model = normalize_model(residual_conv_net())
    tensors = list(plan_placement(model).calibrated_tensors)
    batches = _batches((1, 3, 16, 16), seed=8)
    backend = OrtBackend(model, tensors)
    assert backend._observing is None and "observer ops need onnxruntime >= 1.18" in backend.notes()[0]
    for x in batches:
        backend.observe({"input": x})
    got, want = backend.stats(), plain_exposure_stats(model, tensors, batches)
    for name in tensors:
        assert got[name] == want[name], name
