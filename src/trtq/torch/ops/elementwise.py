"""Elementwise ops: activations, arithmetic, comparisons, logic, Where, Cast."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from trtq.torch.dtypes import ONNX_TO_TORCH
from trtq.torch.ops.registry import OpContext, Result, Tensor, Unsupported, op, scalar

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


for _name, _binary_fn in _BINARY.items():
    op(_name)(_binary(_binary_fn))


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
