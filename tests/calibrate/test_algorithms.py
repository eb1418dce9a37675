"""Tests for the amax algorithms: agreement with slow reference loops, and known distributions."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
from scipy.stats import entropy

from trtq.calibrate.algorithms import (
    METHODS,
    amax_entropy,
    amax_max,
    amax_mse,
    amax_percentile,
    compute_amax,
    entropy_divergences,
    needs_histogram,
)
from trtq.calibrate.collector import StatsCollector, TensorStats
from trtq.calibrate.grids import FP8_E4M3, INT8
from trtq.errors import TrtqError


def _reference_divergences(hist: np.ndarray, num_quant_bins: int = 128, start_bin: int = 128) -> np.ndarray:
    """pytorch-quantization's `_compute_amax_entropy` loop, written out plainly (O(bins^2))."""
    bins = np.array(hist, dtype=np.int64)
    bins[0] = bins[1]
    divergences = []
    for i in range(start_bin, len(bins) + 1):
        space = np.linspace(0, i, num=num_quant_bins + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[bins[:i] == 0] = -1
        group_counts = np.zeros(num_quant_bins)
        for idx, group in enumerate(digitized):
            if group != -1:
                group_counts[group] += bins[idx]
        for group, members in Counter(digitized).items():
            if group != -1:
                group_counts[group] /= members
        quantized = np.zeros(i)
        for idx, group in enumerate(digitized):
            if group != -1:
                quantized[idx] = group_counts[group]
        reference = np.array(bins[:i], dtype=np.float64)
        reference[-1] += bins[i:].sum()
        divergences.append(entropy(reference, quantized))
    return np.array(divergences)


def _reference_mse_bin(hist: np.ndarray, start_bin: int = 128) -> int:
    """ModelOpt's `_compute_amax_mse` loop: index of the bin centre chosen as amax."""
    centres = np.arange(len(hist)) + 0.5
    errors = []
    for i in range(start_bin, len(hist)):
        amax = centres[i]
        scale = 127.0 / amax
        quantized = np.clip(np.round(centres * scale), -127, 127) / scale
        errors.append(((quantized - centres) ** 2 * hist).mean())
    return start_bin + int(np.argmin(errors))


def _stats_of_hist(hist: np.ndarray, amax: float | None = None) -> TensorStats:
    """Stats with bin width 1, so amax in bins equals the chosen edge index."""
    hist = np.asarray(hist, dtype=np.int64)
    return TensorStats(name="t", amax=float(hist.size) if amax is None else amax, hist=hist,
                       hist_max=float(hist.size), count=int(hist.sum()))


def _stats_of(values: np.ndarray) -> TensorStats:
    collector = StatsCollector(["t"])
    collector.update("t", values)
    return collector.stats()["t"]


def _random_histograms() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    gauss = np.abs(rng.standard_normal(200_000))
    laplace = np.abs(rng.laplace(size=200_000))
    relu = np.maximum(rng.standard_normal(100_000), 0.0)
    return [
        np.histogram(gauss, bins=512, range=(0, gauss.max()))[0],
        np.histogram(laplace, bins=384, range=(0, laplace.max()))[0],
        np.histogram(relu, bins=256, range=(0, relu.max()))[0],
        np.histogram(gauss, bins=512, range=(0, 2 * gauss.max()))[0],  # empty top half, as after growth
        rng.integers(0, 50, 300) * (rng.random(300) < 0.2),  # sparse: many empty bins
    ]


@pytest.mark.parametrize("index", range(5))
def test_entropy_matches_reference_loop(index: int) -> None:
    hist = _random_histograms()[index]
    expected = _reference_divergences(hist)
    got = entropy_divergences(hist)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=0, atol=1e-12)
    reference_edge = 128 + len(expected) - 1 - int(np.argmin(expected[::-1]))
    assert amax_entropy(_stats_of_hist(hist)) == reference_edge


def test_entropy_of_gaussian_is_pinned_to_reference() -> None:
    # 1M N(0,1) float32 samples in one batch: the reference loop picks 4.5386 (edge 1935 of 2048,
    # 0.945 of the sample max 4.804). Allow a few bins for RNG-stream changes across numpy versions.
    values = np.random.default_rng(0).standard_normal(1 << 20, dtype=np.float32)
    stats = _stats_of(values)
    amax = amax_entropy(stats)
    assert 2.5 < amax < 5.0
    assert amax == pytest.approx(4.5386, abs=5 * stats.bin_width)


def test_entropy_clips_laplacian_tail_more_than_gaussian() -> None:
    rng = np.random.default_rng(1)
    gauss = _stats_of(rng.standard_normal(1 << 20, dtype=np.float32))
    laplace = _stats_of(rng.laplace(size=1 << 20).astype(np.float32))
    gauss_share = amax_entropy(gauss) / gauss.amax
    laplace_share = amax_entropy(laplace) / laplace.amax
    assert laplace_share < gauss_share - 0.1
    assert laplace_share < 0.85


def test_mse_matches_reference_loop() -> None:
    for hist in _random_histograms()[:4]:
        assert amax_mse(_stats_of_hist(hist)) == _reference_mse_bin(hist) + 0.5


def test_mse_finds_known_optimal_clipping() -> None:
    # Optimal 8-bit clipping (Banner et al., ACIQ): 3.92 sigma for a Gaussian, 9.89 b for a
    # Laplacian; mse clips harder than entropy on both.
    rng = np.random.default_rng(2)
    gauss = _stats_of(rng.standard_normal(1 << 20, dtype=np.float32))
    laplace = _stats_of(rng.laplace(size=1 << 20).astype(np.float32))
    assert amax_mse(gauss) == pytest.approx(3.92, abs=0.15)
    assert amax_mse(laplace) == pytest.approx(9.89, abs=0.4)
    assert amax_mse(gauss) < amax_entropy(gauss) <= gauss.amax
    assert amax_mse(laplace) < amax_entropy(laplace) <= laplace.amax


def test_mse_on_the_fp8_grid_keeps_what_int8_clips() -> None:
    # E4M3's error is relative to each value, so a larger range costs the bulk almost nothing: mse on
    # the FP8 grid keeps the four outliers (60x the Laplacian's scale) that mse on INT8 clips.
    rng = np.random.default_rng(3)
    values = rng.laplace(size=1 << 18).astype(np.float32)
    values[:4] = [60.0, -55.0, 58.0, -50.0]
    stats = _stats_of(values)
    assert amax_mse(stats) < 0.75 * stats.amax
    assert amax_mse(stats, FP8_E4M3) > 0.95 * stats.amax
    assert compute_amax(stats, "mse", grid=FP8_E4M3) == amax_mse(stats, FP8_E4M3)
    assert compute_amax(stats, "mse") == amax_mse(stats, INT8)


def test_percentile_of_uniform_sample() -> None:
    values = np.random.default_rng(3).uniform(-2.0, 2.0, 1 << 20).astype(np.float32)
    stats = _stats_of(values)
    assert amax_percentile(stats, 90.0) == pytest.approx(0.9 * stats.amax, abs=0.005)
    assert amax_percentile(stats, 50.0) == pytest.approx(0.5 * stats.amax, abs=0.005)
    assert amax_percentile(stats, 100.0) == stats.amax


def test_percentile_is_upper_edge_of_crossing_bin() -> None:
    # 10 values per bin over 4 bins of width 1: 25% is reached at the end of bin 0.
    stats = _stats_of_hist(np.array([10, 10, 10, 10]))
    assert amax_percentile(stats, 25.0) == 1.0
    assert amax_percentile(stats, 25.1) == 2.0


def test_percentile_out_of_range_is_a_user_error() -> None:
    stats = _stats_of_hist(np.ones(256, dtype=np.int64))
    for bad in (0.0, -1.0, 100.5):
        with pytest.raises(TrtqError, match="Percentile"):
            amax_percentile(stats, bad)


def test_max_of_known_values() -> None:
    stats = _stats_of(np.array([0.5, -7.25, 3.0], dtype=np.float32))
    assert amax_max(stats) == 7.25
    assert compute_amax(stats, "max") == 7.25


def test_results_are_clamped_to_amax() -> None:
    # Histogram range twice the data (as after growth) and a distribution with all mass at the
    # top: every histogram method would pick an edge above amax.
    hist = np.zeros(2048, dtype=np.int64)
    hist[1000:1024] = 1000
    stats = TensorStats(name="t", amax=1.0, hist=hist, hist_max=2.0, count=int(hist.sum()))
    for method in METHODS:
        assert compute_amax(stats, method) <= 1.0
    assert amax_entropy(stats) == 1.0
    assert amax_percentile(stats, 100.0) == 1.0


@pytest.mark.parametrize("method", METHODS)
def test_all_zero_and_empty_tensors_get_zero(method: str) -> None:
    collector = StatsCollector(["zeros", "unseen"])
    collector.update("zeros", np.zeros(100, dtype=np.float32))
    stats = collector.stats()
    assert compute_amax(stats["zeros"], method) == 0.0
    assert compute_amax(stats["unseen"], method) == 0.0


def test_dispatch_and_unknown_method() -> None:
    stats = _stats_of(np.random.default_rng(4).standard_normal(10_000).astype(np.float32))
    assert compute_amax(stats, "entropy") == amax_entropy(stats)
    assert compute_amax(stats, "mse") == amax_mse(stats)
    assert compute_amax(stats, "percentile", percentile=99.0) == amax_percentile(stats, 99.0)
    with pytest.raises(TrtqError, match="'minmax'"):
        compute_amax(stats, "minmax")
    with pytest.raises(TrtqError):
        needs_histogram("kl")
    assert [needs_histogram(m) for m in METHODS] == [True, True, False, True, True]  # auto, entropy, max, ...
    assert compute_amax(stats, "auto") == amax_mse(stats)  # the fallback of tensors auto does not judge


def test_histogram_methods_need_a_histogram() -> None:
    collector = StatsCollector(["t"], histogram=False)
    collector.update("t", np.array([1.0, 2.0], dtype=np.float32))
    stats = collector.stats()["t"]
    assert compute_amax(stats, "max") == 2.0
    with pytest.raises(ValueError, match="without a histogram"):
        compute_amax(stats, "entropy")


def test_algorithms_are_deterministic_and_fast() -> None:
    values = np.random.default_rng(5).standard_normal(1 << 18, dtype=np.float32)
    stats = _stats_of(values)
    for method in ("entropy", "mse", "percentile"):
        start = time.perf_counter()
        first = compute_amax(stats, method)
        elapsed = time.perf_counter() - start
        assert compute_amax(stats, method) == first
        assert elapsed < 0.25, f"{method} took {elapsed:.3f} s"
