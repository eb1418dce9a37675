"""`trtq inspect`, `trtq quantize`, `trtq compare`: argument parsing and printing only."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from trtq import api
from trtq.calibrate.algorithms import METHODS
from trtq.cli.output import add_output_options, emit, show_progress
from trtq.errors import TrtqError
from trtq.formats.cache import DEFAULT_TRT_VERSION
from trtq.model import parse_shapes

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add inspect, quantize and compare."""
    p = subparsers.add_parser("inspect", help="inputs/outputs, dynamic dims, opset, op counts, quantizable layers "
                              "(of an .onnx model or a TensorRT .engine)")
    p.add_argument("model", help="an .onnx model, or a TensorRT engine (.engine/.plan)")
    add_output_options(p)
    p.set_defaults(func=cmd_inspect)

    p = subparsers.add_parser("quantize", help="calibrate and write <stem>.int8.onnx (Q/DQ), .int8.cache, .int8.json")
    p.add_argument("model", help="FP32 .onnx model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--calib", metavar="DATA", help="image folder, .npy/.npz, or a .py file defining load_data()")
    src.add_argument("--ranges", metavar="FILE", help="a ranges table (.int8.json) from an earlier run: skip calibration")
    p.add_argument("--method", choices=METHODS, default="entropy", help="range algorithm (default: entropy, "
                   "TensorRT's EntropyCalibration2)")
    p.add_argument("--percentile", type=float, default=99.99, help="for --method percentile (default: 99.99)")
    p.add_argument("--exclude-nodes", action="append", default=[], metavar="REGEX",
                   help="keep nodes whose name matches in high precision (repeatable)")
    p.add_argument("--exclude-ops", default="", metavar="OPS", help="comma-separated op types to keep in high "
                   "precision, e.g. Sigmoid,Softmax")
    p.add_argument("--trt-version", default=DEFAULT_TRT_VERSION, help=f"TensorRT version the calibration cache "
                   f"header targets (default: {DEFAULT_TRT_VERSION})")
    p.add_argument("--cache-scope", choices=("qdq", "all"), default="qdq",
                   help="calibration-cache lines for the tensors around the INT8 layers of the Q/DQ placement "
                   "(qdq, default) or for every activation, as TensorRT's calibrator writes (all; slower)")
    p.add_argument("--output-dir", help="where to write (default: beside the model)")
    p.add_argument("--device", default="cpu", help="calibration device: cpu or cuda[:N] (default: cpu)")
    add_data_options(p)
    add_output_options(p)
    p.set_defaults(func=cmd_quantize)

    p = subparsers.add_parser("compare", help="FP32 vs quantized on the same samples: SNR, cosine, errors, top-1")
    p.add_argument("reference", help="FP32 .onnx model")
    p.add_argument("candidate", help="quantized .onnx model (e.g. <stem>.int8.onnx)")
    p.add_argument("--data", required=True, metavar="DATA", help="held-out samples (same forms as --calib)")
    add_data_options(p)
    add_output_options(p)
    p.set_defaults(func=cmd_compare)


def add_data_options(p: argparse.ArgumentParser) -> None:
    """Options that say how sample data is read and preprocessed."""
    g = p.add_argument_group("data and preprocessing")
    g.add_argument("--preset", choices=("imagenet", "yolo", "none"), help="preprocessing preset for image folders")
    g.add_argument("--shape", action="append", default=[], metavar="NAME:AxBxC",
                   help="input shape for dynamic dims, trtexec style (repeatable or comma-separated)")
    g.add_argument("--limit", type=int, help="use at most this many samples")
    g.add_argument("--size", metavar="HxW", help="image size (default: from the model input)")
    g.add_argument("--resize", choices=("resize", "letterbox", "center-crop"), help="how images reach --size")
    g.add_argument("--pad-value", type=int, help="letterbox padding value (default 114)")
    g.add_argument("--color", choices=("RGB", "BGR", "GRAY"), help="channel order")
    g.add_argument("--scale", type=float, help="multiply pixels by this (default 1/255)")
    g.add_argument("--mean", help="per-channel mean after scaling, e.g. 0.485,0.456,0.406")
    g.add_argument("--std", help="per-channel std after scaling, e.g. 0.229,0.224,0.225")
    g.add_argument("--layout", choices=("NCHW", "NHWC"), help="input layout (default: from the model)")
    g.add_argument("--dtype", help="input dtype (default: the model input's)")


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise TrtqError(f"{flag} {text!r} is not a comma-separated list of numbers.", f"e.g. {flag} 0.5,0.5,0.5") from exc


def data_options(args: argparse.Namespace) -> api.DataOptions:
    """Collect the data options of a parsed command line."""
    overrides: dict[str, object] = {}
    if args.size:
        try:
            h, w = (int(v) for v in args.size.lower().split("x"))
        except ValueError as exc:
            raise TrtqError(f"--size {args.size!r} is not HxW.", "e.g. --size 640x640") from exc
        overrides["size"] = (h, w)
    for key in ("resize", "pad_value", "color", "scale", "layout", "dtype"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.mean:
        overrides["mean"] = _floats(args.mean, "--mean")
    if args.std:
        overrides["std"] = _floats(args.std, "--std")
    return api.DataOptions(preset=args.preset, preprocess=overrides, shapes=parse_shapes(args.shape), limit=args.limit)


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print a model's (or an engine's) summary."""
    if Path(args.model).suffix.lower() in ENGINE_SUFFIXES:
        from trtq.tensorrt import inspect_engine

        info = inspect_engine(args.model)
        emit(args, info.to_dict(), info.to_text())
        return 0
    info = api.inspect(args.model)
    lines = [
        f"{info.path}  (opset {info.opset}, IR {info.ir_version}, {info.producer or 'unknown producer'})",
        f"  {info.num_nodes} nodes, {info.num_parameters:,} parameters",
        "  inputs:",
        *(f"    {t.name}: {t.dtype} [{t.shape_str()}]{'  (dynamic)' if t.is_dynamic else ''}" for t in info.inputs),
        "  outputs:",
        *(f"    {t.name}: {t.dtype} [{t.shape_str()}]" for t in info.outputs),
        "  ops: " + ", ".join(f"{op} x{n}" for op, n in info.op_counts.items()),
        f"  quantizable layers (Conv/ConvTranspose/Gemm/MatMul): {len(info.quantizable_nodes)}",
    ]
    emit(args, info.to_dict(), "\n".join(lines))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    """Calibrate (or load ranges) and write the INT8 artifacts."""
    options = api.QuantizeOptions(
        method=args.method,
        percentile=args.percentile,
        exclude_nodes=tuple(args.exclude_nodes),
        exclude_ops=tuple(op for op in args.exclude_ops.split(",") if op),
        trt_version=args.trt_version,
        output_dir=args.output_dir,
        device=args.device,
        cache_scope=args.cache_scope,
    )
    result = api.quantize(args.model, calib=args.calib, ranges=args.ranges, data=data_options(args),
                          options=options, progress=show_progress(args))
    timing = f" in {result.calibration_seconds:.1f} s" if result.calibration_seconds is not None else " (from saved ranges)"
    lines = [
        f"calibrated {result.samples} samples with {result.method}{timing}",
        f"  {result.qdq_pairs} Q/DQ pairs ({result.quantized_activations} activations, "
        f"{result.quantized_weights} weights per channel)"
        + (f"; {len(result.excluded_nodes)} nodes kept in high precision" if result.excluded_nodes else ""),
        f"wrote {result.onnx_path}",
        f"wrote {result.cache_path}  ({result.cache_entries} tensors)",
        f"wrote {result.ranges_path}",
        "build the engine on the target:",
        *(f"  # {label}\n  {command}" for label, command in result.commands.items()),
    ]
    emit(args, result.to_dict(), "\n".join(lines))
    return 0


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare FP32 and quantized outputs on held-out data."""
    report = api.compare(args.reference, args.candidate, args.data, data=data_options(args),
                         progress=show_progress(args))
    header = f"{'output':<24} {'SNR dB':>8} {'worst dB':>9} {'cosine':>8} {'max abs':>10} {'mean abs':>10} {'top-1':>7}"
    rows = [
        f"{o.name:<24} {_fmt(o.snr_db):>8} {_fmt(o.worst_sample_snr_db):>9} {_fmt(o.cosine, 5):>8} "
        f"{_fmt(o.max_abs_error, 4):>10} {_fmt(o.mean_abs_error, 5):>10} "
        f"{(_fmt(100 * o.top1_agreement, 1) + '%') if o.top1_agreement is not None else '-':>7}"
        for o in report.outputs
    ]
    text = "\n".join([f"{report.candidate} vs {report.reference} on {report.samples} samples ({report.data})",
                      header, *rows])
    emit(args, report.to_dict(), text)
    return 0
