"""Calibration algorithms: pure functions from a tensor's statistics to its amax.

`entropy` is TensorRT's EntropyCalibration2 as NVIDIA's pytorch-quantization and ModelOpt
implement it (`_compute_amax_entropy`), vectorised with prefix sums instead of their
O(bins^2) Python loops. `percentile` and `mse` follow the same libraries' definitions over the
2048-bin histogram; `max` uses the exact amax. Every result is clamped to the tensor's amax
(the histogram range may be up to twice that after growth); all-zero tensors get 0.0 and the
caller floors it.
"""

from __future__ import annotations

import functools

import numpy as np

from trtq.calibrate.collector import TensorStats
from trtq.calibrate.grids import INT8, Grid
from trtq.errors import TrtqError

METHODS = ("auto", "entropy", "max", "percentile", "mse")
"""`auto` picks one of the others per tensor (trtq.calibrate.auto); alone, it stands for its fallback, mse."""

ENTROPY_START_BIN = 128
"""First candidate threshold (in histogram bins) for entropy and mse, as in ModelOpt."""

INT8_LEVELS = 127
"""Positive levels of symmetric INT8, the grid mse fake-quantizes onto."""

_TIE_TOLERANCE = 1e-12
"""KL values this close to the minimum count as ties (resolved to the largest threshold, like the
reference's last argmin); the prefix-sum form differs from the reference's per-bin sums by
rounding only, far below this."""

_MSE_CHUNK = 64
"""Candidate thresholds evaluated per vectorised step in mse (bounds the temporary matrix)."""


def amax_max(stats: TensorStats) -> float:
    """The largest |x| seen."""
    return float(stats.amax)


def amax_entropy(stats: TensorStats, num_quant_bins: int = 128) -> float:
    """The threshold minimising KL(P || Q) between the clipped histogram and its quantized form.

    Candidates are bin edges i = 128..num_bins; the last minimiser wins. See
    `entropy_divergences` for the exact definition of P and Q.
    """
    hist = _histogram(stats, "entropy")
    if _is_empty(stats, hist):
        return 0.0
    if hist.size < ENTROPY_START_BIN:
        return float(stats.amax)
    divergences = entropy_divergences(hist, num_quant_bins, ENTROPY_START_BIN)
    best = float(np.min(divergences))
    if not np.isfinite(best):
        return float(stats.amax)
    last = int(np.flatnonzero(divergences <= best + _TIE_TOLERANCE)[-1])
    edge = ENTROPY_START_BIN + last
    return _clamp(stats, edge * stats.hist_max / hist.size)


def entropy_divergences(hist: np.ndarray, num_quant_bins: int = 128, start_bin: int = ENTROPY_START_BIN) -> np.ndarray:
    """KL divergence for every candidate threshold i = start_bin..len(hist) (bins), vectorised.

    As in pytorch-quantization's `_compute_amax_entropy`: bin 0 is replaced by bin 1 (it holds
    the zeros, which would dominate). For candidate i, P is hist[:i] with the outliers
    sum(hist[i:]) added to P[i-1]; Q splits hist[:i] into `num_quant_bins` groups (bin j goes
    to group floor(j * num_quant_bins / i)) and spreads each group's sum evenly over its
    non-zero bins (zero bins stay zero). Both are normalised; KL is infinite where P > 0 = Q.

    With totals T = sum(P) and S = sum(Q) = sum(hist[:i]), and group sums G_g over N_g non-zero bins,
        KL = (sum P log P - sum_g G_g log(G_g / N_g) - R log Q[i-1]) / T + log(S / T)
    where R is the outlier count, so each candidate costs O(num_quant_bins) via prefix sums.
    """
    h = np.asarray(hist, dtype=np.int64).copy()
    h[0] = h[1]
    n = h.size
    total = float(h.sum())
    cum = np.concatenate(([0], np.cumsum(h)))
    nonzero = np.concatenate(([0], np.cumsum(h > 0)))
    hf = h.astype(np.float64)
    plogp = np.where(h > 0, hf * np.log(np.where(h > 0, hf, 1.0)), 0.0)
    cum_plogp = np.concatenate(([0.0], np.cumsum(plogp)))

    cand = np.arange(start_bin, n + 1, dtype=np.int64)
    table_index, max_width = _group_layout(n, num_quant_bins, start_bin)
    # Each group is a run of `width` bins from `first`; the (first, width) pairs repeat across candidates
    # (width <= n / num_quant_bins + 1), so G log(G / N) is tabled once per pair, not once per group.
    first = np.arange(n + 1, dtype=np.int64)
    widths = np.arange(max_width + 1, dtype=np.int64)
    last = np.minimum(first[None, :] + widths[:, None], n)
    table_sum = (cum[last] - cum[first]).astype(np.float64)
    table_nonzero = (nonzero[last] - nonzero[first]).astype(np.float64)
    table_has = table_sum > 0
    table = np.where(table_has, table_sum * np.log(np.where(table_has, table_sum, 1.0) /
                                                  np.where(table_has, table_nonzero, 1.0)), 0.0)
    plogq = np.sum(table.reshape(-1)[table_index], axis=1)
    last_group = table_index[:, -1]  # each candidate's last group, whose mean fills Q[i - 1]
    last_sum, last_nonzero = table_sum.reshape(-1)[last_group], table_nonzero.reshape(-1)[last_group]
    last_q = np.where(last_sum > 0, last_sum / np.where(last_sum > 0, last_nonzero, 1.0), 0.0)

    inside = cum[cand].astype(np.float64)  # S = sum(hist[:i])
    outliers = total - inside
    last_bin = hf[cand - 1]
    last_p = last_bin + outliers
    plogp_sum = cum_plogp[cand - 1] + np.where(last_p > 0, last_p * np.log(np.where(last_p > 0, last_p, 1.0)), 0.0)
    with np.errstate(divide="ignore"):
        plogq = plogq + np.where(outliers > 0, outliers * np.log(np.where(last_bin > 0, last_q, 1.0)), 0.0)
        kl = (plogp_sum - plogq) / total + np.log(np.where(inside > 0, inside, 1.0) / total)
    impossible = (outliers > 0) & (last_bin == 0)
    return np.where(impossible, np.inf, np.maximum(kl, 0.0))


@functools.lru_cache(maxsize=8)
def _group_layout(num_bins: int, num_quant_bins: int, start_bin: int) -> tuple[np.ndarray, int]:
    """Where each candidate's groups lie; depends on the sizes only, so it is computed once per run.

    Group g of threshold i starts at bin ceil(g * i / num_quant_bins) (group num_quant_bins at i).
    `table_index[i - start_bin, g]` is width * (num_bins + 1) + first bin of group g: its place in a
    (width, first bin) table of per-group terms. The second value is the largest width.
    """
    cand = np.arange(start_bin, num_bins + 1, dtype=np.int64)
    groups = np.arange(num_quant_bins + 1, dtype=np.int64)
    starts = (groups[None, :] * cand[:, None] + num_quant_bins - 1) // num_quant_bins
    widths = np.diff(starts, axis=1)
    table_index = widths * (num_bins + 1) + starts[:, :-1]
    table_index.flags.writeable = False
    return table_index, int(widths.max(initial=0))


def amax_percentile(stats: TensorStats, percentile: float = 99.99) -> float:
    """The upper edge of the bin where the cumulative share of |x| first reaches `percentile` %.

    ModelOpt returns that bin's lower edge instead; the upper edge guarantees that at least
    `percentile` % of the values are <= amax, and percentile 100 gives the exact amax.
    """
    if not 0.0 < percentile <= 100.0:
        raise TrtqError(
            f"Percentile {percentile} is out of range; it must be in (0, 100].",
            "pass e.g. --percentile 99.99.",
        )
    hist = _histogram(stats, "percentile")
    if _is_empty(stats, hist):
        return 0.0
    cum = np.cumsum(hist)
    idx = int(np.searchsorted(cum, percentile / 100.0 * float(cum[-1]), side="left"))
    idx = min(idx, hist.size - 1)
    return _clamp(stats, (idx + 1) * stats.hist_max / hist.size)


def amax_mse(stats: TensorStats, grid: Grid = INT8) -> float:
    """The threshold minimising the expected squared error of symmetric fake-quantization on `grid`.

    As in ModelOpt's `_compute_amax_mse`: candidates are the centres of bins 128..num_bins-1,
    each bin's count sits at its centre, and values are quantized to round(x * 127 / amax)
    clamped to 127 (round half to even); the first minimiser wins. On another grid (FP8 E4M3)
    the values go through that grid's quantizer instead (`Grid.fake_quantize`).
    """
    hist = _histogram(stats, "mse")
    if _is_empty(stats, hist):
        return 0.0
    n = hist.size
    if n <= ENTROPY_START_BIN:
        return float(stats.amax)
    occupied = np.flatnonzero(hist)
    counts = hist[occupied].astype(np.float64)
    centres = occupied.astype(np.float64) + 0.5  # in bin widths; the argmin is scale-free
    thresholds = np.arange(ENTROPY_START_BIN, n, dtype=np.float64) + 0.5
    errors = np.empty(thresholds.size, dtype=np.float64)
    for start in range(0, thresholds.size, _MSE_CHUNK):
        amax = thresholds[start : start + _MSE_CHUNK, None]
        if grid.name == INT8.name:  # in place, in the same order as min(round(c * 127 / a), 127) * (a / 127) - c
            diff = centres[None, :] * (INT8_LEVELS / amax)
            np.round(diff, out=diff)
            np.minimum(diff, INT8_LEVELS, out=diff)
            diff *= amax / INT8_LEVELS
            diff -= centres[None, :]
        else:
            values = np.broadcast_to(centres.astype(np.float32), (amax.shape[0], centres.size))
            diff = grid.fake_quantize(values, amax[:, 0], axis=0).astype(np.float64) - centres[None, :]
        errors[start : start + _MSE_CHUNK] = (diff * diff) @ counts
    best = float(thresholds[int(np.argmin(errors))])
    return _clamp(stats, best * stats.hist_max / n)


def needs_histogram(method: str) -> bool:
    """Whether `method` needs the histogram (all but max)."""
    _check_method(method)
    return method != "max"


def compute_amax(stats: TensorStats, method: str, percentile: float = 99.99, grid: Grid = INT8) -> float:
    """The amax of one tensor by `method` (one of METHODS); `mse` minimises the error on `grid`."""
    _check_method(method)
    if method == "max":
        return amax_max(stats)
    if method == "entropy":
        return amax_entropy(stats)
    if method == "percentile":
        return amax_percentile(stats, percentile)
    return amax_mse(stats, grid)  # mse, and auto for tensors it does not judge


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise TrtqError(
            f"Unknown calibration method {method!r}; expected one of {', '.join(METHODS)}.",
            "pass --method auto (trtq's default), entropy (TensorRT's), max, percentile or mse.",
        )


def _histogram(stats: TensorStats, method: str) -> np.ndarray:
    if not stats.has_histogram and stats.count > 0:
        raise ValueError(
            f"Tensor {stats.name!r} was collected without a histogram, which method {method!r} needs."
        )
    return stats.hist


def _is_empty(stats: TensorStats, hist: np.ndarray) -> bool:
    """True for tensors with no non-zero value (and so no histogram range)."""
    return stats.amax == 0.0 or stats.hist_max == 0.0 or hist.size == 0 or not hist.any()


def _clamp(stats: TensorStats, amax: float) -> float:
    return float(min(amax, stats.amax))
