"""`trtq build`, `trtq run`, `trtq bench`: argument parsing and printing only (logic in trtq.tensorrt).

`--backend` picks the engine library: datacenter TensorRT (10/11) or TensorRT-RTX, which builds
ahead of time without a GPU and runs on GPUs of compute capability 8.0, 8.6, 8.9 and 12.x.
"""

from __future__ import annotations

import argparse
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from trtq.cli.options import (
    add_data_options,
    data_options,
    given,
    non_negative_float,
    non_negative_int,
    positive_float,
    refuse,
)
from trtq.cli.output import add_output_options, emit
from trtq.errors import TrtqError
from trtq.model import file_sha256, parse_shapes
from trtq.tensorrt.build import BuildOptions, build_engine, trtexec_equivalents
from trtq.tensorrt.commands import DlaOptions, parse_size_mib
from trtq.tensorrt.ioformats import parse_io_formats
from trtq.tensorrt.layers import load_layer_precisions, parse_layer_precisions
from trtq.tensorrt.rtx import COMPUTE_CAPABILITIES, parse_compute_capabilities
from trtq.tensorrt.version import ENGINE_BACKENDS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add build, run and bench."""
    p = subparsers.add_parser("build", help="build a TensorRT engine (<stem>.<precision>.engine + .json sidecar)")
    p.add_argument("model", help="ONNX model: the Q/DQ <stem>.int8.onnx (strongly typed), or FP32 with --implicit")
    p.add_argument("--output", help="engine path (default: <stem>.<precision>[.<io formats>].engine beside the model)")
    p.add_argument("--backend", choices=ENGINE_BACKENDS, default="tensorrt",
                   help="tensorrt (datacenter TensorRT 10/11, default) or tensorrt-rtx (TensorRT for RTX: strongly "
                   "typed, built ahead of time without a GPU)")
    p.add_argument("--compute-capability", metavar="CC[,CC]",
                   help=f"--backend tensorrt-rtx: GPUs to build for, of {', '.join(COMPUTE_CAPABILITIES)} (default: "
                   "its portable engine for 8.0, 8.6, 8.9 and 12.x)")
    p.add_argument("--min-shape", action="append", default=[], metavar="NAME:AxBxC", help="profile min shape")
    p.add_argument("--opt-shape", action="append", default=[], metavar="NAME:AxBxC", help="profile opt shape "
                   "(implicit INT8 calibrates at it)")
    p.add_argument("--max-shape", action="append", default=[], metavar="NAME:AxBxC", help="profile max shape")
    p.add_argument("--workspace", metavar="SIZE", help="workspace memory pool limit, e.g. 4G or 512M")
    p.add_argument("--timing-cache", metavar="FILE", help="timing cache to reuse and update")
    p.add_argument("--implicit", action="store_true", help="TensorRT 10 only: implicit INT8 with trtq's "
                   "calibrator (--calib DATA) or a calibration cache (--calib FILE.cache)")
    p.add_argument("--calib", metavar="DATA", help="implicit builds: calibration samples (image folder, .npy/.npz, "
                   "load_data() script) or a TensorRT calibration cache")
    p.add_argument("--calib-algorithm", choices=("entropy", "minmax"),
                   help="implicit builds from data: EntropyCalibration2 or MinMaxCalibration (default: entropy)")
    p.add_argument("--fp16", action="store_true", help="implicit builds: also allow FP16 layers")
    p.add_argument("--layer-precisions", metavar="SPEC", help="implicit builds: obeyed per-node precisions, "
                   "\"node_a:fp16,node_b:fp32\" (ONNX node names)")
    p.add_argument("--layer-precisions-from", metavar="JSON", help="implicit builds: node precisions from a JSON "
                   "file (e.g. the nodes sensitivity analysis kept out of INT8)")
    p.add_argument("--dla-core", type=non_negative_int("--dla-core 0"), metavar="N", help="TensorRT 10: run on DLA core N")
    p.add_argument("--gpu-fallback", action="store_true", help="with --dla-core: unsupported layers run on the GPU")
    p.add_argument("--dla-standalone", action="store_true", help="with --dla-core: build a standalone DLA loadable")
    p.add_argument("--input-io-formats", metavar="SPEC", help="trtexec type:format per input, e.g. fp16:chw16")
    p.add_argument("--output-io-formats", metavar="SPEC", help="trtexec type:format per output, e.g. fp16:chw16")
    p.add_argument("--qat", action="store_true", help="name the engine <stem>_qat.<precision>.engine")
    p.add_argument("--ranges", metavar="FILE", help="ranges table to record in the sidecar "
                   "(default: <stem>.int8.json beside the model, if present)")
    p.add_argument("--device-backend", choices=("auto", "torch", "cuda-python"), default="auto",
                   help="how the calibrator reaches the GPU (default: the first available)")
    p.add_argument("--print-trtexec", action="store_true", help="only print the equivalent trtexec command(s)")
    add_data_options(p)
    add_output_options(p)
    p.set_defaults(func=cmd_build)

    p = subparsers.add_parser("run", help="run a TensorRT engine over samples; outputs saved as .npz")
    p.add_argument("engine", help="a .engine built by `trtq build` (or any TensorRT engine with --data .npz)")
    p.add_argument("--data", required=True, metavar="DATA", help="samples: .npz of input arrays, or any --calib "
                   "form when the engine's sidecar names its ONNX model")
    p.add_argument("--output", metavar="FILE", help="where to save outputs (default: <engine stem>.outputs.npz)")
    _add_engine_backend(p)
    p.add_argument("--device-backend", choices=("auto", "torch", "cuda-python"), default="auto")
    add_data_options(p)
    add_output_options(p)
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("bench", help="benchmark an engine (trtexec's performance summary)")
    p.add_argument("engine", help="a TensorRT .engine")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:AxBxC",
                   help="input shapes for dynamic engines (default: the profile's OPT shapes)")
    p.add_argument("--duration", type=positive_float("--duration 3"), default=3.0, help="seconds of timed queries (default: 3)")
    p.add_argument("--warmup", type=non_negative_float("--warmup 200"), default=200.0,
                   help="warm-up in milliseconds (default: 200)")
    p.add_argument("--cuda-graph", action="store_true", help="launch a CUDA graph captured from the enqueue")
    _add_engine_backend(p)
    p.add_argument("--device-backend", choices=("auto", "torch", "cuda-python"), default="auto")
    add_output_options(p)
    p.set_defaults(func=cmd_bench)


def _add_engine_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("auto", *ENGINE_BACKENDS), default="auto",
                   help="the library the engine was built with (default: what its .engine.json sidecar says, "
                   "else tensorrt); tensorrt-rtx engines run on compute capability 8.0, 8.6, 8.9 and 12.x")


DATA_SUFFIXES = (".npy", ".npz", ".py")
"""--calib files that are calibration data; any other file is a calibration cache (a folder is images)."""

IMAGE_OPTIONS = ("preset", "limit", "size", "resize", "pad_value", "color", "scale", "mean", "std", "layout", "dtype")
"""Data options (add_data_options) that say how --calib DATA is read; --shape is the build's own."""


def _calibration_cache(args: argparse.Namespace) -> str | None:
    """--calib when it names a calibration cache rather than data (None for data or no --calib)."""
    if not args.calib:
        return None
    path = Path(args.calib)
    if not path.exists():
        raise TrtqError(f"--calib {args.calib} does not exist.",
                        "pass calibration data (image folder, .npy/.npz, load_data() .py) or a calibration cache.")
    return None if path.is_dir() or path.suffix.lower() in DATA_SUFFIXES else args.calib


def check_build_args(args: argparse.Namespace, cache: str | None) -> None:
    """Refuse options this build would accept and then ignore."""
    if args.calib_algorithm and (not args.implicit or cache):
        raise TrtqError("--calib-algorithm applies only to implicit builds that calibrate from --calib DATA"
                        + (f"; {cache} is a cache, whose header names its algorithm." if cache else "."),
                        "drop --calib-algorithm.")
    if not args.calib or cache:
        extra = given(args, *IMAGE_OPTIONS)
        refuse(extra, "to calibration data (--calib DATA with --implicit)", f"drop {' '.join(extra)}.")
    if args.print_trtexec and args.implicit and args.calib and not cache:
        raise TrtqError(
            f"trtexec cannot calibrate from samples, so no trtexec line builds from --calib {args.calib}.",
            f"run `trtq quantize {args.model} --calib {args.calib}` for a calibration cache and pass that with "
            "--calib, or build with trtq (drop --print-trtexec).",
        )


def _ranges_sha256(path: str | None) -> str | None:
    """The SHA-256 of --ranges FILE, recorded in the engine's sidecar (None without the option)."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise TrtqError(f"Ranges file {path} does not exist.", "pass the .int8.json that `trtq quantize` wrote.")
    return file_sha256(Path(path))


def build_options(args: argparse.Namespace) -> BuildOptions:
    """BuildOptions from parsed `trtq build` arguments."""
    precisions = parse_layer_precisions(args.layer_precisions)
    if args.layer_precisions_from:
        precisions = {**load_layer_precisions(args.layer_precisions_from), **precisions}
    if (args.gpu_fallback or args.dla_standalone) and args.dla_core is None:
        raise TrtqError("--gpu-fallback and --dla-standalone need --dla-core.", "add --dla-core 0.")
    if args.calib and not args.implicit:
        raise TrtqError("--calib builds implicitly (TensorRT 10); a strongly typed build takes its INT8 ranges "
                        "from the model's Q/DQ nodes.", "add --implicit, or build the Q/DQ ONNX from `trtq quantize`.")
    cache = _calibration_cache(args)
    check_build_args(args, cache)
    return BuildOptions(
        output=args.output,
        shapes=parse_shapes(args.shape),
        min_shapes=parse_shapes(args.min_shape),
        opt_shapes=parse_shapes(args.opt_shape),
        max_shapes=parse_shapes(args.max_shape),
        workspace_mib=parse_size_mib(args.workspace) if args.workspace else None,
        timing_cache=args.timing_cache,
        implicit=args.implicit,
        calibration_cache=cache,
        calibration_algorithm=args.calib_algorithm or "entropy",
        fp16=args.fp16,
        dla=DlaOptions(args.dla_core, args.gpu_fallback, args.dla_standalone) if args.dla_core is not None else None,
        input_formats=parse_io_formats(args.input_io_formats, "--input-io-formats"),
        output_formats=parse_io_formats(args.output_io_formats, "--output-io-formats"),
        layer_precisions=precisions,
        qat=args.qat,
        ranges_sha256=_ranges_sha256(args.ranges),
        device_backend=args.device_backend,
        backend=args.backend,
        compute_capabilities=parse_compute_capabilities(args.compute_capability),
    )


def _calibration_batches(args: argparse.Namespace, options: BuildOptions) -> Iterator[Mapping[str, np.ndarray]]:
    """Batches of the calibration profile's OPT shape from --calib DATA (opened on first use)."""
    from trtq import api
    from trtq.model import load_model
    from trtq.tensorrt.build import model_profile

    model = load_model(args.model)
    profile = model_profile(model, options)
    opt = {name: shape.opt for name, shape in profile.items()}
    data = data_options(args)
    dataset = api.open_data(model, args.calib, api.DataOptions(preset=data.preset, preprocess=data.preprocess,
                                                               shapes=opt, limit=data.limit))
    batch = next(iter(opt.values()))[0] if opt else 1
    yield from dataset.batches(batch)


def cmd_build(args: argparse.Namespace) -> int:
    """Build an engine, or print the trtexec equivalent."""
    options = build_options(args)
    if args.print_trtexec:
        commands = trtexec_equivalents(args.model, options)
        emit(args, {"commands": commands}, "\n".join(f"# {mode}\n{line}" for mode, line in commands.items()))
        return 0
    batches = _calibration_batches(args, options) if args.implicit and args.calib and not options.calibration_cache \
        else None
    result = build_engine(args.model, options, batches)
    lines = [
        (f"built {result.engine_path} ({result.precision}, {result.mode}, {result.builder}, "
         f"{result.gpu_name}) in {result.seconds:.1f} s"),
        f"wrote {result.sidecar_path}",
    ]
    if result.calibration_batches:
        lines.append(f"calibrated on {result.calibration_batches} batches")
    if result.constrained_layers:
        lines.append(f"precision constraints on {sum(map(len, result.constrained_layers.values()))} layers "
                     f"of {len(result.constrained_layers)} nodes")
    lines.extend(f"note: {note}" for note in result.notes)
    tool = "tensorrt_rtx" if result.mode == "tensorrt-rtx" else "trtexec"
    lines.append(f"{tool} equivalent: {result.trtexec_command}")
    emit(args, result.to_dict(), "\n".join(lines))
    return 0


def _run_batches(args: argparse.Namespace) -> Iterator[Mapping[str, np.ndarray]]:
    """--data as batches: an .npz directly, anything else through the sidecar's ONNX model and its inputs."""
    from trtq import api
    from trtq.data.arrays import numpy_file_problem
    from trtq.model import load_model
    from trtq.tensorrt.sidecar import read_sidecar

    if args.data.lower().endswith(".npz"):
        try:
            with np.load(args.data, allow_pickle=False) as arrays:
                batch = {name: arrays[name][:args.limit] for name in arrays.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise TrtqError(f"--data {numpy_file_problem(args.data, exc, 'npz')}.",
                            "save the engine's inputs with np.savez(path, **{name: array}).") from exc
        if not batch:
            raise TrtqError(f"--data {args.data} holds no arrays.", "save one array per engine input.")
        yield batch
        return
    sidecar = read_sidecar(args.engine)
    if sidecar is None or not Path(sidecar.onnx_file).is_file():
        raise TrtqError(
            f"--data {args.data} needs the engine's ONNX model to be read, and {args.engine} has no sidecar naming "
            "an existing one.",
            "pass an .npz with one array per engine input.",
        )
    model = load_model(sidecar.onnx_file)
    data = data_options(args)
    opt = {name: tuple(shape["opt"]) for name, shape in sidecar.profile.items()}
    shapes = {**opt, **dict(data.shapes)}
    dataset = api.open_data(model, args.data, api.DataOptions(preset=data.preset, preprocess=data.preprocess,
                                                              shapes=shapes, limit=data.limit), purpose="run")
    batch_size = next(iter(shapes.values()))[0] if shapes else 1
    yield from dataset.batches(batch_size)


def check_run_args(args: argparse.Namespace) -> None:
    """Refuse what `run` cannot use, before TensorRT is looked for: missing data, and options an .npz
    (fed to the engine as it is) would ignore."""
    if not Path(args.data).exists():
        raise TrtqError(f"--data {args.data} does not exist.", "pass an .npz of the engine's inputs, or other data.")
    if args.data.lower().endswith(".npz"):
        extra = given(args, *(o for o in IMAGE_OPTIONS if o != "limit"), "shape")
        refuse(extra, "to data read through the engine's ONNX model; an .npz is fed to the engine as it is",
               f"drop {' '.join(extra)} (--limit applies).")


def cmd_run(args: argparse.Namespace) -> int:
    """Run an engine over samples."""
    from trtq.tensorrt.run import run_engine

    check_run_args(args)
    result = run_engine(args.engine, _run_batches(args), args.output, backend=args.device_backend,
                        engine_library=args.backend)
    lines = [f"ran {result.batches} batches through {result.engine}; wrote {result.output_path}",
             *(f"  {name}: {shape}" for name, shape in result.outputs.items()),
             *(f"warning: {w}" for w in result.warnings)]
    emit(args, result.to_dict(), "\n".join(lines))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Benchmark an engine."""
    from trtq.tensorrt.bench import bench_engine

    if args.duration <= 0 or args.warmup < 0:
        raise TrtqError(f"--duration must be > 0 and --warmup >= 0 (got {args.duration} and {args.warmup}).",
                        "use e.g. --duration 3 --warmup 200.")
    report = bench_engine(args.engine, shapes=parse_shapes(args.shape) or None, duration_s=args.duration,
                          warmup_ms=args.warmup, cuda_graph=args.cuda_graph, backend=args.device_backend,
                          engine_library=args.backend)
    emit(args, report.to_dict(), report.to_text())
    return 0
