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
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trtq import __version__
from trtq._io import check_destinations, write_files_atomically
from trtq.errors import TrtqError
from trtq.model import distinct_placeholder_dims, file_sha256, load_model
from trtq.tensorrt.build_options import (
    BuildOptions,
    BuildResult,
    build_mode,
    build_precision,
    calibration_algorithm,
    check_calibration_cache,
    check_options,
    engine_output_path,
    equivalent_commands,
    model_profile,
    planned_modes,
    trtexec_equivalents,
    validate_options,
)
from trtq.tensorrt.builder import Batch, build_serialized, exact_batches
from trtq.tensorrt.device import gpu_name
from trtq.tensorrt.layers import node_layer_names
from trtq.tensorrt.naming import split_model_name
from trtq.tensorrt.sidecar import EngineSidecar, profile_to_json, sidecar_path
from trtq.tensorrt.version import require_tensorrt, version_string

# what callers import from here (the CLI, tests): the build's options and checks live in build_options,
# the TensorRT calls in builder
__all__ = [
    "BuildOptions",
    "BuildResult",
    "build_engine",
    "build_mode",
    "calibration_algorithm",
    "exact_batches",
    "model_profile",
    "trtexec_equivalents",
    "validate_options",
]



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
    renamed = distinct_placeholder_dims(model)  # paddle2onnx's '?' dims: the builder gets a copy with distinct names
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
    serialized, constrained, batches_fed, timing_cache = build_serialized(
        trt, caps, onnx_path, model, options, profile, layers, engine_path, calibration_batches,
        model.SerializeToString() if renamed else None)
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
        notes=(f"{renamed} in the copy handed to the builder (the file is unchanged, and the "
               f"{'tensorrt_rtx' if mode == 'tensorrt-rtx' else 'trtexec'} equivalent reads it as it is)",)
        if renamed else (),
    )


def _options_json(options: BuildOptions) -> dict[str, Any]:
    data = asdict(options)
    data["input_formats"] = [f.spec() for f in options.input_formats]
    data["output_formats"] = [f.spec() for f in options.output_formats]
    return data
