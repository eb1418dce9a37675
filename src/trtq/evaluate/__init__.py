"""Evaluation: FP32 vs quantized comparisons and accuracy metrics."""

from trtq.evaluate.compare import ComparisonReport, compare_models
from trtq.evaluate.metrics import OutputAccumulator, OutputMetrics

__all__ = ["ComparisonReport", "OutputAccumulator", "OutputMetrics", "compare_models"]
