"""Stop signals: SIGTERM and SIGHUP end a command as Ctrl-C does, and never mid-rename.

The CLI turns SIGTERM and SIGHUP into `Stopped` (SIGINT already raises KeyboardInterrupt), so
that the cleanup of partly written outputs runs for them as it does for Ctrl-C; the atomic writer
(`trtq._io`) holds every stop signal while it renames a set of outputs into place.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

STOP_SIGNALS: tuple[int, ...] = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


class Stopped(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread so that cleanup runs as it does for Ctrl-C.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        """The signal's name, e.g. SIGTERM."""
        return signal.Signals(self.signum).name


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


def install_stop_handlers() -> None:
    """Make SIGTERM and SIGHUP raise `Stopped` in the main thread (for the CLI).

    Signals the caller ignores stay ignored (`nohup` sets SIGHUP to SIG_IGN).
    """
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _raise_stopped)


_defer_depth = 0
_pending: list[int] = []
_saved_handlers: dict[int, Callable[[int, FrameType | None], Any] | int | signal.Handlers] = {}


def _defer(signum: int, frame: object) -> None:
    if signum not in _pending:
        _pending.append(signum)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold stop signals until the block is done, then deliver them to the handlers they had.

    Renaming a set into place and rolling it back must not be cut short. Python runs signal
    handlers in the main thread only, so elsewhere this does nothing.
    """
    global _defer_depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _defer_depth == 0:
        for signum in STOP_SIGNALS:
            handler = signal.getsignal(signum)
            if handler is signal.SIG_IGN or handler is None:  # None: set outside Python; leave it
                continue
            _saved_handlers[signum] = handler
            signal.signal(signum, _defer)
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1
        if _defer_depth == 0:
            for signum, saved in _saved_handlers.items():
                signal.signal(signum, saved)
            _saved_handlers.clear()
            pending = list(_pending)
            _pending.clear()
            for signum in pending:
                signal.raise_signal(signum)
