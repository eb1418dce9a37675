"""What a build is asked for and what it gives back, checked before TensorRT is called.

`BuildOptions` and `BuildResult`; the checks that fail in one sentence before minutes of building
(options against the installed release, a calibration cache against the model); the build's
precision, output path and optimisation profile; the equivalent trtexec commands. The build itself
is `trtq.tensorrt.build.build_engine`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import onnx

from trtq.errors import TrtqError
from trtq.formats.cache import read_cache, trt_version_code
from trtq.model import graph_inputs, load_model
from trtq.tensorrt.commands import DlaOptions, check_dla_standalone_formats, format_command, trtexec_build_argv
from trtq.tensorrt.ioformats import IOFormat
from trtq.tensorrt.layers import node_layer_names
from trtq.tensorrt.naming import default_engine_path, model_precision, split_model_name
from trtq.tensorrt.profiles import ProfileShape, resolve_profile
from trtq.tensorrt.version import TrtCapabilities

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
    notes: tuple[str, ...] = ()
    """What the build did to the model on its own (placeholder dims given distinct names)."""

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
    """--output, or `<stem>.<precision>[...].engine` beside the model; an --output that is a folder or one of
    the build's inputs is refused (the engine would replace the model, or have no file name)."""
    if options.output:
        output = Path(options.output)
        if output.is_dir():
            raise TrtqError(f"--output {output} is a directory; it names the engine file to write.",
                            f"give a file name, e.g. --output {output / Path(onnx_path).with_suffix('.engine').name}.")
        for name, source in (("model", onnx_path), ("calibration cache", options.calibration_cache),
                             ("timing cache", options.timing_cache)):
            if source and output.exists() and os.path.samefile(output, source):
                raise TrtqError(f"--output {output} is the {name} {source}: the engine would overwrite it.",
                                "choose another --output (the default is <stem>.<precision>.engine beside the model).")
        return output
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
