"""Numbers as trtq prints and saves them: one place that knows about infinities and NaN.

Results carry floats that can be infinite (the SNR of an output that matches FP32 exactly) or
NaN (a model that produced NaN); JSON views spell those as the strings "inf", "-inf" and "nan".
Every printed number goes through `fmt`, which takes either spelling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def number(value: object) -> float | None:
    """A float from a number or its JSON spelling ("inf", "-inf", "nan"); None for anything else."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def fmt(value: object, digits: int = 2, *, spec: str = "f", scale: float = 1.0, suffix: str = "",
        signed: bool = False, missing: str = "-") -> str:
    """`value` with `digits` (fixed `f` or general `g` format); "inf", "-inf" and "nan" as words.

    `scale` multiplies finite values (100 for a percentage) and `suffix` follows them; None or a
    non-number prints as `missing`.
    """
    v = number(value)
    if v is None:
        return missing
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return ("+inf" if signed else "inf") if v > 0 else "-inf"
    return f"{v * scale:{'+' if signed else ''}.{digits}{spec}}{suffix}"


def json_safe(value: object) -> object:
    """JSON-safe: infinities and NaN as strings, tuples as lists, numpy scalars as Python numbers,
    objects with `to_dict` through it (strict JSON has no Infinity or NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "to_dict"):
        return json_safe(value.to_dict())
    if isinstance(value, (np.floating, np.integer)):
        return json_safe(value.item())
    return value
