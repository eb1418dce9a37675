"""`trtq sensitivity` and `trtq report`, plus the task/target options other commands share.

Argument parsing and printing only: the work is in trtq.evaluate and trtq.report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trtq import api
from trtq._format import fmt
from trtq.cli.options import (
    add_calibration_options,
    add_data_options,
    add_mask_options,
    add_precision_option,
    add_smooth_option,
    add_task_options,
    calibration_options,
    data_options,
    given,
    non_negative_int,
    positive_int,
    refuse,
    task_options,
)
from trtq.cli.output import add_output_options, emit, show_progress
from trtq.evaluate.mixed import node_pattern
from trtq.evaluate.sensitivity import METHODS as SENSITIVITY_METHODS
from trtq.evaluate.sensitivity import SensitivityResult
from trtq.report import RunRecord, write_report


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add sensitivity and report."""
    p = subparsers.add_parser(
        "sensitivity", help="rank layers by how much INT8 hurts when only that layer is quantized"
    )
    p.add_argument("model", help="FP32 .onnx model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--calib", metavar="DATA", help="calibration data (image folder, .npy/.npz, load_data() .py)")
    src.add_argument("--ranges", metavar="FILE", help="a ranges table (.int8.json) from trtq quantize")
    p.add_argument("--data", metavar="DATA", help="evaluation data (default: the --calib data; required with --ranges)")
    p.add_argument(
        "--method",
        choices=SENSITIVITY_METHODS,
        default="local",
        help="local: one pass, per-layer output SNR (default); exact: one evaluation per layer",
    )
    add_calibration_options(p, method_option="--calib-method", cache=False,
                            method_help="range algorithm for --calib (default: auto for int8, max for fp8)",
                            device_help="where calibration and the evaluations run: cpu (onnxruntime) or cuda[:N] "
                            "(the PyTorch executor; default: cpu)")
    add_precision_option(p)
    add_smooth_option(p)
    p.add_argument(
        "--batch-size",
        type=positive_int("--batch-size 32"),
        help=f"evaluation batch (default: the model's, or {api.DEFAULT_EVAL_BATCH} for a dynamic batch dim)",
    )
    p.add_argument("--top", type=non_negative_int("--top 20"), default=20,
                   help="layers to print (default 20; --json has all)")
    p.add_argument(
        "--output-dir", help="where trtq-sensitivity.json goes for `trtq report` (default: beside the model)"
    )
    add_task_options(p)
    add_data_options(p)
    add_mask_options(p)
    add_output_options(p)
    p.set_defaults(func=cmd_sensitivity)

    p = subparsers.add_parser("report", help="HTML + Markdown report of the quantize/compare/sensitivity runs in DIR")
    p.add_argument("directory", metavar="DIR", help="the --output-dir of earlier runs")
    p.add_argument("--output", metavar="DIR", help="where to write trtq-report.html/.md (default: DIR)")
    add_output_options(p)
    p.set_defaults(func=cmd_report)


def cmd_sensitivity(args: argparse.Namespace) -> int:
    """Rank layers by sensitivity, save a record for the report, print the ranking."""
    if args.ranges:
        extra = given(args, "calib_method", "percentile")
        refuse(extra, "with --calib (the ranges it computes); --ranges gives them already",
               f"drop {' '.join(extra)}, or calibrate again with --calib DATA.")
    calibration = calibration_options(args, method_option="--calib-method")
    exclude_ops = calibration["exclude_ops"]
    options = api.QuantizeOptions(**calibration, precision=args.precision, smooth=args.smooth,
                                  equalize=args.equalize)
    settings = {
        "model": str(args.model),
        "method": args.method,
        "data": str(args.data or args.calib),
        "ranges": args.ranges or f"calibrated with {options.method} on {args.calib}",
        "task": args.task,
        "exclude_nodes": list(args.exclude_nodes),
        "exclude_ops": list(exclude_ops),
        "precision": args.precision,
        "residual_qdq": args.residual_qdq,
        "smooth": args.smooth,
        "equalize": args.equalize,
    }
    run = api.sensitivity(
        args.model, calib=args.calib, ranges=args.ranges, data_source=args.data, data=data_options(args),
        options=options, method=args.method, task=task_options(args), batch_size=args.batch_size,
        progress=show_progress(args), record=RunRecord(settings, directory=args.output_dir),
    )
    result = run.result
    record = Path(run.record_path or "")
    text = "\n".join([*run.shape_notes, *(f"note: {note}" for note in run.notes),
                      _sensitivity_text(result, args.top, record)])
    if run.sensitive_layers and "tensorrt-10-implicit" in run.commands:
        text += (f"\n{len(run.sensitive_layers)} layers are below {api.SENSITIVE_DB:g} dB; on TensorRT 10 (implicit INT8, "
                 f"after `trtq quantize` wrote the cache) keep them in FP16 with:\n  {run.commands['tensorrt-10-implicit']}")
    elif run.sensitive_layers:
        patterns = " ".join(f"--exclude-nodes '{node_pattern(n)}'" for n in run.sensitive_layers)
        text += (f"\n{len(run.sensitive_layers)} layers are below {api.SENSITIVE_DB:g} dB; keep them out of "
                 f"{args.precision.upper()} with:\n  trtq quantize {args.model} --precision {args.precision}"
                 f"{smooth_flag(args.smooth)}{'' if args.equalize else ' --no-equalize'}"
                 f"{' --residual-qdq' if args.residual_qdq else ''} {patterns}")
    payload = {**result.to_dict(), "record": str(record), "sensitive_layers": list(run.sensitive_layers),
               "commands": run.commands, "shape_notes": list(run.shape_notes), "notes": list(run.notes)}
    emit(args, payload, text)
    return 0


def smooth_flag(smooth: float | str | None) -> str:
    """The --smooth option that reproduces `smooth` on a command line (with a leading space), or ""."""
    if smooth is None:
        return ""
    return " --smooth" if smooth == "auto" else f" --smooth {float(smooth):g}"


def _sensitivity_text(result: SensitivityResult, top: int, record: Path) -> str:
    drop = f" {result.task_metric + ' drop':>10}" if result.task_metric else ""
    lines = [
        f"{result.method} sensitivity of {len(result.layers)} layers on {result.samples} samples "
        f"in {result.seconds:.1f} s (lower SNR = more sensitive)",
        f"{'rank':>4} {'SNR dB':>8}{drop}  {'op':<18} layer",
    ]
    if result.mask is not None:
        lines.insert(1, result.mask.sentence())
    lines[1:1] = [f"note: {note}" for note in result.mask_notes]
    for i, layer in enumerate(result.layers[:top]):
        extra = f" {fmt(layer.task_drop):>10}" if result.task_metric else ""
        lines.append(f"{i + 1:>4} {fmt(layer.snr_db):>8}{extra}  {layer.op_type:<18} {layer.node}")
    if len(result.layers) > top:
        lines.append(f"  ... {len(result.layers) - top} more (--top N or --json)")
    if result.scored_against is not None:
        lines.append(f"{result.task_metric} drops {result.scored_against.sentence()}")
        if result.scored_against.warning:
            lines.append(f"warning: {result.scored_against.warning}")
    lines.append(f"wrote {record}  (trtq report {record.parent})")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    """Write the HTML and Markdown report."""
    html_path, md_path = write_report(args.directory, args.output)
    emit(args, {"html": str(html_path), "markdown": str(md_path)}, f"wrote {html_path}\nwrote {md_path}")
    return 0
