"""Which TensorRT is installed, and what trtq may do with it.

TensorRT 11 removed implicit INT8 calibration, the weak-typing builder flags and per-layer
precision constraints; DLA is only wired up for 10.x. Every code path that touches the
`tensorrt` module declares the release lines it supports with `@supports(...)`, and
`trtq.tensorrt.apicheck` verifies each name it uses against the bindings of those releases.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TypeVar

from trtq.errors import TrtqError

TRACKS: dict[str, str] = {"10": "in_10.13.3.9", "11": "in_11.4.0.106"}
"""Release line -> the column of tensorrt-python-api-names.tsv whose bindings that line is checked against."""

F = TypeVar("F", bound=Callable[..., object])


def supports(*tracks: str) -> Callable[[F], F]:
    """Mark a function as touching `tensorrt` on the given release lines ("10", "11").

    Only a marker for the static API check: the function itself is returned unchanged.
    """
    unknown = [t for t in tracks if t not in TRACKS]
    if not tracks or unknown:
        raise ValueError(f"supports() takes release lines from {sorted(TRACKS)}, got {tracks!r}")

    def mark(func: F) -> F:
        func.__trt_tracks__ = tuple(tracks)  # type: ignore[attr-defined]
        return func

    return mark


_VERSION = re.compile(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int]:
    """`tensorrt.__version__` ("10.13.3.9", "11.4.0.106") as (major, minor, patch)."""
    match = _VERSION.match(text)
    if not match:
        raise TrtqError(
            f"The installed tensorrt module reports version {text!r}, which is not MAJOR.MINOR.PATCH.",
            "reinstall TensorRT's Python bindings.",
        )
    return int(match[1]), int(match[2] or 0), int(match[3] or 0)


@dataclass(frozen=True)
class TrtCapabilities:
    """What a TensorRT version offers trtq; computed from the version alone (see `capabilities`)."""

    version: tuple[int, int, int]
    track: str
    """The release line whose code path runs: "10" or "11" (12+ runs the 11 path)."""
    implicit_int8: bool
    """Implicit INT8 with a calibrator or calibration cache (IInt8*Calibrator, config.int8_calibrator)."""
    weak_typing_flags: bool
    """BuilderFlag.FP16/INT8 and trtexec --fp16/--int8/--calib exist."""
    strongly_typed_flag: bool
    """NetworkDefinitionCreationFlag.STRONGLY_TYPED must be passed to get a strongly typed network."""
    precision_constraints: bool
    """Per-layer precisions (ILayer.precision + BuilderFlag.OBEY_PRECISION_CONSTRAINTS)."""
    calibration_profile: bool
    """config.set_calibration_profile exists (implicit INT8 with dynamic shapes)."""
    dla: bool
    """trtq builds for DLA (default device type, DLA core, GPU fallback, standalone loadables)."""

    @property
    def label(self) -> str:
        """The version as text, e.g. "10.13.3"."""
        return ".".join(str(v) for v in self.version)


def capabilities(version: Sequence[int]) -> TrtCapabilities:
    """Capabilities of a TensorRT version given as (major, minor[, patch]).

    Raises TrtqError for versions older than 10, which trtq does not drive (their API differs).
    """
    parts = tuple(int(v) for v in version) + (0, 0)
    major, minor, patch = parts[0], parts[1], parts[2]
    if major < 10:
        raise TrtqError(
            f"TensorRT {major}.{minor}.{patch} is installed, but trtq builds and runs engines with TensorRT 10 or 11 only.",
            "upgrade TensorRT, or use the printed trtexec command with your TensorRT's trtexec.",
        )
    ten = major == 10
    return TrtCapabilities(
        version=(major, minor, patch),
        track="10" if ten else "11",
        implicit_int8=ten,
        weak_typing_flags=ten,
        strongly_typed_flag=ten,
        precision_constraints=ten,
        calibration_profile=ten,
        dla=ten,
    )


def installed_version() -> tuple[int, int, int] | None:
    """The installed TensorRT's version, or None when the `tensorrt` module is not installed."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    return parse_version(str(import_tensorrt().__version__))


def import_tensorrt() -> ModuleType:
    """Import the `tensorrt` module; a broken installation is a TrtqError naming the cause."""
    try:
        return importlib.import_module("tensorrt")
    except (ImportError, OSError) as exc:
        raise TrtqError(
            f"The tensorrt Python module is installed but cannot be imported ({type(exc).__name__}: {exc}).",
            "check that the TensorRT libraries match the bindings (pip install tensorrt, or JetPack's python3-libnvinfer).",
        ) from exc


def not_installed_error(action: str, commands: Sequence[str]) -> TrtqError:
    """The error every command raises without TensorRT: one sentence, then the equivalent trtexec line(s)."""
    listed = "\n".join(f"  {line}" for line in commands)
    return TrtqError(
        f"TensorRT is not installed in this Python environment, so trtq cannot {action}; "
        f"the equivalent trtexec command is:\n{listed}",
        "install TensorRT's Python bindings (pip install tensorrt; on Jetson they come with JetPack) "
        "or run the command above where trtexec is installed.",
    )


def require_tensorrt(action: str, commands: Sequence[str]) -> tuple[ModuleType, TrtCapabilities]:
    """The `tensorrt` module and its capabilities, or the not-installed error with `commands`."""
    version = installed_version()
    if version is None:
        raise not_installed_error(action, commands)
    return import_tensorrt(), capabilities(version)


@supports("10", "11")
def version_string(trt: ModuleType) -> str:
    """The installed TensorRT's full version, e.g. "10.13.3.9" (recorded in engine sidecars)."""
    return str(trt.__version__)
