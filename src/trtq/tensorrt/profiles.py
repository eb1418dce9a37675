"""Optimization profiles (min/opt/max per input) from the network's input dims and the user's shapes.

TensorRT reports dynamic dims as -1. As trtexec does, a single `--shape` fixes min = opt = max;
`--min-shape/--opt-shape/--max-shape` give a range, and a missing min or max defaults to opt.
Implicit INT8 calibration runs at the OPT shape (the calibration profile), so buffers are sized by it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from trtq.errors import TrtqError

Shape = tuple[int, ...]

MAX_INPUT_VOLUME = 2**31 - 1
"""Elements of one input, at most: TensorRT's limit for a tensor's volume. TensorRT-RTX 1.7's builder was
killed asking for 64 GiB at 7.7e9 elements (a 3x16x16 input) and crashed with SIGSEGV at 7.7e10."""


@dataclass(frozen=True)
class ProfileShape:
    """min/opt/max of one input."""

    min: Shape
    opt: Shape
    max: Shape

    @property
    def is_static(self) -> bool:
        """True when min == opt == max."""
        return self.min == self.opt == self.max


def _fmt(shape: Sequence[int]) -> str:
    return "x".join("?" if d < 0 else str(d) for d in shape)


def _check_against(name: str, dims: Shape, shape: Shape, which: str) -> None:
    if len(shape) != len(dims):
        raise TrtqError(
            f"{which} for input {name!r} has rank {len(shape)}, but the network input is {_fmt(dims)} (rank {len(dims)}).",
            "give one size per dimension.",
        )
    for axis, (want, got) in enumerate(zip(dims, shape)):
        if want >= 0 and want != got:
            raise TrtqError(
                f"{which} for input {name!r} sets dim {axis} to {got}, but the network fixes it at {want} ({_fmt(dims)}).",
                "only dynamic (-1) dimensions can be chosen.",
            )
        if got <= 0:
            raise TrtqError(f"{which} for input {name!r} has a non-positive dim {got}.", "use sizes >= 1.")
    volume = math.prod(shape)
    if volume > MAX_INPUT_VOLUME:
        raise TrtqError(
            f"{which} for input {name!r} is {_fmt(shape)}, {volume:,} elements: over the {MAX_INPUT_VOLUME:,} "
            "(2^31 - 1) a TensorRT tensor holds, so the build could only fail (or crash TensorRT-RTX's builder).",
            "give a smaller shape; build several engines or profiles for larger sizes.",
        )


def resolve_profile(
    inputs: Mapping[str, Shape],
    shapes: Mapping[str, Shape] | None = None,
    min_shapes: Mapping[str, Shape] | None = None,
    opt_shapes: Mapping[str, Shape] | None = None,
    max_shapes: Mapping[str, Shape] | None = None,
) -> dict[str, ProfileShape]:
    """min/opt/max for every network input ({name: dims with -1 for dynamic}).

    Raises TrtqError for unknown names, rank or fixed-dim mismatches, min > opt > max, and a
    dynamic input left without a shape.
    """
    shapes, mins, opts, maxs = (dict(m or {}) for m in (shapes, min_shapes, opt_shapes, max_shapes))
    for option, given in (("--shape", shapes), ("--min-shape", mins), ("--opt-shape", opts), ("--max-shape", maxs)):
        unknown = sorted(set(given) - set(inputs))
        if unknown:
            raise TrtqError(
                f"{option} names input {unknown[0]!r}, but the network's inputs are {sorted(inputs)}.",
                "use the input names that `trtq inspect` lists.",
            )
    both = sorted(set(shapes) & (set(mins) | set(opts) | set(maxs)))
    if both:
        raise TrtqError(
            f"Input {both[0]!r} has both --shape and --min/--opt/--max-shape.",
            "use --shape for one fixed size, or the three range options.",
        )
    profile: dict[str, ProfileShape] = {}
    missing: list[tuple[str, Shape]] = []
    for name, dims in inputs.items():
        dims = tuple(int(d) for d in dims)
        if name in shapes:
            _check_against(name, dims, tuple(shapes[name]), "--shape")
            fixed = tuple(shapes[name])
            profile[name] = ProfileShape(fixed, fixed, fixed)
            continue
        if name in mins or name in opts or name in maxs:
            opt = tuple(opts.get(name) or maxs.get(name) or mins[name])
            low, high = tuple(mins.get(name, opt)), tuple(maxs.get(name, opt))
            # max first: opt and min default to it
            for which, shape in (("--max-shape", high), ("--opt-shape", opt), ("--min-shape", low)):
                _check_against(name, dims, shape, which)
            if not all(a <= b <= c for a, b, c in zip(low, opt, high)):
                raise TrtqError(
                    f"Input {name!r} needs min <= opt <= max in every dim, got {_fmt(low)} / {_fmt(opt)} / {_fmt(high)}.",
                    "order the three shapes.",
                )
            profile[name] = ProfileShape(low, opt, high)
            continue
        if any(d < 0 for d in dims):
            missing.append((name, dims))
            continue
        profile[name] = ProfileShape(dims, dims, dims)
    if missing:
        named = [f"{name!r} ({_fmt(dims)})" for name, dims in missing]
        subject = f"Input {named[0]} has" if len(named) == 1 else f"Inputs {', '.join(named[:-1])} and {named[-1]} have"
        texts = [[str(d) if d >= 0 else ("1" if axis == 0 else f"D{axis}") for axis, d in enumerate(dims)]
                 for _, dims in missing]
        options = " ".join(f"--shape {name}:{'x'.join(text)}" for (name, _), text in zip(missing, texts))
        open_dims = sorted({t for text in texts for t in text if t.startswith("D")})
        which = f", with {', '.join(open_dims)} replaced by the size{'s' if len(open_dims) > 1 else ''} to build at" \
            if open_dims else ""
        raise TrtqError(
            f"{subject} dynamic dims and no --shape or --min/--opt/--max-shape was given.",
            f"pass {options}{which}, or --min-shape/--opt-shape/--max-shape for a range of sizes.",
        )
    return profile


def format_shapes(shapes: Mapping[str, Sequence[int]]) -> str:
    """trtexec's spelling: name:1x3x224x224,other:1x10."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in shape)}" for name, shape in shapes.items())
