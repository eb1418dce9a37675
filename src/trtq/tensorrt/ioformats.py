"""I/O tensor formats in trtexec's `type:format` spelling (`--inputIOFormats=fp16:chw16`).

Grammar (trtexec 10.x sampleOptions.cpp): spec ::= IOfmt[","spec]; IOfmt ::= type":"fmt;
fmt ::= format["+"fmt]. One entry per network input (or output) in order, or a single entry
that applies to all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trtq.errors import TrtqError

IO_TYPES: dict[str, str] = {
    "fp32": "FLOAT",
    "fp16": "HALF",
    "bf16": "BF16",
    "int32": "INT32",
    "int64": "INT64",
    "int8": "INT8",
    "uint8": "UINT8",
    "bool": "BOOL",
}
"""trtexec type spelling -> tensorrt.DataType member name."""

IO_FORMATS: dict[str, str] = {
    "chw": "LINEAR",
    "chw2": "CHW2",
    "chw4": "CHW4",
    "hwc8": "HWC8",
    "chw16": "CHW16",
    "chw32": "CHW32",
    "dhwc8": "DHWC8",
    "cdhw32": "CDHW32",
    "hwc": "HWC",
    "dhwc": "DHWC",
    "dla_linear": "DLA_LINEAR",
    "hwc16": "HWC16",
    "dla_hwc4": "DLA_HWC4",
}
"""trtexec format spelling -> tensorrt.TensorFormat member name."""


@dataclass(frozen=True)
class IOFormat:
    """One tensor's type and allowed memory formats, e.g. fp16 with (chw16,)."""

    dtype: str
    formats: tuple[str, ...]

    def spec(self) -> str:
        """trtexec spelling: fp16:chw16 (alternatives joined by +)."""
        return f"{self.dtype}:{'+'.join(self.formats)}"

    def slug(self) -> str:
        """File-name form: fp16chw16 (alternatives joined by _)."""
        return self.dtype + "_".join(self.formats)


def _accepted(table: dict[str, str]) -> str:
    return ", ".join(table)


def parse_io_format(text: str, option: str = "--input-io-formats") -> IOFormat:
    """Parse one `type:format[+format]` entry."""
    entry = text.strip()
    dtype, sep, formats = entry.partition(":")
    dtype = dtype.strip().lower()
    if not sep:
        raise TrtqError(
            f"{option} entry {entry!r} is not of the form type:format.",
            f"write e.g. {option} fp16:chw16 (types: {_accepted(IO_TYPES)}; formats: {_accepted(IO_FORMATS)}).",
        )
    if dtype not in IO_TYPES:
        raise TrtqError(
            f"{option} entry {entry!r} has type {dtype!r}, which is not one of {_accepted(IO_TYPES)}.",
            "use one of the listed types (trtexec's spelling).",
        )
    names = tuple(f.strip().lower() for f in formats.split("+"))
    bad = [f for f in names if f not in IO_FORMATS]
    if bad:
        raise TrtqError(
            f"{option} entry {entry!r} has format {bad[0]!r}, which is not one of {_accepted(IO_FORMATS)}.",
            "use one of the listed formats (trtexec's spelling); join alternatives with +.",
        )
    return IOFormat(dtype, names)


def parse_io_formats(text: str | Sequence[str] | None, option: str = "--input-io-formats") -> tuple[IOFormat, ...]:
    """Parse a comma-separated list (or several such lists) of `type:format` entries."""
    if not text:
        return ()
    items = [text] if isinstance(text, str) else list(text)
    entries = [part for item in items for part in item.split(",") if part.strip()]
    return tuple(parse_io_format(part, option) for part in entries)


def format_io_formats(formats: Sequence[IOFormat]) -> str:
    """The trtexec value for --inputIOFormats/--outputIOFormats."""
    return ",".join(f.spec() for f in formats)


def expand_io_formats(formats: Sequence[IOFormat], names: Sequence[str], option: str) -> dict[str, IOFormat]:
    """Assign formats to tensors as trtexec does: one per tensor in order, or one for all."""
    if not formats:
        return {}
    if len(formats) == 1:
        return {name: formats[0] for name in names}
    if len(formats) != len(names):
        raise TrtqError(
            f"{option} lists {len(formats)} formats, but the network has {len(names)} such tensors "
            f"({', '.join(names)}).",
            "give one type:format per tensor in network order, or a single one for all of them.",
        )
    return dict(zip(names, formats))
