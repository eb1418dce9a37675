"""Shape and indexing: Shape, Reshape, Transpose, Concat, Slice, Gather/Scatter, Pad, TopK..."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from trtq.torch.ops.registry import OpContext, Tensor, Unsupported, ints, op, positive_axis, scalar, torch_pad


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
    axis = positive_axis(ctx.get("axis", 1), x.dim())
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
    return x.squeeze(tuple(positive_axis(a, x.dim()) for a in dims))


@op("Unsqueeze", host=(1,))
def unsqueeze(ctx: OpContext, x: Tensor, axes: Tensor | None = None) -> Tensor:
    dims = ints(axes) if ctx.opset >= 13 else list(ctx.get("axes", []))
    rank = x.dim() + len(dims)
    for a in sorted(positive_axis(a, rank) for a in dims):
        x = x.unsqueeze(a)
    return x


@op("Concat")
def concat(ctx: OpContext, *xs: Tensor) -> Tensor:
    return torch.cat(xs, dim=ctx.get("axis"))


@op("Split", host=(1,))
def split(ctx: OpContext, x: Tensor, sizes: Tensor | None = None) -> tuple[Tensor, ...]:
    axis = positive_axis(ctx.get("axis", 0), x.dim())
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
        axis = positive_axis(axis, x.dim())
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
    axis = positive_axis(ctx.get("axis", 0), x.dim())
    flat = _wrap(idx.reshape(-1).to(torch.int64), x.shape[axis])
    out = x.index_select(axis, flat)
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


@op("GatherElements")
def gather_elements(ctx: OpContext, x: Tensor, idx: Tensor) -> Tensor:
    axis = positive_axis(ctx.get("axis", 0), x.dim())
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
    axis = positive_axis(ctx.get("axis", 0), x.dim())
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
    chosen = [positive_axis(a, rank) for a in ints(axes)] if axes is not None else list(range(rank))
    full = [0] * (2 * rank)
    for i, a in enumerate(chosen):
        full[a], full[a + rank] = p[i], p[i + len(chosen)]
    first = next((i for i in range(rank) if full[i] or full[i + rank]), rank)
    spec = torch_pad(full[first:rank] + full[rank + first:])
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
    axis = positive_axis(ctx.get("axis", -1), idx.dim() + 1)
    classes = torch.arange(n, device=idx.device).reshape([n] + [1] * (idx.dim() - axis))
    hot = idx.unsqueeze(axis) == classes
    return torch.where(hot, values[1], values[0])


@op("Trilu", host=(1,))
def trilu(ctx: OpContext, x: Tensor, k: Tensor | None = None) -> Tensor:
    diagonal = 0 if k is None else int(scalar(k))
    return torch.triu(x, diagonal) if ctx.get("upper", 1) else torch.tril(x, diagonal)


@op("CumSum", host=(1,))
def cumsum(ctx: OpContext, x: Tensor, axis: Tensor) -> Tensor:
    dim = positive_axis(int(scalar(axis)), x.dim())
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
