"""The QAT model: fake-quantizers exactly at the quantize path's Q/DQ placement, right parameters trained."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_models import gemm_matmul_net, residual_conv_net

torch = pytest.importorskip("torch", reason="QAT needs PyTorch (pip install torch); CI installs only .[test]")

from trtq.errors import TrtqError
from trtq.model import normalize_model
from trtq.qat.exporter import export_qdq
from trtq.qat.fakequant import OP_TYPE
from trtq.qat.model import QatModel, trainable_initializers, training_graph
from trtq.quantize import insert_qdq, plan_placement


def _prepared(model: onnx.ModelProto, **exclude):
    normalised = normalize_model(model)
    placement = plan_placement(normalised, **exclude)
    amax = {name: 1.0 + 0.25 * i for i, name in enumerate(placement.calibrated_tensors)}
    return normalised, placement, amax


def _node_table(model: onnx.ModelProto) -> list[tuple]:
    return [(n.name, n.op_type, tuple(n.input), tuple(n.output),
             tuple(sorted((a.name, helper.get_attribute_value(a)) for a in n.attribute if a.name == "axis")))
            for n in model.graph.node]


@pytest.mark.parametrize("build", [lambda: residual_conv_net(batch="N"), gemm_matmul_net])
def test_export_is_node_for_node_the_quantize_paths_graph(build):
    model, placement, amax = _prepared(build())
    qmodel = QatModel(model, placement, amax)
    exported = export_qdq(qmodel).model
    ptq = insert_qdq(model, placement, amax)
    assert _node_table(exported) == _node_table(ptq)
    assert sorted(i.name for i in exported.graph.initializer) == sorted(i.name for i in ptq.graph.initializer)
    # untrained, every scale is the PTQ scale bit for bit
    ptq_inits = {i.name: numpy_helper.to_array(i) for i in ptq.graph.initializer}
    for init in exported.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(init), ptq_inits[init.name])


def test_training_graph_quantizes_each_target_for_exactly_its_consumers():
    # residual net: conv1 -> relu1 feeds conv2 AND the residual add (skip input quantized); the
    # sigmoid head's output is not quantized.
    model, placement, amax = _prepared(residual_conv_net(batch="N"))
    qmodel = QatModel(model, placement, amax)
    assert [(q.tensor, q.kind, q.axis) for q in qmodel.quantizers] == \
        [(t.tensor, t.kind, t.axis) for t in placement.targets]
    graph, quantizers = training_graph(model, placement, amax)  # what the executor runs
    assert quantizers == qmodel.quantizers
    readers = {(n.name, i): name for n in graph.graph.node for i, name in enumerate(n.input)}
    for q, target in zip(qmodel.quantizers, placement.targets):
        for node_name, index in target.consumers:
            assert readers[(node_name, index)] == q.output
    fq_nodes = [n for n in graph.graph.node if n.op_type == OP_TYPE]
    assert len(fq_nodes) == len(placement.targets)
    assert "r1" in {q.tensor for q in qmodel.quantizers}
    assert readers[("add", 1)] == "r1::fake_quantized"
    assert readers[("sigmoid", 0)] == "logits"


def test_excluded_nodes_keep_their_inputs_unquantized():
    model, placement, amax = _prepared(residual_conv_net(batch="N"), exclude_nodes=["conv_head"])
    qmodel = QatModel(model, placement, amax)
    assert "wh" not in {q.tensor for q in qmodel.quantizers}
    assert "pool" not in {q.tensor for q in qmodel.quantizers}
    assert "wh" in qmodel.weight_names  # still fine-tuned, in FP32


def test_untrained_model_matches_onnxruntime_on_the_ptq_model():
    model, placement, amax = _prepared(residual_conv_net(batch="N"))
    qmodel = QatModel(model, placement, amax)
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # Q/DQ nodes as ONNX defines them
    session = ort.InferenceSession(insert_qdq(model, placement, amax).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": x})[0]
    with torch.no_grad():
        got = qmodel(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_trainable_initializers_are_weights_biases_and_norm_affine_only():
    # x -> conv (w, b) -> BN (gamma, beta, mean, var) -> reshape (shape const) -> MatMul (m) -> Add (bias c)
    #   -> Mul (scale k: not a weight of a layer, stays fixed)
    rng = np.random.default_rng(0)
    arr = {"w": rng.standard_normal((4, 2, 1, 1)), "b": np.zeros(4), "gamma": np.ones(4), "beta": np.zeros(4),
           "mean": np.zeros(4), "var": np.ones(4), "m": rng.standard_normal((16, 3)), "c": np.zeros(3),
           "k": np.array(2.0)}
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in arr.items()]
    inits.append(numpy_helper.from_array(np.array([-1, 16], dtype=np.int64), "shape"))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c1"], name="conv"),
             helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn"], name="bn"),
             helper.make_node("Reshape", ["bn", "shape"], ["flat"], name="reshape"),
             helper.make_node("MatMul", ["flat", "m"], ["mm"], name="matmul"),
             helper.make_node("Add", ["mm", "c"], ["biased"], name="add"),
             helper.make_node("Mul", ["biased", "k"], ["y"], name="mul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert trainable_initializers(model) == ("w", "b", "gamma", "beta", "m", "c")


def test_saved_state_round_trips_and_rejects_another_model():
    model, placement, amax = _prepared(residual_conv_net(batch="N"))
    a, b = QatModel(model, placement, amax), QatModel(model, placement, amax)
    with torch.no_grad():
        for p in a.weight_parameters():
            p.add_(0.5)
    b.load_trained_state(a.trained_state())
    assert all(torch.equal(x, y) for x, y in zip(a.weight_parameters(), b.weight_parameters()))
    other_model, other_placement, other_amax = _prepared(gemm_matmul_net())
    other = QatModel(other_model, other_placement, other_amax)
    with pytest.raises(TrtqError, match="saved state has no tensor"):
        b.load_trained_state(other.trained_state())


def test_nodes_without_a_torch_implementation_are_named(monkeypatch):
    from trtq.torch import ops

    monkeypatch.delitem(ops.OPS, "MaxPool")  # as if the executor had no MaxPool: onnxruntime runs it
    model, placement, amax = _prepared(residual_conv_net(batch="N"))
    qmodel = QatModel(model, placement, amax)
    x = np.zeros((1, 3, 16, 16), dtype=np.float32)
    with pytest.raises(TrtqError, match=r"Node maxpool \(MaxPool\) has no PyTorch implementation"):
        qmodel.check_supported({"input": x})


def test_the_fake_quantizer_is_handed_to_the_executor_not_registered():
    from trtq.torch import OnnxModule, ops

    model, placement, amax = _prepared(residual_conv_net(batch="N"))
    qmodel = QatModel(model, placement, amax)
    assert OP_TYPE not in ops.OPS  # the executor's registry stays free of QAT's node
    with torch.no_grad():
        qmodel.run({"input": np.zeros((1, 3, 16, 16), dtype=np.float32)})
    assert qmodel.net.fallback_nodes == ()
    plain = OnnxModule(training_graph(model, placement, amax)[0])  # without the op, onnxruntime cannot run it
    assert all("TrtqFakeQuantize" in node for node in plain.fallback_nodes) and plain.fallback_nodes


def test_non_float32_targets_are_refused():
    model, placement, amax = _prepared(residual_conv_net(batch="N"))
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    with pytest.raises(TrtqError, match="'input' is FLOAT16"):
        QatModel(model, placement, amax)
