"""Streaming per-tensor statistics: amax, element counts and a histogram of |x|.

Calibration sees each activation once per batch and must not keep the batches, so every tensor
gets a fixed-size histogram whose range grows by powers of two. The binning rule below is exact
and deterministic so that other backends (the GPU one) can reimplement it bit for bit:

* Values are converted to float32 first; NaN/Inf are counted in `nan_count` and otherwise ignored.
* `hist_max` is the amax of the first batch with a non-zero value (at least MIN_HIST_MAX; zeros
  seen before it are counted in bin 0). A later batch whose amax exceeds `hist_max` multiplies
  `hist_max` by the smallest power of two 2^k that covers it, and the existing bins are merged
  2^k to 1 (bin b -> b >> k).
* `a * s` is a float32 product (no fused or float64 arithmetic); it never exceeds num_bins.
* Bin of a value `a = |x|` is `max(ceil(a * s) - 1, 0)` computed in float32, with
  `s = bin_scale(hist_max, num_bins)`: bins are closed on the right, `(b*w, (b+1)*w]`, bin 0 is
  `[0, w]`, so exact zeros land in bin 0 and a value equal to `hist_max` in the last bin.
  Closing bins on the right is what makes the 2^k-to-1 merge exact: a value at an old top edge
  stays in the bin below the new edge, exactly where binning it directly would put it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from trtq.errors import TrtqError

NUM_BINS = 2048
"""Histogram bins per tensor (TensorRT's and ModelOpt's default)."""

MIN_HIST_MAX = 2.0**-100
"""Smallest histogram range; keeps the float32 bin scale finite for denormal-only tensors."""

try:
    from trtq.calibrate._fasthist import best_kernel as _fasthist_best
    from trtq.calibrate._fasthist import ceil_counts as _ceil_counts
except ImportError:  # the optional C extension was not built; the numpy path gives the same counts
    _ceil_counts = _fasthist_best = None

_CHUNK = 1 << 16
"""Elements binned per step: large enough to amortise numpy overhead, small enough for L2 cache."""


def bin_scale(hist_max: float, num_bins: int) -> np.float32:
    """The float32 multiplier that maps |x| to bin coordinates for a range `hist_max`.

    float32(num_bins / hist_max), lowered by one ulp at a time while float32(hist_max) * s
    rounds above num_bins, so that every value <= hist_max maps into the histogram without a
    clamp. Scaling hist_max by 2^k scales the result by exactly 2^-k.
    """
    scale = np.float32(num_bins / hist_max)
    limit = np.float32(num_bins)
    top = np.float32(hist_max)
    for _ in range(4):
        if top * scale <= limit:
            break
        scale = np.nextafter(scale, np.float32(0.0))
    return scale


@dataclass(frozen=True, eq=False)
class TensorStats:  # noqa: PLW1641 (its __eq__ compares arrays: unhashable on purpose)
    """What calibration learned about one tensor; input to the amax algorithms.

    `hist` has `num_bins` int64 counts of |x| over [0, hist_max] (empty when the collector ran
    without histograms). `count` is the number of finite elements seen (the histogram total);
    `nan_count` the NaN/Inf elements, which are kept out of amax and the histogram.
    """

    name: str
    amax: float
    hist: np.ndarray
    hist_max: float
    count: int
    nan_count: int = 0

    @property
    def has_histogram(self) -> bool:
        """Whether a histogram was collected (collectors made with histogram=False have none)."""
        return self.hist.size > 0

    @property
    def bin_width(self) -> float:
        """Width of one histogram bin (0.0 before any non-zero value was seen)."""
        return self.hist_max / self.hist.size if self.hist.size else 0.0

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-serialisable form (lists and Python numbers)."""
        return {
            "name": self.name,
            "amax": float(self.amax),
            "hist": [int(v) for v in self.hist],
            "hist_max": float(self.hist_max),
            "count": int(self.count),
            "nan_count": int(self.nan_count),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> TensorStats:
        """Inverse of `to_dict`."""
        try:
            hist = np.asarray(data["hist"], dtype=np.int64)
            stats = cls(
                name=str(data["name"]),
                amax=float(data["amax"]),  # type: ignore[arg-type]
                hist=hist,
                hist_max=float(data["hist_max"]),  # type: ignore[arg-type]
                count=int(data["count"]),  # type: ignore[call-overload]
                nan_count=int(data.get("nan_count", 0)),  # type: ignore[call-overload]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TrtqError(
                f"Tensor statistics record {data.get('name', '?')!r} is missing or has a malformed field ({exc}).",
                "re-run calibration to regenerate the statistics.",
            ) from exc
        if hist.ndim != 1 or (hist.size and int(hist.sum()) != stats.count):
            raise TrtqError(
                f"Tensor statistics record {stats.name!r} has a histogram of {int(hist.sum())} elements "
                f"but count {stats.count}.",
                "re-run calibration to regenerate the statistics.",
            )
        return stats

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorStats):
            return NotImplemented
        return (
            self.name == other.name
            and self.amax == other.amax
            and self.hist_max == other.hist_max
            and self.count == other.count
            and self.nan_count == other.nan_count
            and np.array_equal(self.hist, other.hist)
        )


@dataclass
class _Running:
    """Mutable statistics of one tensor while batches stream in."""

    hist: np.ndarray
    amax: float = 0.0
    hist_max: float = 0.0
    count: int = 0
    nan_count: int = 0
    scale: np.float32 = field(default_factory=lambda: np.float32(0.0))


class StatsCollector:
    """Accumulates `TensorStats` for a fixed set of tensors, one batch at a time.

    Memory is O(num_bins) per tensor regardless of how much data is seen. With
    histogram=False only amax and counts are kept (enough for method "max", and much cheaper).
    """

    def __init__(self, names: Iterable[str], num_bins: int = NUM_BINS, histogram: bool = True) -> None:
        if num_bins < 1:
            raise ValueError(f"num_bins must be positive, got {num_bins}.")
        self.num_bins = num_bins
        self.histogram = histogram
        size = num_bins if histogram else 0
        self._running: dict[str, _Running] = {
            name: _Running(hist=np.zeros(size, dtype=np.int64)) for name in names
        }
        self.use_extension = True
        """Use the C extension's fused pass when it was built (tests switch it off to compare)."""

    @property
    def names(self) -> list[str]:
        """The tensors this collector tracks, in construction order."""
        return list(self._running)

    def update(self, name: str, values: np.ndarray) -> None:
        """Add one batch of tensor `name` (any shape, any float dtype) to its statistics."""
        run = self._get(name)
        flat = np.asarray(values).reshape(-1)
        if flat.size == 0:
            return
        if flat.dtype not in (np.float16, np.float32):
            flat = flat.astype(np.float32)
        if self._fused(run, flat):
            return
        hi, lo = flat.max(), flat.min()
        if not (np.isfinite(hi) and np.isfinite(lo)):
            finite = np.isfinite(flat)
            kept = int(np.count_nonzero(finite))
            run.nan_count += flat.size - kept
            if kept == 0:
                return
            flat = flat[finite]
            hi, lo = flat.max(), flat.min()
        batch_amax = float(np.float32(max(float(hi), -float(lo))))
        run.amax = max(run.amax, batch_amax)
        run.count += flat.size
        if not self.histogram:
            return
        if batch_amax == 0.0:
            run.hist[0] += flat.size
            return
        self._cover(run, batch_amax)
        run.hist += self._bin(flat, run.scale)

    def _fused(self, run: _Running, flat: np.ndarray) -> bool:
        """The common case in one C pass: a finite batch inside the current histogram range.

        Returns False, having changed nothing, when the extension is missing, the range is not
        set yet, or the batch holds NaN/Inf or values beyond the range; `update` then takes the
        general path (which also grows the range).
        """
        if _ceil_counts is None or not self.use_extension or not self.histogram or run.hist_max == 0.0:
            return False
        counts = np.zeros(self.num_bins + 2, dtype=np.int64)
        amax, nonfinite = _ceil_counts(np.ascontiguousarray(flat, dtype=np.float32), float(run.scale), counts)
        if nonfinite or counts[-1]:
            return False
        run.amax = max(run.amax, float(np.float32(amax)))
        run.count += flat.size
        run.hist += _fold_zeros(counts[:-1])
        return True

    def merge(self, other: StatsCollector) -> None:
        """Fold another collector's statistics into this one (same tensors, bins and mode).

        Exact when the two histogram ranges are a power of two apart (as when both started from
        the same first batch); otherwise each of `other`'s bins is moved, whole, to the bin here
        that contains its centre.
        """
        if other.num_bins != self.num_bins or other.histogram != self.histogram:
            raise ValueError(
                f"Cannot merge a collector with num_bins={other.num_bins}, histogram={other.histogram} "
                f"into one with num_bins={self.num_bins}, histogram={self.histogram}."
            )
        for name, theirs in other._running.items():
            mine = self._get(name)
            mine.amax = max(mine.amax, theirs.amax)
            mine.count += theirs.count
            mine.nan_count += theirs.nan_count
            if not self.histogram:
                continue
            if theirs.hist_max == 0.0:
                mine.hist += theirs.hist
            elif mine.hist_max == 0.0:
                mine.hist = mine.hist + theirs.hist
                mine.hist_max = theirs.hist_max
                mine.scale = theirs.scale
            else:
                shift = _power_of_two_ratio(theirs.hist_max, mine.hist_max)
                if shift is not None and shift > 0:
                    self._grow(mine, shift)
                else:
                    self._cover(mine, theirs.amax)
                shift = _power_of_two_ratio(mine.hist_max, theirs.hist_max)
                if shift is not None:
                    mine.hist += _merge_bins(theirs.hist, shift)
                else:
                    mine.hist += _rebin_by_centre(theirs.hist, theirs.hist_max, mine.hist_max)

    def stats(self) -> dict[str, TensorStats]:
        """A snapshot of every tensor's statistics (copies; the collector keeps running)."""
        return {
            name: TensorStats(
                name=name,
                amax=run.amax,
                hist=run.hist.copy(),
                hist_max=run.hist_max,
                count=run.count,
                nan_count=run.nan_count,
            )
            for name, run in self._running.items()
        }

    def _get(self, name: str) -> _Running:
        try:
            return self._running[name]
        except KeyError:
            raise ValueError(
                f"Tensor {name!r} is not one of the {len(self._running)} tensors this collector tracks."
            ) from None

    def _cover(self, run: _Running, amax: float) -> None:
        """Start the histogram range at `amax`, or double it until it covers `amax`."""
        if run.hist_max == 0.0:
            run.hist_max = max(amax, MIN_HIST_MAX)
            run.scale = bin_scale(run.hist_max, self.num_bins)
            return
        shift = 0
        top = run.hist_max
        while top < amax:
            top *= 2.0
            shift += 1
        if shift:
            self._grow(run, shift)

    def _grow(self, run: _Running, shift: int) -> None:
        run.hist = _merge_bins(run.hist, shift)
        run.hist_max *= 2.0**shift
        run.scale = bin_scale(run.hist_max, self.num_bins)

    def _bin(self, flat: np.ndarray, scale: np.float32) -> np.ndarray:
        """Histogram of |flat| * scale by the right-closed rule, in cache-sized chunks."""
        n = self.num_bins
        if _ceil_counts is not None and self.use_extension:
            counts = np.zeros(n + 2, dtype=np.int64)
            _ceil_counts(np.ascontiguousarray(flat, dtype=np.float32), float(scale), counts)
            counts[n] += counts[n + 1]  # nothing lands above the range once it covers amax; kept as the numpy path does
            return _fold_zeros(counts[:-1])
        chunk = min(_CHUNK, flat.size)
        # per call, not per collector: different tensors may be binned on different threads
        fbufs = np.empty(chunk, dtype=np.float32), np.empty(chunk, dtype=np.int32), np.empty(chunk, dtype=np.intp)
        counts = np.zeros(n + 1, dtype=np.int64)
        for start in range(0, flat.size, chunk):
            part = flat[start : start + chunk]
            fbuf, i32buf, ibuf = (buf[: part.size] for buf in fbufs)
            np.multiply(part, scale, out=fbuf)
            np.abs(fbuf, out=fbuf)
            np.ceil(fbuf, out=fbuf)
            # float32 -> int32 -> intp is faster than a direct float32 -> int64 cast.
            np.copyto(i32buf, fbuf, casting="unsafe")
            np.copyto(ibuf, i32buf)
            found = np.bincount(ibuf, minlength=n + 1)
            counts[:n] += found[: n]
            counts[n] += found[n:].sum()
        return _fold_zeros(counts)


def _fold_zeros(counts: np.ndarray) -> np.ndarray:
    """Ceil-value counts (index c = ceil(|x| * scale)) to bins: c belongs to bin c - 1, c == 0 (an exact zero) to bin 0."""
    hist = counts[1:].copy()
    hist[0] += counts[0]
    return hist


def _power_of_two_ratio(big: float, small: float) -> int | None:
    """k with big == small * 2^k exactly (k >= 0), else None."""
    if big < small:
        return None
    mantissa_big, exp_big = np.frexp(big)
    mantissa_small, exp_small = np.frexp(small)
    if mantissa_big != mantissa_small:
        return None
    return int(exp_big - exp_small)


def _merge_bins(hist: np.ndarray, shift: int) -> np.ndarray:
    """Merge bins 2^shift to 1 (bin b -> b >> shift), keeping the number of bins."""
    if shift == 0:
        return hist.copy()
    merged = np.zeros_like(hist)
    if shift >= 63 or (1 << shift) >= hist.size:
        merged[0] = hist.sum()
        return merged
    group = 1 << shift
    starts = np.arange(0, hist.size, group)
    merged[: starts.size] = np.add.reduceat(hist, starts)
    return merged


def _rebin_by_centre(hist: np.ndarray, hist_max: float, new_max: float) -> np.ndarray:
    """Move each bin of a histogram over [0, hist_max] to the bin over [0, new_max] holding its centre."""
    n = hist.size
    centres = (np.arange(n, dtype=np.float64) + 0.5) * (hist_max / n)
    target = np.clip(np.ceil(centres * (n / new_max)).astype(np.int64) - 1, 0, n - 1)
    out = np.zeros(n, dtype=np.int64)
    np.add.at(out, target, hist)
    return out
