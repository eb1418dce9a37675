"""The one exception type for problems a user can fix (bad input, missing files, wrong options).

The CLI prints these as one sentence plus a suggested fix, without a traceback; any other
exception is a bug in trtq and keeps its traceback.
"""

from __future__ import annotations


class TrtqError(Exception):
    """A problem the user can fix: `message` says what is wrong, `hint` how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} Fix: {self.hint}"
        return self.message
