"""Option groups several subcommands share: data/preprocessing, task metric, accuracy target."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from trtq import api
from trtq.calibrate.algorithms import METHODS
from trtq.errors import TrtqError
from trtq.evaluate.sensitivity import METHODS as SENSITIVITY_METHODS
from trtq.evaluate.tasks import TASKS
from trtq.formats.cache import DEFAULT_TRT_VERSION
from trtq.model import parse_shapes
from trtq.quantize.precision import MODES as PRECISION_MODES

FIX = " Fix: "
"""Separates an argparse error's sentence from its fix (the CLI's parser prints them as trtq's errors)."""


def _number(kind: Callable[[str], float], test: Callable[[float], bool], expected: str, example: str) -> Callable[[str], float]:
    """An argparse `type` that reads a `kind` number and checks it; errors say what was expected."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not test(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}.{FIX}give e.g. {example}.")
        return value

    parse.__name__ = expected  # argparse names the type in some messages
    return parse


def _fraction(text: str) -> float:
    """A number written as a decimal or a fraction (1/255)."""
    try:
        return float(Fraction(text.strip()))
    except ZeroDivisionError as exc:
        raise ValueError(text) from exc


def positive_int(example: str) -> Callable[[str], float]:
    """A whole number >= 1 (counts, batch sizes, steps)."""
    return _number(int, lambda v: v >= 1, "a whole number >= 1", example)


def non_negative_int(example: str) -> Callable[[str], float]:
    """A whole number >= 0."""
    return _number(int, lambda v: v >= 0, "a whole number >= 0", example)


def positive_float(example: str) -> Callable[[str], float]:
    """A finite number > 0 (durations, learning rates)."""
    return _number(float, lambda v: v > 0, "a finite number > 0", example)


def non_negative_float(example: str) -> Callable[[str], float]:
    """A finite number >= 0."""
    return _number(float, lambda v: v >= 0, "a finite number >= 0", example)


percentile = _number(float, lambda v: 0 < v <= 100, "a percentile in (0, 100]", "--percentile 99.99")
"""--percentile: the share of |x| values the range keeps, in percent."""

confidence = _number(float, lambda v: 0 < v <= 1, "a confidence in (0, 1]", "--ref-conf 0.25")
"""--ref-conf: a detection score threshold."""


def require_method_for_percentile(args: argparse.Namespace, method_option: str = "--method") -> None:
    """--percentile applies to the percentile method only: refuse it with another one."""
    method = getattr(args, method_option.lstrip("-").replace("-", "_"))
    if args.percentile is not None and method != "percentile":
        raise TrtqError(
            f"--percentile {args.percentile:g} applies only to {method_option} percentile, but the method is "
            f"{method or 'the default'}.",
            f"add {method_option} percentile, or drop --percentile.",
        )


def add_calibration_options(p: argparse.ArgumentParser, *, method_help: str, device_help: str,
                            method_option: str = "--method", cache: bool = True) -> None:
    """The flags of `trtq.api.CalibrationOptions`, for every command that calibrates (quantize,
    sensitivity, finetune): the range algorithm (`method_option`, as sensitivity's own --method is
    its ranking), --percentile, --exclude-nodes, --exclude-ops, --residual-qdq, --trt-version (with
    `cache`: where a calibration cache is written) and --device. A new calibration option is added
    here and in `calibration_options`."""
    p.add_argument(method_option, choices=METHODS, help=method_help)
    p.add_argument("--percentile", type=percentile, help=f"for {method_option} percentile: the share of values the "
                   "range keeps, in (0, 100] (default: 99.99)")
    p.add_argument("--exclude-nodes", action="append", default=[], metavar="REGEX",
                   help="keep nodes whose name matches in high precision (repeatable)")
    p.add_argument("--exclude-ops", default="", metavar="OPS", help="comma-separated op types to keep in high "
                   "precision, e.g. Sigmoid,Softmax")
    p.add_argument("--judge-layers", action="store_true",
                   help=f"with {method_option} auto: also judge each tensor's candidate ranges on the layers that read "
                   "it (EasyQuant/AIMET-style local search) and check that per-tensor table end to end with the "
                   "whole-model tables (a forward pass more per candidate; see the README)")
    p.add_argument("--residual-qdq", action="store_true",
                   help="also put Q/DQ on both inputs of transformer residual Adds, as NVIDIA ModelOpt does, so "
                   "TensorRT can carry the residual stream in INT8; it costs accuracy (on all-MiniLM-L6-v2, see "
                   "the README), so it is off by default")
    if cache:
        p.add_argument("--trt-version", help=f"TensorRT version the calibration cache header targets (default: "
                       f"{DEFAULT_TRT_VERSION})")
    p.add_argument("--device", default="cpu", help=device_help)


def calibration_options(args: argparse.Namespace, method_option: str = "--method") -> dict[str, Any]:
    """The `trtq.api.CalibrationOptions` fields a parsed command line sets (those it leaves unset keep
    the options class's defaults), as keyword arguments for QuantizeOptions or FinetuneOptions."""
    require_method_for_percentile(args, method_option)
    given_values = {
        "method": getattr(args, method_option.lstrip("-").replace("-", "_")),
        "percentile": args.percentile,
        "exclude_nodes": tuple(args.exclude_nodes),
        "exclude_ops": tuple(op for op in args.exclude_ops.split(",") if op),
        "judge_layers": args.judge_layers or None,
        "residual_qdq": args.residual_qdq,
        "trt_version": getattr(args, "trt_version", None),
        "device": args.device,
    }
    return {name: value for name, value in given_values.items() if value is not None}


def add_data_options(p: argparse.ArgumentParser) -> None:
    """Options that say how sample data is read and preprocessed."""
    g = p.add_argument_group("data and preprocessing")
    g.add_argument("--preset", choices=("imagenet", "yolo", "none"), help="preprocessing preset for image folders")
    g.add_argument("--shape", action="append", default=[], metavar="NAME:AxBxC",
                   help="input shape for dynamic dims, trtexec style (repeatable or comma-separated)")
    g.add_argument("--limit", type=positive_int("--limit 500"), help="use at most this many samples")
    g.add_argument("--size", metavar="HxW", help="image size (default: from the model input)")
    g.add_argument("--resize", choices=("resize", "letterbox", "center-crop"), help="how images reach --size")
    g.add_argument("--pad-value", type=_number(int, lambda v: 0 <= v <= 255, "a pixel value from 0 to 255",
                                               "--pad-value 114"), help="letterbox padding value (default 114)")
    g.add_argument("--color", choices=("RGB", "BGR", "GRAY"), help="channel order")
    g.add_argument("--scale", type=_number(_fraction, lambda v: v > 0, "a finite number > 0", "--scale 1/255"),
                   help="multiply pixels by this (default 1/255)")
    g.add_argument("--mean", help="per-channel mean after scaling, e.g. 0.485,0.456,0.406")
    g.add_argument("--std", help="per-channel std after scaling, e.g. 0.229,0.224,0.225")
    g.add_argument("--layout", choices=("NCHW", "NHWC"), help="input layout (default: from the model)")
    g.add_argument("--dtype", help="element type fed to the model (default float32; uint8 for raw-pixel inputs)")


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise TrtqError(f"{flag} {text!r} is not a comma-separated list of numbers.", f"e.g. {flag} 0.5,0.5,0.5") from exc


def data_options(args: argparse.Namespace) -> api.DataOptions:
    """Collect the data options of a parsed command line."""
    size = None
    if args.size:
        try:
            h, w = (int(v) for v in args.size.lower().split("x"))
        except ValueError as exc:
            raise TrtqError(f"--size {args.size!r} is not HxW.", "e.g. --size 640x640") from exc
        size = (h, w)
    overrides = api.PreprocessOverrides(
        size=size, resize=args.resize, pad_value=args.pad_value, color=args.color, scale=args.scale,
        mean=_floats(args.mean, "--mean") if args.mean else None, std=_floats(args.std, "--std") if args.std else None,
        layout=args.layout, dtype=args.dtype)
    return api.DataOptions(preset=args.preset, preprocess=overrides, shapes=parse_shapes(args.shape), limit=args.limit,
                           mask=mask_request(args))


def add_mask_options(p: argparse.ArgumentParser) -> None:
    """--mask-input / --no-mask: which input marks the real tokens that accuracy is scored over."""
    g = p.add_argument_group("scoring over real tokens")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--mask-input", metavar="NAME", help="the input that marks real tokens (1) and padding (0); "
                   "outputs whose leading dims are its shape are scored over real tokens only (default: detect an "
                   "integer 0/1 input shaped like the outputs' leading dims, e.g. attention_mask)")
    m.add_argument("--no-mask", action="store_true", help="score every position, padding included")


def mask_request(args: argparse.Namespace) -> bool | str:
    """The mask the options ask for: a name, False (--no-mask) or True (detect)."""
    if getattr(args, "mask_input", None):
        return str(args.mask_input)
    return not getattr(args, "no_mask", False)


def add_precision_option(p: argparse.ArgumentParser) -> None:
    """--precision: what the quantized layers run in."""
    p.add_argument("--precision", choices=api.PRECISIONS, default="int8",
                   help="int8 (default), or fp8: FP8 E4M3 Q/DQ (scale = amax / 448, opset >= 19) for Hopper, Ada and "
                   "Blackwell GPUs; TensorRT builds it strongly typed, and it has no calibration cache")


def _smooth_value(text: str) -> float | str:
    """ALPHA of --smooth as a number ("auto", the value of a bare --smooth, stays as it is)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; pass e.g. --smooth 0.5, or --smooth alone") from exc


def add_smooth_option(p: argparse.ArgumentParser) -> None:
    """--smooth [ALPHA]: SmoothQuant-style outlier migration before quantizing."""
    p.add_argument("--smooth", nargs="?", const="auto", type=_smooth_value, metavar="ALPHA",
                   help="move activation outliers into the weights before quantizing (SmoothQuant): with ALPHA in "
                   "[0, 1] everywhere (0.5 is SmoothQuant's default), alone: alpha chosen per MatMul input by the "
                   "quantization error it leaves; the smoothed FP32 model is checked to equal the original")
    add_equalize_option(p)


def add_equalize_option(p: argparse.ArgumentParser) -> None:
    """--no-equalize: leave depthwise convolution inputs as they are."""
    p.add_argument("--no-equalize", dest="equalize", action="store_false",
                   help="INT8: leave depthwise convolutions as they are (by default their inputs are equalized: "
                   "each channel divided by its range, the filter multiplied by it, exact in FP32)")


def add_task_options(p: argparse.ArgumentParser) -> None:
    """--task and its labels/annotations (for compare, sensitivity and quantize --target)."""
    g = p.add_argument_group("task metric")
    g.add_argument("--task", choices=TASKS, help="classify: top-1/top-5; detect: COCO mAP")
    g.add_argument("--labels", metavar="DIR_OR_FILE", help="class labels: a folder with class sub-folders, a "
                   ".txt/.csv (index or name per line, or file,label), or a .npy (default: the data's class sub-folders)")
    g.add_argument("--coco", metavar="JSON", help="COCO annotations for --task detect (default: FP32 detections)")
    g.add_argument("--postprocess", metavar="PRESET_OR_PY",
                   help="detection postprocess: yolo, yolov5, yolov8, end2end (in-graph NMS, [N,K,6]), rtdetr, "
                   "detr (query logits with a no-object class + normalised boxes: DETR, YOLOS), detr-sigmoid "
                   "(Deformable/Conditional DETR, RT-DETR from transformers), torchvision/retinanet, or a .py defining "
                   "postprocess(outputs, images) (default: yolo or detr when the outputs have that layout, else an "
                   "error that says what to pass)")
    g.add_argument("--ref-conf", type=confidence, metavar="CONF",
                   help="detection without --coco: FP32 detections with at least this confidence are the reference "
                   "boxes (default 0.25; lower it when too few boxes are found)")
    g.add_argument("--task-output", metavar="NAME", help="the output holding class scores (default: the [N, C] one)")


TASK_DETAILS = ("labels", "coco", "postprocess", "ref_conf", "task_output")
"""Options that say how --task is scored: meaningless without it."""


def given(args: argparse.Namespace, *names: str) -> list[str]:
    """The options among `names` (argparse dests) that the command line set, spelled as flags."""
    return [f"--{name.replace('_', '-')}" for name in names if getattr(args, name, None) not in (None, False, [], "")]


def refuse(options: list[str], why: str, fix: str) -> None:
    """One error for options that would be accepted and then ignored: `why` says when they apply."""
    if options:
        raise TrtqError(f"{' and '.join(options)} {'apply' if len(options) > 1 else 'applies'} only {why}.", fix)


def task_options(args: argparse.Namespace) -> api.TaskOptions | None:
    """The task the options ask for (None without --task; its detail options need it)."""
    if not getattr(args, "task", None):
        extra = given(args, *TASK_DETAILS)
        refuse(extra, "with --task", f"add --task classify or --task detect, or drop {' '.join(extra)}.")
        return None
    return api.TaskOptions(task=args.task, labels=args.labels, coco=args.coco, postprocess=args.postprocess,
                           output=args.task_output, ref_conf=args.ref_conf)


def add_target_options(p: argparse.ArgumentParser) -> None:
    """--target, --target-data, --ranking and --high-precision (for quantize)."""
    g = p.add_argument_group("accuracy target and precision")
    g.add_argument("--target", metavar="METRIC<=|>=VALUE", help="keep the most sensitive layers out of INT8 until "
                   'this holds: "top1-drop<=0.5", "top5-drop<=0.2", "map-drop<=1.0", "snr>=30", "cosine>=0.999"')
    g.add_argument("--target-data", metavar="DATA", help="held-out data the target is checked on (default: --calib)")
    g.add_argument("--ranking", choices=SENSITIVITY_METHODS,
                   help="sensitivity ranking the --target search follows (default: local)")
    g.add_argument("--high-precision", choices=PRECISION_MODES, default="fp32",
                   help="precision of what is not INT8: fp16 converts it inside the ONNX, keeping FP32 where ranges "
                   "overflow or score heads need it (default: fp32)")
