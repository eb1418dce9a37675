"""Build a TensorRT engine from ONNX with what the installed TensorRT supports.

- TensorRT 11.x and 10.x strongly typed: the ONNX graph decides precision (Q/DQ for INT8,
  typed tensors for FP16); 10.x needs NetworkDefinitionCreationFlag.STRONGLY_TYPED, 11.x
  networks are always strongly typed.
- TensorRT 10.x implicit INT8 (`implicit=True`): BuilderFlag.INT8 with trtq's calibrator (or a
  calibration cache), optional FP16, per-layer precision constraints, DLA.
- TensorRT-RTX (`backend="tensorrt-rtx"`): strongly typed like 11.x, built ahead of time without
  a GPU, for the compute capabilities asked for (default: its portable 8.0, 8.6, 8.9 and 12.x).

The engine and its JSON sidecar are written together, atomically.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from trtq import __version__
from trtq._io import check_destinations, write_files_atomically
from trtq.errors import TrtqError
from trtq.formats.cache import read_cache, trt_version_code
from trtq.model import file_sha256, graph_inputs, load_model
from trtq.tensorrt.calibrator import (
    BatchSource,
    CacheFile,
    cache_rejected,
    make_calibrator,
)
from trtq.tensorrt.commands import (
    DlaOptions,
    check_dla_standalone_formats,
    format_command,
    trtexec_build_argv,
)
from trtq.tensorrt.device import BufferSpec, DeviceFeeder, gpu_name, open_backend
from trtq.tensorrt.ioformats import IOFormat, expand_io_formats
from trtq.tensorrt.layers import match_network_layers, node_layer_names
from trtq.tensorrt.naming import default_engine_path, model_precision, split_model_name
from trtq.tensorrt.profiles import ProfileShape, resolve_profile
from trtq.tensorrt.rtx import (
    LogMessage,
    build_error,
    capture,
    capturing_logger,
    parse_error,
    set_compute_capabilities,
)
from trtq.tensorrt.sidecar import EngineSidecar, profile_to_json, sidecar_path
from trtq.tensorrt.version import (
    TrtCapabilities,
    require_tensorrt,
    supports,
    version_string,
)

if TYPE_CHECKING:
    import tensorrt as trt

Batch = Mapping[str, np.ndarray]

IMPLICIT_REMOVED = (
    "Implicit INT8 calibration (--implicit/--calib) was removed in TensorRT 11, which is installed here, "
    "so quantize the model with `trtq quantize` and build the Q/DQ ONNX it writes (strongly typed) instead."
)


@dataclass(frozen=True)
class BuildOptions:
    """How to build; see `trtq build --help` for each option's meaning."""

    output: str | None = None
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    min_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    opt_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    max_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    workspace_mib: int | None = None
    timing_cache: str | None = None
    implicit: bool = False
    calibration_cache: str | None = None
    """Implicit builds: a TensorRT calibration cache to read (no data is then needed)."""
    calibration_algorithm: str = "entropy"
    fp16: bool = False
    dla: DlaOptions | None = None
    input_formats: tuple[IOFormat, ...] = ()
    output_formats: tuple[IOFormat, ...] = ()
    layer_precisions: Mapping[str, str] = field(default_factory=dict)
    """Implicit builds: ONNX node name -> precision (obeyed)."""
    qat: bool = False
    ranges_sha256: str | None = None
    device_backend: str = "auto"
    backend: str = "tensorrt"
    """"tensorrt" (datacenter TensorRT 10/11) or "tensorrt-rtx" (TensorRT for RTX)."""
    compute_capabilities: tuple[str, ...] = ()
    """TensorRT-RTX only: the GPUs to build for ("8.9", "12.0"); () is its portable default."""


@dataclass(frozen=True)
class BuildResult:
    """What `build_engine` wrote."""

    engine_path: str
    sidecar_path: str
    precision: str
    mode: str
    tensorrt_version: str
    gpu_name: str
    seconds: float
    calibration_batches: int
    constrained_layers: dict[str, tuple[str, ...]]
    timing_cache: str | None
    trtexec_command: str
    builder: str = ""
    """"TensorRT 10.13.3.9" or "TensorRT-RTX 1.7.1.116"."""

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return asdict(self)


def build_mode(caps: TrtCapabilities, implicit: bool) -> str:
    """The trtexec-equivalent mode this build runs in (a key of commands.MODES)."""
    if caps.track == "rtx":
        return "tensorrt-rtx"
    if caps.track == "11":
        return "tensorrt-11"
    return "tensorrt-10-implicit" if implicit else "tensorrt-10-strongly-typed"


def check_options(options: BuildOptions) -> None:
    """Reject what no TensorRT build accepts (each with one clear sentence): implicit-build flags on a
    strongly typed build, and what TensorRT-RTX has not. Needs no TensorRT, so `--print-trtexec` checks the same."""
    if options.backend == "tensorrt-rtx" and (options.implicit or options.dla is not None):
        raise TrtqError(
            "TensorRT-RTX builds strongly typed networks only (no implicit INT8 calibration, no DLA), but "
            f"{'--implicit' if options.implicit else '--dla-core'} was given.",
            "build the Q/DQ ONNX from `trtq quantize` without that option, or use --backend tensorrt.",
        )
    if options.compute_capabilities and options.backend != "tensorrt-rtx":
        raise TrtqError(
            "--compute-capability chooses the GPUs a TensorRT-RTX engine is built for; datacenter TensorRT builds "
            "for the GPU it runs on.",
            "drop --compute-capability, or add --backend tensorrt-rtx.",
        )
    if not options.implicit:
        if options.fp16:
            raise TrtqError(
                "--fp16 applies only to implicit TensorRT 10 builds; a strongly typed build takes FP16 from the "
                "ONNX tensor types.",
                "drop --fp16, or add --implicit on TensorRT 10.",
            )
        if options.layer_precisions:
            raise TrtqError(
                "Per-layer precisions apply only to implicit TensorRT 10 builds; in a strongly typed build the "
                "ONNX graph (its Q/DQ nodes) decides each layer's precision.",
                "keep those nodes out of INT8 with `trtq quantize --exclude-nodes`, or add --implicit on TensorRT 10.",
            )
        if options.calibration_cache:
            raise TrtqError("A calibration cache applies only to implicit TensorRT 10 builds.", "add --implicit.")
    if options.calibration_algorithm not in ("entropy", "minmax"):
        raise TrtqError(f"Calibration algorithm {options.calibration_algorithm!r} is not entropy or minmax.",
                        "pick one of those.")


INTERNAL_TENSOR = "(Unnamed Layer"
"""How TensorRT's own calibrator names the tensors of layers the ONNX parser added (no ONNX name)."""


def check_calibration_cache(model: onnx.ModelProto, options: BuildOptions, model_path: str | Path) -> None:
    """The calibration cache an implicit build reads: well formed (see `parse_cache`), written for this
    model (most of its tensor names are the model's), and covering the inputs of its INT8 layers
    (a warning names those it lacks: TensorRT runs those layers in higher precision)."""
    if not options.calibration_cache:
        return
    cache = read_cache(options.calibration_cache)
    graph = model.graph
    tensors = {vi.name for vi in graph.input} | {init.name for init in graph.initializer} | {
        name for node in graph.node for name in node.output}
    named = [name for name in cache.scales if not name.startswith(INTERNAL_TENSOR)]
    unknown = [name for name in named if name not in tensors]
    if named and 2 * len(unknown) > len(named):
        raise TrtqError(
            f"Calibration cache {options.calibration_cache} names {len(unknown)} of its {len(named)} tensors that "
            f"{model_path} does not have (e.g. {unknown[0]!r}): it was written for another model.",
            "pass the cache made for this model (`trtq quantize MODEL` writes <stem>.int8.cache), or --calib DATA.",
        )
    if unknown:
        warnings.warn(f"Calibration cache {options.calibration_cache} has scales for {len(unknown)} tensors that "
                      f"{model_path} does not have (e.g. {unknown[0]!r}); TensorRT ignores them.", stacklevel=2)
    weights = {init.name for init in graph.initializer}
    inputs = dict.fromkeys(node.input[0] for node in graph.node
                           if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and node.input
                           and node.input[0] not in weights)
    missing = [name for name in inputs if name not in cache.scales]
    if inputs and len(missing) == len(inputs):
        raise TrtqError(
            f"Calibration cache {options.calibration_cache} has no scale for any input of {model_path}'s "
            f"{len(inputs)} convolution and matrix-multiply layers (e.g. {missing[0]!r}), so no layer would run in INT8.",
            "pass the cache made for this model (`trtq quantize MODEL` writes <stem>.int8.cache), or --calib DATA.",
        )
    if missing:
        warnings.warn(f"Calibration cache {options.calibration_cache} has no scale for {len(missing)} of the "
                      f"{len(inputs)} inputs of {model_path}'s convolution and matrix-multiply layers "
                      f"(e.g. {missing[0]!r}); TensorRT runs those layers in FP16/FP32.", stacklevel=2)


def validate_options(caps: TrtCapabilities, options: BuildOptions, precision: str) -> None:
    """Reject what the installed TensorRT (or the model) cannot do, each with one clear sentence."""
    if options.implicit and not caps.implicit_int8:
        raise TrtqError(IMPLICIT_REMOVED, "run `trtq quantize MODEL --calib DATA`, then `trtq build <stem>.int8.onnx`.")
    check_options(options)
    if options.dla is not None:
        if not caps.dla:
            raise TrtqError(
                f"TensorRT {caps.label} is installed, and trtq builds DLA engines with TensorRT 10.x only "
                "(TensorRT 11.0-11.3 have no DLA; 11.4.1 supports it only on Jetson AGX Orin with JetPack 7.2.2+).",
                "use JetPack's TensorRT 10 for DLA engines, or drop --dla-core.",
            )
        if not options.implicit and precision not in ("int8", "fp16"):
            raise TrtqError(
                f"DLA runs only INT8 and FP16 layers, but this strongly typed {precision} model has neither "
                "Q/DQ nodes nor FP16 tensors.",
                "build the Q/DQ model from `trtq quantize`, or use --implicit with --calib.",
            )
        if options.dla.standalone:
            check_dla_standalone_formats(options.input_formats, options.output_formats)


def model_profile(model: onnx.ModelProto, options: BuildOptions) -> dict[str, ProfileShape]:
    """min/opt/max per graph input from the ONNX dims (symbolic -> -1) and the shape options."""
    dims = {spec.name: tuple(d if isinstance(d, int) and d > 0 else -1 for d in spec.shape)
            for spec in graph_inputs(model)}
    return resolve_profile(dims, options.shapes, options.min_shapes, options.opt_shapes, options.max_shapes)


def build_precision(model: onnx.ModelProto, options: BuildOptions) -> str:
    """The precision token of the engine name: int8 for implicit builds, else the model's."""
    return "int8" if options.implicit else model_precision(model)


def engine_output_path(onnx_path: str | Path, precision: str, options: BuildOptions) -> Path:
    """--output, or `<stem>.<precision>[...].engine` beside the model."""
    if options.output:
        return Path(options.output)
    return default_engine_path(onnx_path, precision, qat=options.qat,
                               input_formats=options.input_formats, output_formats=options.output_formats)


def equivalent_commands(
    onnx_path: str | Path, model: onnx.ModelProto, options: BuildOptions, engine_path: Path,
    modes: Iterable[str],
) -> dict[str, str]:
    """The trtexec build line for each mode in `modes`, with what of `options` trtexec can express.

    Without any shape option a dynamic model's line carries no shapes (trtexec's defaults); any
    shape option given must be valid for the model."""
    shaped = any((options.shapes, options.min_shapes, options.opt_shapes, options.max_shapes))
    try:
        profile: dict[str, ProfileShape] | None = model_profile(model, options)
        if profile and all(p.is_static for p in profile.values()) and not (options.shapes or options.opt_shapes):
            profile = None
    except TrtqError:
        if shaped:  # an unknown input, a wrong rank, min above max, a dynamic input left out
            raise
        profile = None
    layers = node_layer_names(model, options.layer_precisions) if options.layer_precisions else {}
    commands = {}
    for mode in modes:
        implicit = mode == "tensorrt-10-implicit"
        argv = trtexec_build_argv(
            str(onnx_path), str(engine_path), mode,
            profile=profile,
            workspace_mib=options.workspace_mib,
            timing_cache=options.timing_cache,
            calib_cache=(options.calibration_cache or str(calibration_cache_path(engine_path))) if implicit else None,
            fp16=options.fp16 and implicit,
            dla=options.dla if mode != "tensorrt-11" else None,
            input_formats=options.input_formats,
            output_formats=options.output_formats,
            layer_precisions={layers[n]: p for n, p in options.layer_precisions.items()} if implicit else None,
        )
        commands[mode] = format_command(argv)
    return commands


def planned_modes(options: BuildOptions) -> list[str]:
    """The TensorRT versions a build with `options` can target: implicit is 10.x only."""
    if options.backend == "tensorrt-rtx":
        return ["tensorrt-rtx"]
    return ["tensorrt-10-implicit"] if options.implicit else ["tensorrt-11", "tensorrt-10-strongly-typed"]


def trtexec_equivalents(onnx_path: str | Path, options: BuildOptions = BuildOptions()) -> dict[str, str]:
    """The trtexec build line(s) equivalent to `build_engine(onnx_path, options)`, without TensorRT."""
    model = load_model(onnx_path, load_external_data=False)
    check_options(options)
    if options.implicit and not options.calibration_cache:
        default = quantize_cache_path(onnx_path)
        if not default.is_file():
            raise TrtqError(
                f"The implicit build line reads a calibration cache, and there is none: {default} does not exist and "
                "no --calib FILE.cache was given.",
                f"run `trtq quantize {onnx_path} --calib DATA` first, or pass --calib with a TensorRT calibration cache.",
            )
        options = replace(options, calibration_cache=str(default))
    check_calibration_cache(model, options, onnx_path)
    engine_path = engine_output_path(onnx_path, build_precision(model, options), options)
    return equivalent_commands(onnx_path, model, options, engine_path, planned_modes(options))


def quantize_cache_path(onnx_path: str | Path) -> Path:
    """The calibration cache `trtq quantize` writes beside a model: model.onnx -> model.int8.cache."""
    stem, _ = split_model_name(onnx_path)
    return Path(onnx_path).with_name(f"{stem}.int8.cache")


def calibration_cache_path(engine_path: Path) -> Path:
    """Where an implicit build writes the cache TensorRT computed: m.int8.engine -> m.int8.calib.cache."""
    return engine_path.with_suffix(".calib.cache")


def calibration_algorithm(options: BuildOptions, caps: TrtCapabilities) -> str:
    """The calibrator to use: the one a given cache was written by (TensorRT checks the header), else the option.

    Warns when the cache header names another TensorRT version, which TensorRT may reject.
    """
    if not options.calibration_cache:
        return options.calibration_algorithm
    cache = read_cache(options.calibration_cache)
    expected = trt_version_code(caps.label)
    if cache.version_code != expected:
        warnings.warn(
            f"Calibration cache {options.calibration_cache} was written for TensorRT version code "
            f"{cache.version_code}, but TensorRT {caps.label} (code {expected}) is installed and may reject it.",
            stacklevel=2,
        )
    return "minmax" if cache.algorithm == "MinMaxCalibration" else "entropy"


def exact_batches(batches: Iterable[Batch], shapes: Mapping[str, tuple[int, ...]]) -> Iterator[Batch]:
    """Pass batches through, dropping (with a warning) a final batch that is short in the batch dim only."""
    dropped = 0
    for batch in batches:
        short = all(
            name in batch and np.shape(batch[name])[1:] == shape[1:] and 0 < np.shape(batch[name])[0] < shape[0]
            for name, shape in shapes.items()
        )
        if short:
            dropped += int(np.shape(next(iter(batch.values())))[0])
            continue
        yield batch
    if dropped:
        warnings.warn(f"{dropped} calibration samples did not fill a whole batch of the OPT shape and were skipped.",
                      stacklevel=2)


def _default_ranges_sha(onnx_path: Path) -> str | None:
    stem, _ = split_model_name(onnx_path)
    ranges = onnx_path.with_name(f"{stem}.int8.json")
    return file_sha256(ranges) if ranges.is_file() else None


def build_engine(
    onnx_path: str | Path,
    options: BuildOptions = BuildOptions(),
    calibration_batches: Iterable[Batch] | None = None,
) -> BuildResult:
    """Build and write `<stem>.<precision>.engine` plus its sidecar; see the module docstring."""
    onnx_path = Path(onnx_path)
    model = load_model(onnx_path, load_external_data=False)
    precision = build_precision(model, options)
    engine_path = engine_output_path(onnx_path, precision, options)
    check_options(options)
    check_calibration_cache(model, options, onnx_path)
    commands = equivalent_commands(onnx_path, model, options, engine_path, planned_modes(options))
    trt, caps = require_tensorrt(f"build {engine_path.name}", [f"{mode}: {c}" for mode, c in commands.items()],
                                 backend=options.backend)
    validate_options(caps, options, precision)
    check_destinations([engine_path, sidecar_path(engine_path), *([options.timing_cache] if options.timing_cache else [])],
                       inputs=(onnx_path, options.calibration_cache))  # before the build, not after
    mode = build_mode(caps, options.implicit)
    if options.implicit and calibration_batches is None and not options.calibration_cache:
        raise TrtqError("An implicit INT8 build needs calibration data or a calibration cache (--calib).",
                        "pass --calib DATA (samples) or --calib FILE.cache.")
    profile = model_profile(model, options)
    layers = node_layer_names(model, options.layer_precisions)
    start = time.perf_counter()
    serialized, constrained, batches_fed, timing_cache = _build(
        trt, caps, onnx_path, model, options, profile, layers, engine_path, calibration_batches)
    seconds = time.perf_counter() - start
    engine_bytes = bytes(serialized)
    if caps.builds_without_gpu:  # built ahead of time for compute capabilities, not on (or for) this GPU
        gpu, built_on = "ahead of time for compute capability " + (
            ", ".join(options.compute_capabilities) or "8.0, 8.6, 8.9 and 12.x"), ""
    else:
        gpu = built_on = gpu_name() or "unknown"
    sidecar = EngineSidecar(
        engine_file=engine_path.name,
        engine_sha256=hashlib.sha256(engine_bytes).hexdigest(),
        tensorrt_version=version_string(trt),
        gpu_name=built_on,
        precision=precision,
        mode=mode,
        onnx_file=str(onnx_path.resolve()),
        onnx_sha256=file_sha256(onnx_path),
        profile=profile_to_json(profile),
        ranges_sha256=options.ranges_sha256 or _default_ranges_sha(onnx_path),
        build_options=_options_json(options),
        trtq_version=__version__,
    )
    files = {engine_path: engine_bytes, sidecar_path(engine_path): sidecar.to_json().encode("utf-8")}
    if timing_cache is not None and options.timing_cache:
        files[Path(options.timing_cache)] = timing_cache
    write_files_atomically(files)
    return BuildResult(
        engine_path=str(engine_path),
        sidecar_path=str(sidecar_path(engine_path)),
        precision=precision,
        mode=mode,
        tensorrt_version=version_string(trt),
        gpu_name=gpu,
        seconds=seconds,
        calibration_batches=batches_fed,
        constrained_layers=constrained,
        timing_cache=options.timing_cache,
        trtexec_command=commands.get(mode, ""),
        builder=f"{'TensorRT-RTX' if caps.track == 'rtx' else 'TensorRT'} {version_string(trt)}",
    )


def _options_json(options: BuildOptions) -> dict[str, Any]:
    data = asdict(options)
    data["input_formats"] = [f.spec() for f in options.input_formats]
    data["output_formats"] = [f.spec() for f in options.output_formats]
    return data


@supports("10", "11", "rtx")
def _build(
    trt: ModuleType,
    caps: TrtCapabilities,
    onnx_path: Path,
    model: onnx.ModelProto,
    options: BuildOptions,
    profile: Mapping[str, ProfileShape],
    layers: Mapping[str, str],
    engine_path: Path,
    calibration_batches: Iterable[Batch] | None,
) -> tuple[Any, dict[str, tuple[str, ...]], int, bytes | None]:
    """Parse, configure and build; returns (serialized engine, constrained layers, batches fed, timing cache)."""
    if caps.track == "rtx":
        with capture(trt) as messages:  # the one TensorRT-RTX logger; its errors make the error sentence
            result = _build_strongly_typed(trt, caps, capturing_logger(trt), onnx_path, options, profile, messages)
        return result
    logger = trt.Logger(trt.Logger.WARNING)
    builder: trt.Builder = trt.Builder(logger)
    network = _create_network(trt, builder, caps, options.implicit)
    parser = _parse(trt, network, logger, onnx_path)  # owns the weights: keep it alive until the build is done
    config: trt.IBuilderConfig = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mib) << 20)
    inputs = _network_inputs(network)
    if sorted(inputs) != sorted(profile):
        raise TrtqError(
            f"TensorRT's network inputs {sorted(inputs)} differ from the ONNX graph inputs {sorted(profile)}.",
            "check that the model's inputs are not also initializers.",
        )
    optimization_profile = _add_profile(builder, config, inputs, profile)
    _apply_io_formats(trt, network, options.input_formats, options.output_formats, strongly_typed=not options.implicit)
    timing_cache = _load_timing_cache(config, options.timing_cache)
    constrained: dict[str, tuple[str, ...]] = {}
    source: BatchSource | None = None
    feeder: DeviceFeeder | None = None
    try:
        if options.implicit:
            if optimization_profile is not None:
                _set_calibration_profile(config, optimization_profile)
            if options.calibration_cache:
                cache = CacheFile(options.calibration_cache)
                source = BatchSource(cache_rejected(options.calibration_cache), lambda batch, names: [])
            else:
                cache = CacheFile(None, write_to=calibration_cache_path(engine_path))
                specs = {spec.name: BufferSpec(profile[spec.name].opt, np.dtype(spec.dtype))
                         for spec in graph_inputs(model)}
                feeder = DeviceFeeder(specs, open_backend(options.device_backend))
                source = BatchSource(exact_batches(calibration_batches or (), {n: s.shape for n, s in specs.items()}),
                                     feeder.feed)
            calibrator = make_calibrator(trt, source, cache, calibration_algorithm(options, caps))
            constrained = _configure_implicit(trt, config, network, calibrator, options, layers)
        if options.dla is not None:
            _configure_dla(trt, builder, config, options.dla)
        serialized = builder.build_serialized_network(network, config)
        if source is not None:
            source.raise_if_failed()
        if feeder is not None and source is not None and source.batches_fed == 0:
            raise TrtqError("The calibration data yielded no batch of the calibration profile's OPT shape.",
                            "pass a --calib source with at least one full batch.")
    finally:
        if feeder is not None:
            feeder.close()
    if serialized is None:
        raise TrtqError(
            f"TensorRT could not build an engine from {onnx_path} (its log above says why).",
            "fix the reported layer or option; `trtq build --json` shows the equivalent trtexec command.",
        )
    cache_bytes = _serialize_timing_cache(config) if timing_cache else None
    del parser
    return serialized, constrained, source.batches_fed if source else 0, cache_bytes


@supports("rtx")
def _build_strongly_typed(
    trt: ModuleType, caps: TrtCapabilities, logger: Any, onnx_path: Path, options: BuildOptions,
    profile: Mapping[str, ProfileShape], messages: list[LogMessage],
) -> tuple[Any, dict[str, tuple[str, ...]], int, bytes | None]:
    """The TensorRT-RTX build: strongly typed, ahead of time, for the requested compute capabilities."""
    builder: trt.Builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser: trt.OnnxParser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise parse_error(trt, parser, onnx_path, messages)
    config: trt.IBuilderConfig = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    set_compute_capabilities(trt, config, options.compute_capabilities)
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mib) << 20)
    inputs = _network_inputs(network)
    if sorted(inputs) != sorted(profile):
        raise TrtqError(
            f"TensorRT-RTX's network inputs {sorted(inputs)} differ from the ONNX graph inputs {sorted(profile)}.",
            "check that the model's inputs are not also initializers.",
        )
    _add_profile(builder, config, inputs, profile)
    _apply_io_formats(trt, network, options.input_formats, options.output_formats, strongly_typed=True)
    timing_cache = _load_timing_cache(config, options.timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise build_error(trt, onnx_path, messages)
    cache_bytes = _serialize_timing_cache(config) if timing_cache else None
    del parser
    return serialized, {}, 0, cache_bytes


@supports("10", "11")
def _create_network(trt: ModuleType, builder: trt.Builder, caps: TrtCapabilities, implicit: bool) -> Any:
    """A strongly typed network (10.x: by flag; 11.x: always), or a weakly typed one for implicit 10.x builds."""
    flags = 0
    if caps.strongly_typed_flag and not implicit:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return builder.create_network(flags)


@supports("10", "11")
def _parse(trt: ModuleType, network: trt.INetworkDefinition, logger: Any, onnx_path: Path) -> Any:
    """Parse the ONNX file and return the parser; parser errors become one TrtqError naming the node."""
    parser: trt.OnnxParser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(onnx_path)):
        return parser
    errors = []
    for index in range(parser.num_errors):
        error: trt.ParserError = parser.get_error(index)
        node = error.node_name() or f"#{error.node()}"
        errors.append(f"node {node} ({error.node_operator() or 'unknown op'}): {error.desc()}")
    first = errors[0] if errors else "no error details"
    more = f" (+{len(errors) - 1} more: {'; '.join(errors[1:4])})" if len(errors) > 1 else ""
    raise TrtqError(
        f"TensorRT's ONNX parser rejected {onnx_path} at {first}{more}.",
        "simplify or re-export the model (opset >= 13), or replace the unsupported op.",
    )


@supports("10", "11", "rtx")
def _network_inputs(network: trt.INetworkDefinition) -> dict[str, tuple[int, ...]]:
    """Network input name -> dims (-1 for dynamic)."""
    inputs = {}
    for index in range(network.num_inputs):
        tensor: trt.ITensor = network.get_input(index)
        inputs[tensor.name] = tuple(int(d) for d in tensor.shape)
    return inputs


@supports("10", "11", "rtx")
def _add_profile(
    builder: trt.Builder, config: trt.IBuilderConfig, inputs: Mapping[str, tuple[int, ...]],
    profile: Mapping[str, ProfileShape],
) -> Any:
    """One optimization profile when any input is dynamic (TensorRT requires it then); else None."""
    if not any(d < 0 for dims in inputs.values() for d in dims):
        return None
    optimization_profile: trt.IOptimizationProfile = builder.create_optimization_profile()
    for name, shape in profile.items():
        optimization_profile.set_shape(name, shape.min, shape.opt, shape.max)
    config.add_optimization_profile(optimization_profile)
    return optimization_profile


@supports("10")
def _set_calibration_profile(config: trt.IBuilderConfig, optimization_profile: Any) -> None:
    """Calibrate at the profile's OPT shape (TensorRT 10 implicit INT8 with dynamic shapes)."""
    config.set_calibration_profile(optimization_profile)


@supports("10", "11", "rtx")
def _apply_io_formats(
    trt: ModuleType, network: trt.INetworkDefinition, input_formats: tuple[IOFormat, ...],
    output_formats: tuple[IOFormat, ...], strongly_typed: bool,
) -> None:
    """Set I/O types and allowed formats; in strongly typed networks the graph's types must already match."""
    if not input_formats and not output_formats:
        return
    dtypes = {
        "fp32": trt.DataType.FLOAT, "fp16": trt.DataType.HALF, "bf16": trt.DataType.BF16,
        "int32": trt.DataType.INT32, "int64": trt.DataType.INT64, "int8": trt.DataType.INT8,
        "uint8": trt.DataType.UINT8, "bool": trt.DataType.BOOL,
    }
    formats = {
        "chw": trt.TensorFormat.LINEAR, "chw2": trt.TensorFormat.CHW2, "chw4": trt.TensorFormat.CHW4,
        "hwc8": trt.TensorFormat.HWC8, "chw16": trt.TensorFormat.CHW16, "chw32": trt.TensorFormat.CHW32,
        "dhwc8": trt.TensorFormat.DHWC8, "cdhw32": trt.TensorFormat.CDHW32, "hwc": trt.TensorFormat.HWC,
        "dhwc": trt.TensorFormat.DHWC, "dla_linear": trt.TensorFormat.DLA_LINEAR,
        "hwc16": trt.TensorFormat.HWC16, "dla_hwc4": trt.TensorFormat.DLA_HWC4,
    }
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    for tensors, given, option in ((inputs, input_formats, "--input-io-formats"),
                                   (outputs, output_formats, "--output-io-formats")):
        assigned = expand_io_formats(given, [t.name for t in tensors], option)
        for item in tensors:
            tensor: trt.ITensor = item
            fmt = assigned.get(tensor.name)
            if fmt is None:
                continue
            want = dtypes[fmt.dtype]
            if strongly_typed and tensor.dtype != want:
                raise TrtqError(
                    f"{option} asks for {fmt.dtype} on {tensor.name!r}, but the strongly typed network has "
                    f"{tensor.dtype}; in strongly typed builds the ONNX graph decides I/O types.",
                    "convert the model's I/O types, or give only the format with the graph's type.",
                )
            if not strongly_typed:
                tensor.dtype = want
            mask = 0
            for name in fmt.formats:
                mask |= 1 << int(formats[name])
            tensor.allowed_formats = mask


@supports("10", "11", "rtx")
def _load_timing_cache(config: trt.IBuilderConfig, path: str | None) -> Any:
    """Reuse (or start) a timing cache file; None when no --timing-cache was given."""
    if not path:
        return None
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        raise TrtqError(f"Timing cache {path} does not match this TensorRT version or GPU.",
                        "delete it (a new one is written) or pass another --timing-cache path.")
    return cache


@supports("10", "11", "rtx")
def _serialize_timing_cache(config: trt.IBuilderConfig) -> bytes:
    """The timing cache after the build, to write back."""
    cache: trt.ITimingCache = config.get_timing_cache()
    return bytes(cache.serialize())


@supports("10")
def _configure_implicit(
    trt: ModuleType, config: trt.IBuilderConfig, network: trt.INetworkDefinition, calibrator: Any,
    options: BuildOptions, layers: Mapping[str, str],
) -> dict[str, tuple[str, ...]]:
    """INT8 (+FP16) builder flags, the calibrator, and obeyed per-layer precisions; returns node -> layers."""
    config.set_flag(trt.BuilderFlag.INT8)
    precisions = dict(options.layer_precisions)
    if options.fp16 or "fp16" in precisions.values():
        config.set_flag(trt.BuilderFlag.FP16)
    if "bf16" in precisions.values():
        config.set_flag(trt.BuilderFlag.BF16)
    config.int8_calibrator = calibrator
    if not precisions:
        return {}
    dtypes = {"fp32": trt.DataType.FLOAT, "fp16": trt.DataType.HALF, "bf16": trt.DataType.BF16,
              "int32": trt.DataType.INT32, "int8": trt.DataType.INT8}
    by_name = {}
    for index in range(network.num_layers):
        layer: trt.ILayer = network.get_layer(index)
        by_name[layer.name] = layer
    matched = match_network_layers(layers, list(by_name))
    for node, names in matched.items():
        for name in names:
            target: trt.ILayer = by_name[name]
            target.precision = dtypes[precisions[node]]
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return matched


@supports("10")
def _configure_dla(trt: ModuleType, builder: trt.Builder, config: trt.IBuilderConfig, dla: DlaOptions) -> None:
    """Default device DLA on `dla.core`, with GPU fallback or as a standalone loadable."""
    cores = builder.num_DLA_cores
    if dla.core >= cores:
        raise TrtqError(
            f"--dla-core {dla.core} was requested, but this device has {cores} DLA core(s).",
            "DLA exists on Jetson AGX Orin/Xavier and DRIVE; use --dla-core 0" + (" or 1." if cores > 1 else "."),
        )
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = dla.core
    if dla.gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if dla.standalone:
        config.engine_capability = trt.EngineCapability.DLA_STANDALONE
        config.set_flag(trt.BuilderFlag.DIRECT_IO)
