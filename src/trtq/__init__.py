"""trtq: prepare ONNX models for NVIDIA TensorRT at INT8 and FP16.

The public API lives in :mod:`trtq.api`; the CLI (``trtq``) is a thin layer over it.

Ctrl-C while the `trtq` command starts prints one line and exits 130, not a traceback from an import:
when this process is the command (the console script, or `python -m trtq`), SIGINT exits at once from
here until `trtq.cli.main()` has imported what it needs and takes over (`release_start`). Nothing can
have been written before then, and library users' SIGINT handling is never touched. This runs first and
uses only what the interpreter loaded at start-up (`_signal`, not `signal`, which imports enum and
functools: 20 ms on a loaded machine); what Python runs before it (site-packages' .pth files, runpy) is
out of its reach.
"""

import _signal  # type: ignore[import-not-found]  # CPython's C module under `signal`; no stub
import os as _os
import sys as _sys


def _is_cli_process() -> bool:
    """Whether this interpreter was started as the `trtq` command (console script or `python -m trtq`)."""
    argv = list(getattr(_sys, "orig_argv", ()))
    for index, arg in enumerate(argv[1:], 1):
        if arg == "-m" and index + 1 < len(argv):
            return argv[index + 1] == "trtq"
        if arg.startswith("-m"):
            return arg == "-mtrtq"
        if arg == "-c" or not arg.startswith("-"):
            break
    script = _os.path.basename(_sys.argv[0]) if _sys.argv else ""
    return script in ("trtq", "trtq.exe", "trtq-script.py")


def _interrupted_while_starting(signum: int, frame: object) -> None:
    _os.write(2, b"trtq: interrupted while starting; no output was written.\n")
    _os._exit(128 + _signal.SIGINT)


def release_start() -> None:
    """Give Ctrl-C back to Python's KeyboardInterrupt (trtq.cli.main catches it from there on)."""
    if _signal.getsignal(_signal.SIGINT) is _interrupted_while_starting:
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)


if _is_cli_process() and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, _interrupted_while_starting)

__version__ = "0.1.0"

from trtq.errors import TrtqError  # noqa: E402  # after the SIGINT guard, which must run first

__all__ = ["TrtqError", "__version__"]
