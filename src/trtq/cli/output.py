"""Shared CLI output helpers: --json / --quiet options and printing results."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

from trtq._format import json_safe
from trtq.errors import TrtqError

WARNINGS: list[str] = []
"""The warnings of the command being run, each as the one line printed (for its --json output)."""


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Print every warning raised inside as one line, `trtq: warning: ...` on stderr (no source
    line), and keep it in WARNINGS so that `emit` can put it into the --json result."""
    start = len(WARNINGS)

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        text = " ".join(str(message).split())
        WARNINGS.append(text)
        tqdm.write(f"trtq: warning: {text}", file=sys.stderr)  # above any progress bar, not through it

    with warnings.catch_warnings():
        warnings.showwarning = show
        try:
            yield
        finally:
            del WARNINGS[start:]


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """Add --json and --quiet to a subcommand."""
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or informational lines")


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    """Print `payload` as JSON when --json was given, otherwise the human-readable `text`."""
    if getattr(args, "json", False):
        if WARNINGS:
            earlier = [w for w in payload.get("warnings") or () if w not in WARNINGS]
            payload = {**payload, "warnings": [*earlier, *WARNINGS]}
        text = json.dumps(json_safe(payload), indent=2, sort_keys=True, default=str, allow_nan=False)
    try:
        if sys.stdout is None:  # started with stdout closed (`>&-`)
            raise OSError(errno.EBADF, "standard output is closed")
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()  # a full disk (`> /dev/full`) fails here, not at exit
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise TrtqError(f"Cannot print the result on standard output: {exc.strerror or exc}.",
                        "redirect standard output to a writable file (or leave it on the terminal).") from exc


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars go to stderr unless --quiet or --json was given."""
    return not (getattr(args, "quiet", False) or getattr(args, "json", False))
