"""Serialised artifacts: the ranges table (JSON) and TensorRT's calibration cache."""
