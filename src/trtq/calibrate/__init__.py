"""Calibration: run the FP32 model over sample data, collect statistics, compute ranges."""

from trtq.calibrate.runner import CalibrationResult, run_calibration

__all__ = ["CalibrationResult", "run_calibration"]
