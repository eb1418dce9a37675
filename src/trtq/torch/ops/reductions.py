"""Reductions (ReduceMean, ReduceSum, ...) and ArgMax/ArgMin."""

from __future__ import annotations

from collections.abc import Callable

import torch

from trtq.torch.ops.registry import OpContext, Tensor, ints, op, positive_axis

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
        dims = ints(axes) if ctx.opset >= _AXES_AS_INPUT.get(kind, 18) else list(ctx.get("axes", []))
        if not dims:
            if ctx.get("noop_with_empty_axes", 0):
                return x
            dims = list(range(x.dim()))
        if x.dim() == 0:
            return fn(x.reshape(1), (0,), False).reshape(())
        return fn(x, tuple(positive_axis(a, x.dim()) for a in dims), keep)

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
    for a in sorted((positive_axis(a, x.dim()) for a in dims), reverse=True):
        x = x.prod(dim=a, keepdim=keep)
    return x


def _arg(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def run(ctx: OpContext, x: Tensor) -> Tensor:
        axis = positive_axis(ctx.get("axis", 0), x.dim())
        keep = bool(ctx.get("keepdims", 1))
        if ctx.get("select_last_index", 0):
            flipped = fn(x.flip(axis), dim=axis, keepdim=keep)
            return x.shape[axis] - 1 - flipped
        return fn(x, dim=axis, keepdim=keep)

    return run


op("ArgMax")(_arg(torch.argmax))
op("ArgMin")(_arg(torch.argmin))
