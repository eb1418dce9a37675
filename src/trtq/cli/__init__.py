"""The `trtq` command line: a thin layer over :mod:`trtq.api` and friends.

Each module in this package registers its subcommands; none holds logic of its own. A
TrtqError is printed as one sentence with its fix and exit code 2; any other exception is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from trtq import __version__, _io, release_start
from trtq._io import Stopped, install_stop_handlers, special_kind
from trtq.errors import TrtqError

COMMAND_MODULES = ("trtq.cli.core", "trtq.cli.trt", "trtq.cli.verify", "trtq.cli.accuracy", "trtq.cli.qat")
"""Modules that each define `register(subparsers)`; their commands set `func(args) -> int`."""


class Parser(argparse.ArgumentParser):
    """argparse in trtq's error style: one sentence and a fix, exit code 2, no usage block.

    Subcommand parsers are of this class too (argparse makes them of their parent's class).
    """

    def error(self, message: str) -> NoReturn:
        from trtq.cli.options import FIX

        text, _, hint = message.partition(FIX)
        self.exit(2, f"trtq: error: {text}\n  fix: {hint or f'see `{self.prog} --help`.'}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = Parser(
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
    """Entry point of the `trtq` console script. Warnings print as one line each (cli.output)."""
    before = set(threading.enumerate())
    code = _run(argv)
    _leave_lingering_threads(code, before)
    return code


def _leave_lingering_threads(code: int, before: set[threading.Thread]) -> None:
    """Exit now (with `code`) if the user's code (a load_data() script's prefetch thread, say) left a thread
    running: Python would wait for it at exit, and trtq would hang after its work, outputs written."""
    lingering = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon
                 and not t.name.startswith(("ThreadPoolExecutor", "trtq-"))]
    if not lingering:
        return
    names = ", ".join(repr(t.name) for t in lingering[:3])
    print(f"trtq: warning: code outside trtq (a data script?) left thread{'s' * (len(lingering) > 1)} {names} "
          "running; trtq exits without waiting for it.", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    os._exit(code)


def _run(argv: Sequence[str] | None) -> int:
    install_stop_handlers()
    _printable_output()
    already = len(_io.written)
    try:
        from trtq.cli.output import warnings_as_lines

        with warnings_as_lines():
            parser = build_parser()  # imports onnx, numpy...: a stop signal may arrive here too
            release_start()  # imports done: from here, Ctrl-C is a KeyboardInterrupt reported below
            argv = list(sys.argv[1:] if argv is None else argv)
            refuse_empty_values(argv)
            try:
                args = parser.parse_args(argv)
            except SystemExit as done:  # --help, --version, or a bad argument (Parser.error printed it)
                return done.code if isinstance(done.code, int) else 2
            if not getattr(args, "func", None):
                parser.print_help()
                return 2
            refuse_special_files(args)
            return int(args.func(args) or 0)
    except TrtqError as exc:
        print(f"trtq: error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  fix: {exc.hint}", file=sys.stderr)
        if _io.written[already:]:  # an error after the outputs were in place (printing the result, say)
            print(f"  note: this run had written {', '.join(str(p) for p in _io.written[already:])} (complete) "
                  "before the error.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"trtq: interrupted; {_stopped_outputs(_io.written[already:])}", file=sys.stderr)
        return 128 + signal.SIGINT
    except Stopped as stop:
        print(f"trtq: stopped by {stop.name}; {_stopped_outputs(_io.written[already:])}", file=sys.stderr)
        return 128 + stop.signum
    except BrokenPipeError:  # `trtq ... | head`: the reader left; say nothing more, as `cat` would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush of stdout would fail again
        return 128 + getattr(signal, "SIGPIPE", 13)


def _printable_output() -> None:
    """Print what the terminal cannot show (a file name in Korean under LC_ALL=C) as backslash escapes,
    not as a UnicodeEncodeError after the outputs were written."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if callable(reconfigure) and getattr(stream, "errors", "") == "strict":
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


def refuse_empty_values(argv: Sequence[str]) -> None:
    """An empty argument (`--target ""`, `--output-dir=`, often an unset shell variable) is an error: no
    option of trtq means anything by it, and taking it as "not given" would run with a default silently."""
    for index, token in enumerate(argv):
        if token.startswith("--") and token.endswith("=") and len(token) > 3:
            option = token[:-1]
        elif not token.strip():
            before = argv[index - 1] if index else ""
            option = before if before.startswith("-") and "=" not in before else ""
        else:
            continue
        what = f"Option {option} is given an empty value" if option else f"Argument {index + 1} of the command line is empty"
        raise TrtqError(f"{what}, which trtq does not take as a value.",
                        "give a value or leave the option out (an unset shell variable gives an empty value).")


FILE_OPTIONS = ("labels", "coco", "postprocess", "layer_precisions_from")
"""Options naming a file read by code beyond the data and model loaders (which check their own paths)."""


def refuse_special_files(args: argparse.Namespace) -> None:
    """A named pipe, socket or device given to a file option is refused before any work: opening a pipe to
    read it waits for a writer for ever."""
    for dest in FILE_OPTIONS:
        value = getattr(args, dest, None)
        kind = special_kind(value) if isinstance(value, str) and value else ""
        if kind:
            option = "--" + dest.replace("_", "-")
            raise TrtqError(f"{option} {value} is a {kind}, not a file trtq can read.",
                            f"give {option} a regular file (copy what the {kind} produces into one first).")


def _stopped_outputs(written: Sequence[Path]) -> str:
    """What a stopped run leaves: its completed output sets, or nothing at all."""
    if not written:
        return "no output was written, and earlier outputs are as they were."
    return "it had written " + ", ".join(str(p) for p in written) + " (complete) before it stopped."


if __name__ == "__main__":
    sys.exit(main())
