"""Convolution, matrix products, normalisation, softmax and pooling."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from trtq.torch.ops.registry import OpContext, Result, Tensor, Unsupported, op, positive_axis, torch_pad


def _same_pads(in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
               dilations: Sequence[int], upper: bool) -> list[int]:
    begins, ends = [], []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begins.append(small if upper else big)
        ends.append(big if upper else small)
    return begins + ends


def _pads(ctx: OpContext, in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
          dilations: Sequence[int]) -> list[int]:
    """ONNX pads [begin..., end...] after resolving auto_pad."""
    auto = ctx.get("auto_pad", "NOTSET")
    nd = len(in_sizes)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(in_sizes, kernel, strides, dilations, auto == "SAME_UPPER")
    if auto == "VALID":
        return [0] * (2 * nd)
    return list(ctx.get("pads", [0] * (2 * nd)))



_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@op("Conv")
def conv(ctx: OpContext, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    nd = x.dim() - 2
    if nd not in _CONV:
        raise Unsupported(f"{nd}-D Conv")
    strides = list(ctx.get("strides", [1] * nd))
    dilations = list(ctx.get("dilations", [1] * nd))
    pads = _pads(ctx, x.shape[2:], w.shape[2:], strides, dilations)
    if pads[:nd] == pads[nd:]:
        padding: list[int] | int = pads[:nd]
    else:
        x = F.pad(x, torch_pad(pads))
        padding = 0
    return _CONV[nd](x, w, b, strides, padding, dilations, ctx.get("group", 1))


@op("ConvTranspose")
def conv_transpose(ctx: OpContext, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    nd = x.dim() - 2
    if nd not in _CONV_T:
        raise Unsupported(f"{nd}-D ConvTranspose")
    strides = list(ctx.get("strides", [1] * nd))
    dilations = list(ctx.get("dilations", [1] * nd))
    out_pad = list(ctx.get("output_padding", [0] * nd))
    kernel = list(w.shape[2:])
    full = [s * (i - 1) + op_ + (k - 1) * d + 1
            for i, s, op_, k, d in zip(x.shape[2:], strides, out_pad, kernel, dilations)]
    auto = ctx.get("auto_pad", "NOTSET")
    if "output_shape" in ctx.attrs or auto in ("SAME_UPPER", "SAME_LOWER"):
        target = list(ctx.get("output_shape", [i * s for i, s in zip(x.shape[2:], strides)]))[-nd:]
        totals = [f - t for f, t in zip(full, target)]
        if auto == "SAME_UPPER":
            pads = [t // 2 for t in totals] + [t - t // 2 for t in totals]
        else:
            pads = [t - t // 2 for t in totals] + [t // 2 for t in totals]
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    else:
        pads = list(ctx.get("pads", [0] * (2 * nd)))
    group = ctx.get("group", 1)
    if pads[:nd] == pads[nd:]:
        return _CONV_T[nd](x, w, b, strides, pads[:nd], out_pad, group, dilations)
    if any(p < 0 for p in pads):
        raise Unsupported("negative ConvTranspose pads")
    y = _CONV_T[nd](x, w, b, strides, 0, out_pad, group, dilations)
    index = [slice(None), slice(None)] + [slice(pads[i], y.shape[2 + i] - pads[nd + i]) for i in range(nd)]
    return y[tuple(index)]


@op("Gemm")
def gemm(ctx: OpContext, a: Tensor, b: Tensor, c: Tensor | None = None) -> Tensor:
    alpha, beta = ctx.get("alpha", 1.0), ctx.get("beta", 1.0)
    if ctx.get("transA", 0):
        a = a.t()
    if ctx.get("transB", 0) and alpha == 1.0 and (c is None or beta == 1.0):
        return F.linear(a, b, c)
    if ctx.get("transB", 0):
        b = b.t()
    y = a @ b
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c if beta == 1.0 else c * beta)
    return y


@op("MatMul")
def matmul(ctx: OpContext, a: Tensor, b: Tensor) -> Tensor:
    return torch.matmul(a, b)


@op("Einsum")
def einsum(ctx: OpContext, *xs: Tensor) -> Tensor:
    return torch.einsum(ctx.get("equation"), *xs)


@op("BatchNormalization")
def batch_norm(ctx: OpContext, x: Tensor, scale: Tensor, bias: Tensor, mean_: Tensor, var: Tensor) -> Tensor:
    if ctx.num_outputs > 1:
        raise Unsupported("BatchNormalization in training mode")
    return F.batch_norm(x, mean_, var, scale, bias, False, 0.0, ctx.get("epsilon", 1e-5))


@op("InstanceNormalization")
def instance_norm(ctx: OpContext, x: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=ctx.get("epsilon", 1e-5))


@op("LayerNormalization")
def layer_norm(ctx: OpContext, x: Tensor, scale: Tensor, bias: Tensor | None = None) -> Result:
    axis = positive_axis(ctx.get("axis", -1), x.dim())
    eps = ctx.get("epsilon", 1e-5)
    shape = tuple(x.shape[axis:])
    y = F.layer_norm(x, shape, scale.expand(shape), None if bias is None else bias.expand(shape), eps)
    if ctx.num_outputs == 1:
        return y
    dims = tuple(range(axis, x.dim()))
    mu = x.mean(dim=dims, keepdim=True)
    inv = torch.rsqrt(x.var(dim=dims, keepdim=True, unbiased=False) + eps)
    return (y, mu, inv)[: ctx.num_outputs]


@op("GroupNormalization")
def group_norm(ctx: OpContext, x: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    groups = ctx.get("num_groups")
    channels = x.shape[1]
    if scale.numel() == groups and groups != channels:  # opset 18: one scale per group
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    return F.group_norm(x, groups, scale, bias, ctx.get("epsilon", 1e-5))


@op("LRN")
def lrn(ctx: OpContext, x: Tensor) -> Tensor:
    return F.local_response_norm(x, ctx.get("size"), ctx.get("alpha", 1e-4), ctx.get("beta", 0.75), ctx.get("bias", 1.0))


def _softmax_like(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def run(ctx: OpContext, x: Tensor) -> Tensor:
        if ctx.opset >= 13:
            return fn(x, dim=ctx.get("axis", -1))
        axis = positive_axis(ctx.get("axis", 1), x.dim())
        rows = math.prod(x.shape[:axis])
        return fn(x.reshape(rows, -1), dim=1).reshape(x.shape)

    return run


op("Softmax")(_softmax_like(torch.softmax))
op("LogSoftmax")(_softmax_like(torch.log_softmax))


# --- pooling ------------------------------------------------------------------------------------

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


@op("MaxPool")
def max_pool(ctx: OpContext, x: Tensor) -> Tensor:
    nd = x.dim() - 2
    if ctx.num_outputs > 1 or nd not in _MAX_POOL:
        raise Unsupported("MaxPool with indices or rank")
    kernel = list(ctx.get("kernel_shape"))
    strides = list(ctx.get("strides", [1] * nd))
    dilations = list(ctx.get("dilations", [1] * nd))
    pads = _pads(ctx, x.shape[2:], kernel, strides, dilations)
    ceil_mode = bool(ctx.get("ceil_mode", 0))
    symmetric = pads[:nd] == pads[nd:] and all(2 * p <= k for p, k in zip(pads[:nd], kernel))
    if not symmetric:
        if ceil_mode:
            raise Unsupported("asymmetric MaxPool pads with ceil_mode")
        x = F.pad(x, torch_pad(pads), value=float("-inf"))
        pads = [0] * (2 * nd)
    return _MAX_POOL[nd](x, kernel, strides, pads[:nd], dilations, ceil_mode)


@op("AveragePool")
def avg_pool(ctx: OpContext, x: Tensor) -> Tensor:
    nd = x.dim() - 2
    if nd not in _AVG_POOL or any(d != 1 for d in ctx.get("dilations", [1] * nd)):
        raise Unsupported("dilated AveragePool")
    kernel = list(ctx.get("kernel_shape"))
    strides = list(ctx.get("strides", [1] * nd))
    pads = _pads(ctx, x.shape[2:], kernel, strides, [1] * nd)
    include = bool(ctx.get("count_include_pad", 0))
    ceil_mode = bool(ctx.get("ceil_mode", 0))
    if pads[:nd] != pads[nd:] or any(2 * p > k for p, k in zip(pads[:nd], kernel)):
        if not include or ceil_mode:
            raise Unsupported("asymmetric AveragePool pads")
        x = F.pad(x, torch_pad(pads))
        pads = [0] * (2 * nd)
    return _AVG_POOL[nd](x, kernel, strides, pads[:nd], ceil_mode, include)


@op("GlobalAveragePool")
def global_avg_pool(ctx: OpContext, x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def global_max_pool(ctx: OpContext, x: Tensor) -> Tensor:
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)
