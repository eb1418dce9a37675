"""Running the user's own Python (load_data() scripts, postprocess hooks): what it raises is theirs.

An exception in their code, or a `sys.exit()` or `os._exit()` there (which would otherwise end
trtq silently, with its exit code and no output), becomes a TrtqError naming the script and what
it was doing. `os._exit` cannot be caught, so it is replaced while their code runs (in this
process only: a child it forks still exits with it).
Ctrl-C (KeyboardInterrupt) and trtq's stop signals pass through as they are; any other
BaseException their code raises (GeneratorExit, say) is theirs too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from trtq._io import Stopped
from trtq.errors import TrtqError

PASS_THROUGH: tuple[type[BaseException], ...] = (KeyboardInterrupt, Stopped)
"""What the user's code may raise that is not its failure: Ctrl-C and SIGTERM/SIGHUP (trtq._io.Stopped)."""

EXIT_FIX = "return (or stop yielding) instead of calling sys.exit()."


class HardExit(SystemExit):
    """os._exit() called by the user's code, raised instead of ending the process (see `running_user_code`)."""


@contextlib.contextmanager
def _exits_raised() -> Iterator[None]:
    """Make os._exit() raise HardExit in this process while the block runs."""
    real, pid = os._exit, os.getpid()

    def _exit(code: int) -> None:  # the signature of os._exit, so that their call binds as it would
        if os.getpid() != pid:  # a forked child (multiprocessing's worker, say) ends as it meant to
            real(code)
        raise HardExit(code)

    os._exit = _exit  # type: ignore[assignment]
    try:
        yield
    finally:
        os._exit = real


@contextlib.contextmanager
def running_user_code() -> Iterator[None]:
    """While the user's code runs: what it prints goes to stderr, so that trtq's stdout (its --json
    result) stays clean, and an os._exit() it calls raises HardExit."""
    with contextlib.redirect_stdout(sys.stderr), _exits_raised():
        yield


def user_error(exc: BaseException, doing: str, fix: str, exit_fix: str = EXIT_FIX) -> BaseException:
    """What to raise for `exc` from the user's code: a TrtqError saying that `doing` ("load_data() in d.py,
    producing item 3,") raised it or called sys.exit(), with `fix` or `exit_fix`; a TrtqError (the user's
    code calling trtq) as it is."""
    if isinstance(exc, TrtqError):
        return exc
    if isinstance(exc, HardExit):
        return TrtqError(f"{doing} called os._exit({exc.code!r}), which would end trtq at once, without a result "
                         "or an error.", exit_fix.replace("sys.exit()", "os._exit()"))
    if isinstance(exc, SystemExit):
        return TrtqError(f"{doing} called sys.exit({exc.code!r}), which would end trtq without a result.", exit_fix)
    reason = " ".join(str(exc).split())
    return TrtqError(f"{doing} raised {type(exc).__name__}" + (f": {reason}." if reason else "."), fix)


@contextlib.contextmanager
def user_code(doing: str, fix: str, exit_fix: str = EXIT_FIX) -> Iterator[None]:
    """Run the block as the user's code (see `user_error`), its prints on stderr. Not for blocks where
    StopIteration is an answer (next() on their iterator): catch around those with `user_error`."""
    try:
        with running_user_code():
            yield
    except PASS_THROUGH:
        raise
    except BaseException as exc:  # the user's code failed (or called sys.exit()): report it as their error
        error = user_error(exc, doing, fix, exit_fix)
        if error is exc:
            raise
        raise error from exc


def import_script(path: Path, what: str, module_name: str) -> ModuleType:
    """Import the user's Python file `path` as `module_name` (its folder on sys.path while it runs, so
    it can import helpers beside it). `what` names it in errors ("Data script", "Postprocess file")."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TrtqError(f"{what} {path} cannot be loaded as Python.", "give a .py file.")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[module_name] = module  # as `import` does; dataclasses and pickle look it up
    try:
        with user_code(f"{what} {path}, while it was imported,",
                       "fix the script; run it with python on its own to see the traceback.",
                       "keep top-level code that should not run on import under `if __name__ == \"__main__\":`."):
            spec.loader.exec_module(module)
    except TrtqError:
        sys.modules.pop(module_name, None)
        raise
    finally:
        if folder in sys.path:  # the script may have removed it itself
            sys.path.remove(folder)
    return module
