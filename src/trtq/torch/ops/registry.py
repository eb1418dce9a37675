"""The op registry every family module registers into, and the helpers they share.

An op function takes an `OpContext` (attributes, opset, compute device) and the node's inputs as
tensors (None for an omitted optional input) and returns one tensor or a tuple.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Tensor = torch.Tensor
Result = Tensor | tuple[Tensor, ...]


class Unsupported(Exception):
    """This node's attributes or inputs are outside what the torch implementation covers."""


@dataclass(frozen=True)
class OpContext:
    """What an op function may know besides its inputs."""

    attrs: dict[str, Any]
    opset: int
    num_outputs: int
    device: torch.device
    name: str = ""

    def get(self, key: str, default: Any = None) -> Any:
        """Attribute `key`, or `default` when the node does not set it."""
        return self.attrs.get(key, default)


@dataclass(frozen=True)
class OpDef:
    """An op function and the input positions it reads on the host."""

    fn: Callable[..., Result]
    host: frozenset[int] = field(default_factory=frozenset)


OPS: dict[str, OpDef] = {}
"""Default-domain op type -> implementation."""

SHAPE_OPS = frozenset({"Shape", "Size"})
"""Ops whose output depends only on the input's shape."""

DATA_DEPENDENT_OPS = frozenset({"NonZero"})
"""Ops whose output shape depends on input values (their results force a device sync)."""


def op(*names: str, host: Sequence[int] = ()) -> Callable[[Callable[..., Result]], Callable[..., Result]]:
    """Register `fn` for op types `names`; `host` are the shape-like input positions."""

    def register(fn: Callable[..., Result]) -> Callable[..., Result]:
        for name in names:
            OPS[name] = OpDef(fn, frozenset(host))
        return fn

    return register


def ints(t: Tensor | None) -> list[int]:
    """A host tensor's values as Python ints ([] for None)."""
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def floats(t: Tensor | None) -> list[float]:
    """A host tensor's values as Python floats ([] for None)."""
    return [] if t is None else [float(v) for v in t.reshape(-1).tolist()]


def scalar(t: Tensor) -> float | int | bool:
    """The one value of a host tensor."""
    return t.reshape(-1)[0].item()


def positive_axis(axis: int, rank: int) -> int:
    """`axis` counted from the front (ONNX allows negative axes)."""
    return axis + rank if axis < 0 else axis


def torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] over the last n dims -> F.pad's (bn, en, ..., b1, e1)."""
    nd = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(nd)):
        out += [pads[i], pads[i + nd]]
    return out

