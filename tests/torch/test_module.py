"""OnnxModule as a whole: pruning, hooks, cached shape arithmetic, parameters, errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from tiny_models import residual_conv_net

from trtq.errors import TrtqError
from trtq.torch import (
    OnnxModule,
    ops,
)


def two_branch_net() -> onnx.ModelProto:
    """Two independent branches; `b` only feeds the second.

        a [N,4] -> relu -> ra -> mul(2) -> out_a
        b [N,4] -> det-free branch: sigmoid -> out_b
    """
    nodes = [
        helper.make_node("Relu", ["a"], ["ra"], name="relu"),
        helper.make_node("Mul", ["ra", "two"], ["out_a"], name="mul"),
        helper.make_node("Sigmoid", ["b"], ["out_b"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes, "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in ("a", "b")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in ("out_a", "out_b")],
        initializer=[numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def shape_net() -> onnx.ModelProto:
    """Flatten by shape arithmetic, as exporters write it.

        x [N,C,H,W] -> Shape -> Gather(0) -> Unsqueeze -> Concat([n, -1]) -> Reshape(x) -> y [N, C*H*W]
    """
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsqueeze"),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
    ]
    graph = helper.make_graph(nodes, "shape", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 24])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_only_needed_nodes_run():
    module = OnnxModule(two_branch_net())
    a = torch.randn(3, 4)
    out = module.run({"a": a}, outputs=["out_a"])  # `b` is not fed: its branch is pruned
    torch.testing.assert_close(out["out_a"], torch.relu(a) * 2)
    with pytest.raises(TrtqError, match="'b' was not fed"):
        module.run({"a": a})


def test_hook_sees_watched_tensors_in_order_without_keeping_them():
    model = residual_conv_net()
    module = OnnxModule(model)
    x = torch.randn(2, 3, 16, 16)
    seen: list[tuple[str, tuple[int, ...]]] = []
    out = module.run({"input": x}, outputs=[], watch=["r3", "input", "c1"],
                     hook=lambda name, t: seen.append((name, tuple(t.shape))))
    assert out == {}
    assert seen == [("input", (2, 3, 16, 16)), ("c1", (2, 8, 16, 16)), ("r3", (2, 8, 16, 16))]
    # the conv head after r3 was pruned: asking for its output needs the whole graph
    full = module.run({"input": x}, watch=["logits"], hook=lambda name, t: seen.append((name, tuple(t.shape))))
    assert seen[-1] == ("logits", (2, 4, 8, 8)) and full["scores"].shape == (2, 4, 8, 8)


def test_shape_arithmetic_is_cached_per_input_shape(monkeypatch):
    calls = []
    original = ops.OPS["Gather"]
    monkeypatch.setitem(ops.OPS, "Gather", ops.OpDef(lambda ctx, *a: calls.append(1) or original.fn(ctx, *a), original.host))
    module = OnnxModule(shape_net())
    for n in (2, 2, 2, 5, 5):
        x = torch.randn(n, 2, 3, 4)
        torch.testing.assert_close(module.run({"x": x})["y"], x.reshape(n, 24))
    assert len(calls) == 2  # once per batch size: later runs reuse the cached host values
    assert module.last_run_capturable


def test_float_initializers_are_trainable_parameters():
    model = residual_conv_net()
    module = OnnxModule(model)
    floats = [i.name for i in model.graph.initializer]
    assert len(list(module.parameters())) == len(floats)
    weight = module.parameter("w1")
    np.testing.assert_array_equal(weight.detach().numpy(), numpy_helper.to_array(model.graph.initializer[0]))
    weight.requires_grad_(True)
    loss = module(torch.randn(1, 3, 16, 16)).sum()  # forward(): positional inputs, the single output
    loss.backward()
    assert weight.grad is not None and float(weight.grad.abs().sum()) > 0


def test_weights_behind_shape_ops_still_get_gradients():
    # y = x @ reshape(w, [4, 2]): the Reshape reads a constant shape, but w must stay trainable.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["w", "shape"], ["w2"], name="reshape"),
         helper.make_node("MatMul", ["x", "w2"], ["y"], name="matmul")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        initializer=[numpy_helper.from_array(np.arange(8, dtype=np.float32), "w"),
                     numpy_helper.from_array(np.array([4, 2], np.int64), "shape")])
    module = OnnxModule(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    w = module.parameter("w").requires_grad_(True)
    for _ in range(2):
        w.grad = None
        module(torch.ones(2, 4)).sum().backward()
        torch.testing.assert_close(w.grad, torch.full((8,), 2.0))
    with torch.no_grad():
        w.add_(1.0)  # training updates reach the next forward
    torch.testing.assert_close(module(torch.ones(2, 4)), torch.tensor([[16.0, 20.0], [16.0, 20.0]]))


def if_net(else_op: str = "Neg") -> onnx.ModelProto:
    """An If whose branches read outer values (as scripted exporters write them).

        x [N,4] -> relu -> r ----------------------------+ (read inside both branches)
        x -> ReduceSum -> s -> Greater(0) -> cond -> If: then  y = r * 3
                                                          else  y = Neg(r) -> Add(s)
    """
    then_g = helper.make_graph([helper.make_node("Mul", ["r", "three"], ["t_out"], name="t_mul")], "then", [],
                               [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)],
                               initializer=[numpy_helper.from_array(np.array(3.0, np.float32), "three")])
    else_g = helper.make_graph([helper.make_node(else_op, ["r"], ["neg"], name="e_neg"),
                                helper.make_node("Add", ["neg", "s"], ["e_out"], name="e_add")], "else", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="greater"),
        helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g),
    ]
    graph = helper.make_graph(nodes, "if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by older onnxruntime releases too
    return model


def test_if_runs_the_chosen_branch_with_outer_values():
    import onnxruntime as ort

    model = if_net()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    module = OnnxModule(model)
    assert module.fallback_nodes == ()
    for sign in (1.0, -1.0, 1.0):
        x = (np.abs(np.random.default_rng(1).standard_normal((2, 4))) * sign).astype(np.float32)
        expected = session.run(None, {"x": x})[0]
        np.testing.assert_allclose(module.run({"x": torch.from_numpy(x)})["y"].numpy(), expected, rtol=1e-6)


def test_unimplemented_op_inside_a_branch_is_reported_and_runs():
    import onnxruntime as ort

    model = if_net(else_op="Hardmax")  # no torch implementation: onnxruntime runs it
    module = OnnxModule(model)
    assert module.fallback_nodes == ("e_neg (Hardmax)",)
    x = -np.abs(np.random.default_rng(2).standard_normal((2, 4))).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(module.run({"x": torch.from_numpy(x)})["y"].numpy(), expected, rtol=1e-6)


def loop_net() -> onnx.ModelProto:
    """A Loop whose body reads two values from the enclosing graph by name, as torch's legacy
    exporter writes a scripted `for` loop (the body's MatMul weight is a main-graph initializer):

        x [N,4] -> relu -> r ------------------------------------+ (outer activation)
        trips (3) --> Loop(acc = x): body  acc -> MatMul(w) -> Add(r) -> acc   | (outer initializer w)
                                     -> y [N,4]
    """
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
         helper.make_node("MatMul", ["acc_in", "w"], ["mm"], name="body_matmul"),
         helper.make_node("Add", ["mm", "r"], ["acc_out"], name="body_add")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None)],
    )
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Loop", ["trips", "go", "x"], ["y"], name="loop", body=body)]
    w = (np.random.default_rng(0).standard_normal((4, 4)) * 0.3).astype(np.float32)
    graph = helper.make_graph(
        nodes, "loop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(3, np.int64), "trips"),
                     numpy_helper.from_array(np.array(True), "go")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_loop_body_reading_outer_values_runs_in_onnxruntime():
    """A Loop goes to onnxruntime; its one-node model must get the outer values its body reads
    (it failed as an invalid graph: 'input w of node body_matmul is not output of any previous nodes')."""
    import onnxruntime as ort

    model = loop_net()
    module = OnnxModule(model)
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(module.run({"x": torch.from_numpy(x)})["y"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert module.fallback_nodes == ("loop (Loop)",)


def test_bad_names_are_reported():
    module = OnnxModule(residual_conv_net())
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(TrtqError, match="'nope' is neither produced"):
        module.run({"input": x}, watch=["nope"], hook=lambda n, t: None)
    with pytest.raises(TrtqError, match="Feed 'images' is not an input"):
        module.run({"images": x})


def test_ops_handed_to_one_module_stay_with_it():
    # two_branch_net's Sigmoid replaced for one module only: the registry and other modules keep torch's
    x = {"a": torch.ones(1, 4), "b": torch.zeros(1, 4)}
    mine = OnnxModule(two_branch_net(), ops={"Sigmoid": ops.OpDef(lambda ctx, t: t - 7.0)})
    assert torch.equal(mine.run(x)["out_b"], torch.full((1, 4), -7.0))
    assert torch.equal(OnnxModule(two_branch_net()).run(x)["out_b"], torch.full((1, 4), 0.5))


def test_qat_entry_points_are_not_in_the_executor():
    import trtq.torch

    with pytest.raises(AttributeError, match=r"trtq.torch.prepare moved to trtq.qat.prepare"):
        trtq.torch.prepare  # noqa: B018
