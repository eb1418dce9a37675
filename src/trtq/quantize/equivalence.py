"""Whether a rewritten FP32 model (smoothed, equalized) still computes what the original does.

Smoothing and depthwise equalization (`trtq.quantize.smooth`) rescale activations and weights in ways that are
exact in real arithmetic; this runs both FP32 models on the first calibration samples and refuses the rewrite
when an output moved by more than float rounding, before anything is calibrated on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from trtq.data import Dataset
from trtq.errors import TrtqError
from trtq.quantize.selections import expose_choices, pin_selections

EQUIVALENCE_TOLERANCE = 1e-3
"""Largest change of any FP32 output smoothing may cause, relative to that output's max |y| on the
checked samples. Float rounding alone moves MiniLM's hidden states by about 1e-6 of their range."""

ROUNDING_FACTOR = 4.0
"""An output may also move by this many times what onnxruntime's own optimizations move it (the original run with
only its basic, arithmetic-preserving ones against all of them): some outputs are ill-conditioned, as PP-OCRv6
det's sigmoid map is on a blank page (max 9e-5, where rounding in the logits is relative error: 2e-3 of the range)."""

CHECK_SAMPLES = 8
"""Calibration samples the smoothed FP32 model is compared with the original on."""

EQUALIZED_CHECK_SAMPLES = 2
"""The same for the default depthwise equalization alone, which no option asked for and which is exact for every
input (a per-channel scale, not a factor fitted to the data): it guards against a bug, and 8 samples cost PP-OCRv6
det at 640 a quarter of its calibration pass."""


@dataclass(frozen=True)
class Equivalence:
    """How far a rewritten FP32 model's outputs are from the original's."""

    deviation: float
    """The largest change of an output, relative to that output's max |y|."""
    tolerance: float
    """What that output was allowed (EQUIVALENCE_TOLERANCE, or more where onnxruntime's own rounding moves it more)."""
    samples: int


def compare_fp32(
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    batches: Iterable[Mapping[str, np.ndarray]],
    what: str,
    fix: str,
    tolerance: float = EQUIVALENCE_TOLERANCE,
) -> Equivalence:
    """Run both FP32 models on `batches` and measure how far `rewritten`'s outputs are from `original`'s; raise
    TrtqError ("`what` changed its FP32 output ...", suggesting `fix`) when an output moved by more than `tolerance`
    of its range and more than ROUNDING_FACTOR times onnxruntime's own rounding moves it.

    The smoothed model makes the original's discrete choices (TopK, ArgMax, NonMaxSuppression indices, see
    trtq.quantize.selections): where scores nearly tie, float rounding alone would pick other queries and
    change everything after them (RT-DETR's TopK over anchor scores)."""
    from trtq.runtime.ort_session import make_session

    pinned, choices = pin_selections(rewritten)
    reference = make_session(expose_choices(original, choices))
    batches = list(batches)
    names = [o.name for o in original.graph.output]
    extra = [c for c in choices if c not in names]
    samples = sum(len(next(iter(batch.values()))) for batch in batches)

    def relative(model: onnx.ModelProto, exact: bool = False) -> dict[str, float]:
        """Each output's largest change against the reference, relative to its max |y| (one batch at a time)."""
        session = make_session(model, exact=exact)
        diff, top = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
        for batch in batches:
            ran = dict(zip([*names, *extra], reference.run([*names, *extra], dict(batch))))
            for name, got in zip(names, session.run(names, {**dict(batch), **{c: ran[c] for c in choices}})):
                if np.issubdtype(np.asarray(ran[name]).dtype, np.floating):
                    ref = np.asarray(ran[name], np.float64)
                    diff[name] = max(diff[name], float(np.abs(ref - np.asarray(got, np.float64)).max(initial=0.0)))
                    top[name] = max(top[name], float(np.abs(ref).max(initial=0.0)))
        return {name: diff[name] / top[name] if top[name] > 0 else diff[name] for name in names}

    moved = relative(pinned)
    allowed = dict.fromkeys(names, tolerance)
    if any(not np.isfinite(moved[name]) or moved[name] > tolerance for name in names):  # is that rounding?
        rounding = relative(pin_selections(original)[0], exact=True)
        allowed = {name: max(tolerance, ROUNDING_FACTOR * rounding[name]) for name in names}
    worst = max(moved, key=lambda name: moved[name] / allowed[name]) if moved else None
    deviation = moved[worst] if worst is not None else 0.0
    if worst is not None and (not np.isfinite(deviation) or deviation > allowed[worst]):
        raise TrtqError(f"{what} changed its FP32 output {worst!r} by up to {deviation:.3g} of its range on {samples} "
                        f"calibration samples; at most {allowed[worst]:.3g} is float rounding.", fix)
    return Equivalence(deviation, allowed[worst] if worst is not None else tolerance, samples)


def first_samples(dataset: Dataset, count: int) -> list[Mapping[str, np.ndarray]]:
    """The first batches of `dataset` holding at least `count` samples (all of them when it has fewer)."""
    batches: list[Mapping[str, np.ndarray]] = []
    seen = 0
    for batch in dataset.batches(dataset.batch_size):
        batches.append(batch)
        seen += len(next(iter(batch.values())))
        if seen >= count:
            break
    return batches
