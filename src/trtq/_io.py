"""Atomic file output: write to a temporary file beside the target, then rename.

An interrupted or failed run therefore never leaves a half-written artifact behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from trtq.errors import TrtqError


def ensure_writable_dir(directory: Path) -> Path:
    """Create `directory` if needed and check that files can be written there."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrtqError(
            f"Cannot create output directory {directory}: {exc.strerror}.",
            "choose a writable --output-dir.",
        ) from exc
    if not os.access(directory, os.W_OK):
        raise TrtqError(
            f"Output directory {directory} is not writable.", "choose a writable --output-dir."
        )
    return directory


def check_writable_dir(directory: Path) -> None:
    """Fail early, leaving nothing behind, when `directory` could not be created or written to.

    Long work (calibration) checks its output directory first, so a typo costs seconds, not
    minutes. A temporary file is created and removed in the nearest existing ancestor: permission
    bits alone do not tell (root passes every check; /proc refuses all writes).
    """
    directory = Path(directory)
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise TrtqError(f"Cannot create output directory {directory}: {existing} is not a directory.",
                        "choose a writable --output-dir.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".trtq-probe-", dir=existing)
    except OSError as exc:
        what = "is not writable" if existing == directory else f"cannot be created in {existing}"
        raise TrtqError(f"Output directory {directory} {what} ({exc.strerror}).",
                        "choose a writable --output-dir.") from exc
    os.close(fd)
    os.unlink(probe)


def _staging_file(target: Path) -> tuple[int, str]:
    """A new temporary file beside `target`, with the permissions a plain open() would give it.

    mkstemp creates files readable by their owner only (0600); outputs are meant to be shared
    (a build machine, a container volume), so the mode follows the umask, as for any new file.
    """
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    umask = os.umask(0)
    os.umask(umask)
    if hasattr(os, "fchmod"):  # POSIX; on Windows the mode bits do not apply
        os.fchmod(fd, 0o666 & ~umask)
    return fd, name


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only on success."""
    target = Path(target)
    ensure_writable_dir(target.parent)
    fd, tmp_name = _staging_file(target)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Write `data` to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: Path, text: str) -> None:
    """Write `text` (UTF-8) to `target` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


def write_files_atomically(files: Mapping[Path, bytes | Iterable[bytes]]) -> None:
    """Write several files so that either all appear or none does.

    Every file is first written to a temporary name beside its target; only when all writes
    succeeded are they renamed into place. A file's content is bytes or an iterable of byte
    chunks (streamed, e.g. a large model's weights one by one).
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for target, data in files.items():
            target = Path(target)
            ensure_writable_dir(target.parent)
            fd, tmp_name = _staging_file(target)
            staged.append((Path(tmp_name), target))
            with os.fdopen(fd, "wb") as handle:
                if isinstance(data, (bytes, bytearray, memoryview)):
                    handle.write(data)
                else:
                    for chunk in data:
                        handle.write(chunk)
        for tmp, target in staged:
            os.replace(tmp, target)
    except OSError as exc:
        raise TrtqError(
            f"Cannot write {exc.filename or 'an output file'}: {exc.strerror}.",
            "check free disk space and permissions of the output directory.",
        ) from exc
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()
