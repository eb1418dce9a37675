"""Fake quantization with a learned step size (LSQ-style), exactly as ONNX QuantizeLinear rounds.

Forward: `clamp(round_half_even(x / s), -128, 127) * s` in the tensor's float type, the value a
QuantizeLinear -> DequantizeLinear pair with scale `s` and zero point 0 (int8) produces.
Backward (straight-through estimator, Esser et al. 2020, "Learned Step Size Quantization"):
- d/dx = 1 where x/s lies inside [-128, 127], else 0 (saturated elements pass no gradient);
- d/ds = round(x/s) - x/s inside, the saturation bound (-128 or 127) outside.

The step size is `s = s0 * exp(r)`: `s0` is the fixed PTQ scale (amax / 127, or per-channel
max|w| / 127) and `r` the learned log-ratio, starting at 0. So `s` is positive whatever the
optimizer does, moves in relative steps (one learning rate suits scales of any magnitude), and
starts bit-exactly at the PTQ scale (exp(0) = 1). `step_size` is the one place that computes it,
for the forward pass and for the export alike, so the exported float32 scale is the one the model
trained with.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import torch

from trtq.formats.ranges import MIN_AMAX
from trtq.torch.ops import OpContext, OpDef

QMIN, QMAX = -128, 127
"""Signed 8-bit range of ONNX QuantizeLinear (zero point 0): saturation bounds."""

QUANT_LEVEL = 127.0
"""amax = scale * 127 (docs/design.md: scale = amax / 127)."""

MIN_SCALE = MIN_AMAX / QUANT_LEVEL
"""Smallest scale a learned step may reach (the quantize path's floor for amax, over 127)."""

OP_TYPE = "TrtqFakeQuantize"
"""Op type of the fake-quantization nodes in the executor-only training graph (never exported)."""


def step_size(log_ratio: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """The positive step size `base * exp(log_ratio)`, floored at MIN_SCALE."""
    return (base * torch.exp(log_ratio)).clamp_min(MIN_SCALE)


def _broadcast(scale: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Per-tensor scale as a scalar; per-channel scale shaped to broadcast along `axis` of `x`."""
    if axis is None:
        return scale.reshape(())
    shape = [1] * x.dim()
    shape[axis % x.dim()] = scale.numel()
    return scale.reshape(shape)


class _FakeQuantize(torch.autograd.Function):
    """QuantizeLinear + DequantizeLinear with step `base * exp(log_ratio)`, LSQ gradients for `x`
    and `log_ratio` (d/dlog_ratio = s * d/ds).

    One function for the scale and the rounding keeps the per-step op count low (the executor
    is launch-bound on small layers): the forward pass saves the saturation mask and d(out)/ds per
    element, so the backward pass is a masked copy and one reduction.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, log_ratio: torch.Tensor, base: torch.Tensor,
                axis: int | None) -> torch.Tensor:
        scale = step_size(log_ratio, base)
        s = _broadcast(scale, x, axis).to(x.dtype)
        v = x / s
        rounded = torch.round(v)
        q = rounded.clamp(QMIN, QMAX)
        inside = (rounded == q).to(x.dtype)  # 1 where not saturated
        slope = torch.addcmul(q, v, inside, value=-1.0) if ctx.needs_input_grad[1] else None  # q - v inside, q out
        ctx.save_for_backward(inside, slope, scale)
        ctx.axis = axis
        return q * s

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        inside, slope, scale = ctx.saved_tensors
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_ratio = None
        if ctx.needs_input_grad[1]:
            per_element = grad * slope
            if ctx.axis is None:
                grad_scale = per_element.sum()
            else:
                axis = ctx.axis % grad.dim()
                grad_scale = per_element.sum(dim=[d for d in range(grad.dim()) if d != axis])
            grad_ratio = (grad_scale.reshape(scale.shape) * scale).to(scale.dtype)
        return grad_x, grad_ratio, None, None


def fake_quantize(x: torch.Tensor, log_ratio: torch.Tensor, base: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Symmetric int8 fake quantization of `x` with step `base * exp(log_ratio)` (per tensor, or
    per channel along `axis` with one value per channel)."""
    return _FakeQuantize.apply(x, log_ratio, base, axis)


def quantized_codes(x: torch.Tensor, scale: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """The int8 codes QuantizeLinear gives `x` with `scale` (round half to even, saturate), as int32."""
    s = _broadcast(scale, x, axis).to(x.dtype)
    return torch.clamp(torch.round(x / s), QMIN, QMAX).to(torch.int32)


def _run_fake_quantize(ctx: OpContext, x: torch.Tensor, log_ratio: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    return fake_quantize(x, log_ratio, base, ctx.get("axis"))


EXECUTOR_OPS: Mapping[str, OpDef] = MappingProxyType({OP_TYPE: OpDef(_run_fake_quantize)})
"""The fake-quantization node for trtq's ONNX executor: `OnnxModule(graph, ops=EXECUTOR_OPS)`.

The node reads (tensor, log_ratio, base_scale) and has an optional `axis` attribute (per
channel). It exists only in the in-memory training graph; exports write real Q/DQ pairs.
"""
