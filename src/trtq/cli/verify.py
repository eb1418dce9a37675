"""`trtq verify`: argument parsing and printing only (logic in trtq.verify)."""

from __future__ import annotations

import argparse

from trtq import api
from trtq.cli.output import add_output_options, emit, show_progress
from trtq.model import parse_shapes
from trtq.report import RunRecord
from trtq.tensorrt.rtx import COMPUTE_CAPABILITIES, parse_compute_capabilities


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add verify."""
    p = subparsers.add_parser(
        "verify", help="build a Q/DQ model with TensorRT-RTX (no GPU needed) and say which quantized layers run in "
        "INT8/FP8 and which Q/DQ pairs did not fuse")
    p.add_argument("model", help="a Q/DQ ONNX model (e.g. <stem>.int8.onnx from `trtq quantize`, or any other)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:AxBxC",
                   help="input shape to build at (default: batch 1 for a dynamic batch dim; other dynamic dims need it)")
    p.add_argument("--min-shape", action="append", default=[], metavar="NAME:AxBxC", help="profile min shape")
    p.add_argument("--opt-shape", action="append", default=[], metavar="NAME:AxBxC", help="profile opt shape")
    p.add_argument("--max-shape", action="append", default=[], metavar="NAME:AxBxC", help="profile max shape")
    p.add_argument("--compute-capability", metavar="CC[,CC]",
                   help=f"GPUs to build for, of {', '.join(COMPUTE_CAPABILITIES)} (default: TensorRT-RTX's portable "
                   "engine for 8.0, 8.6, 8.9 and 12.x)")
    p.add_argument("--layers", action="store_true", help="list every quantized layer, not only those left in float")
    p.add_argument("--output-dir", help="where the run record for `trtq report` goes (default: beside the model)")
    add_output_options(p)
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    """Build with TensorRT-RTX, print the per-layer verdicts, save a record for the report."""
    options = api.VerifyOptions(
        shapes=parse_shapes(args.shape),
        min_shapes=parse_shapes(args.min_shape),
        opt_shapes=parse_shapes(args.opt_shape),
        max_shapes=parse_shapes(args.max_shape),
        compute_capabilities=parse_compute_capabilities(args.compute_capability),
    )
    settings = {"model": args.model, "shape": args.shape, "min_shape": args.min_shape, "opt_shape": args.opt_shape,
                "max_shape": args.max_shape, "compute_capability": args.compute_capability}
    run_record = RunRecord(settings, directory=args.output_dir)
    result = api.verify(args.model, options, progress=show_progress(args), record=run_record)
    record = run_record.path("verify", args.model)
    text = result.to_text(all_layers=args.layers)
    if not args.quiet:
        text += f"\nwrote {record}  (trtq report {record.parent})"
    emit(args, {**result.to_dict(), "record": str(record)}, text)
    return 0
