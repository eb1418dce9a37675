"""Shared CLI output helpers: --json / --quiet options and printing results."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from trtq._format import json_safe


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """Add --json and --quiet to a subcommand."""
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or informational lines")


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    """Print `payload` as JSON when --json was given, otherwise the human-readable `text`."""
    if getattr(args, "json", False):
        json.dump(json_safe(payload), sys.stdout, indent=2, sort_keys=True, default=str, allow_nan=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars go to stderr unless --quiet or --json was given."""
    return not (getattr(args, "quiet", False) or getattr(args, "json", False))
