"""Resize and Upsample, as torch interpolation."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F

from trtq.torch.ops.registry import OpContext, Tensor, Unsupported, floats, ints, op


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
