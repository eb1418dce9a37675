"""The exact trtexec command lines equivalent to trtq's build, run, bench and inspect.

Flag spellings follow trtexec 10.x (samples/common/sampleOptions.cpp); TensorRT 11's trtexec
has no --int8/--fp16/--calib/--stronglyTyped (strong typing is always on) and no precision
constraints. trtexec turns inference `--shapes` into a min = opt = max build profile when no
--minShapes/--optShapes/--maxShapes are given, so a fixed shape is passed as --shapes.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trtq.errors import TrtqError
from trtq.tensorrt.ioformats import IOFormat, format_io_formats
from trtq.tensorrt.layers import trtexec_layer_precisions
from trtq.tensorrt.profiles import ProfileShape, format_shapes

MODES = ("tensorrt-11", "tensorrt-10-strongly-typed", "tensorrt-10-implicit", "tensorrt-rtx")
"""Build modes, one per way a TensorRT version builds: 11.x, 10.x strongly typed, 10.x implicit INT8, and
TensorRT-RTX (its `tensorrt_rtx` tool takes trtexec's model, engine and shape flags)."""

DLA_STANDALONE_FORMATS = {
    "input": {"int8": {"dla_linear", "chw4", "dla_hwc4", "chw32"}, "fp16": {"dla_linear", "chw4", "dla_hwc4", "chw16"}},
    "output": {"int8": {"dla_linear", "chw32"}, "fp16": {"dla_linear", "chw16"}},
}
"""I/O formats trtexec 10.x accepts with --buildDLAStandalone (one format per tensor)."""


@dataclass(frozen=True)
class DlaOptions:
    """Build for a DLA core (TensorRT 10.x): GPU fallback for unsupported layers, or a standalone loadable."""

    core: int
    gpu_fallback: bool = False
    standalone: bool = False

    def __post_init__(self) -> None:
        if self.core < 0:
            raise TrtqError(f"--dla-core is {self.core}; DLA cores are numbered from 0.", "pass --dla-core 0 or 1.")
        if self.standalone and self.gpu_fallback:
            raise TrtqError(
                "--gpu-fallback cannot be combined with --dla-standalone: a standalone DLA loadable has no GPU part.",
                "drop one of the two options.",
            )


def check_dla_standalone_formats(inputs: Sequence[IOFormat], outputs: Sequence[IOFormat]) -> None:
    """Standalone DLA loadables need explicit I/O formats that DLA reads directly (as trtexec requires)."""
    for side, formats, option in (("input", inputs, "--input-io-formats"), ("output", outputs, "--output-io-formats")):
        allowed = DLA_STANDALONE_FORMATS[side]
        if not formats:
            raise TrtqError(
                f"--dla-standalone needs {option}: a DLA loadable cannot reformat its {side}s.",
                f"pass e.g. {option} fp16:{'chw16' if side == 'output' else 'dla_hwc4'}.",
            )
        for fmt in formats:
            if len(fmt.formats) != 1 or fmt.formats[0] not in allowed.get(fmt.dtype, set()):
                accepted = "; ".join(f"{t}:{'|'.join(sorted(f))}" for t, f in allowed.items())
                raise TrtqError(
                    f"{option} {fmt.spec()} is not a format a standalone DLA loadable accepts for {side}s ({accepted}).",
                    "pick one of the listed type:format pairs.",
                )


_SIZE_UNITS = {"": 1.0, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2}

MAX_WORKSPACE_MIB = 1024**3
"""1 PiB: more memory than any GPU has. TensorRT caps the pool at the device's memory anyway; a larger
number is a typo (or an overflow of TensorRT's size_t in bytes, past 16 EiB)."""


def parse_size_mib(text: str, option: str = "--workspace") -> int:
    """A size like 4G, 512M or 1024 (MiB when no unit, as trtexec reads --memPoolSize) in MiB."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1] if value and value[-1] in _SIZE_UNITS else ""
    number = value[: len(value) - len(unit)]
    try:
        mib = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        mib = math.nan
    if not math.isfinite(mib):
        raise TrtqError(f"{option} {text!r} is not a size like 4G, 512M or 1024 (MiB).", f"e.g. {option} 4G")
    if mib < 1:
        raise TrtqError(f"{option} {text!r} is below 1 MiB.", f"e.g. {option} 4G")
    if mib > MAX_WORKSPACE_MIB:
        raise TrtqError(f"{option} {text!r} is over 1 PiB, more memory than any GPU has.",
                        f"give the pool TensorRT may use on the target GPU, e.g. {option} 4G.")
    return int(mib)


def format_command(argv: Sequence[str]) -> str:
    """A shell-quoted command line."""
    return shlex.join(argv)


def _profile_flags(profile: Mapping[str, ProfileShape] | None) -> list[str]:
    if not profile:
        return []
    if all(p.is_static for p in profile.values()):
        return [f"--shapes={format_shapes({n: p.opt for n, p in profile.items()})}"]
    return [
        f"--minShapes={format_shapes({n: p.min for n, p in profile.items()})}",
        f"--optShapes={format_shapes({n: p.opt for n, p in profile.items()})}",
        f"--maxShapes={format_shapes({n: p.max for n, p in profile.items()})}",
    ]


def trtexec_build_argv(
    onnx_path: str,
    engine_path: str,
    mode: str,
    *,
    profile: Mapping[str, ProfileShape] | None = None,
    workspace_mib: int | None = None,
    timing_cache: str | None = None,
    calib_cache: str | None = None,
    fp16: bool = False,
    dla: DlaOptions | None = None,
    input_formats: Sequence[IOFormat] = (),
    output_formats: Sequence[IOFormat] = (),
    layer_precisions: Mapping[str, str] | None = None,
) -> list[str]:
    """The trtexec build command for `mode` (one of MODES) as an argument list.

    `layer_precisions` maps TensorRT layer names (see trtq.tensorrt.layers) to precisions and,
    like `calib_cache` and `fp16`, only exists for the 10.x implicit mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    implicit = mode == "tensorrt-10-implicit"
    rtx = mode == "tensorrt-rtx"
    argv = ["tensorrt_rtx" if rtx else "trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if mode == "tensorrt-10-strongly-typed":
        argv.append("--stronglyTyped")
    if implicit:
        if not calib_cache:
            raise TrtqError(
                "An implicit INT8 build needs a calibration cache; without one trtexec uses placeholder scales.",
                "run `trtq quantize` to write <stem>.int8.cache, or build the Q/DQ ONNX strongly typed.",
            )
        argv.append("--int8")
        if fp16 or "fp16" in (layer_precisions or {}).values():
            argv.append("--fp16")
        argv.append(f"--calib={calib_cache}")
    elif calib_cache or fp16:
        raise TrtqError(
            f"--calib and --fp16 exist only for implicit TensorRT 10 builds, not for {mode}.",
            "in strongly typed builds the ONNX graph's Q/DQ nodes and tensor types set the precision.",
        )
    if layer_precisions:
        if not implicit:
            raise TrtqError(
                f"Per-layer precision constraints exist only for implicit TensorRT 10 builds, not for {mode}.",
                "keep those nodes out of INT8 with `trtq quantize --exclude-nodes` instead.",
            )
        argv += ["--precisionConstraints=obey", f"--layerPrecisions={trtexec_layer_precisions(layer_precisions)}"]
    argv += _profile_flags(profile)
    if rtx:  # only the flags checked for tensorrt_rtx: model, engine and shapes
        return argv
    if input_formats:
        argv.append(f"--inputIOFormats={format_io_formats(input_formats)}")
    if output_formats:
        argv.append(f"--outputIOFormats={format_io_formats(output_formats)}")
    if dla is not None:
        if mode in ("tensorrt-11", "tensorrt-rtx"):
            raise TrtqError(
                "trtq builds for DLA with TensorRT 10.x only (TensorRT 11.0-11.3 have no DLA; 11.4.1 supports it "
                "only on Jetson AGX Orin with JetPack 7.2.2+).",
                "use JetPack's TensorRT 10 for DLA engines.",
            )
        argv.append(f"--useDLACore={dla.core}")
        if dla.gpu_fallback:
            argv.append("--allowGPUFallback")
        if dla.standalone:
            check_dla_standalone_formats(input_formats, output_formats)
            argv.append("--buildDLAStandalone")
    if workspace_mib is not None:
        argv.append(f"--memPoolSize=workspace:{int(workspace_mib)}M")
    if timing_cache:
        argv.append(f"--timingCacheFile={timing_cache}")
    return argv


def static_profile(shapes: Mapping[str, Sequence[int]] | None) -> dict[str, ProfileShape] | None:
    """min = opt = max profiles for fixed shapes."""
    if not shapes:
        return None
    return {name: ProfileShape(tuple(s), tuple(s), tuple(s)) for name, s in shapes.items()}


def trtexec_build_commands(
    onnx_path: str,
    cache_path: str,
    engine_path: str,
    shapes: Mapping[str, tuple[int, ...]] | None,
    *,
    original_onnx: str | None = None,
    workspace_mib: int | None = None,
    timing_cache: str | None = None,
    implicit_fp16: bool = False,
    layer_precisions: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The build command for each TensorRT version, keyed by MODES.

    `onnx_path` is the Q/DQ model (built strongly typed on 10.x and 11.x); the implicit 10.x line
    builds `original_onnx` (the FP32 model) with the calibration cache `cache_path`, because
    TensorRT ignores a calibration cache for a model that already carries Q/DQ nodes. There,
    `implicit_fp16` allows FP16 for what is not INT8 and `layer_precisions` (TensorRT layer name ->
    precision) keeps the layers excluded from INT8 out of it, as obeyed constraints.
    """
    profile = static_profile(shapes)
    common: dict[str, Any] = {"profile": profile, "workspace_mib": workspace_mib, "timing_cache": timing_cache}
    commands = {
        "tensorrt-11": trtexec_build_argv(onnx_path, engine_path, "tensorrt-11", **common),
        "tensorrt-10-strongly-typed": trtexec_build_argv(onnx_path, engine_path, "tensorrt-10-strongly-typed", **common),
    }
    if original_onnx:
        commands["tensorrt-10-implicit"] = trtexec_build_argv(
            original_onnx, engine_path, "tensorrt-10-implicit", calib_cache=cache_path, fp16=implicit_fp16,
            layer_precisions=dict(layer_precisions or {}), **common
        )
    return {key: format_command(argv) for key, argv in commands.items()}


def trtexec_run_argv(engine_path: str, shapes: Mapping[str, Sequence[int]] | None, output_json: str) -> list[str]:
    """Load an engine, run it once and export the outputs (trtexec feeds random inputs unless --loadInputs)."""
    argv = ["trtexec", f"--loadEngine={engine_path}", "--iterations=1", "--warmUp=0", "--duration=0",
            f"--exportOutput={output_json}"]
    if shapes:
        argv.append(f"--shapes={format_shapes(shapes)}")
    return argv


def trtexec_bench_argv(
    engine_path: str,
    shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    duration_s: float = 3.0,
    warmup_ms: float = 200.0,
    cuda_graph: bool = False,
) -> list[str]:
    """trtexec's own benchmark with the same warm-up, duration, percentiles and CUDA-graph choice."""
    argv = ["trtexec", f"--loadEngine={engine_path}", f"--warmUp={warmup_ms:g}", f"--duration={duration_s:g}",
            "--percentile=90,95,99"]
    if shapes:
        argv.append(f"--shapes={format_shapes(shapes)}")
    if cuda_graph:
        argv.append("--useCudaGraph")
    return argv


def trtexec_inspect_argv(engine_path: str, layers_json: str) -> list[str]:
    """Print and export an engine's layer information (precisions and tactics need a DETAILED build)."""
    return ["trtexec", f"--loadEngine={engine_path}", "--skipInference", "--dumpLayerInfo",
            f"--exportLayerInfo={layers_json}"]
