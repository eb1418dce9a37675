"""Tests for the streaming statistics collector: amax, counts, the exact histogram rule, merge."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from trtq.calibrate.collector import NUM_BINS, StatsCollector, TensorStats, bin_scale
from trtq.errors import TrtqError


def _collect(batches: list[np.ndarray], num_bins: int = NUM_BINS, histogram: bool = True) -> TensorStats:
    collector = StatsCollector(["t"], num_bins=num_bins, histogram=histogram)
    for batch in batches:
        collector.update("t", batch)
    return collector.stats()["t"]


def _batch_with_max(rng: np.random.Generator, size: int, amax: float) -> np.ndarray:
    """Random signed float32 values in (-amax, amax) with |x| reaching exactly amax once."""
    values = (rng.uniform(-1.0, 1.0, size) * amax).astype(np.float32)
    values[rng.integers(size)] = -np.float32(amax)
    return values


def test_amax_and_count_of_known_values() -> None:
    stats = _collect([np.array([[1.0, -3.5], [2.0, 0.0]], dtype=np.float32), np.array([0.5, -1.0], dtype=np.float32)])
    assert stats.amax == 3.5
    assert stats.count == 6
    assert stats.nan_count == 0
    assert stats.hist.sum() == 6


def test_binning_rule_is_right_closed_with_zeros_in_bin_zero() -> None:
    # 4 bins over [0, 1]: [0, .25], (.25, .5], (.5, .75], (.75, 1]
    stats = _collect([np.array([0.0, 0.25, -0.3, 0.5, 0.74, -1.0], dtype=np.float32)], num_bins=4)
    assert stats.hist_max == 1.0
    assert stats.hist.tolist() == [2, 2, 1, 1]


def test_bin_centres_match_numpy_histogram_across_chunks() -> None:
    # Values on bin centres are unambiguous, so any correct binning agrees with np.histogram;
    # 300k values cross several internal chunks.
    rng = np.random.default_rng(0)
    centres = (rng.integers(0, NUM_BINS, 300_000) + 0.5) / NUM_BINS
    values = np.concatenate([centres, [1.0]]).astype(np.float32) * rng.choice([-1.0, 1.0], 300_001).astype(np.float32)
    stats = _collect([values])
    expected, _ = np.histogram(np.abs(values.astype(np.float64)), bins=NUM_BINS, range=(0.0, 1.0))
    assert stats.hist_max == 1.0
    np.testing.assert_array_equal(stats.hist, expected)


def test_value_equal_to_hist_max_lands_in_last_bin() -> None:
    rng = np.random.default_rng(1)
    for amax in rng.uniform(1e-3, 1e3, 200).astype(np.float32):
        stats = _collect([np.array([0.0, amax], dtype=np.float32)])
        assert stats.hist[-1] == 1, amax
        assert stats.hist[0] == 1


def test_bin_scale_keeps_top_in_range_and_scales_by_powers_of_two() -> None:
    rng = np.random.default_rng(2)
    for top in rng.uniform(1e-6, 1e6, 2000).astype(np.float32):
        scale = bin_scale(float(top), NUM_BINS)
        assert np.float32(top) * scale <= np.float32(NUM_BINS)
        assert bin_scale(float(top) * 8.0, NUM_BINS) == scale / np.float32(8.0)


def test_doubling_equals_binning_with_final_range_up_front() -> None:
    # Growing ranges h0 -> 2*h0 -> 8*h0 (powers of two apart), each batch touching its top edge,
    # collected in growing order versus with the widest batch first.
    rng = np.random.default_rng(3)
    h0 = 0.7310585
    small = _batch_with_max(rng, 50_000, h0)
    medium = _batch_with_max(rng, 50_000, 2 * h0)
    large = _batch_with_max(rng, 50_000, 8 * h0)
    growing = _collect([small, medium, large])
    known = _collect([large, small, medium])
    assert growing.hist_max == known.hist_max == pytest.approx(8 * h0, rel=1e-7)
    assert growing.amax == known.amax
    np.testing.assert_array_equal(growing.hist, known.hist)


def test_growth_uses_smallest_covering_power_of_two() -> None:
    stats = _collect([np.array([1.0], dtype=np.float32), np.array([3.0], dtype=np.float32)], num_bins=8)
    assert stats.hist_max == 4.0
    # 1.0 sat in the last of 8 bins over [0, 1]; merged 4-to-1 it is in bin 1 of [0, 4],
    # the bin (0.5, 1.0] where binning it directly puts it; 3.0 is in (2.5, 3.0].
    assert stats.hist.tolist() == [0, 1, 0, 0, 0, 1, 0, 0]
    same = _collect([np.array([2.0], dtype=np.float32), np.array([2.0], dtype=np.float32)], num_bins=8)
    assert same.hist_max == 2.0
    assert same.hist.tolist() == [0, 0, 0, 0, 0, 0, 0, 2]


def test_zeros_before_first_nonzero_batch_are_kept_in_bin_zero() -> None:
    stats = _collect([np.zeros(10, dtype=np.float32), np.array([0.0, 2.0], dtype=np.float32)], num_bins=4)
    assert stats.hist_max == 2.0
    assert stats.hist.tolist() == [11, 0, 0, 1]
    assert stats.count == 12


def test_all_zero_tensor() -> None:
    stats = _collect([np.zeros((2, 3), dtype=np.float32), np.zeros(4, dtype=np.float32)])
    assert stats.amax == 0.0
    assert stats.hist_max == 0.0
    assert stats.hist[0] == 10
    assert stats.hist[1:].sum() == 0


def test_nan_and_inf_counted_apart_from_histogram() -> None:
    values = np.array([1.0, np.nan, -2.0, np.inf, -np.inf, 0.5], dtype=np.float32)
    stats = _collect([values, np.full(3, np.nan, dtype=np.float32)])
    assert stats.nan_count == 6
    assert stats.count == 3
    assert stats.amax == 2.0
    assert stats.hist.sum() == 3


def test_float16_and_float64_inputs_bin_like_float32() -> None:
    rng = np.random.default_rng(4)
    values = rng.standard_normal(10_000).astype(np.float16)
    as32 = _collect([values.astype(np.float32)])
    assert _collect([values]) == as32
    assert _collect([values.astype(np.float64)]) == as32


def test_without_histogram_only_amax_and_count() -> None:
    stats = _collect([np.array([1.0, -4.0], dtype=np.float32), np.array([np.nan], dtype=np.float32)], histogram=False)
    assert stats.amax == 4.0
    assert stats.count == 2
    assert stats.nan_count == 1
    assert not stats.has_histogram


def test_unknown_tensor_name_is_rejected() -> None:
    collector = StatsCollector(["a"])
    with pytest.raises(ValueError, match="'b'"):
        collector.update("b", np.ones(3, dtype=np.float32))


def test_tensor_never_updated_has_empty_stats() -> None:
    stats = StatsCollector(["a", "b"]).stats()
    assert list(stats) == ["a", "b"]
    assert stats["a"].count == 0 and stats["a"].amax == 0.0 and stats["a"].hist.sum() == 0


def test_merge_aligned_equals_single_collector() -> None:
    rng = np.random.default_rng(5)
    h0 = 1.337
    shard1 = [_batch_with_max(rng, 20_000, h0), _batch_with_max(rng, 20_000, h0 * 0.5)]
    shard2 = [_batch_with_max(rng, 20_000, h0 * 4), np.zeros(7, dtype=np.float32)]
    whole = StatsCollector(["t"])
    first, second = StatsCollector(["t"]), StatsCollector(["t"])
    for batch in shard1:
        whole.update("t", batch)
        first.update("t", batch)
    for batch in shard2:
        whole.update("t", batch)
        second.update("t", batch)
    reverse = StatsCollector(["t"])
    reverse.merge(second)
    reverse.merge(first)
    first.merge(second)
    assert first.stats() == whole.stats()
    assert reverse.stats() == whole.stats()


def test_merge_unaligned_keeps_totals_and_shape() -> None:
    rng = np.random.default_rng(6)
    a_batch, b_batch = _batch_with_max(rng, 100_000, 1.0), _batch_with_max(rng, 100_000, 3.0)
    merged = StatsCollector(["t"])
    merged.update("t", a_batch)
    other = StatsCollector(["t"])
    other.update("t", b_batch)
    merged.update("t", np.array([np.nan], dtype=np.float32))
    merged.merge(other)
    stats = merged.stats()["t"]
    direct = _collect([a_batch, b_batch])
    assert stats.hist_max == direct.hist_max == 4.0
    assert stats.amax == direct.amax
    assert stats.count == stats.hist.sum() == 200_000
    assert stats.nan_count == 1
    # Each moved bin shifts by at most one target bin.
    assert np.abs(np.cumsum(stats.hist) - np.cumsum(direct.hist)).max() <= direct.hist.max()


def test_merge_rejects_mismatched_collectors() -> None:
    with pytest.raises(ValueError, match="num_bins"):
        StatsCollector(["t"]).merge(StatsCollector(["t"], num_bins=16))


def test_deterministic_and_round_trips_through_json() -> None:
    rng = np.random.default_rng(7)
    batches = [rng.standard_normal((4, 8, 8)).astype(np.float32) * s for s in (1.0, 3.0, 0.2)]
    stats = _collect(batches)
    assert _collect(batches) == stats
    restored = TensorStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert restored == stats
    assert restored.hist.dtype == np.int64


def test_from_dict_rejects_malformed_records() -> None:
    good = _collect([np.array([1.0], dtype=np.float32)], num_bins=4).to_dict()
    with pytest.raises(TrtqError, match="malformed"):
        TensorStats.from_dict({k: v for k, v in good.items() if k != "hist_max"})
    with pytest.raises(TrtqError, match="count"):
        TensorStats.from_dict({**good, "count": 5})


def test_large_activation_update_is_fast() -> None:
    # A 64x56x56x64 float32 activation (12.8M values); ~25 ms on 2 cores, bound generous.
    values = np.linspace(-3.0, 3.0, 64 * 56 * 56 * 64, dtype=np.float32).reshape(64, 56, 56, 64)
    collector = StatsCollector(["t"])
    collector.update("t", values)
    start = time.perf_counter()
    collector.update("t", values)
    assert time.perf_counter() - start < 0.5
    assert collector.stats()["t"].count == 2 * values.size
