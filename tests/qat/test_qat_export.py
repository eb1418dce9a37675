"""Export of a fine-tuned model: learned values land exactly in the Q/DQ ONNX; onnxruntime agrees."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tiny_models import gemm_matmul_net, residual_conv_net

torch = pytest.importorskip("torch", reason="QAT needs PyTorch (pip install torch); CI installs only .[test]")

from trtq.model import normalize_model
from trtq.qat.exporter import check_parity, export_qdq
from trtq.qat.model import QatModel
from trtq.quantize import plan_placement


def _trained(model: onnx.ModelProto, feeds: dict[str, np.ndarray], steps: int = 8) -> QatModel:
    """A QAT model moved off its PTQ start: a few Adam steps towards shrunken FP32 outputs."""
    normalised = normalize_model(model)
    placement = plan_placement(normalised)
    amax = {name: 2.0 for name in placement.calibrated_tensors}
    qmodel = QatModel(normalised, placement, amax)
    torch.manual_seed(0)
    with torch.no_grad():
        goal = {k: v * 0.9 for k, v in qmodel.run(feeds).items()}
    opt = torch.optim.Adam(qmodel.param_groups(1e-2, 5e-2))
    for _ in range(steps):
        out = qmodel.run(feeds)
        loss = sum((out[k] - goal[k]).pow(2).mean() for k in goal)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return qmodel


def _conv_feeds(n: int = 6) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(3).standard_normal((n, 3, 16, 16)).astype(np.float32)}


def test_learned_weights_and_scales_are_written_exactly():
    qmodel = _trained(residual_conv_net(batch="N"), _conv_feeds())
    export = export_qdq(qmodel)
    inits = {i.name: numpy_helper.to_array(i) for i in export.model.graph.initializer}
    q_nodes = {n.input[0]: n for n in export.model.graph.node if n.op_type == "QuantizeLinear"}
    scales = qmodel.scales()
    moved = 0
    for q in qmodel.quantizers:
        written = inits[q_nodes[q.tensor].input[1]]
        expected = scales[q.tensor].numpy()
        assert written.dtype == np.float32 and written.shape == expected.shape
        np.testing.assert_array_equal(written, expected)  # bit for bit what the forward pass used
        assert (written > 0).all()
        moved += int(not np.array_equal(expected, qmodel.net.parameter(q.base_scale).detach().numpy()))
        if q.kind == "activation":
            assert np.float32(export.activation_amax[q.tensor] / 127.0) == expected
    assert moved == len(qmodel.quantizers)  # training really changed every step size
    for name in qmodel.weight_names:
        np.testing.assert_array_equal(inits[name], qmodel.net.parameter(name).detach().numpy())
    onnx.checker.check_model(export.model)


def test_quantizers_match_onnxruntime_exactly_and_the_first_layer_within_one_step():
    # residual net: `input` and the weights are quantized from identical values (0 steps apart);
    # r1 = relu(conv(input, w1)) differs only by the runtimes' summation order (at most 1 step);
    # deeper tensors may inherit an upstream flip, so only their share of differing codes is bounded.
    feeds = _conv_feeds()
    qmodel = _trained(residual_conv_net(batch="N"), feeds)
    report = check_parity(qmodel, export_qdq(qmodel).model, [feeds])
    assert report.local_max_steps == 0  # same input, same codes: rounding and saturation as ONNX defines them
    assert report.tensors == len(qmodel.quantizers) and report.elements > 0
    assert report.steps_by_tensor["input"] == 0
    assert all(report.steps_by_tensor[q.tensor] == 0 for q in qmodel.quantizers if q.kind == "weight")
    assert report.steps_by_tensor["r1"] <= 1
    assert report.mismatched <= 0.01 * report.elements
    assert report.output_max_abs_diff < 1e-2


def test_one_layer_deep_model_is_within_one_step_everywhere():
    # gemm_matmul_net: every quantized activation is one layer from the input (gemm -> relu; reshape)
    feeds = {"x": np.random.default_rng(4).standard_normal((1, 32)).astype(np.float32)}
    qmodel = _trained(gemm_matmul_net(), feeds)
    report = check_parity(qmodel, export_qdq(qmodel).model, [feeds])
    assert report.max_steps <= 1, report
    assert report.local_max_steps == 0
    assert report.ok
    assert report.output_max_abs_diff < 1e-3


def test_parity_detects_an_export_that_does_not_match():
    feeds = _conv_feeds()
    qmodel = _trained(residual_conv_net(batch="N"), feeds)
    export = export_qdq(qmodel).model
    q_node = next(n for n in export.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "pool")
    for init in export.graph.initializer:  # halve the last activation scale, in the file only
        if init.name == q_node.input[1]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) / 2, init.name))
    report = check_parity(qmodel, export, [feeds])
    assert report.max_steps > 1 and report.local_max_steps > 1
    assert not report.ok
    assert report.worst_tensor == "pool"


def test_the_pairs_around_a_maxpool_train_one_scale():
    # residual net: relu3 = r3 -> maxpool = pool -> conv_head; r3 is read by the pool alone and starts with pool's
    # range (as calibration ties them), so it reads pool's step size and the two stay equal as the step sizes move
    qmodel = _trained(residual_conv_net(batch="N"), _conv_feeds())  # every amax 2.0
    by_tensor = {q.tensor: q for q in qmodel.quantizers}
    assert by_tensor["r3"].log_ratio == by_tensor["pool"].log_ratio
    assert len(qmodel.scale_parameters()) == len(qmodel.quantizers) - 1
    scales = qmodel.scales()
    assert scales["r3"] == scales["pool"] and scales["pool"] != qmodel.net.parameter(by_tensor["pool"].base_scale)
    export = export_qdq(qmodel)
    assert export.activation_amax["r3"] == export.activation_amax["pool"]
