"""Image preprocessing: one explicit dataclass, named presets, and the pixel math.

Calibration is only as good as the match between calibration inputs and deployment inputs, so
every step (geometry, channel order, scale, mean/std, layout, dtype) is an explicit field
rather than a guess hidden in a loader.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
from PIL import Image

from trtq.errors import TrtqError

RESIZE_MODES = ("resize", "letterbox", "center-crop")
COLORS = ("RGB", "BGR", "GRAY")
LAYOUTS = ("NCHW", "NHWC")
CENTER_CROP_RATIO = 0.875
"""ImageNet evaluation crops the central 87.5% (224 of 256) after resizing the shorter side."""

_RESAMPLE = Image.Resampling.BILINEAR


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes one model input sample (no batch dim).

    `size`, `layout` and, for 1-channel inputs, `color` may be left open; `bind_preprocess`
    fills them from the model's input shape.
    """

    size: tuple[int, int] | None = None
    resize: str = "resize"
    pad_value: int = 114
    color: str = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        resize = str(self.resize).lower()
        color = str(self.color).upper()
        layout = None if self.layout is None else str(self.layout).upper()
        _require(resize in RESIZE_MODES, "resize", self.resize, "one of " + ", ".join(RESIZE_MODES))
        _require(color in COLORS, "color", self.color, "one of " + ", ".join(COLORS))
        _require(layout is None or layout in LAYOUTS, "layout", self.layout, "NCHW or NHWC")
        size = None if self.size is None else tuple(int(d) for d in self.size)
        _require(size is None or (len(size) == 2 and min(size) > 0), "size", self.size,
                 "two positive sizes (H, W)")
        _require(isinstance(self.pad_value, (int, np.integer)) and 0 <= self.pad_value <= 255,
                 "pad_value", self.pad_value, "an integer from 0 to 255")
        _require(math.isfinite(self.scale) and self.scale > 0, "scale", self.scale,
                 "a finite positive number")
        mean = tuple(float(m) for m in self.mean)
        std = tuple(float(s) for s in self.std)
        _require(len(mean) > 0 and all(math.isfinite(m) for m in mean), "mean", self.mean,
                 "one finite value, or one per channel")
        _require(len(std) > 0 and all(math.isfinite(s) and s > 0 for s in std), "std", self.std,
                 "one positive value, or one per channel")
        kind: str
        try:
            kind = np.dtype(self.dtype).kind
        except TypeError:
            kind = ""
        _require(kind in "fiu" and kind != "", "dtype", self.dtype,
                 "a numeric numpy dtype name such as float32, float16 or uint8")
        object.__setattr__(self, "resize", resize)
        object.__setattr__(self, "color", color)
        object.__setattr__(self, "layout", layout)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "pad_value", int(self.pad_value))
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)

    def describe(self) -> str:
        """A short human description: the preset name when it is one, else the options."""
        for name, preset in PRESETS.items():
            if preset == self:
                return f"preset {name}"
        parts = [self.resize]
        if self.size:
            parts.append(f"{self.size[0]}x{self.size[1]}")
        parts.append(self.color)
        parts.append(f"scale {self.scale:.6g}")
        if any(m != 0.0 for m in self.mean) or any(s != 1.0 for s in self.std):
            parts.append(f"mean {list(self.mean)} std {list(self.std)}")
        if self.layout:
            parts.append(self.layout)
        parts.append(self.dtype)
        return "preprocess " + ", ".join(parts)


def _require(ok: bool, option: str, value: object, expected: str) -> None:
    if not ok:
        raise TrtqError(
            f"Preprocessing option {option}={value!r} is invalid; expected {expected}.",
            f"fix the {option} option.",
        )


PRESETS: dict[str, Preprocess] = {
    "imagenet": Preprocess(
        resize="center-crop",
        color="RGB",
        scale=1 / 255,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    ),
    "yolo": Preprocess(resize="letterbox", pad_value=114, color="RGB", scale=1 / 255),
    "none": Preprocess(),
}
"""Named preprocessing recipes: torchvision/timm ImageNet eval, Ultralytics YOLO, plain /255."""


@dataclass(frozen=True)
class PreprocessOverrides:
    """Preprocessing options given on top of a preset (`--size`, `--mean`, ...); None keeps the preset's.

    Typed values only: the command line reads its strings into these (`trtq.cli.options.data_options`).
    """

    size: tuple[int, int] | None = None
    resize: str | None = None
    pad_value: int | None = None
    color: str | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str | None = None
    dtype: str | None = None


def resolve_preprocess(preset: str | None, overrides: PreprocessOverrides | None = None) -> Preprocess:
    """A preset (default "none") with the options `overrides` gives applied on top (checked by `Preprocess`)."""
    name = "none" if preset is None else str(preset).lower()
    if name not in PRESETS:
        raise TrtqError(
            f"Unknown preprocessing preset {preset!r}; the presets are {', '.join(PRESETS)}.",
            "choose one of them, or give explicit options (size, resize, color, scale, mean, std).",
        )
    given = {f.name: getattr(overrides, f.name) for f in fields(PreprocessOverrides)} if overrides else {}
    return replace(PRESETS[name], **{key: value for key, value in given.items() if value is not None})


def infer_layout(shape: Sequence[int]) -> str | None:
    """NCHW when dim 1 is 1 or 3, else NHWC when dim 3 is; None when neither says."""
    if len(shape) != 4:
        return None
    if shape[1] in (1, 3):
        return "NCHW"
    if shape[3] in (1, 3):
        return "NHWC"
    return None


def bind_preprocess(pre: Preprocess, input_name: str, shape: Sequence[int]) -> Preprocess:
    """Fill size, layout and color from a 4-D input shape and check the rest agrees with it."""
    shape = tuple(int(d) for d in shape)
    dims = "x".join(map(str, shape))
    if len(shape) != 4:
        raise TrtqError(
            f"Input {input_name!r} has shape {dims}, but an image folder needs a 4-D image input.",
            "give the data as .npy/.npz or a load_data() script instead.",
        )
    layout = pre.layout or infer_layout(shape)
    if layout is None:
        raise TrtqError(
            f"Cannot tell where the channels of input {input_name!r} ({dims}) are: neither dim 1 "
            "nor dim 3 is 1 or 3.",
            "pass layout=NCHW or layout=NHWC.",
        )
    channels, height, width = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (
        shape[3], shape[1], shape[2])
    if channels not in (1, 3):
        raise TrtqError(
            f"Input {input_name!r} ({dims}, {layout}) has {channels} channels; images give 1 or 3.",
            "check the layout option, or feed the data as .npy/.npz.",
        )
    if pre.size is not None and pre.size != (height, width):
        raise TrtqError(
            f"Preprocessing size {pre.size[0]}x{pre.size[1]} does not match input {input_name!r}, "
            f"which takes {height}x{width} images ({dims}).",
            "drop the size option or set --shape to the size you want to calibrate at.",
        )
    color = "GRAY" if channels == 1 else pre.color
    if channels == 3 and color == "GRAY":
        raise TrtqError(
            f"Preprocessing color GRAY gives 1 channel, but input {input_name!r} ({dims}) takes 3.",
            "use color RGB or BGR.",
        )
    mean, std = _per_channel(pre.mean, channels, "mean", input_name), _per_channel(
        pre.std, channels, "std", input_name)
    return replace(pre, size=(height, width), layout=layout, color=color, mean=mean, std=std)


def _per_channel(values: tuple[float, ...], channels: int, option: str, input_name: str) -> tuple[float, ...]:
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    raise TrtqError(
        f"Preprocessing {option} has {len(values)} values, but input {input_name!r} has {channels} "
        "channel(s).",
        f"give one {option} value or one per channel.",
    )


@dataclass(frozen=True)
class Letterbox:
    """Where a letterboxed image sits on the canvas; maps boxes back to the source image."""

    scale: float
    resized: tuple[int, int]  # (H, W) of the resized image before padding
    top: int
    left: int
    bottom: int
    right: int


def letterbox_geometry(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Letterbox:
    """Ultralytics' letterbox: scale to fit preserving aspect, pad evenly (odd pixel bottom/right)."""
    (h, w), (dst_h, dst_w) = src_hw, dst_hw
    ratio = min(dst_h / h, dst_w / w)
    new_h, new_w = max(1, round(h * ratio)), max(1, round(w * ratio))
    dh, dw = (dst_h - new_h) / 2, (dst_w - new_w) / 2
    return Letterbox(
        scale=ratio,
        resized=(new_h, new_w),
        top=round(dh - 0.1),
        bottom=round(dh + 0.1),
        left=round(dw - 0.1),
        right=round(dw + 0.1),
    )


def center_crop_geometry(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[tuple[int, int], int, int]:
    """Resized (H, W) and crop (top, left) for ImageNet-style evaluation.

    The image is scaled, keeping its aspect, to cover dst/0.875 (for a square target this is
    torchvision's Resize(256) + CenterCrop(224)); the centre dst_hw is then cut out.
    """
    (h, w), (dst_h, dst_w) = src_hw, dst_hw
    cover_h, cover_w = math.floor(dst_h / CENTER_CROP_RATIO), math.floor(dst_w / CENTER_CROP_RATIO)
    if cover_h * w >= cover_w * h:  # height decides the scale
        new_h, new_w = cover_h, max(cover_w, int(w * cover_h / h))
    else:
        new_h, new_w = max(cover_h, int(h * cover_w / w)), cover_w
    top, left = round((new_h - dst_h) / 2.0), round((new_w - dst_w) / 2.0)
    return (new_h, new_w), top, left


def _to_mode(image: Image.Image, color: str) -> Image.Image:
    """Convert any Pillow mode to RGB (for RGB/BGR) or L (for GRAY); a float image ("F", from deep
    pixels, see `trtq.data.load_image`) stays one float channel, which `preprocess_image` repeats."""
    target = "L" if color == "GRAY" else "RGB"
    if image.mode in (target, "F"):
        return image
    if image.mode in ("P", "PA"):  # palette transparency must go through RGBA to convert cleanly
        image = image.convert("RGBA")
    return image.convert(target)


def preprocess_image(image: Image.Image, pre: Preprocess) -> np.ndarray:
    """One sample (no batch dim) from a decoded, EXIF-transposed image and a bound Preprocess."""
    if pre.size is None or pre.layout is None:
        raise ValueError("preprocess_image needs a Preprocess bound to an input (bind_preprocess)")
    image = _to_mode(image, pre.color)
    dst_h, dst_w = pre.size
    src_hw = (image.height, image.width)
    if pre.resize == "resize":
        image = image.resize((dst_w, dst_h), _RESAMPLE)
    elif pre.resize == "letterbox":
        box = letterbox_geometry(src_hw, pre.size)
        resized = image.resize((box.resized[1], box.resized[0]), _RESAMPLE)
        fill = pre.pad_value if image.mode in ("L", "F") else (pre.pad_value,) * 3
        image = Image.new(image.mode, (dst_w, dst_h), fill)
        image.paste(resized, (box.left, box.top))
    else:
        (new_h, new_w), top, left = center_crop_geometry(src_hw, pre.size)
        image = image.resize((new_w, new_h), _RESAMPLE).crop((left, top, left + dst_w, top + dst_h))
    pixels = np.asarray(image, dtype=np.float32 if image.mode == "F" else np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
        if pre.color != "GRAY":  # one deep gray channel for a color input, as convert("RGB") does
            pixels = np.repeat(pixels, 3, axis=2)
    elif pre.color == "BGR":
        pixels = pixels[:, :, ::-1]
    return normalize(pixels, pre)


def normalize(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """(pixels * scale - mean) / std per channel of an HWC array, then layout and dtype."""
    values = pixels.astype(np.float32) * np.float32(pre.scale)
    values = (values - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    if pre.layout == "NCHW":
        values = values.transpose(2, 0, 1)
    dtype = np.dtype(pre.dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return np.ascontiguousarray(values, dtype=dtype)


def output_range(pre: Preprocess) -> tuple[float, float]:
    """Lowest and highest value preprocessing can produce from 8-bit pixels (before the dtype cast)."""
    lows = [(0.0 - m) / s for m, s in zip(*_broadcast(pre.mean, pre.std))]
    highs = [(255.0 * pre.scale - m) / s for m, s in zip(*_broadcast(pre.mean, pre.std))]
    return min(lows + highs), max(lows + highs)


def _broadcast(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    n = max(len(mean), len(std))
    return (mean * n if len(mean) == 1 else mean), (std * n if len(std) == 1 else std)
