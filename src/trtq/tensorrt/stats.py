"""Benchmark statistics exactly as trtexec's performance summary computes them.

From samples/common/sampleReporting.cpp (TensorRT 10): timings are sorted; min/max are the
ends; the median averages the two middle values of an even count; the percentile p is
`sorted[max(n - 1 - int((1 - p/100) * n), 0)]`, evaluated in float32 as trtexec does (so p90
of 10 values is the 9th smallest, not the 10th); the mean is the sum over the count; throughput
is queries / total host walltime.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

PERCENTILES = (90.0, 95.0, 99.0)
"""trtexec's default --percentile=90,95,99."""

METRICS = ("latency", "enqueue", "h2d", "gpu_compute", "d2h")
"""Per-query metrics of the summary, in trtexec's order (Latency = H2D + GPU Compute + D2H)."""

LABELS = {
    "latency": "Latency",
    "enqueue": "Enqueue Time",
    "h2d": "H2D Latency",
    "gpu_compute": "GPU Compute Time",
    "d2h": "D2H Latency",
}


def find_percentile(sorted_values: Sequence[float], percentile: float) -> float:
    """trtexec's findPercentile on an ascending sequence (inf when empty)."""
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile {percentile} is not in [0, 100]")
    count = len(sorted_values)
    if count == 0:
        return math.inf
    p = np.float32(percentile)
    exclude = int(np.float32(np.float32(1) - p / np.float32(100)) * np.float32(count))
    return float(sorted_values[max(count - 1 - exclude, 0)])


def find_median(sorted_values: Sequence[float]) -> float:
    """trtexec's findMedian on an ascending sequence (inf when empty)."""
    count = len(sorted_values)
    if count == 0:
        return math.inf
    middle = count // 2
    if count % 2:
        return float(sorted_values[middle])
    return (float(sorted_values[middle - 1]) + float(sorted_values[middle])) / 2


@dataclass(frozen=True)
class MetricStats:
    """min/max/mean/median and percentiles of one metric, in milliseconds."""

    min: float
    max: float
    mean: float
    median: float
    percentiles: dict[str, float] = field(default_factory=dict)

    def to_text(self) -> str:
        """trtexec's spelling: min = ... ms, max = ..., percentile(90%) = ... ms."""
        text = (f"min = {self.min:.6g} ms, max = {self.max:.6g} ms, mean = {self.mean:.6g} ms, "
                f"median = {self.median:.6g} ms")
        return text + "".join(f", percentile({p}%) = {v:.6g} ms" for p, v in self.percentiles.items())


def summarize(values_ms: Sequence[float], percentiles: Sequence[float] = PERCENTILES) -> MetricStats:
    """Statistics of one metric over the timed queries."""
    if not len(values_ms):
        raise ValueError("no timings to summarize")
    ordered = sorted(float(v) for v in values_ms)
    return MetricStats(
        min=ordered[0],
        max=ordered[-1],
        mean=math.fsum(ordered) / len(ordered),
        median=find_median(ordered),
        percentiles={f"{p:g}": find_percentile(ordered, p) for p in percentiles},
    )


@dataclass(frozen=True)
class QueryTiming:
    """One timed query: host enqueue time and the three GPU phases, in milliseconds."""

    enqueue: float
    h2d: float
    gpu_compute: float
    d2h: float

    @property
    def latency(self) -> float:
        """H2D + GPU compute + D2H, as trtexec defines Latency."""
        return self.h2d + self.gpu_compute + self.d2h


@dataclass(frozen=True)
class BenchReport:
    """What trtexec's "=== Performance summary ===" reports."""

    engine: str
    queries: int
    warmup_queries: int
    warmup_ms: float
    total_host_walltime_s: float
    throughput_qps: float
    total_gpu_compute_s: float
    metrics: dict[str, MetricStats]
    cuda_graph: bool
    shapes: dict[str, list[int]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return asdict(self)

    def to_text(self) -> str:
        """The summary in trtexec's layout."""
        lines = [
            f"Warmup completed {self.warmup_queries} queries over {self.warmup_ms:g} ms",
            f"Timing trace has {self.queries} queries over {self.total_host_walltime_s:.6g} s",
            "=== Performance summary ===",
            f"Throughput: {self.throughput_qps:.6g} qps",
            *(f"{LABELS[name]}: {self.metrics[name].to_text()}" for name in METRICS if name in self.metrics),
            f"Total Host Walltime: {self.total_host_walltime_s:.6g} s",
            f"Total GPU Compute Time: {self.total_gpu_compute_s:.6g} s",
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def bench_report(
    engine: str,
    timings: Sequence[QueryTiming],
    walltime_s: float,
    *,
    warmup_queries: int,
    warmup_ms: float,
    cuda_graph: bool,
    shapes: Mapping[str, Sequence[int]] | None = None,
    percentiles: Sequence[float] = PERCENTILES,
    warnings: Sequence[str] = (),
) -> BenchReport:
    """Summarize timed queries the way trtexec's printEpilog does."""
    if not timings:
        raise ValueError("no timed queries")
    if walltime_s <= 0:
        raise ValueError(f"walltime must be positive, got {walltime_s}")
    metrics = {name: summarize([getattr(t, name) for t in timings], percentiles) for name in METRICS}
    return BenchReport(
        engine=engine,
        queries=len(timings),
        warmup_queries=warmup_queries,
        warmup_ms=warmup_ms,
        total_host_walltime_s=walltime_s,
        throughput_qps=len(timings) / walltime_s,
        total_gpu_compute_s=metrics["gpu_compute"].mean * len(timings) / 1000.0,
        metrics=metrics,
        cuda_graph=cuda_graph,
        shapes={k: list(v) for k, v in (shapes or {}).items()},
        warnings=tuple(warnings),
    )
