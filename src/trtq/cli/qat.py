"""`trtq finetune`: argument parsing and printing only (the work is in `trtq.qat`)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from trtq._format import fmt
from trtq._io import Stopped
from trtq.cli.core import add_data_options, data_options
from trtq.cli.options import (
    add_calibration_options,
    add_equalize_option,
    add_mask_options,
    calibration_options,
    given,
    non_negative_int,
    positive_float,
    positive_int,
    refuse,
)
from trtq.cli.output import add_output_options, emit, show_progress
from trtq.errors import TrtqError

if TYPE_CHECKING:
    from trtq.qat.api import FinetuneResult


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add finetune."""
    p = subparsers.add_parser(
        "finetune",
        help="quantization-aware fine-tuning (needs PyTorch): writes <stem>.qat.int8.onnx, .qat.int8.cache, "
        ".qat.int8.json and prints FP32 vs PTQ vs QAT",
    )
    p.add_argument("model", help="FP32 .onnx model")
    p.add_argument("--calib", required=True, metavar="DATA",
                   help="calibration data (image folder, .npy/.npz, .py with load_data()); also the training data "
                   "unless --train is given, and what progress is measured on")
    p.add_argument("--ranges", metavar="FILE", help="start from these PTQ ranges (.int8.json) instead of calibrating")
    p.add_argument("--train", metavar="DATA2", help="unlabelled training data (default: --calib)")
    p.add_argument("--data", metavar="VAL", help="held-out data for the final FP32/PTQ/QAT comparison (default: --calib)")
    p.add_argument("--task", choices=("classify", "detect"),
                   help="also report a task metric in the comparison (labels from --data's class folders)")
    p.add_argument("--steps", type=positive_int("--steps 2000"), default=2000, help="optimizer steps in all (default: 2000)")
    p.add_argument("--lr", type=positive_float("--lr 1e-5"), default=1e-5,
                   help="learning rate of weights and biases (default: 1e-5)")
    p.add_argument("--scale-lr", type=positive_float("--scale-lr 1e-3"), default=1e-3,
                   help="learning rate of the log step sizes (default: 1e-3)")
    p.add_argument("--batch-size", type=positive_int("--batch-size 32"), default=32,
                   help="training batch (default: 32; a fixed batch dim wins)")
    p.add_argument("--target", metavar="METRIC>=X",
                   help='stop as soon as this holds against FP32, e.g. "snr>=35" (dB, every output) or "cosine>=0.999"')
    p.add_argument("--eval-every", type=positive_int("--eval-every 100"), default=100,
                   help="steps between progress evaluations (default: 100)")
    p.add_argument("--checkpoint-every", type=positive_int("--checkpoint-every 100"), default=100,
                   help="steps between checkpoints (default: 100)")
    p.add_argument("--seed", type=non_negative_int("--seed 0"), default=0, help="seed of the batch order (default: 0)")
    p.add_argument("--no-cuda-graph", action="store_true",
                   help="on CUDA, run every step eagerly instead of replaying a captured CUDA graph")
    p.add_argument("--resume", action="store_true",
                   help="continue from <stem>.qat.ckpt in the output directory (same model, data and options)")
    add_calibration_options(p, method_help="PTQ range algorithm (default: auto, as for quantize)",
                            device_help="where training runs: cpu or cuda[:N] (default: cpu)")
    add_equalize_option(p)
    p.add_argument("--output-dir", help="where to write (default: beside the model)")
    add_data_options(p)
    add_mask_options(p)
    add_output_options(p)
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune, export and compare."""
    try:
        from trtq.qat import FinetuneOptions, finetune
        from trtq.qat.api import checkpoint_path
    except ImportError as exc:
        raise TrtqError(f"trtq finetune needs PyTorch, which is not installed ({exc}).",
                        "pip install 'trtq[gpu]' (or pip install torch).") from exc
    if args.ranges:
        extra = given(args, "method", "percentile")
        refuse(extra, "to the PTQ calibration, which --ranges replaces", f"drop {' '.join(extra)}, or drop --ranges.")
    options = FinetuneOptions(
        **calibration_options(args),
        steps=args.steps, lr=args.lr, scale_lr=args.scale_lr, batch_size=args.batch_size, target=args.target,
        output_dir=args.output_dir, resume=args.resume, seed=args.seed,
        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, task=args.task,
        cuda_graph=not args.no_cuda_graph, equalize=args.equalize,
    )
    try:
        result = finetune(args.model, args.calib, ranges=args.ranges, train_data=args.train, eval_data=args.data,
                          data=data_options(args), options=options, progress=show_progress(args))
    except (KeyboardInterrupt, Stopped):
        checkpoint = checkpoint_path(args.model, args.output_dir)
        if checkpoint.exists():
            print(f"trtq: the last checkpoint is kept at {checkpoint}; run the same command with --resume to "
                  "continue.", file=sys.stderr)
        raise
    emit(args, result.to_dict(), _text(result))
    return 0


def _text(result: FinetuneResult) -> str:
    training, parity, comparison = result.training, result.parity, result.comparison
    last = training.history[-1]
    stop = {"target": "target reached", "steps": "all steps run"}.get(training.stopped, training.stopped)
    lines = [
        (f"fine-tuned {result.model} on {result.device_name}: steps {training.start_step} -> {training.steps} "
         f"({stop}); {training.samples_per_second:.0f} samples/s, {training.train_seconds:.1f} s training, "
         f"steps {training.step_mode}"),
        (f"  PTQ ranges: {result.ranges_from}; exported the state of step {training.best_step} "
         f"(best SNR against FP32 on the calibration data: {fmt(max(h.snr_db for h in training.history))} dB; "
         f"last evaluation {fmt(last.snr_db)} dB)"),
        (f"  parity (onnxruntime vs PyTorch, {parity.samples} samples): max {parity.max_steps} quantization "
         f"step(s) end to end, {parity.mismatched} of {parity.elements} codes differ; each quantizer on the same "
         f"input: max {parity.local_max_steps}; outputs within {fmt(parity.output_max_abs_diff, 3, spec='g')}"),
        "",
        f"FP32 vs PTQ vs QAT on {comparison.samples} samples ({comparison.data}):",
    ]
    if result.monitor_mask is not None:
        lines.insert(2, f"  progress {result.monitor_mask.sentence()}")
    if comparison.mask is not None:
        lines.append(f"  {comparison.mask.sentence()}")
    task_keys = sorted({k for row in comparison.rows if row.task for k in row.task})
    header = f"  {'model':<6} {'SNR dB':>8} {'cosine':>9} {'top-1 agr':>10}" + "".join(f" {k:>8}" for k in task_keys)
    lines.append(header)
    for row in comparison.rows:
        task = "".join(f" {fmt(row.task.get(k) if row.task else None, 2):>8}" for k in task_keys)
        lines.append(f"  {row.stage:<6} {fmt(row.snr_db):>8} {fmt(row.cosine, 5):>9} "
                     f"{fmt(row.top1_agreement, 1, scale=100.0, suffix='%'):>10}{task}")
    if comparison.task:
        lines.append(f"  ({comparison.task})")
    lines += [f"note: {note}" for note in result.notes]
    lines += [f"wrote {result.onnx_path}", f"wrote {result.cache_path}", f"wrote {result.ranges_path}",
              f"checkpoint {result.checkpoint_path} (--resume continues from it, e.g. with more --steps)"]
    return "\n".join(lines)
