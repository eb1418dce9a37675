"""TensorRT calibration cache (TensorRT <= 10, implicit INT8): write and parse.

Format (docs/design.md, "Calibration cache"): a header line `TRT-<N>-<Algorithm>`, then one line per tensor
`<tensor name>: <8 hex digits>` holding the big-endian IEEE-754 float32 bits of
scale = amax / 127. N = major*10000 + minor*100 + patch for 10.x, major*1000 + minor*100 + patch
for 8.x. Names may contain colons; readers take the text after the last colon.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trtq._io import atomic_write_bytes
from trtq.errors import TrtqError
from trtq.formats.ranges import scale_from_amax

DEFAULT_TRT_VERSION = "10.13.3"
"""The newest TensorRT 10.x release the cache header targets by default."""

ALGORITHMS = {"entropy": "EntropyCalibration2", "max": "MinMaxCalibration"}
"""trtq method -> the calibrator name TensorRT writes in the header (others map to entropy's)."""

_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)*$")


def trt_version_code(version: str) -> int:
    """The numeric version TensorRT writes in cache headers: 10.13.3 -> 101303, 8.6.1 -> 8601."""
    match = _VERSION.match(version.strip())
    if not match:
        raise TrtqError(
            f"TensorRT version {version!r} is not of the form MAJOR.MINOR.PATCH.",
            "pass e.g. --trt-version 10.13.3 or 8.6.1.",
        )
    major, minor, patch = int(match[1]), int(match[2]), int(match[3] or 0)
    if major >= 11:
        raise TrtqError(
            f"TensorRT {version} has no calibration cache: implicit INT8 calibration was removed in 11.0.",
            "build the Q/DQ ONNX (<stem>.int8.onnx) with TensorRT 11; pass --trt-version 10.x or 8.x for a cache.",
        )
    if major >= 10:
        return major * 10000 + minor * 100 + patch
    if major >= 7:
        return major * 1000 + minor * 100 + patch
    raise TrtqError(
        f"TensorRT {version} is older than any version trtq supports (7.x and newer).",
        "pass --trt-version 8.6.1 or newer.",
    )


def algorithm_name(method: str) -> str:
    """Header algorithm for a calibration method: MinMaxCalibration for max, else EntropyCalibration2."""
    return ALGORITHMS.get(method, ALGORITHMS["entropy"])


def scale_hex(scale: float) -> str:
    """8 lowercase hex digits of the big-endian float32 bits of `scale`."""
    return struct.pack(">f", scale).hex()


@dataclass(frozen=True)
class CalibrationCache:
    """Parsed contents of a cache file."""

    version_code: int
    algorithm: str
    scales: dict[str, float]


def format_cache(amax: Mapping[str, float], trt_version: str = DEFAULT_TRT_VERSION, method: str = "entropy") -> bytes:
    """The cache file's bytes for tensor ranges `amax`, lines sorted by tensor name."""
    header = f"TRT-{trt_version_code(trt_version)}-{algorithm_name(method)}"
    lines = [header] + [f"{name}: {scale_hex(scale_from_amax(value))}" for name, value in sorted(amax.items())]
    return ("\n".join(lines) + "\n").encode("utf-8")


def write_cache(path: str | Path, amax: Mapping[str, float], trt_version: str = DEFAULT_TRT_VERSION,
                method: str = "entropy") -> None:
    """Write a calibration cache atomically."""
    atomic_write_bytes(Path(path), format_cache(amax, trt_version, method))


_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")

CALIBRATORS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
"""The calibrator names TensorRT writes in cache headers."""


def version_of_code(code: int) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a cache header's version code, None when no TensorRT with implicit
    calibration (7.x to 10.x) writes that code: 101303 -> (10, 13, 3), 8601 -> (8, 6, 1)."""
    major, rest = (code // 10000, code % 10000) if code >= 100000 else (code // 1000, code % 1000)
    if major not in ((10,) if code >= 100000 else (7, 8, 9)):
        return None
    return major, rest // 100, rest % 100


def parse_cache(data: bytes, source: str = "<bytes>") -> CalibrationCache:
    """Parse a calibration cache (as TensorRT writes it) into scales per tensor."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrtqError(f"Calibration cache {source} is not text.", "pass a TensorRT calibration cache.") from exc
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise TrtqError(f"Calibration cache {source} is empty ({len(data)} bytes).",
                        "pass the cache `trtq quantize` or TensorRT wrote (it was not written completely).")
    header = _HEADER.match(lines[0].strip()) if lines else None
    if header is None:
        raise TrtqError(
            f"Calibration cache {source} starts with {lines[0][:40] if lines else '(nothing)'!r}, "
            "expected a header like 'TRT-101303-EntropyCalibration2'.",
            "pass a TensorRT calibration cache.",
        )
    code, algorithm = int(header[1]), header[2]
    if version_of_code(code) is None or algorithm not in CALIBRATORS:
        raise TrtqError(
            f"Calibration cache {source} has the header {lines[0].strip()[:60]!r}, which no TensorRT writes (expected "
            f"TRT-<version code of TensorRT 7 to 10>-<{' or '.join(CALIBRATORS[:3])}>).",
            "pass the cache as TensorRT or `trtq quantize` wrote it, unedited.",
        )
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(":")
        value = value.strip()
        if not sep or not name.strip() or not re.fullmatch(r"[0-9a-fA-F]{8}", value):
            raise TrtqError(
                f"Line {number} of calibration cache {source} is {line[:60]!r}, expected '<tensor>: <8 hex digits>'.",
                "pass a complete TensorRT calibration cache (this one is truncated or edited).",
            )
        scale = struct.unpack(">f", bytes.fromhex(value))[0]
        if not math.isfinite(scale) or scale < 0:
            raise TrtqError(
                f"Line {number} of calibration cache {source} gives tensor {name!r} the scale {scale}, which is not a "
                "finite number >= 0.",
                "write the cache again (`trtq quantize`, or TensorRT's calibrator); scales are amax / 127.",
            )
        if name in scales:
            raise TrtqError(f"Calibration cache {source} names tensor {name!r} twice (line {number}).",
                            "pass the cache as TensorRT or `trtq quantize` wrote it, unedited.")
        scales[name] = scale
    if not scales:
        raise TrtqError(f"Calibration cache {source} has a header but no tensor scales.",
                        "pass a complete calibration cache (`trtq quantize` writes one line per tensor).")
    return CalibrationCache(version_code=code, algorithm=algorithm, scales=scales)


def read_cache(path: str | Path) -> CalibrationCache:
    """Read and parse a calibration cache file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TrtqError(f"Calibration cache {path} cannot be read ({exc.strerror}).", "check the path.") from exc
    return parse_cache(data, source=str(path))
