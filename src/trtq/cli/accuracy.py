"""`trtq sensitivity` and `trtq report`, plus the task/target options other commands share.

Argument parsing and printing only: the work is in trtq.evaluate and trtq.report.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import onnx

from trtq import api
from trtq.calibrate.algorithms import METHODS as CALIBRATION_METHODS
from trtq.cli.core import add_data_options, data_options
from trtq.cli.output import add_output_options, emit, show_progress
from trtq.data import Dataset
from trtq.errors import TrtqError
from trtq.evaluate.sensitivity import METHODS as SENSITIVITY_METHODS
from trtq.evaluate.sensitivity import SensitivityResult, analyze_sensitivity
from trtq.evaluate.tasks import TASKS, Task, TaskComparison, make_task
from trtq.formats.ranges import RangesTable
from trtq.model import graph_inputs, graph_outputs
from trtq.quantize.precision import MODES as PRECISION_MODES
from trtq.report import histogram_summary, write_record, write_report

DEFAULT_EVAL_BATCH = 32
"""Evaluation batch for models with a dynamic batch dim (results do not depend on it)."""
HISTOGRAM_TENSORS = 6


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
    p.add_argument("--calib-method", choices=CALIBRATION_METHODS, default="entropy", help="range algorithm for --calib")
    p.add_argument("--exclude-nodes", action="append", default=[], metavar="REGEX", help="layers to leave out")
    p.add_argument("--exclude-ops", default="", metavar="OPS", help="comma-separated op types to leave out")
    p.add_argument(
        "--batch-size",
        type=int,
        help=f"evaluation batch (default: the model's, or {DEFAULT_EVAL_BATCH} for a dynamic batch dim)",
    )
    p.add_argument("--top", type=int, default=20, help="layers to print (default 20; --json has all)")
    p.add_argument(
        "--output-dir", help="where trtq-sensitivity.json goes for `trtq report` (default: beside the model)"
    )
    add_task_options(p)
    add_data_options(p)
    add_output_options(p)
    p.set_defaults(func=cmd_sensitivity)

    p = subparsers.add_parser("report", help="HTML + Markdown report of the quantize/compare/sensitivity runs in DIR")
    p.add_argument("directory", metavar="DIR", help="the --output-dir of earlier runs")
    p.add_argument("--output", metavar="DIR", help="where to write trtq-report.html/.md (default: DIR)")
    add_output_options(p)
    p.set_defaults(func=cmd_report)


def add_task_options(p: argparse.ArgumentParser) -> None:
    """--task and its labels/annotations (for compare, sensitivity and quantize --target)."""
    g = p.add_argument_group("task metric")
    g.add_argument("--task", choices=TASKS, help="classify: top-1/top-5; detect: COCO mAP")
    g.add_argument(
        "--labels",
        metavar="DIR_OR_FILE",
        help="class labels: a folder with class sub-folders, a .txt/.csv "
        "(index or name per line, or file,label), or a .npy (default: the data's class sub-folders)",
    )
    g.add_argument("--coco", metavar="JSON", help="COCO annotations for --task detect (default: FP32 detections)")
    g.add_argument(
        "--postprocess",
        metavar="PRESET_OR_PY",
        default="yolo",
        help="detection postprocess: yolo, yolov5, yolov8, torchvision/retinanet, or a .py defining "
        "postprocess(outputs, images) (default: yolo)",
    )
    g.add_argument("--task-output", metavar="NAME", help="the output holding class scores (default: the [N, C] one)")


def add_target_options(p: argparse.ArgumentParser) -> None:
    """--target, --target-data, --ranking and --high-precision (for quantize)."""
    g = p.add_argument_group("accuracy target and precision")
    g.add_argument(
        "--target",
        metavar="METRIC<=|>=VALUE",
        help="keep the most sensitive layers out of INT8 until this "
        'holds: "top1-drop<=0.5", "top5-drop<=0.2", "map-drop<=1.0", "snr>=30", "cosine>=0.999"',
    )
    g.add_argument("--target-data", metavar="DATA", help="held-out data the target is checked on (default: --calib)")
    g.add_argument(
        "--ranking",
        choices=SENSITIVITY_METHODS,
        default="local",
        help="sensitivity ranking the --target search follows (default: local)",
    )
    g.add_argument(
        "--high-precision",
        choices=PRECISION_MODES,
        default="fp32",
        help="precision of what is not INT8: fp16 converts it inside the ONNX, keeping FP32 where ranges "
        "overflow or score heads need it (default: fp32)",
    )


def task_lines(comparison: TaskComparison | None, description: str = "") -> list[str]:
    """Printable lines for a task comparison (what `trtq compare --task` adds to its table)."""
    if comparison is None:
        return []
    against = "labels" if comparison.reference.against == "labels" else "FP32 outputs (agreement, no labels)"
    lines = [f"{description or comparison.reference.task} (against {against}):"]
    for key, value in comparison.candidate.values.items():
        ref = comparison.reference.values.get(key, math.nan)
        lines.append(f"  {key:<6} FP32 {ref:7.2f}   candidate {value:7.2f}   drop {ref - value:+.2f} points")
    return lines


def record_run(
    directory: str | Path,
    kind: str,
    settings: dict,
    result: dict,
    stats: dict | None = None,
    amax: dict | None = None,
    method: str = "",
    tensors: list[str] | tuple[str, ...] = (),
) -> Path:
    """Save a run record for `trtq report` (quantize/compare/sensitivity), with histograms of `tensors`."""
    histograms = {}
    for tensor in tensors:
        if stats and amax and tensor in stats and tensor in amax and stats[tensor].has_histogram:
            histograms[tensor] = histogram_summary(stats[tensor], amax[tensor], method)
        if len(histograms) >= HISTOGRAM_TENSORS:
            break
    return write_record(directory, kind, settings=settings, result=result, histograms=histograms)


def task_from_args(args: argparse.Namespace, model: onnx.ModelProto, dataset: Dataset) -> Task | None:
    """The task the options ask for, bound to `dataset` (None without --task)."""
    if not getattr(args, "task", None):
        return None
    return make_task(
        args.task,
        dataset,
        graph_outputs(model),
        labels=args.labels,
        output=args.task_output,
        coco=args.coco,
        postprocess=args.postprocess,
    )


def eval_batch_size(model: onnx.ModelProto, dataset: Dataset, requested: int | None) -> int:
    """The model's fixed batch, else `requested` or DEFAULT_EVAL_BATCH, at most the number of samples."""
    inputs = graph_inputs(model)
    first = inputs[0].shape[0] if inputs and inputs[0].shape else 1
    if isinstance(first, int) and first > 0:
        return first
    size = requested or DEFAULT_EVAL_BATCH
    return max(1, min(size, dataset.num_samples or size))


def cmd_sensitivity(args: argparse.Namespace) -> int:
    """Rank layers by sensitivity, save a record for the report, print the ranking."""
    data = data_options(args)
    exclude_ops = tuple(op for op in args.exclude_ops.split(",") if op)
    prepared = api.prepare_model(args.model, tuple(args.exclude_nodes), exclude_ops)
    progress = show_progress(args)
    stats = {}
    if args.ranges:
        table = RangesTable.load(args.ranges)
    else:
        options = api.QuantizeOptions(
            method=args.calib_method, exclude_nodes=tuple(args.exclude_nodes), exclude_ops=exclude_ops
        )
        calibration = api.calibrate(args.model, args.calib, data=data, options=options, progress=progress)
        table, stats = calibration.ranges, calibration.stats
    source = args.data or args.calib
    if source is None:
        raise TrtqError("sensitivity with --ranges needs --data DATA to evaluate on.", "pass --data DATA.")
    dataset = api.open_data(prepared.model, source, data)
    result = analyze_sensitivity(
        prepared.model,
        prepared.placement,
        table.amax,
        dataset,
        method=args.method,
        task=task_from_args(args, prepared.model, dataset),
        batch_size=eval_batch_size(prepared.model, dataset, args.batch_size),
        progress=progress,
    )
    directory = Path(args.output_dir) if args.output_dir else Path(args.model).parent
    settings = {
        "model": str(args.model),
        "method": args.method,
        "data": str(source),
        "ranges": args.ranges or f"calibrated with {args.calib_method} on {args.calib}",
        "task": args.task,
        "exclude_nodes": list(args.exclude_nodes),
        "exclude_ops": list(exclude_ops),
    }
    tensors = [t for layer in result.layers for t in layer.tensors if t in stats]
    record = record_run(directory, "sensitivity", settings, result.to_dict(), stats, table.amax, table.method, tensors)
    emit(args, {**result.to_dict(), "record": str(record)}, _sensitivity_text(result, args.top, record))
    return 0


def _sensitivity_text(result: SensitivityResult, top: int, record: Path) -> str:
    def fmt(v: float | None, digits: int = 2) -> str:
        if v is None:
            return "-"
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else f"{v:.{digits}f}"

    drop = f" {result.task_metric + ' drop':>10}" if result.task_metric else ""
    lines = [
        f"{result.method} sensitivity of {len(result.layers)} layers on {result.samples} samples "
        f"in {result.seconds:.1f} s (lower SNR = more sensitive)",
        f"{'rank':>4} {'SNR dB':>8}{drop}  {'op':<18} layer",
    ]
    for i, layer in enumerate(result.layers[:top]):
        extra = f" {fmt(layer.task_drop):>10}" if result.task_metric else ""
        lines.append(f"{i + 1:>4} {fmt(layer.snr_db):>8}{extra}  {layer.op_type:<18} {layer.node}")
    if len(result.layers) > top:
        lines.append(f"  ... {len(result.layers) - top} more (--top N or --json)")
    lines.append(f"wrote {record}  (trtq report {record.parent})")
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    """Write the HTML and Markdown report."""
    html_path, md_path = write_report(args.directory, args.output)
    emit(args, {"html": str(html_path), "markdown": str(md_path)}, f"wrote {html_path}\nwrote {md_path}")
    return 0
