"""The renames that put an output set in place, journalled so that a killed writer can be undone.

`trtq._io.write_files_atomically` stages every file of a set, then, holding each output folder's
lock, hands the renames to a `Commit`:

1. `begin` writes a journal, `.trtq-commit.json`, into each folder (written to a temporary name,
   flushed, renamed, the folder flushed): the run's pid and command, and for each target its
   staged file (name and inode), and the name its previous file will be kept under (a hard link).
2. `run` keeps each previous file under its backup name and renames the staged file over it.
3. `finish` flushes the folders, marks each journal done (the commit point), removes the backups
   and then the journals.

A writer killed outright (SIGKILL, power loss) between 1 and 3 leaves its journal. The next trtq
process that writes to the folder calls `recover` under the same lock before anything else: a
journal not marked done is rolled back (each target whose inode is the staged file's gets its
backup back, or is removed if it had none; staged files and backups are removed), a journal
marked done only has its backups removed. Each step checks what is on disk, so a recovery that is
itself killed is simply run again. It says what it did in one warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

JOURNAL = ".trtq-commit.json"
"""The commit journal's name in each output folder; present only while (or if killed while) renaming."""


def temp_name(target: Path, kind: str, name_max: int) -> Path:
    """`.<name>.<pid>-<token>.<kind>` beside `target`, the name cut to fit `name_max` bytes."""
    suffix = f".{os.getpid()}-{secrets.token_hex(4)}.{kind}"
    room = max(1, name_max - 1 - len(suffix))
    base = os.fsencode(target.name)[:room].decode("utf-8", errors="ignore") or "trtq"
    return target.with_name(f".{base}{suffix}")


def _fsync_dir(directory: Path) -> None:
    """Flush a folder's entries (renames, new names) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _real(folder: Path) -> Path:
    return Path(os.path.realpath(folder))


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


@dataclass
class Step:
    """One target of a commit and what undoing it takes."""

    target: Path
    staged: Path | None
    """The staged new file (None: the target is removed, a member the new set lacks)."""
    backup: Path
    """The name the previous file is kept under while the set is renamed."""
    inode: tuple[int, int] | None = None
    """(device, inode) of the staged file: the new file wherever it is renamed to."""
    kept: bool = False
    """Whether the previous file exists under `backup` (hard-linked or moved there)."""
    moved: bool = False
    """Whether the previous file was moved to `backup` (else `backup` is a hard link and it stayed)."""
    placed: bool = False
    """Whether the new file is in place."""

    def record(self) -> dict[str, object]:
        return {"target": os.fsdecode(self.target.name), "backup": os.fsdecode(self.backup.name),
                "staged": None if self.staged is None else os.fsdecode(self.staged.name),
                "inode": None if self.inode is None else list(self.inode)}


class Commit:
    """Renames of staged files into place (and removals of members the new set lacks), journalled."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], gone: Sequence[Path], command: str,
                 name_max: Callable[[Path], int]) -> None:
        self.steps = [Step(target, tmp, temp_name(target, "bak", name_max(target.parent)), _inode(tmp))
                      for tmp, target in pairs]
        self.steps += [Step(target, None, temp_name(target, "bak", name_max(target.parent))) for target in gone]
        self.command = command
        self.folders = list(dict.fromkeys(_real(step.target.parent) for step in self.steps))
        self.journals: list[Path] = []

    def _write_journal(self, folder: Path, done: bool) -> None:
        record = {"pid": os.getpid(), "command": self.command, "done": done,
                  "steps": [s.record() for s in self.steps if _real(s.target.parent) == folder]}
        journal = folder / JOURNAL
        tmp = folder / f".trtq-commit.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, journal)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if journal not in self.journals:
            self.journals.append(journal)
        _fsync_dir(folder)

    def begin(self) -> None:
        """Write each folder's journal (before any rename)."""
        for folder in self.folders:
            self._write_journal(folder, done=False)

    def _keep(self, step: Step, move: bool) -> None:
        """Keep the current target under its backup name: a hard link, so it never goes missing, or moved."""
        if not os.path.lexists(step.target):
            return
        if not move:
            try:
                os.link(step.target, step.backup, follow_symlinks=False)
                step.kept = True
                return
            except (OSError, NotImplementedError):  # no hard links here (FAT, some network mounts): move it aside
                pass
        os.rename(step.target, step.backup)
        step.kept = step.moved = True

    def run(self) -> None:
        """Do every step; on an OSError the exception carries the target as `trtq_target`."""
        for step in self.steps:
            try:
                self._keep(step, move=step.staged is None)
                if step.staged is not None:
                    os.replace(step.staged, step.target)
                    step.placed = True
            except OSError as exc:
                exc.trtq_target = step.target  # type: ignore[attr-defined]
                raise

    def rollback(self) -> list[Path]:
        """Put every previous file back; returns the backups that could not be restored."""
        stuck = []
        for step in reversed(self.steps):
            try:
                if step.kept and (step.moved or step.placed):
                    os.replace(step.backup, step.target)
                elif step.kept:  # a link to the file still in place
                    os.unlink(step.backup)
                elif step.placed:
                    os.unlink(step.target)
            except OSError:
                if step.kept:
                    stuck.append(step.backup)
        for journal in self.journals:
            with contextlib.suppress(OSError):
                os.unlink(journal)
        return stuck

    def finish(self) -> None:
        """Mark the journals done (the set is in place), then remove the backups and the journals."""
        for folder in self.folders:
            _fsync_dir(folder)
        for folder in self.folders:
            with contextlib.suppress(OSError):
                self._write_journal(folder, done=True)
        for step in self.steps:
            if step.kept:
                with contextlib.suppress(OSError):
                    os.unlink(step.backup)
        for journal in self.journals:
            with contextlib.suppress(OSError):
                os.unlink(journal)


@dataclass(frozen=True)
class _Undone:
    kind: str
    """'restored' (the previous file is back) or 'removed' (a new file that had no previous one)."""
    name: str


def _undo(folder: Path, step: dict[str, object]) -> _Undone | None:
    """Undo one journalled step; returns what was done to its target (None: nothing)."""
    target = folder / str(step["target"])
    backup = folder / str(step["backup"])
    staged = None if step.get("staged") is None else folder / str(step["staged"])
    inode = step.get("inode")
    new = inode is not None and _inode(target) == tuple(inode)  # type: ignore[arg-type]
    done = None
    if new and os.path.lexists(backup):
        os.replace(backup, target)
        done = _Undone("restored", target.name)
    elif new:
        os.unlink(target)
        done = _Undone("removed", target.name)
    elif os.path.lexists(backup):
        if os.path.lexists(target):
            os.unlink(backup)  # a hard link beside the previous file, which never moved
        else:
            os.replace(backup, target)
            done = _Undone("restored", target.name)
    if staged is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
    return done


def recover(folder: Path, alive: Callable[[int], bool] | None = None) -> None:
    """Roll back (or finish) a commit into `folder` that a killed writer left; call under its lock.

    `alive` (where the folder could not be locked) tells whether the journal's writer still runs:
    then it is left alone."""
    journal = folder / JOURNAL
    try:
        record = json.loads(journal.read_text(encoding="utf-8"))
        steps = list(record["steps"])
        done, pid, command = bool(record["done"]), int(record["pid"]), str(record["command"])
        for step in steps:  # names in this folder only: a planted journal must not reach other files
            for key in ("target", "backup", "staged"):
                name = step[key]
                if (name is not None or key != "staged") and (not isinstance(name, str) or os.sep in name
                                                              or name in ("", ".", "..")):
                    raise ValueError(f"step {key} {name!r} is not a file name in the folder")
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"{journal} is unreadable ({exc}), so trtq cannot tell whether an earlier run finished "
                      f"writing its outputs to {folder}; they are left as they are (check them).", stacklevel=3)
        return
    if alive is not None and pid != os.getpid() and alive(pid):
        return
    who = f"an earlier run (process {pid}, `{command[:120]}`)"
    if done:
        for step in steps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / str(step["backup"]))
        os.unlink(journal)
        _fsync_dir(folder)
        warnings.warn(f"{who} was stopped just after writing its outputs to {folder}; its set is whole, and "
                      "trtq removed the backups it left.", stacklevel=3)
        return
    actions = [_undo(folder, s) for s in reversed(steps)]
    _fsync_dir(folder)
    os.unlink(journal)
    _fsync_dir(folder)
    restored = [a.name for a in reversed(actions) if a and a.kind == "restored"]
    removed = [a.name for a in reversed(actions) if a and a.kind == "removed"]
    what = "; ".join([*([f"put back the previous {', '.join(restored)}"] if restored else []),
                      *([f"removed the new {', '.join(removed)}"] if removed else [])]) or "none of it was in place yet"
    warnings.warn(f"{who} was stopped while renaming its outputs into {folder}; trtq rolled that back ({what}), "
                  "so the folder holds the set from before it.", stacklevel=3)
