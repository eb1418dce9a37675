"""Fake quantization: ONNX QuantizeLinear semantics forward, LSQ gradients backward, positive scales."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch", reason="QAT needs PyTorch (pip install torch); CI installs only .[test]")

from trtq.qat.fakequant import MIN_SCALE, QMAX, QMIN, fake_quantize, step_size

ZERO = torch.zeros(())


def _onnx_qdq(x: np.ndarray, scale: np.ndarray, axis: int | None) -> np.ndarray:
    """x -> QuantizeLinear -> DequantizeLinear (int8, zero point 0) run by onnxruntime."""
    attrs = {"axis": axis} if axis is not None else {}
    zero = np.zeros(scale.shape, dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        initializer=[numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_forward_matches_onnx_per_tensor_with_ties_and_saturation():
    scale = np.float32(0.5)
    # exact ties (x/s = k + 0.5) round to even; beyond +-127.5 steps saturates to 127 / -128
    ties = np.array([0.25, 0.75, 1.25, -0.25, -0.75, -1.25, 63.25, 63.75], dtype=np.float32)
    rng = np.random.default_rng(0)
    x = np.concatenate([ties, np.array([70.0, -70.0, 1e6, -1e6], np.float32),
                        rng.standard_normal(500).astype(np.float32) * 40]).astype(np.float32)
    expected = _onnx_qdq(x, np.array(scale), None)
    got = fake_quantize(torch.from_numpy(x), ZERO, torch.tensor(scale), None).numpy()
    np.testing.assert_array_equal(got, expected)
    assert got[:3].tolist() == [0.0, 1.0, 1.0]  # x/s = 0.5 -> 0, 1.5 -> 2, 2.5 -> 2 (half to even)
    assert got[6:8].tolist() == [63.0, 63.5]  # 126.5 -> 126; 127.5 -> 128, saturated to 127
    assert got[8:12].tolist() == [QMAX * 0.5, QMIN * 0.5, QMAX * 0.5, QMIN * 0.5]  # saturation


def test_forward_matches_onnx_per_channel():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    base = torch.from_numpy((np.abs(w).reshape(6, -1).max(1) / 127).astype(np.float32))
    log_ratio = torch.from_numpy(rng.uniform(-0.7, 0.4, 6).astype(np.float32))
    s_used = step_size(log_ratio, base).numpy()  # the float32 scale the forward pass uses
    expected = _onnx_qdq(w, s_used, 0)
    got = fake_quantize(torch.from_numpy(w), log_ratio, base, 0).numpy()
    np.testing.assert_array_equal(got, expected)


def test_gradients_are_lsq_straight_through():
    x = torch.tensor([0.3, -1.26, 2.0, 200.0, -300.0], requires_grad=True)
    log_s = torch.zeros((), requires_grad=True)
    fake_quantize(x, log_s, torch.tensor(1.0)).sum().backward()
    # inside the range d/dx = 1; saturated elements (200, -300 with s=1) pass nothing
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    s = 1.0
    v = x.detach() / s
    inside = (v.round() >= QMIN) & (v.round() <= QMAX)
    per_elem = torch.where(inside, v.round() - v, v.round().clamp(QMIN, QMAX))
    # d/dlog_s = s * d/ds
    assert log_s.grad.item() == pytest.approx(s * per_elem.sum().item(), rel=1e-6)


def test_per_channel_scale_gradient_reduces_over_other_axes():
    torch.manual_seed(0)
    w = torch.randn(4, 5, requires_grad=True)
    log_s = torch.full((5,), -0.3, requires_grad=True)
    base = torch.full((5,), 0.01)
    upstream = torch.randn(4, 5)
    (fake_quantize(w, log_s, base, 1) * upstream).sum().backward()
    s = step_size(log_s.detach(), base)
    v = w.detach() / s
    q = v.round()
    inside = (q >= QMIN) & (q <= QMAX)
    expected = (upstream * torch.where(inside, q - v, q.clamp(QMIN, QMAX))).sum(0) * s
    torch.testing.assert_close(log_s.grad, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, upstream * inside)


def test_scales_stay_positive_under_an_optimizer_pushing_them_down():
    x = torch.linspace(-1, 1, 101)
    base = torch.tensor(0.01)
    log_s = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([log_s], lr=1e4)
    for _ in range(20):  # the loss rewards small scales: the raw parameter goes far below zero
        loss = step_size(log_s, base) * 1e3
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert log_s.item() < -100
    assert step_size(log_s, base).item() >= MIN_SCALE > 0
    assert torch.isfinite(fake_quantize(x, log_s, base)).all()


def test_zero_log_ratio_gives_the_base_scale_bit_exactly():
    base = torch.tensor([0.0123456789, 3.3e-5, 7.0], dtype=torch.float32)
    assert torch.equal(step_size(torch.zeros(3), base), base)
