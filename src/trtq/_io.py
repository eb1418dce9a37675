"""Atomic output sets: the files one command writes appear together, or none of them changes.

A command's outputs form one set (quantize: `<stem>.int8.onnx` [+ `.data`], `.int8.cache`,
`.int8.json` and its run record `trtq-quantize.json`). `write_files_atomically` writes a set so
that a failure, a stop signal or a second trtq process writing to the same folder never leaves
part of one set beside part of another:

1. Check every destination (`check_destinations`, which long commands also call before their
   work): its folder can be created and written, the name is not a directory, not an immutable
   file, not too long for the file system, and not one of the command's inputs.
2. Stage every file under a temporary name beside its target (`.<name>.<pid>-<token>.tmp`),
   flushed to disk. A stop signal or an error here removes the staged files.
3. Holding an advisory lock on each output folder (`flock`; a second writer waits for it, and
   stops with a message naming the holder if it is held too long), keep each previous file as a
   backup (a hard link, `.<name>.<pid>-<token>.bak`), rename the staged files into place, and
   remove the backups only once every rename succeeded. A failed rename puts the previous set back.
   Stop signals wait until this step is done (it takes milliseconds).

The CLI turns SIGTERM and SIGHUP into `Stopped` (SIGINT already raises KeyboardInterrupt), so
that step 2's cleanup runs for them as it does for Ctrl-C (`trtq._stop`, re-exported here).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import stat
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from trtq._commit import JOURNAL, Commit, recover, temp_name
from trtq._stop import Stopped as Stopped
from trtq._stop import install_stop_handlers as install_stop_handlers
from trtq._stop import signals_deferred
from trtq.errors import TrtqError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the rest still applies
    fcntl = None  # type: ignore[assignment]

Content = bytes | bytearray | memoryview | Iterable[bytes]


LOCK_TIMEOUT_ENV = "TRTQ_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 30.0
"""Seconds a writer waits for another trtq process to finish renaming its set into the same folder.
Renames take milliseconds (staging happens before the lock), so a longer hold means a stuck process."""
WAIT_NOTICE_S = 1.0
"""A writer says on stderr whom it is waiting for once it has waited this long."""
HOLDER_FILE = ".trtq-writer"
"""Written into a locked folder while its set is being renamed: the holder's pid and command."""
STALE_AFTER_S = 600.0
"""Staged or backup files of a process that no longer exists (killed with SIGKILL, say) are removed
by the next writer to that folder once they are this old."""

_TEMP = re.compile(r"^\.(?P<base>.*)\.(?P<pid>\d+)-[0-9a-f]{8}\.(?:tmp|bak)$")

written: list[Path] = []
"""Every file this process has put in place, in order (the CLI's stop message names them)."""


# ---------------------------------------------------------------------------------------------
# checks made before any work


def _exists(path: Path) -> bool:
    """Whether `path` exists (following links); a name too long or a link loop counts as missing."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP):
            return False
        raise
    return True


def _nearest_existing(directory: Path) -> Path:
    """`directory` or its closest ancestor that exists; a dangling symlink on the way is an error."""
    existing = directory
    while not _exists(existing) and existing != existing.parent:
        if os.path.islink(existing):
            raise TrtqError(
                f"Cannot create output directory {directory}: {existing} is a symbolic link to "
                f"{os.readlink(existing)}, which does not resolve to a directory.",
                "fix or remove the link, or choose another --output-dir.",
            )
        existing = existing.parent
    return existing


def _limit(directory: Path, name: str, default: int) -> int:
    try:
        return int(os.pathconf(directory, name))
    except (OSError, ValueError, AttributeError):
        return default


def _name_max(directory: Path) -> int:
    return _limit(_nearest_existing(directory), "PC_NAME_MAX", 255)


def _too_long(exc: OSError, directory: Path) -> TrtqError:
    return TrtqError(
        f"Output path {directory} is too long for the file system ({exc.strerror}): a name over "
        f"{_name_max(directory)} bytes or a path over {_limit(_nearest_existing(directory), 'PC_PATH_MAX', 4096)} bytes.",
        "choose a shorter --output-dir (or output name).",
    )


def ensure_writable_dir(directory: Path) -> Path:
    """Create `directory` if needed and check that files can be written there."""
    check_writable_dir(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise _too_long(exc, directory) from exc
        raise TrtqError(
            f"Cannot create output directory {directory}: {exc.strerror}.",
            "choose a writable --output-dir.",
        ) from exc
    return directory


def check_writable_dir(directory: Path) -> None:
    """Fail early, leaving nothing behind, when `directory` could not be created or written to.

    Long work (calibration) checks its output directory first, so a typo costs seconds, not
    minutes. A temporary file is created and removed in the nearest existing ancestor: permission
    bits alone do not tell (root passes every check; /proc refuses all writes).
    """
    directory = Path(directory)
    try:
        _check_writable_dir(directory)
    except OSError as exc:  # stat refused on the way (a folder without search permission, say)
        if exc.errno == errno.ENAMETOOLONG:
            raise _too_long(exc, directory) from exc
        raise TrtqError(f"Cannot use output directory {directory}: {exc.strerror} ({exc.filename}).",
                        "choose a writable --output-dir.") from exc


def _check_writable_dir(directory: Path) -> None:
    for part in directory.parts:
        if len(os.fsencode(part)) > _name_max(directory):
            raise _too_long(OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG)), directory)
    existing = _nearest_existing(directory)
    if not existing.is_dir():
        raise TrtqError(f"Cannot create output directory {directory}: {existing} is not a directory.",
                        "choose a writable --output-dir.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".trtq-probe-", dir=existing)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise _too_long(exc, directory) from exc
        what = "is not writable" if existing == directory else f"cannot be created in {existing}"
        raise TrtqError(f"Output directory {directory} {what} ({exc.strerror}).",
                        _fix(exc) if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "choose a writable --output-dir."
                        ) from exc
    os.close(fd)
    os.unlink(probe)


_FS_IOC_GETFLAGS = 0x80086601
_IMMUTABLE_FL, _APPEND_FL = 0x10, 0x20


def _immutable(path: Path) -> bool:
    """Whether a Linux file carries the immutable or append-only attribute (`chattr +i/+a`)."""
    if fcntl is None or not sys.platform.startswith("linux") or not path.is_file() or path.is_symlink():
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False  # unreadable: the rename will tell, and the previous set is restored then
    try:
        flags = fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))
    except OSError:
        return False  # the file system keeps no such flags
    finally:
        os.close(fd)
    return bool(int.from_bytes(flags[:4], sys.byteorder) & (_IMMUTABLE_FL | _APPEND_FL))


def special_kind(path: str | os.PathLike[str], follow: bool = True) -> str:
    """'character device', 'block device', 'named pipe' or 'socket' for such a file ('' otherwise; also for a
    missing path). Inputs follow symlinks: opening a named pipe to read it would wait for a writer for ever.
    Outputs do not (`follow=False`): renaming over a link replaces only the link."""
    try:
        mode = (os.stat if follow else os.lstat)(path).st_mode
    except OSError:
        return ""
    for test, kind in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return ""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_destinations(paths: Iterable[str | Path], inputs: Iterable[str | Path | None] = ()) -> None:
    """Fail, leaving nothing behind, unless every path in `paths` can be written as one set.

    Checks each folder (creatable, writable), then each file: not a directory, not immutable,
    its staging name within the file system's limits, and not one of the command's `inputs`.
    """
    targets = list(dict.fromkeys(Path(p) for p in paths))
    lock_timeout()  # a bad TRTQ_LOCK_TIMEOUT fails now, not after the work
    for directory in dict.fromkeys(t.parent for t in targets):
        check_writable_dir(directory)
    sources = [Path(p) for p in inputs if p is not None]
    for target in targets:
        staged = _temp_name(target, "tmp")
        if len(os.fsencode(target.name)) > _name_max(target.parent):
            raise TrtqError(
                f"Output file name {target.name[:60]}... is {len(os.fsencode(target.name))} bytes long, over the "
                f"file system's limit of {_name_max(target.parent)} bytes.",
                "use a shorter model file name or output name.",
            )
        if len(os.fsencode(str(staged))) >= _limit(_nearest_existing(target.parent), "PC_PATH_MAX", 4096):
            raise _too_long(OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG)), target.parent)
        if target.is_dir() and not target.is_symlink():
            raise TrtqError(f"Output {target} is a directory, so trtq cannot write its file there.",
                            "remove or rename that directory, or choose another --output-dir.")
        special = special_kind(target, follow=False)
        if special:  # renaming a file over /dev/null (say) would replace the device itself
            raise TrtqError(f"Output {target} is a {special}, not a file: trtq writes its outputs as files renamed into "
                            "place, which would replace it.", "choose a file path (or another --output-dir).")
        if _immutable(target):
            raise TrtqError(f"Output {target} is marked immutable or append-only (chattr), so trtq cannot replace it.",
                            f"run `chattr -i -a {target}`, or choose another --output-dir.")
        for source in sources:
            if _same_file(target, source):
                raise TrtqError(f"Output {target} is the input {source}: writing it would destroy the input.",
                                "choose another --output-dir or output name.")


# ---------------------------------------------------------------------------------------------
# staging, locking, committing


def _temp_name(target: Path, kind: str) -> Path:
    """`.<name>.<pid>-<token>.<kind>` beside `target`, the name cut to fit the file system's limit."""
    return temp_name(target, kind, _name_max(target.parent))


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _write_content(handle: BinaryIO, content: Content) -> None:
    """Write bytes or an iterable of byte chunks (a large model streamed weight by weight)."""
    if isinstance(content, (bytes, bytearray, memoryview)):
        handle.write(content)
    else:
        for chunk in content:
            handle.write(chunk)


def _stage(target: Path, content: Content, staged: list[Path]) -> Path:
    """Write `content` to a new temporary file beside `target`, flushed to disk.

    The name is registered in `staged` before the file exists, so an interrupt at any point
    leaves nothing the cleanup does not know about. The mode follows the umask, as for open().
    """
    tmp = _temp_name(target, "tmp")
    staged.append(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    with os.fdopen(fd, "wb") as handle:
        _write_content(handle, content)
        handle.flush()
        os.fsync(handle.fileno())
    return tmp


def lock_timeout() -> float:
    """Seconds to wait for another writer (TRTQ_LOCK_TIMEOUT, default DEFAULT_LOCK_TIMEOUT)."""
    text = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:  # garbage, NaN or negative: waiting 0 s or 30 s would both be a guess
        raise TrtqError(f"{LOCK_TIMEOUT_ENV}={text[:40]!r} is not a number of seconds >= 0.",
                        f"set it to e.g. {LOCK_TIMEOUT_ENV}=30 (inf waits for ever), or unset it.")
    return value


def _holder(directory: Path) -> str:
    """Who holds `directory`'s lock, from the file the holder writes ("another process" if unknown)."""
    try:
        text = (directory / HOLDER_FILE).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "another process"
    pid, _, command = text.partition(" ")
    return f"process {pid} ({command})" if pid.isdigit() and command else "another process"


def _command_line() -> str:
    return " ".join(["trtq", *sys.argv[1:]])[:300]


@contextlib.contextmanager
def _folder_lock(directory: Path) -> Iterator[bool]:
    """Hold an exclusive advisory lock on `directory` (flock on the folder itself: no lock file).

    Waits for another holder up to lock_timeout() seconds, saying on stderr whom it waits for
    after WAIT_NOTICE_S; a TrtqError naming the holder after that. File systems without flock
    (some network mounts) are written unlocked.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if fcntl is not None else None
    except PermissionError:  # a folder one may write to but not list (mode -wx): it cannot be locked
        fd = None
    if fd is None:
        yield False
        return
    try:
        start = time.monotonic()
        timeout, noticed, locked = lock_timeout(), False, True
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EINVAL, errno.EBADF, errno.EOPNOTSUPP):
                    raise
                locked = False
                break
            waited = time.monotonic() - start
            if waited >= timeout:
                raise TrtqError(
                    f"{_holder(directory)} has been writing to {directory} for over {timeout:g} s, so this run "
                    "wrote nothing there.",
                    "wait for it to finish (or stop it) and run again, or choose another --output-dir.",
                )
            if not noticed and waited >= WAIT_NOTICE_S:
                print(f"trtq: waiting for {_holder(directory)} to finish writing to {directory}", file=sys.stderr)
                noticed = True
            time.sleep(0.05)
        holder = directory / HOLDER_FILE
        if locked:
            with contextlib.suppress(OSError):
                holder.write_text(f"{os.getpid()} {_command_line()}\n", encoding="utf-8", errors="backslashreplace")
        try:
            yield locked
        finally:
            if locked:
                with contextlib.suppress(OSError):
                    holder.unlink()
    finally:
        os.close(fd)  # releases the lock


def _alive(pid: int) -> bool:
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale(directory: Path, targets: Sequence[Path]) -> None:
    """Remove staged/backup files of `targets` left by a process that was killed outright (SIGKILL)."""
    bases = {_temp_name(t, "tmp").name.rsplit(".", 2)[0][1:] for t in targets} | {JOURNAL[1:].rsplit(".", 1)[0]}
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            match = _TEMP.match(entry.name)
            if not match or match["base"] not in bases or int(match["pid"]) == os.getpid() or _alive(int(match["pid"])):
                continue
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S:
                    os.unlink(entry.path)


def _describe(exc: OSError, target: Path | None) -> str:
    return f"Cannot write {target or exc.filename or 'the outputs'} ({exc.strerror or exc})"


def _fix(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space on that device (or choose another --output-dir) and run again."
    if exc.errno == errno.ENAMETOOLONG:
        return "use a shorter output path or model file name."
    return "check the permissions of the output directory and its files (chmod, chattr), or choose another one."


def write_files_atomically(files: Mapping[Path, Content], *, remove: Iterable[Path] = (),
                           inputs: Iterable[str | Path | None] = (), announce: bool = True) -> None:
    """Write several files as one set: all appear or none changes (see the module docstring).

    A file's content is bytes or an iterable of byte chunks (streamed). `remove` names files of
    the previous set that the new one no longer has (e.g. a `.data` file); they go with the set.
    `announce=False` keeps the files out of `written` (caches, which a stop message need not name).
    """
    targets = [Path(t) for t in files]
    gone = [Path(p) for p in remove if Path(p) not in files and not (Path(p).is_dir() and not Path(p).is_symlink())]
    check_destinations(targets, inputs)
    created: list[Path] = []
    staged: list[Path] = []
    current: Path | None = None
    done = False
    try:
        for directory in dict.fromkeys(t.parent for t in targets):
            created += _make_dirs(directory)
        pairs = []
        for target, content in zip(targets, files.values()):
            current = target
            pairs.append((_stage(target, content, staged), target))
        current = None
        directories = sorted({Path(os.path.realpath(t.parent)) for t in [*targets, *gone]})
        with contextlib.ExitStack() as locks:
            held = {directory: locks.enter_context(_folder_lock(directory))  # one order for every writer: no deadlock
                    for directory in directories}
            with signals_deferred():
                for directory in directories:
                    recover(directory, alive=None if held[directory] else _alive)
                    _remove_stale(directory, [t for t in [*targets, *gone] if os.path.realpath(t.parent) == str(directory)])
                commit = Commit(pairs, gone, _command_line(), _name_max)
                try:
                    current = None
                    commit.begin()
                    commit.run()
                except OSError as exc:
                    current = getattr(exc, "trtq_target", None)
                    stuck = commit.rollback()
                    if stuck:
                        raise TrtqError(
                            f"{_describe(exc, current)}, and the previous files could not all be put back; they are "
                            f"kept as {', '.join(str(p) for p in stuck)}.",
                            "rename those back by hand, then fix the cause (permissions, free space) and run again.",
                        ) from exc
                    raise
                commit.finish()
                if announce:
                    written.extend(targets)
                done = True
    except OSError as exc:
        raise TrtqError(
            f"{_describe(exc, current)}, so nothing was written: the previous outputs are as they were.", _fix(exc),
        ) from exc
    finally:
        with signals_deferred():
            for tmp in staged:
                _unlink_quietly(tmp)
            if not done:
                for directory in reversed(created):
                    with contextlib.suppress(OSError):
                        directory.rmdir()


def _make_dirs(directory: Path) -> list[Path]:
    """Create `directory` and missing parents; returns those created, outermost first."""
    missing = []
    probe = directory
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    ensure_writable_dir(directory)
    return list(reversed(missing))


def atomic_write_bytes(target: Path, data: bytes, announce: bool = True) -> None:
    """Write `data` to `target` atomically (`announce`: see write_files_atomically)."""
    write_files_atomically({Path(target): data}, announce=announce)


def atomic_write_text(target: Path, text: str) -> None:
    """Write `text` (UTF-8) to `target` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))
