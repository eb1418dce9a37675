"""Quantized tensors that share one range: the Q/DQ pairs on both sides of a MaxPool.

Max pooling commutes with quantization (rounding is monotone), so when a MaxPool's input and output both
carry Q/DQ pairs of the same scale, the output's pair rounds nothing: the pooled values are already on the
input's grid, and TensorRT runs the pool in INT8 with no requantization. Calibrated apart, the two ranges
differ (the pooled values are the larger ones), and the output is rounded twice, once on each grid. On
MTCNN's RNet (two PReLU -> MaxPool -> Conv stages) that second rounding cost 1.2-3.1 dB of held-out SNR
whatever the range method (bench/bench_ranges.py `rnet`).

Which range the group takes: that of the tensors whose pairs feed something other than such a pool (the
"sinks": usually the pool's output, read by a convolution). Their values are what the next layer sees, and
the pool's input, read only by the pool, reaches that layer only through them. With several sinks (a tensor
read by a pool and by a convolution), the largest of their ranges, so none is clipped beyond its own range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RangeGroup:
    """Quantized activations that take one range: the largest of the `sinks`' ranges."""

    members: tuple[str, ...]
    sinks: tuple[str, ...]


def tie_ranges(amax: Mapping[str, float], groups: Sequence[RangeGroup]) -> dict[str, float]:
    """`amax` with every group's members set to the largest range of its sinks (groups not covered are left)."""
    tied = dict(amax)
    for group in groups:
        if all(sink in amax for sink in group.sinks):
            shared = max(amax[sink] for sink in group.sinks)
            tied.update({member: shared for member in group.members if member in amax})
    return tied


def tie_candidates(candidates: Mapping[str, Mapping[str, float]], groups: Sequence[RangeGroup]
                   ) -> dict[str, dict[str, float]]:
    """Per tensor, every candidate method's amax, tied as `tie_ranges` ties one table (method by method), so
    each whole-model table --method auto checks is the table it would write."""
    out = {tensor: dict(values) for tensor, values in candidates.items()}
    for group in groups:
        if not all(sink in candidates for sink in group.sinks):
            continue
        methods = set.intersection(*(set(candidates[sink]) for sink in group.sinks))
        for member in group.members:
            if member in out:
                out[member].update({m: max(candidates[sink][m] for sink in group.sinks) for m in methods})
    return out
