"""The `trtq` command line: a thin layer over :mod:`trtq.api` and friends.

Each module in this package registers its subcommands; none holds logic of its own. A
TrtqError is printed as one sentence with its fix and exit code 2; any other exception is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from trtq import __version__
from trtq.errors import TrtqError

COMMAND_MODULES = ("trtq.cli.core", "trtq.cli.trt", "trtq.cli.verify", "trtq.cli.accuracy", "trtq.cli.qat")
"""Modules that each define `register(subparsers)`; their commands set `func(args) -> int`."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="trtq",
        description="Calibrate and quantize ONNX models for NVIDIA TensorRT (INT8 Q/DQ ONNX, "
        "calibration cache, accuracy report, engine build).",
    )
    parser.add_argument("--version", action="version", version=f"trtq {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `trtq` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TrtqError as exc:
        print(f"trtq: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  fix: {exc.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trtq: interrupted; no output was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
