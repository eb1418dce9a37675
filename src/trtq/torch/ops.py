"""ONNX operators as torch functions, one small function per op type.

Each function takes an `OpContext` (attributes, opset, compute device) and the node's inputs as
tensors (None for an omitted optional input) and returns one tensor or a tuple. Inputs listed in
`host` are shape-like (a Reshape's shape, a Slice's starts...): the executor passes them as CPU
tensors so that reading them needs no device synchronisation. A function raises `Unsupported`
for an attribute combination it does not implement; the executor then runs that node with
onnxruntime instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from trtq.torch.dtypes import ONNX_TO_TORCH

Tensor = torch.Tensor
Result = Tensor | tuple[Tensor, ...]


class Unsupported(Exception):
    """This node's attributes or inputs are outside what the torch implementation covers."""


@dataclass(frozen=True)
class OpContext:
    """What an op function may know besides its inputs."""

    attrs: dict[str, Any]
    opset: int
    num_outputs: int
    device: torch.device
    name: str = ""

    def get(self, key: str, default: Any = None) -> Any:
        """Attribute `key`, or `default` when the node does not set it."""
        return self.attrs.get(key, default)


@dataclass(frozen=True)
class OpDef:
    """An op function and the input positions it reads on the host."""

    fn: Callable[..., Result]
    host: frozenset[int] = field(default_factory=frozenset)


OPS: dict[str, OpDef] = {}
"""Default-domain op type -> implementation."""

SHAPE_OPS = frozenset({"Shape", "Size"})
"""Ops whose output depends only on the input's shape."""

DATA_DEPENDENT_OPS = frozenset({"NonZero"})
"""Ops whose output shape depends on input values (their results force a device sync)."""


def op(*names: str, host: Sequence[int] = ()) -> Callable[[Callable[..., Result]], Callable[..., Result]]:
    """Register `fn` for op types `names`; `host` are the shape-like input positions."""

    def register(fn: Callable[..., Result]) -> Callable[..., Result]:
        for name in names:
            OPS[name] = OpDef(fn, frozenset(host))
        return fn

    return register


def ints(t: Tensor | None) -> list[int]:
    """A host tensor's values as Python ints ([] for None)."""
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def floats(t: Tensor | None) -> list[float]:
    """A host tensor's values as Python floats ([] for None)."""
    return [] if t is None else [float(v) for v in t.reshape(-1).tolist()]


def scalar(t: Tensor) -> float | int | bool:
    """The one value of a host tensor."""
    return t.reshape(-1)[0].item()


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# --- elementwise --------------------------------------------------------------------------------

_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp,
    "Log": torch.log, "Sqrt": torch.sqrt, "Reciprocal": torch.reciprocal, "Neg": torch.neg,
    "Abs": torch.abs, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,
    "Erf": torch.erf, "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan, "Asin": torch.asin,
    "Acos": torch.acos, "Atan": torch.atan, "Sinh": torch.sinh, "Cosh": torch.cosh,
    "Sign": torch.sign, "Softsign": F.softsign, "Mish": F.mish, "HardSwish": F.hardswish,
    "IsNaN": torch.isnan, "Not": torch.logical_not,
}


def _unary(fn: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    return lambda ctx, x: fn(x)


for _name, _fn in _UNARY.items():
    op(_name)(_unary(_fn))


@op("Identity")
def identity(ctx: OpContext, x: Tensor) -> Tensor:
    return x


@op("Dropout")
def dropout(ctx: OpContext, x: Tensor, *rest: Tensor | None) -> Result:
    if ctx.num_outputs > 1:
        return x, torch.ones_like(x, dtype=torch.bool)
    return x


@op("Softplus")
def softplus(ctx: OpContext, x: Tensor) -> Tensor:
    return F.softplus(x)


@op("LeakyRelu")
def leaky_relu(ctx: OpContext, x: Tensor) -> Tensor:
    return F.leaky_relu(x, ctx.get("alpha", 0.01))


@op("Elu")
def elu(ctx: OpContext, x: Tensor) -> Tensor:
    return F.elu(x, ctx.get("alpha", 1.0))


@op("Celu")
def celu(ctx: OpContext, x: Tensor) -> Tensor:
    return F.celu(x, ctx.get("alpha", 1.0))


@op("Selu")
def selu(ctx: OpContext, x: Tensor) -> Tensor:
    alpha = ctx.get("alpha", 1.67326319217681884765625)
    gamma = ctx.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


@op("ThresholdedRelu")
def thresholded_relu(ctx: OpContext, x: Tensor) -> Tensor:
    return torch.where(x > ctx.get("alpha", 1.0), x, torch.zeros((), dtype=x.dtype, device=x.device))


@op("HardSigmoid")
def hard_sigmoid(ctx: OpContext, x: Tensor) -> Tensor:
    return torch.clamp(x * ctx.get("alpha", 0.2) + ctx.get("beta", 0.5), 0.0, 1.0)


@op("Gelu")
def gelu(ctx: OpContext, x: Tensor) -> Tensor:
    return F.gelu(x, approximate=ctx.get("approximate", "none"))


@op("PRelu")
def prelu(ctx: OpContext, x: Tensor, slope: Tensor) -> Tensor:
    return torch.where(x >= 0, x, x * slope)


@op("IsInf")
def is_inf(ctx: OpContext, x: Tensor) -> Tensor:
    pos, neg = ctx.get("detect_positive", 1), ctx.get("detect_negative", 1)
    if pos and neg:
        return torch.isinf(x)
    if pos:
        return torch.isposinf(x)
    if neg:
        return torch.isneginf(x)
    return torch.zeros_like(x, dtype=torch.bool)


@op("Clip", host=(1, 2))
def clip(ctx: OpContext, x: Tensor, lo: Tensor | None = None, hi: Tensor | None = None) -> Tensor:
    if ctx.opset < 11:
        low, high = ctx.get("min"), ctx.get("max")
    else:
        low = None if lo is None else scalar(lo)
        high = None if hi is None else scalar(hi)
    if low is None and high is None:
        return x
    return torch.clamp(x, low, high)


def _int_div(a: Tensor, b: Tensor) -> Tensor:
    if a.dtype.is_floating_point or b.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _int_div,
    "Equal": torch.eq, "Less": torch.lt, "LessOrEqual": torch.le, "Greater": torch.gt,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
    "Xor": torch.logical_xor,
}


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    return lambda ctx, a, b: fn(a, b)


for _name, _fn in _BINARY.items():
    op(_name)(_binary(_fn))


@op("Pow")
def pow_(ctx: OpContext, x: Tensor, y: Tensor) -> Tensor:
    out = torch.pow(x, y)
    return out if out.dtype == x.dtype else out.to(x.dtype)


@op("Mod")
def mod(ctx: OpContext, a: Tensor, b: Tensor) -> Tensor:
    return torch.fmod(a, b) if ctx.get("fmod", 0) else torch.remainder(a, b)


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    def run(ctx: OpContext, *xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out

    return run


op("Max")(_variadic(torch.maximum))
op("Min")(_variadic(torch.minimum))
op("Sum")(_variadic(torch.add))


@op("Mean")
def mean(ctx: OpContext, *xs: Tensor) -> Tensor:
    return _variadic(torch.add)(ctx, *xs) / len(xs)


@op("Where")
def where(ctx: OpContext, cond: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(cond, a, b)


@op("Cast")
def cast(ctx: OpContext, x: Tensor) -> Tensor:
    to = ctx.get("to")
    if to not in ONNX_TO_TORCH:
        raise Unsupported(f"Cast to ONNX type {to}")
    return x.to(ONNX_TO_TORCH[to])


@op("CastLike")
def cast_like(ctx: OpContext, x: Tensor, like: Tensor) -> Tensor:
    return x.to(like.dtype)


# --- linear algebra and normalisation -----------------------------------------------------------

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


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] over the last n dims -> F.pad's (bn, en, ..., b1, e1)."""
    nd = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(nd)):
        out += [pads[i], pads[i + nd]]
    return out


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
        x = F.pad(x, _torch_pad(pads))
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
    axis = _axis(ctx.get("axis", -1), x.dim())
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
        axis = _axis(ctx.get("axis", 1), x.dim())
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
        x = F.pad(x, _torch_pad(pads), value=float("-inf"))
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
        x = F.pad(x, _torch_pad(pads))
        pads = [0] * (2 * nd)
    return _AVG_POOL[nd](x, kernel, strides, pads[:nd], ceil_mode, include)


@op("GlobalAveragePool")
def global_avg_pool(ctx: OpContext, x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def global_max_pool(ctx: OpContext, x: Tensor) -> Tensor:
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# --- shape and indexing -------------------------------------------------------------------------

@op("Shape")
def shape(ctx: OpContext, x: Tensor) -> Tensor:
    dims = list(x.shape)
    start, end = ctx.get("start", 0), ctx.get("end", len(dims))
    return torch.tensor(dims[start:end], dtype=torch.int64)


@op("Size")
def size(ctx: OpContext, x: Tensor) -> Tensor:
    return torch.tensor(x.numel(), dtype=torch.int64)


@op("Constant")
def constant(ctx: OpContext) -> Tensor:
    from onnx import numpy_helper

    if "value" in ctx.attrs:
        array = numpy_helper.to_array(ctx.attrs["value"])
        if array.dtype.kind not in "biuf":
            raise Unsupported(f"Constant of dtype {array.dtype}")
        return torch.from_numpy(array.copy())
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in ctx.attrs:
            return torch.tensor(ctx.attrs[key], dtype=dtype)
    raise Unsupported("Constant with a sparse or string value")


@op("ConstantOfShape", host=(0,))
def constant_of_shape(ctx: OpContext, shape_: Tensor) -> Tensor:
    from onnx import numpy_helper

    value = ctx.get("value")
    if value is None:
        return torch.zeros(ints(shape_), dtype=torch.float32, device=ctx.device)
    array = numpy_helper.to_array(value).reshape(-1)
    return torch.full(ints(shape_), array[0].item(), dtype=torch.from_numpy(array[:1].copy()).dtype, device=ctx.device)


@op("Reshape", host=(1,))
def reshape(ctx: OpContext, x: Tensor, shape_: Tensor) -> Tensor:
    dims = ints(shape_)
    if not ctx.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@op("Flatten")
def flatten(ctx: OpContext, x: Tensor) -> Tensor:
    axis = _axis(ctx.get("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@op("Transpose")
def transpose(ctx: OpContext, x: Tensor) -> Tensor:
    perm = ctx.get("perm") or list(reversed(range(x.dim())))
    return x.permute(*perm)


@op("Squeeze", host=(1,))
def squeeze(ctx: OpContext, x: Tensor, axes: Tensor | None = None) -> Tensor:
    dims = ints(axes) if ctx.opset >= 13 else list(ctx.get("axes", []))
    if not dims:
        return x.squeeze() if x.dim() else x
    return x.squeeze(tuple(_axis(a, x.dim()) for a in dims))


@op("Unsqueeze", host=(1,))
def unsqueeze(ctx: OpContext, x: Tensor, axes: Tensor | None = None) -> Tensor:
    dims = ints(axes) if ctx.opset >= 13 else list(ctx.get("axes", []))
    rank = x.dim() + len(dims)
    for a in sorted(_axis(a, rank) for a in dims):
        x = x.unsqueeze(a)
    return x


@op("Concat")
def concat(ctx: OpContext, *xs: Tensor) -> Tensor:
    return torch.cat(xs, dim=ctx.get("axis"))


@op("Split", host=(1,))
def split(ctx: OpContext, x: Tensor, sizes: Tensor | None = None) -> tuple[Tensor, ...]:
    axis = _axis(ctx.get("axis", 0), x.dim())
    parts = ints(sizes) if sizes is not None else list(ctx.get("split", []))
    if not parts:
        n = ctx.get("num_outputs", ctx.num_outputs)
        step = -(-x.shape[axis] // n)
        parts = [min(step, x.shape[axis] - i * step) for i in range(n)]
    return tuple(torch.split(x, parts, dim=axis))


@op("Slice", host=(1, 2, 3, 4))
def slice_(ctx: OpContext, x: Tensor, starts: Tensor | None = None, ends: Tensor | None = None,
           axes: Tensor | None = None, steps: Tensor | None = None) -> Tensor:
    if ctx.opset < 10:
        s, e = list(ctx.get("starts")), list(ctx.get("ends"))
        a = list(ctx.get("axes", range(len(s))))
        st = [1] * len(s)
    else:
        s, e = ints(starts), ints(ends)
        a = ints(axes) if axes is not None else list(range(len(s)))
        st = ints(steps) if steps is not None else [1] * len(s)
    index: list[Any] = [slice(None)] * x.dim()
    flips = []
    for start, end, axis, step in zip(s, e, a, st):
        axis = _axis(axis, x.dim())
        dim = x.shape[axis]
        if step > 0:
            start = min(max(start + dim if start < 0 else start, 0), dim)
            end = min(max(end + dim if end < 0 else end, 0), dim)
            index[axis] = slice(start, max(start, end), step)
        else:
            start = min(max(start + dim if start < 0 else start, 0), dim - 1)
            end = min(max(end + dim if end < 0 else end, -1), dim - 1)
            flips.append((axis, torch.arange(start, end, step, device=x.device)))
    y = x[tuple(index)]
    for axis, idx in flips:
        y = y.index_select(axis, idx)
    return y


def _wrap(idx: Tensor, dim: int) -> Tensor:
    return torch.where(idx < 0, idx + dim, idx)


@op("Gather")
def gather(ctx: OpContext, x: Tensor, idx: Tensor) -> Tensor:
    axis = _axis(ctx.get("axis", 0), x.dim())
    flat = _wrap(idx.reshape(-1).to(torch.int64), x.shape[axis])
    out = x.index_select(axis, flat)
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


@op("GatherElements")
def gather_elements(ctx: OpContext, x: Tensor, idx: Tensor) -> Tensor:
    axis = _axis(ctx.get("axis", 0), x.dim())
    return torch.gather(x, axis, _wrap(idx.to(torch.int64), x.shape[axis]))


@op("GatherND")
def gather_nd(ctx: OpContext, x: Tensor, idx: Tensor) -> Tensor:
    if ctx.get("batch_dims", 0):
        raise Unsupported("GatherND with batch_dims")
    k = idx.shape[-1]
    idx = idx.to(torch.int64)
    parts = tuple(_wrap(idx[..., i], x.shape[i]) for i in range(k))
    return x[parts]


@op("ScatterND")
def scatter_nd(ctx: OpContext, x: Tensor, idx: Tensor, updates: Tensor) -> Tensor:
    reduction = ctx.get("reduction", "none")
    if reduction not in ("none", "add"):
        raise Unsupported(f"ScatterND reduction {reduction}")
    idx = idx.to(torch.int64)
    parts = tuple(_wrap(idx[..., i], x.shape[i]) for i in range(idx.shape[-1]))
    return x.clone().index_put_(parts, updates, accumulate=reduction == "add")


@op("ScatterElements", "Scatter")
def scatter_elements(ctx: OpContext, x: Tensor, idx: Tensor, updates: Tensor) -> Tensor:
    axis = _axis(ctx.get("axis", 0), x.dim())
    idx = _wrap(idx.to(torch.int64), x.shape[axis])
    reduction = ctx.get("reduction", "none")
    if reduction == "none":
        return torch.scatter(x, axis, idx, updates)
    names = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}
    return torch.scatter_reduce(x, axis, idx, updates, names[reduction], include_self=True)


@op("Expand", host=(1,))
def expand(ctx: OpContext, x: Tensor, shape_: Tensor) -> Tensor:
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(ints(shape_))))


@op("Tile", host=(1,))
def tile(ctx: OpContext, x: Tensor, repeats: Tensor) -> Tensor:
    return x.repeat(*ints(repeats))


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@op("Pad", host=(1, 2, 3))
def pad(ctx: OpContext, x: Tensor, pads: Tensor | None = None, value: Tensor | None = None,
        axes: Tensor | None = None) -> Tensor:
    mode = ctx.get("mode", "constant")
    if ctx.opset < 11:
        p, fill = list(ctx.get("pads")), ctx.get("value", 0.0)
    else:
        p, fill = ints(pads), (0 if value is None else scalar(value))
    rank = x.dim()
    chosen = [_axis(a, rank) for a in ints(axes)] if axes is not None else list(range(rank))
    full = [0] * (2 * rank)
    for i, a in enumerate(chosen):
        full[a], full[a + rank] = p[i], p[i + len(chosen)]
    first = next((i for i in range(rank) if full[i] or full[i + rank]), rank)
    spec = _torch_pad(full[first:rank] + full[rank + first:])
    if not spec:
        return x
    if mode != "constant" and (rank - first > 3 or first == 0):
        raise Unsupported(f"Pad mode {mode} over {rank - first} leading dims")
    if mode == "constant":
        return F.pad(x, spec, value=fill)
    return F.pad(x, spec, mode=_PAD_MODES[mode])


@op("Range", host=(0, 1, 2))
def range_(ctx: OpContext, start: Tensor, limit: Tensor, delta: Tensor) -> Tensor:
    return torch.arange(scalar(start), scalar(limit), scalar(delta), dtype=start.dtype, device=ctx.device)


@op("TopK", host=(1,))
def topk(ctx: OpContext, x: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    values, indices = torch.topk(x, ints(k)[0], dim=ctx.get("axis", -1), largest=bool(ctx.get("largest", 1)),
                                 sorted=bool(ctx.get("sorted", 1)))
    return values, indices


@op("NonZero")
def nonzero(ctx: OpContext, x: Tensor) -> Tensor:
    return torch.nonzero(x).t().contiguous()


@op("OneHot", host=(1,))
def one_hot(ctx: OpContext, idx: Tensor, depth: Tensor, values: Tensor) -> Tensor:
    n = int(scalar(depth))
    idx = _wrap(idx.to(torch.int64), n)
    axis = _axis(ctx.get("axis", -1), idx.dim() + 1)
    classes = torch.arange(n, device=idx.device).reshape([n] + [1] * (idx.dim() - axis))
    hot = idx.unsqueeze(axis) == classes
    return torch.where(hot, values[1], values[0])


@op("Trilu", host=(1,))
def trilu(ctx: OpContext, x: Tensor, k: Tensor | None = None) -> Tensor:
    diagonal = 0 if k is None else int(scalar(k))
    return torch.triu(x, diagonal) if ctx.get("upper", 1) else torch.tril(x, diagonal)


@op("CumSum", host=(1,))
def cumsum(ctx: OpContext, x: Tensor, axis: Tensor) -> Tensor:
    dim = _axis(int(scalar(axis)), x.dim())
    if ctx.get("reverse", 0):
        x = x.flip(dim)
    y = torch.cumsum(x, dim)
    if ctx.get("exclusive", 0):
        y = y - x
    return y.flip(dim) if ctx.get("reverse", 0) else y


@op("DepthToSpace")
def depth_to_space(ctx: OpContext, x: Tensor) -> Tensor:
    bs = ctx.get("blocksize")
    if ctx.get("mode", "DCR") == "CRD":
        return F.pixel_shuffle(x, bs)
    n, c, h, w = x.shape
    y = x.reshape(n, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (bs * bs), h * bs, w * bs)


@op("SpaceToDepth")
def space_to_depth(ctx: OpContext, x: Tensor) -> Tensor:
    bs = ctx.get("blocksize")
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * bs * bs, h // bs, w // bs)


# --- reductions ---------------------------------------------------------------------------------

_REDUCE: dict[str, Callable[[Tensor, tuple[int, ...], bool], Tensor]] = {
    "ReduceMean": lambda x, d, k: x.mean(dim=d, keepdim=k),
    "ReduceSum": lambda x, d, k: x.sum(dim=d, keepdim=k),
    "ReduceMax": lambda x, d, k: x.amax(dim=d, keepdim=k),
    "ReduceMin": lambda x, d, k: x.amin(dim=d, keepdim=k),
    "ReduceL1": lambda x, d, k: x.abs().sum(dim=d, keepdim=k),
    "ReduceL2": lambda x, d, k: (x * x).sum(dim=d, keepdim=k).sqrt(),
    "ReduceSumSquare": lambda x, d, k: (x * x).sum(dim=d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: x.sum(dim=d, keepdim=k).log(),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
}

_AXES_AS_INPUT = {"ReduceSum": 13}
"""Opset from which `axes` is an input (18 for the other reductions)."""


def _reduce(kind: str) -> Callable[..., Tensor]:
    fn = _REDUCE[kind]

    def run(ctx: OpContext, x: Tensor, axes: Tensor | None = None) -> Tensor:
        keep = bool(ctx.get("keepdims", 1))
        if ctx.opset >= _AXES_AS_INPUT.get(kind, 18):
            dims = ints(axes)
        else:
            dims = list(ctx.get("axes", []))
        if not dims:
            if ctx.get("noop_with_empty_axes", 0):
                return x
            dims = list(range(x.dim()))
        if x.dim() == 0:
            return fn(x.reshape(1), (0,), False).reshape(())
        return fn(x, tuple(_axis(a, x.dim()) for a in dims), keep)

    return run


for _name in _REDUCE:
    op(_name, host=(1,))(_reduce(_name))


@op("ReduceProd", host=(1,))
def reduce_prod(ctx: OpContext, x: Tensor, axes: Tensor | None = None) -> Tensor:
    dims = ints(axes) if ctx.opset >= 18 else list(ctx.get("axes", []))
    keep = bool(ctx.get("keepdims", 1))
    if not dims:
        if ctx.get("noop_with_empty_axes", 0):
            return x
        dims = list(range(x.dim()))
    for a in sorted((_axis(a, x.dim()) for a in dims), reverse=True):
        x = x.prod(dim=a, keepdim=keep)
    return x


def _arg(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def run(ctx: OpContext, x: Tensor) -> Tensor:
        axis = _axis(ctx.get("axis", 0), x.dim())
        keep = bool(ctx.get("keepdims", 1))
        if ctx.get("select_last_index", 0):
            flipped = fn(x.flip(axis), dim=axis, keepdim=keep)
            return x.shape[axis] - 1 - flipped
        return fn(x, dim=axis, keepdim=keep)

    return run


op("ArgMax")(_arg(torch.argmax))
op("ArgMin")(_arg(torch.argmin))


# --- resampling ---------------------------------------------------------------------------------

def _resize_mode(mode: str, coords: str, nearest: str, cubic_a: float, exclude: int,
                 scales: Sequence[float]) -> tuple[str, bool | None]:
    """torch interpolate (mode, align_corners) for an ONNX Resize, or Unsupported."""
    if mode == "nearest":
        if coords == "asymmetric" and nearest == "floor":
            return "nearest", None
        if coords in ("half_pixel", "pytorch_half_pixel"):
            integral_up = all(s >= 1 and float(s).is_integer() for s in scales) and len(scales) > 0
            if nearest == "round_prefer_ceil" or (nearest == "round_prefer_floor" and integral_up):
                return "nearest-exact", None
        raise Unsupported(f"Resize nearest with {coords}/{nearest}")
    if mode in ("linear", "cubic"):
        if mode == "cubic" and (cubic_a != -0.75 or exclude):
            raise Unsupported("Resize cubic with non-default coefficient")
        if coords in ("half_pixel", "pytorch_half_pixel"):
            return mode, False
        if coords == "align_corners":
            return mode, True
    raise Unsupported(f"Resize {mode} with {coords}")


_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _interpolate(x: Tensor, sizes: list[int] | None, scales: list[float] | None, mode: str,
                 align: bool | None) -> Tensor:
    nd = x.dim() - 2
    if mode == "linear":
        mode = _LINEAR.get(nd, "")
    elif mode == "cubic":
        mode = "bicubic" if nd == 2 else ""
    if not mode:
        raise Unsupported(f"Resize of a rank-{x.dim()} tensor")
    if sizes is not None:
        return F.interpolate(x, size=sizes, mode=mode, align_corners=align)
    return F.interpolate(x, scale_factor=scales, mode=mode, align_corners=align, recompute_scale_factor=False)


@op("Resize", host=(1, 2, 3))
def resize(ctx: OpContext, x: Tensor, roi: Tensor | None = None, scales: Tensor | None = None,
           sizes: Tensor | None = None) -> Tensor:
    if ctx.opset < 11:  # Resize-10: (X, scales)
        scales, sizes = roi, None
    if ctx.get("antialias", 0) or ctx.get("axes") is not None or ctx.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise Unsupported("Resize with antialias, axes or an aspect-ratio policy")
    coords = ctx.get("coordinate_transformation_mode", "asymmetric" if ctx.opset < 11 else "half_pixel")
    size_list = ints(sizes) if sizes is not None and sizes.numel() else None
    scale_list = floats(scales) if scales is not None and scales.numel() else None
    if size_list is not None:
        if size_list[:2] != list(x.shape[:2]):
            raise Unsupported("Resize of batch or channel dims")
        spatial = [o / i for o, i in zip(size_list[2:], x.shape[2:])]
    elif scale_list is not None:
        if scale_list[:2] != [1.0, 1.0]:
            raise Unsupported("Resize of batch or channel dims")
        spatial = scale_list[2:]
    else:
        raise Unsupported("Resize without scales or sizes")
    mode, align = _resize_mode(ctx.get("mode", "nearest"), coords, ctx.get("nearest_mode", "round_prefer_floor"),
                               ctx.get("cubic_coeff_a", -0.75), ctx.get("exclude_outside", 0), spatial)
    return _interpolate(x, None if size_list is None else size_list[2:], spatial, mode, align)


@op("Upsample", host=(1,))
def upsample(ctx: OpContext, x: Tensor, scales: Tensor | None = None) -> Tensor:
    values = floats(scales) if scales is not None else list(ctx.get("scales"))
    if ctx.get("mode", "nearest") != "nearest" or values[:2] != [1.0, 1.0]:
        raise Unsupported("Upsample other than nearest over spatial dims")
    return F.interpolate(x, scale_factor=values[2:], mode="nearest", recompute_scale_factor=False)


# --- quantization -------------------------------------------------------------------------------

_QRANGE = {torch.int8: (-128, 127), torch.uint8: (0, 255), torch.int16: (-32768, 32767)}


def _per_axis(t: Tensor, x: Tensor, axis: int) -> Tensor:
    if t.dim() == 0 or t.numel() == 1:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[_axis(axis, x.dim())] = t.numel()
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
