"""`trtq inspect`, `trtq quantize`, `trtq compare`: argument parsing and printing only."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from trtq import api
from trtq.calibrate.algorithms import METHODS
from trtq.cli.options import (
    add_data_options,
    add_target_options,
    add_task_options,
    data_options,
    task_options,
)
from trtq.cli.output import add_output_options, emit, show_progress
from trtq.formats.cache import DEFAULT_TRT_VERSION
from trtq.report import histogram_summary, write_record

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
    p.add_argument("--external-data", action=argparse.BooleanOptionalAction, default=None,
                   help="store the weights in <stem>.int8.onnx.data beside the model (default: only when they "
                   "exceed protobuf's 2 GB limit)")
    p.add_argument("--device", default="cpu", help="calibration device: cpu or cuda[:N] (default: cpu)")
    add_target_options(p)
    add_task_options(p)
    add_data_options(p)
    add_output_options(p)
    p.set_defaults(func=cmd_quantize)

    p = subparsers.add_parser("compare", help="FP32 vs quantized on the same samples: SNR, cosine, errors, top-1")
    p.add_argument("reference", help="FP32 .onnx model")
    p.add_argument("candidate", help="quantized .onnx model (e.g. <stem>.int8.onnx)")
    p.add_argument("--data", required=True, metavar="DATA", help="held-out samples (same forms as --calib)")
    p.add_argument("--batch-size", type=int, help="evaluation batch for a dynamic batch dim (default 32)")
    p.add_argument("--output-dir", help="where the run record for `trtq report` goes (default: beside the candidate)")
    add_task_options(p)
    add_data_options(p)
    add_output_options(p)
    p.set_defaults(func=cmd_compare)


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
        f"  {info.num_nodes} nodes, {info.num_parameters:,} parameters"
        + (f" ({info.constant_parameters:,} in Constant nodes)" if info.constant_parameters else ""),
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
        target=args.target,
        target_data=args.target_data,
        ranking=args.ranking,
        high_precision=args.high_precision,
        task=task_options(args),
        external_data=args.external_data,
    )
    result = api.quantize(args.model, calib=args.calib, ranges=args.ranges, data=data_options(args),
                          options=options, progress=show_progress(args))
    record = _record_quantize(args, result)
    timing = f" in {result.calibration_seconds:.1f} s" if result.calibration_seconds is not None else " (from saved ranges)"
    lines = [
        *result.shape_notes,
        f"calibrated {result.samples} samples with {result.method}{timing}",
        *(f"  note: {note}" for note in result.notes),
        f"  {result.qdq_pairs} Q/DQ pairs ({result.quantized_activations} activations, "
        f"{result.quantized_weights} weights per channel)"
        + (f"; {len(result.excluded_nodes)} nodes kept in high precision" if result.excluded_nodes else ""),
        *_mixed_lines(result.mixed),
        *_precision_lines(result.precision),
        f"wrote {result.onnx_path}" + (f"  (weights in {Path(result.data_path).name})" if result.data_path else ""),
        f"wrote {result.cache_path}  ({result.cache_entries} tensors)",
        f"wrote {result.ranges_path}",
        f"wrote {record}  (trtq report {record.parent})",
        "build the engine on the target:",
        *(f"  # {label}\n  {command}" for label, command in result.commands.items()),
    ]
    emit(args, {**result.to_dict(), "record": str(record)}, "\n".join(lines))
    return 0


REPORT_HISTOGRAMS = 6
"""Tensors whose calibration histograms go into the report: those the chosen ranges clip most."""


def _record_quantize(args: argparse.Namespace, result: api.QuantizeResult) -> Path:
    """Save the run for `trtq report`, with histograms of the most clipped tensors."""
    histograms = {}
    if result.calibration is not None:
        stats, amax = result.calibration.stats, result.calibration.ranges.amax
        clipped = sorted((amax[t] / stats[t].amax, t) for t in amax if t in stats and stats[t].amax > 0
                         and stats[t].has_histogram)
        histograms = {t: histogram_summary(stats[t], amax[t], result.method) for _, t in clipped[:REPORT_HISTOGRAMS]}
    return write_record(Path(result.onnx_path).parent, "quantize", settings=run_settings(args), result=result.to_dict(),
                        histograms=histograms)


def run_settings(args: argparse.Namespace) -> dict:
    """The options a run was given, for its report record: set values only, no CLI plumbing."""
    plumbing = {"func", "json", "quiet", "command"}
    return {k: v for k, v in vars(args).items() if k not in plumbing and v not in (None, [], "", False)}


def _mixed_lines(mixed: dict | None) -> list[str]:
    if not mixed:
        return []
    lines = [f"  target {mixed['target']}: INT8 {mixed['int8_metric']:.4g} -> {mixed['final_metric']:.4g} "
             f"with {len(mixed['excluded'])} layers kept out of INT8 ({mixed['evaluations']} evaluations)"]
    scored = (mixed.get("reference") or {}).get("scored_against")
    if scored:
        lines.append(f"    {scored['sentence']}")
        if scored.get("warning"):
            lines.append(f"    warning: {scored['warning']}")
    lines += [f"    kept out: {layer['node']}" for layer in mixed["excluded"]]
    if mixed["exclude_nodes"]:
        lines.append("    reuse: " + " ".join(f"--exclude-nodes '{p}'" for p in mixed["exclude_nodes"]))
    return lines


def _precision_lines(precision: dict | None) -> list[str]:
    if not precision:
        return []
    kept = precision["kept_fp32"]
    return [f"  {precision['mode']}: {precision['fp16_nodes']} nodes in FP16, {len(kept)} kept in FP32"
            + (" (" + ", ".join(f"{k['node']}: {k['reason']}" for k in kept[:3]) + (", ..." if len(kept) > 3 else "") + ")"
               if kept else "")]


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare FP32 and quantized outputs (and the task metric) on held-out data."""
    report = api.compare(args.reference, args.candidate, args.data, data=data_options(args),
                         task=task_options(args), batch_size=args.batch_size, progress=show_progress(args))
    directory = Path(args.output_dir) if args.output_dir else Path(args.candidate).parent
    record = write_record(directory, "compare", settings=run_settings(args), result=report.to_dict())
    header = f"{'output':<24} {'SNR dB':>8} {'worst dB':>9} {'cosine':>8} {'max abs':>10} {'mean abs':>10} {'top-1 agree':>12}"
    parts = report.task.candidate.parts if report.task is not None else ()
    rows = [
        f"{o.name:<24} {_fmt(o.snr_db):>8} {_fmt(o.worst_sample_snr_db):>9} {_fmt(o.cosine, 5):>8} "
        f"{_fmt(o.max_abs_error, 4):>10} {_fmt(o.mean_abs_error, 5):>10} "
        f"{(_fmt(100 * o.top1_agreement, 1) + '%') if o.top1_agreement is not None else '-':>12}"
        for o in (*report.outputs, *parts)
    ]
    lines = [*report.shape_notes, f"{report.candidate} vs {report.reference} on {report.samples} samples ({report.data})",
             header, *rows]
    if parts:
        lines.append("  (" + " and ".join(p.name for p in parts) + ": the YOLO head's box values and its scores, "
                     "measured apart)")
    if report.task is not None:
        lines.append(f"{report.notes[0]}:")  # the task's own description says what it is measured against
        scored = report.task.scored_against
        if scored is not None:
            lines.append(f"  {scored.sentence()}")
        for key, value in report.task.candidate.values.items():
            ref = report.task.reference.values.get(key, math.nan)
            lines.append(f"  {key:<6} FP32 {ref:7.2f}   quantized {value:7.2f}   drop {ref - value:+.2f} points")
        if scored is not None and scored.warning:
            lines.append(f"warning: {scored.warning}")
    lines.append(f"wrote {record}")
    emit(args, {**report.to_dict(), "record": str(record)}, "\n".join(lines))
    return 0
