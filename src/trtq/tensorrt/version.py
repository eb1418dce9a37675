"""Which TensorRT is installed, and what trtq may do with it.

Two backends: datacenter TensorRT (module `tensorrt`, release lines 10 and 11) and TensorRT for
RTX (module `tensorrt_rtx_bindings`, release line "rtx"), whose Python API is TensorRT's with
parts removed and which builds engines ahead of time without a GPU.

TensorRT 11 removed implicit INT8 calibration, the weak-typing builder flags and per-layer
precision constraints; DLA is only wired up for 10.x; TensorRT-RTX has none of them. Every code
path that touches either module declares the release lines it supports with `@supports(...)`,
and tools/trt_apicheck.py (a development tool, run by the tests) verifies each name it uses
against the bindings of those releases.
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

TRACKS: dict[str, str] = {"10": "in_10.13.3.9", "11": "in_11.4.0.106", "rtx": "in_rtx_1.7.1.116"}
"""Release line -> the column of the API name tables (tensorrt-python-api-names.tsv for 10 and 11,
tensorrt-rtx-python-api-names.tsv for rtx) whose bindings that line is checked against."""

ENGINE_BACKENDS = ("tensorrt", "tensorrt-rtx")
"""`--backend` values: datacenter TensorRT, or TensorRT for RTX."""
MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx_bindings"}
"""The Python module each backend's bindings are imported as."""
RTX_VERSION = "1.7.1.116"
"""The TensorRT-RTX release trtq's RTX path is checked against (its name table, its builds in the tests)."""
RTX_PIP = f"pip install tensorrt-rtx-cu13-libs=={RTX_VERSION} tensorrt-rtx-cu13-bindings=={RTX_VERSION}"
"""How to install TensorRT-RTX (CUDA 13 wheels; the -cu12- ones work the same), also `pip install 'trtq[verify]'`."""
RTX_RUN_CAPABILITIES = ((7, 5), (8, 0), (8, 6), (8, 9))
"""Compute capabilities below 12.0 that TensorRT-RTX runs engines on (7.5 only for engines built for it);
12.x runs them too. Hopper (9.0) and datacenter Blackwell (10.x) are refused."""

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
    """The release line whose code path runs: "10" or "11" (12+ runs the 11 path), or "rtx"."""
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
    backend: str = "tensorrt"
    """"tensorrt" or "tensorrt-rtx"."""
    builds_without_gpu: bool = False
    """Engines build ahead of time on a machine without a GPU (TensorRT-RTX)."""
    compute_capability_targets: bool = False
    """The builder config takes the compute capabilities to build for (TensorRT-RTX)."""

    @property
    def label(self) -> str:
        """The version as text, e.g. "10.13.3"."""
        return ".".join(str(v) for v in self.version)

    @property
    def product(self) -> str:
        """"TensorRT 10.13.3" or "TensorRT-RTX 1.7.1"."""
        return f"{'TensorRT-RTX' if self.backend == 'tensorrt-rtx' else 'TensorRT'} {self.label}"


def capabilities(version: Sequence[int], backend: str = "tensorrt") -> TrtCapabilities:
    """Capabilities of a TensorRT (or, with backend="tensorrt-rtx", TensorRT-RTX) version given as
    (major, minor[, patch]).

    Raises TrtqError for TensorRT versions older than 10, which trtq does not drive (their API differs).
    """
    parts = (*(int(v) for v in version), 0, 0)
    major, minor, patch = parts[0], parts[1], parts[2]
    if backend == "tensorrt-rtx":
        return TrtCapabilities(
            version=(major, minor, patch), track="rtx", implicit_int8=False, weak_typing_flags=False,
            strongly_typed_flag=False, precision_constraints=False, calibration_profile=False, dla=False,
            backend=backend, builds_without_gpu=True, compute_capability_targets=True,
        )
    if backend != "tensorrt":
        raise ValueError(f"backend {backend!r} is not one of {ENGINE_BACKENDS}")
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


def _check_backend(backend: str) -> None:
    if backend not in MODULES:
        raise TrtqError(f"--backend {backend!r} is not one of {', '.join(ENGINE_BACKENDS)}.", "pick one of those.")


def installed_version(backend: str = "tensorrt") -> tuple[int, int, int] | None:
    """The installed TensorRT's (or TensorRT-RTX's) version, or None when its module is not installed."""
    _check_backend(backend)
    if importlib.util.find_spec(MODULES[backend]) is None:
        return None
    return parse_version(str(import_tensorrt(backend).__version__))


def import_tensorrt(backend: str = "tensorrt") -> ModuleType:
    """Import the backend's module; a broken installation is a TrtqError naming the cause."""
    _check_backend(backend)
    try:
        return importlib.import_module(MODULES[backend])
    except (ImportError, OSError) as exc:
        fix = (f"reinstall it: {RTX_PIP}" if backend == "tensorrt-rtx" else
               "check that the TensorRT libraries match the bindings (pip install tensorrt, or JetPack's "
               "python3-libnvinfer).")
        raise TrtqError(
            f"The {MODULES[backend]} Python module is installed but cannot be imported ({type(exc).__name__}: {exc}).",
            fix,
        ) from exc


def not_installed_error(action: str, commands: Sequence[str], backend: str = "tensorrt") -> TrtqError:
    """The error every command raises without the backend: one sentence, then the equivalent command line(s)."""
    listed = "\n".join(f"  {line}" for line in commands)
    if backend == "tensorrt-rtx":
        return TrtqError(
            f"TensorRT-RTX is not installed in this Python environment, so trtq cannot {action}; install it with "
            f"`{RTX_PIP}` (or `pip install 'trtq[verify]'`)" + (f"; the equivalent command is:\n{listed}" if commands
                                                                else "."),
            f"run `{RTX_PIP}`; it builds without a GPU.",
        )
    return TrtqError(
        f"TensorRT is not installed in this Python environment, so trtq cannot {action}; "
        f"the equivalent trtexec command is:\n{listed}",
        "install TensorRT's Python bindings (pip install tensorrt; on Jetson they come with JetPack) "
        "or run the command above where trtexec is installed.",
    )


def require_tensorrt(
    action: str, commands: Sequence[str], backend: str = "tensorrt"
) -> tuple[ModuleType, TrtCapabilities]:
    """The backend's module and its capabilities, or the not-installed error with `commands`."""
    version = installed_version(backend)
    if version is None:
        raise not_installed_error(action, commands, backend)
    return import_tensorrt(backend), capabilities(version, backend)


def runs_rtx_engines(capability: tuple[int, int]) -> bool:
    """Whether TensorRT-RTX runs engines on a GPU of this compute capability (see RTX_RUN_CAPABILITIES)."""
    return tuple(capability) in RTX_RUN_CAPABILITIES or capability[0] >= 12


@supports("10", "11", "rtx")
def version_string(trt: ModuleType) -> str:
    """The installed TensorRT's full version, e.g. "10.13.3.9" (recorded in engine sidecars)."""
    return str(trt.__version__)
