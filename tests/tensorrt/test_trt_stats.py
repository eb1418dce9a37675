"""Bench statistics with trtexec's definitions (sampleReporting.cpp findPercentile / findMedian)."""

from __future__ import annotations

import math

import pytest

from trtq.tensorrt.stats import QueryTiming, bench_report, find_median, find_percentile, summarize


def reference_percentile(ordered, p):
    """findPercentile transcribed: exclude = int((1 - p/100) * n) in float32, index max(n - 1 - exclude, 0)."""
    import numpy as np

    n = len(ordered)
    exclude = int(np.float32(np.float32(1) - np.float32(p) / np.float32(100)) * np.float32(n))
    return ordered[max(n - 1 - exclude, 0)]


def test_percentile_is_evaluated_in_float32_like_trtexec():
    ten = [float(v) for v in range(1, 11)]
    # float64 would give (1 - 0.9) * 10 = 0.99999 -> exclude 0 -> the 10th value; float32 gives 1.0000002 -> 9th
    assert find_percentile(ten, 90) == 9.0
    hundred = [float(v) for v in range(1, 101)]
    # and the other way round for p99: float32 (1 - 0.99) * 100 = 0.99999905 -> exclude 0 -> the largest value
    assert find_percentile(hundred, 99) == 100.0
    assert find_percentile(hundred, 95) == 95.0
    assert find_percentile(hundred, 0) == 1.0 and find_percentile(hundred, 100) == 100.0


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 33, 100, 1000, 4567])
@pytest.mark.parametrize("p", [50.0, 90.0, 95.0, 99.0, 99.9])
def test_percentile_matches_the_transcription(n, p):
    ordered = [v * 0.37 for v in range(n)]
    assert find_percentile(ordered, p) == reference_percentile(ordered, p)


def test_percentile_edges():
    assert math.isinf(find_percentile([], 90))
    with pytest.raises(ValueError):
        find_percentile([1.0], 101)


def test_median_even_and_odd():
    assert find_median([1.0, 2.0, 10.0]) == 2.0
    assert find_median([1.0, 2.0, 4.0, 10.0]) == 3.0
    assert math.isinf(find_median([]))


def test_summarize_sorts_first():
    stats = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (stats.min, stats.max, stats.mean, stats.median) == (1.0, 5.0, 3.0, 3.0)
    assert stats.percentiles == {"90": 5.0, "95": 5.0, "99": 5.0}
    with pytest.raises(ValueError):
        summarize([])


def test_bench_report_as_trtexec_summarizes():
    timings = [QueryTiming(enqueue=0.1, h2d=0.2 * i, gpu_compute=1.0 + i, d2h=0.1) for i in range(10)]
    report = bench_report("m.engine", timings, 2.0, warmup_queries=3, warmup_ms=200.0, cuda_graph=False)
    assert report.throughput_qps == 5.0
    assert report.metrics["gpu_compute"].percentiles["90"] == 9.0  # 9th of 1..10
    assert report.metrics["latency"].max == pytest.approx(0.2 * 9 + 10.0 + 0.1)
    assert report.total_gpu_compute_s == pytest.approx(sum(1.0 + i for i in range(10)) / 1000)
    text = report.to_text()
    for label in ("=== Performance summary ===", "Throughput: 5 qps", "Latency: min = ", "Enqueue Time:",
                  "H2D Latency:", "GPU Compute Time:", "D2H Latency:", "percentile(99%)", "Total Host Walltime: 2 s"):
        assert label in text
    with pytest.raises(ValueError):
        bench_report("m.engine", [], 1.0, warmup_queries=0, warmup_ms=0, cuda_graph=False)
