"""The TensorRT builder calls of a build: network, parser, profile, I/O formats, timing cache,
implicit INT8 calibration and DLA, for each release line (`@supports`); also the RTX build.

Every function here takes the TensorRT module as `trt`: tools/trt_apicheck.py checks each name
against the bindings of the releases its function claims.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from trtq.errors import TrtqError
from trtq.model import graph_inputs
from trtq.tensorrt.build_options import BuildOptions, calibration_algorithm, calibration_cache_path
from trtq.tensorrt.calibrator import BatchSource, CacheFile, cache_rejected, make_calibrator
from trtq.tensorrt.commands import DlaOptions
from trtq.tensorrt.device import BufferSpec, DeviceFeeder, open_backend
from trtq.tensorrt.ioformats import IOFormat, expand_io_formats
from trtq.tensorrt.layers import match_network_layers
from trtq.tensorrt.profiles import ProfileShape
from trtq.tensorrt.rtx import (
    LogMessage,
    build_error,
    capture,
    capturing_logger,
    parse_error,
    parse_onnx,
    set_compute_capabilities,
)
from trtq.tensorrt.version import TrtCapabilities, supports

if TYPE_CHECKING:
    import tensorrt as trt

Batch = Mapping[str, np.ndarray]


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


@supports("10", "11", "rtx")
def build_serialized(
    trt: ModuleType,
    caps: TrtCapabilities,
    onnx_path: Path,
    model: onnx.ModelProto,
    options: BuildOptions,
    profile: Mapping[str, ProfileShape],
    layers: Mapping[str, str],
    engine_path: Path,
    calibration_batches: Iterable[Batch] | None,
    model_bytes: bytes | None = None,
) -> tuple[Any, dict[str, tuple[str, ...]], int, bytes | None]:
    """Parse, configure and build; returns (serialized engine, constrained layers, batches fed, timing cache).

    `model_bytes`: the model to parse instead of the file's contents (external data still resolved
    next to `onnx_path`): a copy whose placeholder dims were given distinct names."""
    if caps.track == "rtx":
        with capture(trt) as messages:  # the one TensorRT-RTX logger; its errors make the error sentence
            result = _build_strongly_typed(trt, caps, capturing_logger(trt), onnx_path, options, profile, messages,
                                            model_bytes)
        return result
    logger = trt.Logger(trt.Logger.WARNING)
    builder: trt.Builder = trt.Builder(logger)
    network = _create_network(trt, builder, caps, options.implicit)
    parser = _parse(trt, network, logger, onnx_path, model_bytes)  # owns the weights: keep it alive until the build is done
    config, optimization_profile, timing_cache = _configure(trt, builder, network, options, profile, "TensorRT",
                                                            strongly_typed=not options.implicit)
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
    profile: Mapping[str, ProfileShape], messages: list[LogMessage], model_bytes: bytes | None = None,
) -> tuple[Any, dict[str, tuple[str, ...]], int, bytes | None]:
    """The TensorRT-RTX build: strongly typed, ahead of time, for the requested compute capabilities."""
    builder: trt.Builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser: trt.OnnxParser = trt.OnnxParser(network, logger)
    if not parse_onnx(parser, onnx_path, model_bytes):
        raise parse_error(trt, parser, onnx_path, messages)
    config, _, timing_cache = _configure(trt, builder, network, options, profile, "TensorRT-RTX", strongly_typed=True)
    set_compute_capabilities(trt, config, options.compute_capabilities)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise build_error(trt, onnx_path, messages)
    cache_bytes = _serialize_timing_cache(config) if timing_cache else None
    del parser
    return serialized, {}, 0, cache_bytes


@supports("10", "11", "rtx")
def _configure(
    trt: ModuleType, builder: trt.Builder, network: trt.INetworkDefinition, options: BuildOptions,
    profile: Mapping[str, ProfileShape], product: str, strongly_typed: bool,
) -> tuple[trt.IBuilderConfig, Any, Any]:
    """The builder config every build shares: detailed profiling, workspace, the optimization profile, I/O
    formats and timing cache. Returns (config, optimization profile or None, timing cache or None)."""
    config: trt.IBuilderConfig = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mib) << 20)
    inputs = _network_inputs(network)
    if sorted(inputs) != sorted(profile):
        raise TrtqError(
            f"{product}'s network inputs {sorted(inputs)} differ from the ONNX graph inputs {sorted(profile)}.",
            "check that the model's inputs are not also initializers.",
        )
    optimization_profile = _add_profile(builder, config, inputs, profile)
    _apply_io_formats(trt, network, options.input_formats, options.output_formats, strongly_typed=strongly_typed)
    return config, optimization_profile, _load_timing_cache(config, options.timing_cache)


@supports("10", "11")
def _create_network(trt: ModuleType, builder: trt.Builder, caps: TrtCapabilities, implicit: bool) -> Any:
    """A strongly typed network (10.x: by flag; 11.x: always), or a weakly typed one for implicit 10.x builds."""
    flags = 0
    if caps.strongly_typed_flag and not implicit:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return builder.create_network(flags)


@supports("10", "11")
def _parse(trt: ModuleType, network: trt.INetworkDefinition, logger: Any, onnx_path: Path,
           model_bytes: bytes | None = None) -> Any:
    """Parse the ONNX file (or `model_bytes`) and return the parser; parser errors become one TrtqError naming
    the node."""
    parser: trt.OnnxParser = trt.OnnxParser(network, logger)
    if parse_onnx(parser, onnx_path, model_bytes):
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
