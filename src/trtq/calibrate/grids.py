"""Quantization grids: what a tensor becomes after a Q/DQ pair at a given amax, computed in numpy.

The range search (`trtq.calibrate.auto`) judges each candidate amax by the error it causes, so it
needs the exact rounding of the target format, not an estimate: symmetric INT8 (scale = amax / 127,
round half to even, saturate to [-128, 127], as QuantizeLinear does) or FP8 E4M3 (scale = amax /
448, round to the nearest float8e4m3fn, saturating). Weights use the same grid per channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trtq.formats.ranges import MIN_AMAX


@dataclass(frozen=True)
class Grid:
    """A symmetric grid: amax maps to code `top`; values beyond saturate."""

    name: str
    top: float
    """The code amax maps to: 127 for INT8, 448 (the largest finite E4M3 value) for FP8."""

    def scale(self, amax: float | np.ndarray) -> np.ndarray:
        """Q/DQ scale for `amax` (kept strictly positive, as the written model's scales are)."""
        return np.maximum(np.asarray(amax, dtype=np.float32), np.float32(MIN_AMAX)) / np.float32(self.top)

    def fake_quantize(self, x: np.ndarray, amax: float | np.ndarray, axis: int | None = None,
                      out: np.ndarray | None = None) -> np.ndarray:
        """`x` after quantizing to this grid and back: per tensor, or per channel along `axis`.

        `out`: a float32 array of `x`'s shape to write the INT8 result into (no temporaries: on large
        activations fresh memory costs more than the arithmetic); another is made where it does not fit
        (or is read-only).
        """
        values = np.asarray(x, dtype=np.float32)
        scale = self.scale(amax)
        if axis is not None:
            shape = [1] * values.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
        if self.name == "int8" and np.asarray(x).dtype == np.float32:
            if out is None or out.shape != values.shape or out.dtype != np.float32 or not out.flags.writeable:
                out = np.empty_like(values)
            np.divide(values, scale, out=out)
            np.rint(out, out=out)
            np.clip(out, -128.0, 127.0, out=out)
            return np.multiply(out, scale, out=out)
        scaled = values / scale
        if self.name == "int8":
            codes = np.clip(np.rint(scaled), -128.0, 127.0)
        else:
            import ml_dtypes

            codes = np.clip(scaled, -self.top, self.top).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
        return (codes * scale).astype(np.asarray(x).dtype, copy=False)

    def fake_quantize_weight(self, w: np.ndarray, axis: int, out: np.ndarray | None = None) -> np.ndarray:
        """A weight after per-channel quantization along `axis` (amax = max |w| of each channel); `out` as in
        `fake_quantize` (it may be `w` itself)."""
        values = np.asarray(w, dtype=np.float32)
        other = tuple(i for i in range(values.ndim) if i != axis)
        amax = np.maximum(values.max(axis=other), -values.min(axis=other))  # max |w| without a copy of w
        return self.fake_quantize(values, amax, axis=axis, out=out).astype(w.dtype, copy=False)


INT8 = Grid("int8", 127.0)
FP8_E4M3 = Grid("fp8", 448.0)
GRIDS = {grid.name: grid for grid in (INT8, FP8_E4M3)}
