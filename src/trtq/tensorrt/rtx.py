"""Ahead-of-time builds with TensorRT for RTX, keeping the builder's whole log.

TensorRT-RTX (module `tensorrt_rtx_bindings`) builds engines on a machine without a GPU. With a
VERBOSE logger and `ProfilingVerbosity.DETAILED`, its log ends with the engine's layer list (see
trtq.tensorrt.enginelog), which is how `trtq verify` learns each layer's precision without
deserializing the engine (that needs a GPU TensorRT-RTX supports).

TensorRT keeps one logger per process: a builder made with a second logger object while the first
is alive may log to the first. So each module gets one capturing logger, created once, and a build
collects its messages from it under a lock.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from trtq.errors import TrtqError
from trtq.tensorrt.device import DeviceBackend, open_backend
from trtq.tensorrt.profiles import ProfileShape
from trtq.tensorrt.version import (
    MODULES,
    RTX_RUN_CAPABILITIES,
    runs_rtx_engines,
    supports,
)

if TYPE_CHECKING:
    import tensorrt_rtx_bindings as trt

COMPUTE_CAPABILITIES = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
"""Targets TensorRT-RTX 1.7 builds for (`--compute-capability`); by default an engine runs on 8.0, 8.6,
8.9 and 12.x, and 7.5 (Turing) needs an engine built for it."""

_LOCK = threading.Lock()
_LOGGERS: dict[str, Any] = {}


@dataclass(frozen=True)
class LogMessage:
    """One builder log message: severity (VERBOSE, INFO, WARNING, ERROR, INTERNAL_ERROR) and text."""

    severity: str
    text: str


@dataclass(frozen=True)
class AotBuild:
    """What one ahead-of-time build produced."""

    serialized: bytes
    messages: tuple[LogMessage, ...]
    parse_seconds: float
    build_seconds: float
    compute_capabilities: tuple[str, ...]
    """The targets given to the builder; () means TensorRT-RTX's default (portable: 8.0, 8.6, 8.9, 12.x)."""

    def problems(self) -> tuple[LogMessage, ...]:
        """WARNING and ERROR messages, without repeats."""
        seen: dict[tuple[str, str], LogMessage] = {}
        for message in self.messages:
            if message.severity in ("WARNING", "ERROR", "INTERNAL_ERROR"):
                seen.setdefault((message.severity, message.text), message)
        return tuple(seen.values())


def parse_compute_capabilities(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """"8.9" or "8.6,12.0" (or a list) -> ("8.9",) / ("8.6", "12.0"); an unknown target is a TrtqError."""
    if not text:
        return ()
    items = [text] if isinstance(text, str) else list(text)
    found = []
    for part in (p.strip() for item in items for p in item.split(",")):
        if not part:
            continue
        value = part.lower().removeprefix("sm").replace("_", ".")
        if "." not in value and len(value) >= 2:
            value = f"{value[:-1]}.{value[-1]}"
        if value not in COMPUTE_CAPABILITIES:
            raise TrtqError(
                f"--compute-capability {part!r} is not one TensorRT-RTX builds for ({', '.join(COMPUTE_CAPABILITIES)}).",
                "pass e.g. --compute-capability 8.9, or leave it out for the portable default (8.0, 8.6, 8.9, 12.x).",
            )
        found.append(value)
    return tuple(dict.fromkeys(found))


@supports("rtx")
def capturing_logger(trt: ModuleType) -> Any:
    """The process's one logger for TensorRT-RTX (created on first use): it keeps every message while a
    build captures them, and otherwise prints warnings and errors to stderr, as trt.Logger(WARNING) does."""
    key = trt.__name__
    if key not in _LOGGERS:
        class CapturingLogger(trt.ILogger):
            """Keeps every message of the build in progress, at every severity."""

            def __init__(self) -> None:
                super().__init__()
                self.messages: list[LogMessage] | None = None

            def log(self, severity: Any, msg: str) -> None:
                level = str(getattr(severity, "name", severity)).split(".")[-1]
                if self.messages is not None:
                    self.messages.append(LogMessage(level, msg))
                elif level in ("WARNING", "ERROR", "INTERNAL_ERROR"):
                    print(f"[TensorRT-RTX] {level}: {msg}", file=sys.stderr)

        _LOGGERS[key] = CapturingLogger()
    return _LOGGERS[key]


@supports("10", "11", "rtx")
def engine_logger(trt: ModuleType) -> Any:
    """The logger a runtime or builder gets: TensorRT's own at WARNING, or TensorRT-RTX's one capturing logger."""
    if trt.__name__ == MODULES["tensorrt-rtx"]:
        return capturing_logger(trt)
    return trt.Logger(trt.Logger.WARNING)


RUN_REQUIREMENT = ("TensorRT-RTX runs engines on GPUs of compute capability 8.0, 8.6, 8.9 and 12.x "
                   "(7.5 for engines built for it)")


def open_rtx_device(device_backend: str, action: str) -> DeviceBackend:
    """The CUDA device to run a TensorRT-RTX engine on; a TrtqError naming the compute capability
    requirement when there is none or TensorRT-RTX does not run on it (Hopper 9.0, datacenter Blackwell 10.x)."""
    try:
        device = open_backend(device_backend)
    except TrtqError as exc:
        reason = exc.message.rstrip(".")
        raise TrtqError(f"{RUN_REQUIREMENT}, and {reason[0].lower()}{reason[1:]}, so trtq cannot {action}.",
                        exc.hint) from exc
    capability = device.compute_capability()
    if not runs_rtx_engines(capability):
        supported = ", ".join(f"{a}.{b}" for a, b in RTX_RUN_CAPABILITIES)
        raise TrtqError(
            f"{RUN_REQUIREMENT}, but this GPU ({device.device_name()}) is {capability[0]}.{capability[1]}, "
            f"so trtq cannot {action} here.",
            f"use a GPU of compute capability {supported} or 12.x (GeForce/RTX, Ampere, Ada, Blackwell), "
            "or build for datacenter TensorRT with `trtq build --backend tensorrt`.",
        )
    return device


@contextlib.contextmanager
def capture(trt: ModuleType) -> Iterator[list[LogMessage]]:
    """Collect every message TensorRT-RTX logs inside the block (one capture at a time)."""
    logger = capturing_logger(trt)
    with _LOCK:
        messages: list[LogMessage] = []
        logger.messages = messages
        try:
            yield messages
        finally:
            logger.messages = None


@supports("rtx")
def build_capturing_log(
    trt: ModuleType,
    onnx_path: str | Path,
    profile: Mapping[str, ProfileShape],
    compute_capabilities: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
    model_bytes: bytes | None = None,
) -> AotBuild:
    """Parse `onnx_path` (or `model_bytes`, a changed copy of it whose external weights stay beside
    `onnx_path`) and build it with TensorRT-RTX, keeping the whole log.

    Raises TrtqError when the parser rejects the model or the builder cannot build it (the
    parser's or builder's first error in one sentence: a finding about the model).
    """
    onnx_path = Path(onnx_path)
    logger = capturing_logger(trt)
    with capture(trt) as messages:
        start = time.perf_counter()
        builder: trt.Builder = trt.Builder(logger)
        network = builder.create_network(0)  # TensorRT-RTX networks are always strongly typed
        parser: trt.OnnxParser = trt.OnnxParser(network, logger)
        if not parse_onnx(parser, onnx_path, model_bytes):
            raise parse_error(trt, parser, onnx_path, messages)
        parse_seconds = time.perf_counter() - start
        if progress:
            progress(f"parsed {onnx_path.name} in {parse_seconds:.1f} s; building ...")
        config: trt.IBuilderConfig = builder.create_builder_config()
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        set_compute_capabilities(trt, config, compute_capabilities)
        _add_profile(builder, config, network, profile)
        start = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        build_seconds = time.perf_counter() - start
        del parser
    if serialized is None:
        raise build_error(trt, onnx_path, messages)
    return AotBuild(bytes(serialized), tuple(messages), parse_seconds, build_seconds, tuple(compute_capabilities))


def _sentence(text: str) -> str:
    """One line of a log message, without a trailing period."""
    return " ".join(text.split()).rstrip(".")


@supports("rtx")
def build_error(trt: ModuleType, onnx_path: Path, messages: Sequence[LogMessage]) -> TrtqError:
    """The builder's first error about `onnx_path`, as one sentence."""
    errors = [m.text for m in messages if m.severity in ("ERROR", "INTERNAL_ERROR")]
    first = _sentence(errors[0]) if errors else "the builder gave no error message"
    hint = ("this is a finding about the model (TensorRT would fail the same way): fix or re-export the named "
            "layer, or report it with the model.")
    named = re.search(r"\((\S+): Input dimensions with this name have different constant values", first)
    if named:
        hint = (f"the model gives several dynamic input dims the same name ({named[1]!r}) and TensorRT takes dims "
                "of one name to be equal: build at shapes where they are (--shape), or re-export the model with "
                "distinct names (paddle2onnx writes '?' for every dynamic dim).")
    return TrtqError(f"TensorRT-RTX {trt.__version__} parsed {onnx_path} but could not build it: {first}.", hint)


@supports("10", "11", "rtx")
def parse_onnx(parser: trt.OnnxParser, onnx_path: Path, model_bytes: bytes | None) -> bool:
    """Parse the file, or `model_bytes` (a changed copy of it) with the file's folder for its external data;
    OnnxParser.parse takes both on TensorRT 10 and 11 and TensorRT-RTX alike."""
    if model_bytes is None:
        return bool(parser.parse_from_file(str(onnx_path)))
    return bool(parser.parse(model_bytes, str(onnx_path)))


@supports("rtx")
def parse_error(trt: ModuleType, parser: trt.OnnxParser, onnx_path: Path, messages: Sequence[LogMessage]) -> TrtqError:
    """The parser's first error about `onnx_path`, as one sentence."""
    errors = []
    for index in range(parser.num_errors):
        error: trt.ParserError = parser.get_error(index)
        node = error.node_name() or (f"#{error.node()}" if error.node() >= 0 else "")
        where = f"node {node} ({error.node_operator() or 'unknown op'}): " if node else ""
        errors.append(f"{where}{_sentence(error.desc())}")
    if not errors:
        errors = [_sentence(m.text) for m in messages if m.severity in ("ERROR", "INTERNAL_ERROR")]
    first = errors[0] if errors else "no error details"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return TrtqError(
        f"TensorRT-RTX's ONNX parser rejected {onnx_path} at {first}{more}.",
        "this is a finding about the model (TensorRT's parser shares this code): simplify or re-export it "
        "(opset >= 13), or replace the unsupported op.",
    )


@supports("rtx")
def set_compute_capabilities(trt: ModuleType, config: trt.IBuilderConfig, targets: Sequence[str]) -> None:
    """Build for the given compute capabilities; none given leaves TensorRT-RTX's portable default."""
    if not targets:
        return
    members = {
        "7.5": trt.ComputeCapability.SM75, "8.0": trt.ComputeCapability.SM80, "8.6": trt.ComputeCapability.SM86,
        "8.9": trt.ComputeCapability.SM89, "12.0": trt.ComputeCapability.SM120, "12.1": trt.ComputeCapability.SM121,
    }
    config.num_compute_capabilities = len(targets)
    for index, target in enumerate(targets):
        config.set_compute_capability(members[target], index)


@supports("rtx")
def _add_profile(
    builder: trt.Builder, config: trt.IBuilderConfig, network: trt.INetworkDefinition,
    profile: Mapping[str, ProfileShape],
) -> None:
    """One optimization profile when any network input is dynamic."""
    dynamic = False
    for index in range(network.num_inputs):
        tensor: trt.ITensor = network.get_input(index)
        dynamic = dynamic or any(int(d) < 0 for d in tensor.shape)
    if not dynamic:
        return
    optimization_profile: trt.IOptimizationProfile = builder.create_optimization_profile()
    for name, shape in profile.items():
        optimization_profile.set_shape(name, shape.min, shape.opt, shape.max)
    config.add_optimization_profile(optimization_profile)
