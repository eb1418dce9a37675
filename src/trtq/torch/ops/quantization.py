"""QuantizeLinear and DequantizeLinear."""

from __future__ import annotations

import torch

from trtq.torch.ops.registry import OpContext, Tensor, Unsupported, op, positive_axis

_QRANGE = {torch.int8: (-128, 127), torch.uint8: (0, 255), torch.int16: (-32768, 32767)}


def _per_axis(t: Tensor, x: Tensor, axis: int) -> Tensor:
    if t.dim() == 0 or t.numel() == 1:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[positive_axis(axis, x.dim())] = t.numel()
    return t.reshape(shape)


@op("QuantizeLinear")
def quantize_linear(ctx: OpContext, x: Tensor, scale: Tensor, zero: Tensor | None = None) -> Tensor:
    if ctx.get("block_size", 0):
        raise Unsupported("blocked QuantizeLinear")
    dtype = torch.uint8 if zero is None else zero.dtype
    if dtype not in _QRANGE:
        raise Unsupported(f"QuantizeLinear to {dtype}")
    lo, hi = _QRANGE[dtype]
    axis = ctx.get("axis", 1)
    q = torch.round(x / _per_axis(scale, x, axis).to(x.dtype))
    if zero is not None:
        q = q + _per_axis(zero, x, axis).to(x.dtype)
    return q.clamp(lo, hi).to(dtype)


@op("DequantizeLinear")
def dequantize_linear(ctx: OpContext, x: Tensor, scale: Tensor, zero: Tensor | None = None) -> Tensor:
    if ctx.get("block_size", 0):
        raise Unsupported("blocked DequantizeLinear")
    axis = ctx.get("axis", 1)
    y = x.to(torch.int32) if x.dtype != torch.int32 else x
    if zero is not None:
        y = y - _per_axis(zero, x, axis).to(torch.int32)
    return y.to(scale.dtype) * _per_axis(scale, x, axis)
