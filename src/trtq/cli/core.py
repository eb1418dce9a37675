"""`trtq inspect`, `trtq quantize`, `trtq compare`: argument parsing and printing only."""

from __future__ import annotations

import argparse
import math
from collections import Counter
from pathlib import Path

from trtq import api
from trtq._format import fmt
from trtq.cli.options import (
    add_calibration_options,
    add_data_options,
    add_mask_options,
    add_precision_option,
    add_smooth_option,
    add_target_options,
    add_task_options,
    calibration_options,
    data_options,
    given,
    positive_int,
    refuse,
    task_options,
)
from trtq.cli.output import add_output_options, emit, show_progress
from trtq.evaluate.mixed import MixedPrecisionResult
from trtq.quantize.precision import PrecisionResult
from trtq.quantize.smooth import SmoothResult
from trtq.quantize.weights import WeightRangesSummary
from trtq.report import RunRecord
from trtq.tensorrt.runner import ENGINE_SUFFIXES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add inspect, quantize and compare."""
    p = subparsers.add_parser("inspect", help="inputs/outputs, dynamic dims, opset, op counts, quantizable layers "
                              "(of an .onnx model or a TensorRT .engine)")
    p.add_argument("model", help="an .onnx model, or a TensorRT engine (.engine/.plan)")
    add_output_options(p)
    p.set_defaults(func=cmd_inspect)

    p = subparsers.add_parser("quantize", help="calibrate and write <stem>.int8.onnx (Q/DQ), .int8.cache, .int8.json "
                              "(with --precision fp8: <stem>.fp8.onnx and .fp8.json)")
    p.add_argument("model", help="FP32 .onnx model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--calib", metavar="DATA", help="image folder, .npy/.npz, or a .py file defining load_data()")
    src.add_argument("--ranges", metavar="FILE", help="a ranges table (.int8.json) from an earlier run: skip calibration")
    add_calibration_options(
        p, method_help="range algorithm (default for int8: auto, per tensor the candidate range that does least harm, "
        "checked end to end; entropy is TensorRT's EntropyCalibration2; default for fp8: max)",
        device_help="where calibration and the --target evaluations run: cpu (onnxruntime) or cuda[:N] "
        "(the PyTorch executor; default: cpu)")
    add_precision_option(p)
    add_smooth_option(p)
    p.add_argument("--weight-ranges", choices=("max", "mse"), default=None,
                   help="per-channel weight ranges: max |w|, or mse (FP8 only, its default): the amax that gives the "
                   "layer's output least error on calibration rows, with bias correction")
    p.add_argument("--cache-scope", choices=("qdq", "all"), default="qdq",
                   help="calibration-cache lines for the tensors around the INT8 layers of the Q/DQ placement "
                   "(qdq, default) or for every activation, as TensorRT's calibrator writes (all; slower)")
    p.add_argument("--output-dir", help="where to write (default: beside the model)")
    p.add_argument("--external-data", action=argparse.BooleanOptionalAction, default=None,
                   help="store the weights in <stem>.int8.onnx.data beside the model (default: only when they "
                   "exceed protobuf's 2 GB limit)")
    add_target_options(p)
    add_task_options(p)
    add_data_options(p)
    add_mask_options(p)
    add_output_options(p)
    p.set_defaults(func=cmd_quantize)

    p = subparsers.add_parser("compare", help="FP32 vs quantized on the same samples: SNR, cosine, errors, top-1")
    p.add_argument("reference", help="FP32 .onnx model")
    p.add_argument("candidate", help="quantized .onnx model (e.g. <stem>.int8.onnx)")
    p.add_argument("--data", required=True, metavar="DATA", help="held-out samples (same forms as --calib)")
    p.add_argument("--batch-size", type=positive_int("--batch-size 32"),
                   help="evaluation batch for a dynamic batch dim (default 32)")
    p.add_argument("--device", default="cpu",
                   help="where both models run: cpu (onnxruntime) or cuda[:N] (the PyTorch executor; default: cpu)")
    p.add_argument("--output-dir", help="where the run record for `trtq report` goes (default: beside the candidate)")
    add_task_options(p)
    add_data_options(p)
    add_mask_options(p)
    add_output_options(p)
    p.set_defaults(func=cmd_compare)


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print a model's (or an engine's) summary."""
    if Path(args.model).suffix.lower() in ENGINE_SUFFIXES:
        from trtq.tensorrt import inspect_engine

        engine = inspect_engine(args.model)
        emit(args, engine.to_dict(), engine.to_text())
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
    calibration = calibration_options(args)
    check_quantize_args(args)
    options = api.QuantizeOptions(
        **calibration,
        output_dir=args.output_dir,
        cache_scope=args.cache_scope,
        target=args.target,
        target_data=args.target_data,
        ranking=args.ranking or "local",
        high_precision=args.high_precision,
        task=task_options(args),
        external_data=args.external_data,
        precision=args.precision,
        smooth=args.smooth,
        equalize=args.equalize,
        weight_ranges=args.weight_ranges,
    )
    result = api.quantize(args.model, calib=args.calib, ranges=args.ranges, data=data_options(args),
                          options=options, progress=show_progress(args), record=RunRecord(run_settings(args)))
    record = Path(result.record_path or "")
    timing = f" in {result.calibration_seconds:.1f} s" if result.calibration_seconds is not None else " (from saved ranges)"
    lines = [
        *result.shape_notes,
        f"calibrated {result.samples} samples with {result.method}{timing}",
        *(f"  note: {note}" for note in result.notes),
        *_choice_lines(result),
        f"  {result.qdq_pairs} {'FP8 E4M3 ' if result.quant_type == 'fp8' else ''}Q/DQ pairs "
        f"({result.quantized_activations} activations, {result.quantized_weights} weights per channel)"
        + (f"; {len(result.excluded_nodes)} nodes kept in high precision" if result.excluded_nodes else ""),
        *smoothing_lines(result.smoothing),
        *weight_lines(result.weight_ranges),
        *_mixed_lines(result.mixed),
        *_precision_lines(result.precision),
        f"wrote {result.onnx_path}" + (f"  (weights in {Path(result.data_path).name})" if result.data_path else ""),
        *([f"wrote {result.cache_path}  ({result.cache_entries} tensors)"] if result.cache_path else []),
        *([(f"wrote {result.smoothed_path}  (the smoothed FP32 model: the implicit TensorRT 10 build reads it with "
            "the cache)")] if result.smoothed_path else []),
        f"wrote {result.ranges_path}",
        f"wrote {record}  (trtq report {record.parent})",
        "build the engine on the target:",
        *(f"  # {label}\n  {command}" for label, command in result.commands.items()),
    ]
    emit(args, {**result.to_dict(), "record": str(record)}, "\n".join(lines))
    return 0


def check_quantize_args(args: argparse.Namespace) -> None:
    """Refuse options this quantize run would accept and then ignore."""
    if not args.target:
        extra = given(args, "target_data", "ranking", "task", "mask_input", "no_mask")
        refuse(extra, "with --target (the accuracy target they check)",
               f"add --target, e.g. --target \"snr>=30\", or drop {' '.join(extra)}.")
    if args.precision == "fp8":
        extra = given(args, "trt_version") + (["--cache-scope all"] if args.cache_scope == "all" else [])
        refuse(extra, "to the calibration cache, which --precision fp8 does not write (TensorRT calibrates INT8 only)",
               f"drop {' '.join(extra)}.")


def run_settings(args: argparse.Namespace) -> dict:
    """The options a run was given, for its report record: set values only, no CLI plumbing."""
    plumbing = {"func", "json", "quiet", "command"}
    return {k: v for k, v in vars(args).items() if k not in plumbing and v not in (None, [], "", False)}


def weight_lines(weights: WeightRangesSummary | None) -> list[str]:
    """One line on --weight-ranges mse: how many weights, what they gained, how many biases took the correction."""
    if weights is None:
        return []
    return [f"  weight ranges: {weights.layers} layers chosen by output error (mean gain {weights.mean_gain_db:.2f} "
            f"dB on the layers' output error), {weights.bias_corrected} biases corrected"]


def smoothing_lines(smoothing: SmoothResult | None) -> list[str]:
    """What --smooth and the depthwise equalization did, in two or three lines."""
    if smoothing is None:
        return []
    tensors = [t for t in smoothing.tensors if not t.depthwise]
    alphas = Counter(t.alpha for t in tensors)
    how = ("alpha per input: " + ", ".join(f"{a:g} x{n}" for a, n in sorted(alphas.items()))
           if smoothing.alpha is None else f"alpha {smoothing.alpha:g}")
    left = (f"; {len(smoothing.left_alone)} left alone (smoothing gained less than 1.25 dB there)"
            if smoothing.left_alone else "")
    checked = (f"FP32 outputs within {smoothing.deviation:.2g} of their range of the original on "
               f"{smoothing.checked_samples} samples (allowed {smoothing.tolerance:.2g})"
               if smoothing.checked_samples else "not re-checked against the original (no data)")
    lines = [(f"  smoothed {len(tensors)} MatMul inputs ({how}; {smoothing.folded_into_layernorm} folded into "
              f"LayerNorms, {smoothing.mul_nodes - smoothing.equalized} by a Mul){left}")] if smoothing.requested else []
    if smoothing.equalized:
        lines.append(f"  equalized {smoothing.equalized} depthwise convolution inputs (each channel scaled to the "
                     "largest by a Mul, the filters by the inverse; --no-equalize leaves them)")
    return [*lines, f"    {checked}"]


CLIPPED_SHOWN = 3
"""Tensors named under "most clipped" in quantize's output (all are in --json and the ranges file)."""


def _choice_lines(result: api.QuantizeResult) -> list[str]:
    """How --method auto chose: the table kept and why, the count per winning candidate, the most clipped tensors."""
    choices = result.choices
    if not choices or result.range_table is None:
        return []
    scores = result.table_scores
    ranked = ", ".join(f"{name} {fmt(scores[name], 2)}" for name in sorted(scores, key=lambda n: -scores[n]))
    samples = result.range_samples
    where = f"every calibration sample ({samples})" if result.range_checked_on == "every sample" \
        else f"{samples} calibration samples"
    lines = [f"  ranges: {result.range_table} table kept; output SNR dB on {where}: {ranked}"]
    counts = Counter(c.method for c in choices.values())
    lines.append("    per tensor: " + ", ".join(f"{m} {n}" for m, n in counts.most_common()))
    clipped = sorted((c.amax_over_max, name) for name, c in choices.items() if c.amax_over_max < 1.0)
    for ratio, name in clipped[:CLIPPED_SHOWN]:
        c = choices[name]
        shared = f", the range of {c.shared_with}" if c.shared_with else ""
        lines.append(f"    {name}: {ratio:.2f} of max ({c.method}{shared}, {100 * c.clipped:.2g}% of values clipped)")
    return lines


def _mixed_lines(mixed: MixedPrecisionResult | None) -> list[str]:
    if mixed is None:
        return []
    seen = "" if mixed.int8.samples == mixed.final.samples else f" on {mixed.int8.samples} samples"
    lines = [f"  target {mixed.target}: INT8 {fmt(mixed.int8_metric, 4, spec='g')}{seen} -> "
             f"{fmt(mixed.final_metric, 4, spec='g')} with {len(mixed.excluded)} layers kept out of INT8 "
             f"({len(mixed.steps)} evaluations, {mixed.full_evaluations:g} passes over the data, "
             f"{mixed.seconds:.1f} s: "
             + ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in mixed.phase_seconds) + ")"]
    if mixed.measured_on != "the Q/DQ model":
        lines.append(f"    measured on {mixed.measured_on}")
    if mixed.all_excluded:
        lines.append("    warning: the target holds only with every quantizable layer kept out of INT8, so the written "
                     "model runs nothing in INT8; relax the target to keep some INT8")
    if mixed.mask is not None:
        lines.append(f"    {mixed.mask.sentence()}")
    scored = mixed.reference.scored_against if mixed.reference is not None else None
    if scored is not None:
        lines.append(f"    {scored.sentence()}")
        if scored.warning:
            lines.append(f"    warning: {scored.warning}")
    lines += [f"    kept out: {layer.node}" for layer in mixed.excluded]
    if mixed.exclude_nodes:
        lines.append("    reuse: " + " ".join(f"--exclude-nodes '{p}'" for p in mixed.exclude_nodes))
    return lines


def _precision_lines(precision: PrecisionResult | None) -> list[str]:
    if precision is None:
        return []
    kept = precision.kept_fp32
    return [f"  {precision.mode}: {len(precision.fp16_nodes)} nodes in FP16, {len(kept)} kept in FP32"
            + (" (" + ", ".join(f"{k.node}: {k.reason}" for k in kept[:3]) + (", ..." if len(kept) > 3 else "") + ")"
               if kept else "")]


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare FP32 and quantized outputs (and the task metric) on held-out data."""
    run_record = RunRecord(run_settings(args), directory=args.output_dir)
    report = api.compare(args.reference, args.candidate, args.data, data=data_options(args),
                         task=task_options(args), batch_size=args.batch_size, device=args.device,
                         progress=show_progress(args), record=run_record)
    record = run_record.path("compare", args.candidate)
    parts = report.task.candidate.parts if report.task is not None else ()
    rows = (*report.outputs, *parts)
    top1 = any(o.top1_agreement is not None for o in rows)  # the column only where some output holds class scores
    header = f"{'output':<24} {'SNR dB':>8} {'worst dB':>9} {'cosine':>8} {'max abs':>10} {'mean abs':>10}"
    header += f" {'top-1 agree':>12}" if top1 else ""
    lines = [*report.shape_notes, f"{report.candidate} vs {report.reference} on {report.samples} samples ({report.data})",
             *([report.mask.sentence()] if report.mask else []), *(f"note: {note}" for note in report.mask_notes), header]
    for o in rows:
        line = (f"{o.name:<24} {fmt(o.snr_db):>8} {fmt(o.worst_sample_snr_db):>9} {fmt(o.cosine, 5):>8} "
                f"{fmt(o.max_abs_error, 4):>10} {fmt(o.mean_abs_error, 5):>10}")
        if top1:
            line += f" {fmt(o.top1_agreement, 1, scale=100.0, suffix='%'):>12}"
        lines.append(line)
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
            lines.append(f"  {key:<6} FP32 {fmt(ref):>7}   quantized {fmt(value):>7}   drop {fmt(ref - value, signed=True)} "
                         "points")
        if scored is not None and scored.warning:
            lines.append(f"warning: {scored.warning}")
    lines.append(f"wrote {record}")
    emit(args, {**report.to_dict(), "record": str(record)}, "\n".join(lines))
    return 0
