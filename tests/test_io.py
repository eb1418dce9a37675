"""Atomic output sets: all files or none, the previous set kept on any failure, no temporary file
left behind, ordinary permissions, one writer at a time per folder, stop signals held during renames.

Cross-process cases (a lock held by another process, two writers racing) run small Python
subprocesses with timeouts, so a hang fails the test instead of stalling the suite.
"""

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

import trtq
import trtq._io as io
from trtq.errors import TrtqError

SRC = str(Path(trtq.__file__).resolve().parents[1])


def _previous_set(folder: Path) -> dict[str, bytes]:
    """Write an 'old' set of three files directly (as an earlier run would have) and return it."""
    old = {"m.int8.onnx": b"old onnx", "m.int8.cache": b"old cache", "m.int8.json": b"old json"}
    for name, data in old.items():
        (folder / name).write_bytes(data)
    return old


def _new_set(folder: Path, tag: bytes = b"new") -> dict[Path, bytes]:
    return {folder / "m.int8.onnx": tag + b" onnx", folder / "m.int8.cache": tag + b" cache",
            folder / "m.int8.json": tag + b" json"}


def _contents(folder: Path) -> dict[str, bytes]:
    """Every file in `folder`, hidden ones (staging, backups, lock notes) included."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_streamed_write_that_fails_leaves_nothing(tmp_path):
    """A chunk source that raises midway leaves neither the target nor a temporary file."""

    def chunks():
        yield b"first"
        raise OSError(28, "No space left on device")

    with pytest.raises(TrtqError, match="No space left"):
        io.write_files_atomically({tmp_path / "a.onnx": chunks(), tmp_path / "a.json": b"{}"})
    assert list(tmp_path.iterdir()) == []


def test_outputs_get_the_umask_permissions_not_mkstemps(tmp_path):
    """Atomic writes stage in temporary files; the renamed outputs must be as readable as open() makes them."""
    old = os.umask(0o022)
    try:
        io.write_files_atomically({tmp_path / "a.onnx": b"x", tmp_path / "b.onnx": iter([b"y"])})
        io.atomic_write_bytes(tmp_path / "c.json", b"{}")
    finally:
        os.umask(old)
    for name in ("a.onnx", "b.onnx", "c.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_a_failed_last_rename_puts_the_previous_set_back(tmp_path, monkeypatch):
    """The .json rename fails (as when it is immutable): the new .onnx/.cache must not stay beside the old .json."""
    old = _previous_set(tmp_path)
    real = os.replace

    def refuse_json(src, dst):
        if str(dst).endswith(".int8.json"):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refuse_json)
    with pytest.raises(TrtqError, match=r"m\.int8\.json \(Operation not permitted\).*previous outputs are as they were"):
        io.write_files_atomically(_new_set(tmp_path))
    monkeypatch.undo()
    assert _contents(tmp_path) == old  # nothing new, no staged or backup file left


def test_enospc_while_staging_the_last_file_keeps_the_previous_set(tmp_path, monkeypatch):
    old = _previous_set(tmp_path)
    real = io._write_content

    def full_disk(handle, content):
        if content == b"new json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(handle, content)

    monkeypatch.setattr(io, "_write_content", full_disk)
    with pytest.raises(TrtqError, match=r"m\.int8\.json \(No space left on device\)") as caught:
        io.write_files_atomically(_new_set(tmp_path))
    assert "free space" in caught.value.hint
    assert _contents(tmp_path) == old


@pytest.mark.parametrize("bad", ["directory", "immutable"])
def test_a_destination_that_cannot_be_replaced_fails_before_anything_is_written(tmp_path, bad):
    old = _previous_set(tmp_path)
    target = tmp_path / "m.int8.json"
    if bad == "directory":
        target.unlink()
        target.mkdir()
        old.pop("m.int8.json")
        match = "is a directory"
    else:
        immutable = shutil.which("chattr") and not subprocess.run(["chattr", "+i", str(target)], capture_output=True,
                                                                  check=False).returncode
        if not immutable:
            pytest.skip("chattr +i is not available here (needs root with CAP_LINUX_IMMUTABLE)")
        match = "immutable"
    try:
        with pytest.raises(TrtqError, match=match):
            io.write_files_atomically(_new_set(tmp_path))
        assert _contents(tmp_path) == old
    finally:
        if bad == "immutable":
            subprocess.run(["chattr", "-i", str(target)], check=True)


def test_an_immutable_file_found_only_at_rename_time_rolls_back(tmp_path, monkeypatch):
    """The kernel refuses the rename itself (chattr +i set after the up-front check): the set is restored."""
    old = _previous_set(tmp_path)
    target = tmp_path / "m.int8.json"
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(target)], capture_output=True, check=False).returncode:
        pytest.skip("chattr +i is not available here (needs root with CAP_LINUX_IMMUTABLE)")
    monkeypatch.setattr(io, "_immutable", lambda path: False)  # as if it became immutable after the check
    try:
        with pytest.raises(TrtqError, match="previous outputs are as they were"):
            io.write_files_atomically(_new_set(tmp_path))
        assert _contents(tmp_path) == old
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=True)


def test_a_data_file_of_the_previous_set_goes_with_it(tmp_path, monkeypatch):
    """An earlier run stored its weights apart; this one does not: the old .data goes, or stays if the set fails."""
    old = _previous_set(tmp_path)
    (tmp_path / "m.int8.onnx.data").write_bytes(b"old weights")
    real = os.replace

    def refuse_json(src, dst):
        if str(dst).endswith(".int8.json"):
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refuse_json)
    with pytest.raises(TrtqError):
        io.write_files_atomically(_new_set(tmp_path), remove=[tmp_path / "m.int8.onnx.data"])
    assert _contents(tmp_path) == {**old, "m.int8.onnx.data": b"old weights"}
    monkeypatch.undo()
    io.write_files_atomically(_new_set(tmp_path), remove=[tmp_path / "m.int8.onnx.data"])
    assert _contents(tmp_path) == {p.name: d for p, d in _new_set(tmp_path).items()}


def test_a_symlinked_output_is_replaced_and_restored_on_failure(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(b"kept")
    (tmp_path / "m.int8.json").symlink_to(elsewhere)
    real = os.replace

    def refuse_cache(src, dst):
        if str(dst).endswith(".int8.cache"):
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refuse_cache)
    files = {tmp_path / "m.int8.json": b"new json", tmp_path / "m.int8.cache": b"new cache"}
    with pytest.raises(TrtqError):
        io.write_files_atomically(files)
    assert os.readlink(tmp_path / "m.int8.json") == str(elsewhere) and not (tmp_path / "m.int8.cache").exists()
    monkeypatch.undo()
    io.write_files_atomically(files)
    assert not (tmp_path / "m.int8.json").is_symlink() and elsewhere.read_bytes() == b"kept"


def test_output_paths_that_cannot_work_are_one_sentence_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrtqError, match="is not a directory"):
        io.check_destinations([tmp_path / "file" / "out" / "m.int8.onnx"])
    (tmp_path / "dangling").symlink_to(tmp_path / "missing" / "deeper")
    with pytest.raises(TrtqError, match=r"symbolic link .* does not resolve"):
        io.check_destinations([tmp_path / "dangling" / "m.int8.onnx"])
    with pytest.raises(TrtqError, match="too long"):
        io.check_destinations([tmp_path / ("d" * 300) / "m.int8.onnx"])
    with pytest.raises(TrtqError, match="over the file system's limit"):
        io.check_destinations([tmp_path / ("m" * 250 + ".int8.cache")])
    deep = tmp_path.joinpath(*["p" * 200] * 25) / "m.int8.onnx"  # over PATH_MAX, each name short enough
    with pytest.raises(TrtqError, match="too long"):
        io.check_destinations([deep])
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    with pytest.raises(TrtqError, match="is the input"):
        io.check_destinations([model], inputs=[model])
    with pytest.raises(TrtqError, match="/dev/null is a character device, not a file"):
        io.check_destinations([Path("/dev/null")])  # renaming over it (as root) would replace the device
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(TrtqError, match="is a named pipe"):
        io.check_destinations([tmp_path / "pipe"])
    (tmp_path / "pipe").unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "file", "m.onnx"]  # no probe left


def test_a_failed_set_removes_the_folders_it_created(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_write_content", lambda handle, content: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(TrtqError):
        io.write_files_atomically({tmp_path / "a" / "b" / "m.onnx": b"x"})
    assert list(tmp_path.iterdir()) == []


def test_signals_wait_until_the_renames_are_done(tmp_path, monkeypatch):
    """A stop signal during the renames is delivered after the whole set is in place, to the handler it had."""
    old = _previous_set(tmp_path)
    real = os.replace
    calls = []

    def stop_midway(src, dst):
        real(src, dst)
        if Path(dst).name == io.JOURNAL:  # the commit journal, written before and after the renames
            return
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after the first of three renames
            time.sleep(0.05)  # the handler would run here if it were not held back

    monkeypatch.setattr(os, "replace", stop_midway)
    with pytest.raises(KeyboardInterrupt):
        io.write_files_atomically(_new_set(tmp_path))
    assert len(calls) == 3 and set(_contents(tmp_path)) == set(old)
    assert all(data.startswith(b"new") for data in _contents(tmp_path).values())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_stop_handlers_leave_ignored_signals_ignored():
    """`nohup` ignores SIGHUP: the CLI must not turn it back into a stop."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        io.install_stop_handlers()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        with pytest.raises(io.Stopped) as caught:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)
        assert caught.value.name == "SIGTERM"
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def _python(code: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, "PYTHONPATH": SRC, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)


@pytest.mark.skipif(io.fcntl is None, reason="advisory locks need fcntl (POSIX)")
def test_a_folder_held_by_another_writer_is_named_and_left_alone(tmp_path, monkeypatch):
    old = _previous_set(tmp_path)
    ready = tmp_path.parent / f"{tmp_path.name}.held"
    holder = _python(f"""
        import fcntl, os, sys, time
        fd = os.open({str(tmp_path)!r}, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        open({str(tmp_path / io.HOLDER_FILE)!r}, "w").write(f"{{os.getpid()}} trtq quantize other.onnx\\n")
        open({str(ready)!r}, "w").close()
        time.sleep(30)
    """)
    try:
        _wait_for(ready)
        monkeypatch.setenv(io.LOCK_TIMEOUT_ENV, "0.3")
        with pytest.raises(TrtqError, match=rf"process {holder.pid} \(trtq quantize other.onnx\) has been writing to "):
            io.write_files_atomically(_new_set(tmp_path))
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    assert {n: d for n, d in _contents(tmp_path).items() if n != io.HOLDER_FILE} == old


@pytest.mark.skipif(io.fcntl is None, reason="advisory locks need fcntl (POSIX)")
def test_a_writer_waits_for_a_short_hold_and_says_for_whom(tmp_path, capsys):
    ready = tmp_path.parent / f"{tmp_path.name}.held"
    holder = _python(f"""
        import fcntl, os, time
        fd = os.open({str(tmp_path)!r}, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        open({str(tmp_path / io.HOLDER_FILE)!r}, "w").write(f"{{os.getpid()}} trtq report out\\n")
        open({str(ready)!r}, "w").close()
        time.sleep(1.5)
        os.unlink({str(tmp_path / io.HOLDER_FILE)!r})
    """)
    try:
        _wait_for(ready)
        start = time.monotonic()
        io.write_files_atomically(_new_set(tmp_path))
        assert time.monotonic() - start > 0.5  # it waited for the holder
    finally:
        holder.communicate(timeout=30)
    assert f"trtq: waiting for process {holder.pid} (trtq report out) to finish writing to " in capsys.readouterr().err
    assert _contents(tmp_path) == {p.name: d for p, d in _new_set(tmp_path).items()}


@pytest.mark.skipif(io.fcntl is None, reason="advisory locks need fcntl (POSIX)")
def test_two_writers_never_mix_their_sets(tmp_path):
    """Writer A renames slowly (0.4 s per file); writer B starts once A's first file is in place and writes fast.

    Without the lock B's three renames land between A's: the folder ends with B's .onnx and A's
    .cache and .json. With it B waits for A, and the folder holds B's whole set.
    """
    first = tmp_path.parent / f"{tmp_path.name}.first"
    writer = """
        import os, sys, time
        from pathlib import Path
        import trtq._io as io
        folder, tag, slow, first = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), Path(sys.argv[4])
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            first.touch()
            time.sleep(slow)
        os.replace = replace
        if not slow:
            while not first.exists():
                time.sleep(0.01)
        io.write_files_atomically({folder / f"m.int8.{ext}": f"{tag} {ext}".encode() for ext in ("onnx", "cache", "json")})
    """

    def run(tag: str, slow: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", textwrap.dedent(writer), str(tmp_path), tag, str(slow), str(first)],
                                env={**os.environ, "PYTHONPATH": SRC}, stderr=subprocess.PIPE, text=True)

    b = run("B", 0.0)
    a = run("A", 0.4)
    for proc in (a, b):
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    tags = {data.split()[0] for data in _contents(tmp_path).values()}
    assert tags == {b"B"}, _contents(tmp_path)
    assert sorted(_contents(tmp_path)) == ["m.int8.cache", "m.int8.json", "m.int8.onnx"]


def test_staged_files_of_a_killed_writer_are_removed_later(tmp_path):
    """SIGKILL cannot be handled: the next writer to the folder removes what the dead process staged."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".m.int8.onnx.{pid}-0123abcd.tmp"
    stale.write_bytes(b"half a model")
    old_time = time.time() - io.STALE_AFTER_S - 10
    os.utime(stale, (old_time, old_time))
    fresh = tmp_path / f".m.int8.cache.{pid}-4567cdef.tmp"  # too recent to be sure: left alone
    fresh.write_bytes(b"x")
    io.write_files_atomically(_new_set(tmp_path))
    assert not stale.exists() and fresh.exists()


@pytest.mark.parametrize("value", ["garbage", "nan", "-5", "1e"])
def test_a_lock_timeout_that_is_no_number_of_seconds_fails_before_anything_is_written(tmp_path, monkeypatch, value):
    old = _previous_set(tmp_path)
    monkeypatch.setenv(io.LOCK_TIMEOUT_ENV, value)
    with pytest.raises(TrtqError, match=rf"TRTQ_LOCK_TIMEOUT='{value}' is not a number of seconds >= 0"):
        io.check_destinations(_new_set(tmp_path))
    with pytest.raises(TrtqError, match="is not a number of seconds"):
        io.write_files_atomically(_new_set(tmp_path))
    assert _contents(tmp_path) == old


@pytest.mark.parametrize(("value", "seconds"), [("", io.DEFAULT_LOCK_TIMEOUT), (" 2.5 ", 2.5), ("0", 0.0), ("inf", float("inf"))])
def test_lock_timeouts_that_are_numbers_are_taken(monkeypatch, value, seconds):
    monkeypatch.setenv(io.LOCK_TIMEOUT_ENV, value)
    assert io.lock_timeout() == seconds


@pytest.mark.skipif(io.fcntl is None, reason="the holder note is written only where folders can be locked")
def test_a_command_line_that_is_not_utf8_still_writes_its_set(tmp_path, monkeypatch):
    """A file name of undecodable bytes reaches sys.argv as surrogates; the holder note must not choke on them."""
    monkeypatch.setattr(sys, "argv", ["trtq", "quantize", os.fsdecode(b"n\xffame.onnx")])
    io.write_files_atomically(_new_set(tmp_path))
    assert _contents(tmp_path) == {p.name: d for p, d in _new_set(tmp_path).items()}


_KILLED_WRITER = """
    import os, signal, sys
    from pathlib import Path
    import trtq._commit as commit
    import trtq._io as io
    folder, kill_at = Path(sys.argv[1]), int(sys.argv[2])
    calls = []

    def counted(name):
        real = getattr(os, name)
        def call(*args, **kwargs):
            if calls is not None and len(calls) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # as a power cut would: no handler, no cleanup
            if calls is not None:
                calls.append(name)
            return real(*args, **kwargs)
        setattr(os, name, call)

    begin = commit.Commit.begin
    def begin_counting(self):
        global calls
        calls = []
        begin(self)
    calls = None
    commit.Commit.begin = begin_counting
    for name in ("link", "rename", "replace", "unlink", "fsync"):
        counted(name)
    new = {folder / n: f"new {n}".encode() for n in ("m.int8.onnx", "m.int8.cache", "m.int8.json", "run.json")}
    io.write_files_atomically(new, remove=[folder / "m.int8.onnx.data"])
    print(len(calls))
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")
def test_a_writer_killed_at_any_step_of_its_renames_is_rolled_back_by_the_next(tmp_path):
    """SIGKILL (or a power cut) between any two file operations of the renames: the next writer to the
    folder finds the journal and puts the previous set back whole (or, past the commit point, keeps
    the new set whole), says so in one warning, and leaves no backup, staged file or journal behind.

    The old set has a `.data` file the new one drops, and the new one a run record the old lacked.
    """
    old = {"m.int8.onnx": b"old onnx", "m.int8.onnx.data": b"old data", "m.int8.cache": b"old cache",
           "m.int8.json": b"old json"}
    new = {n: f"new {n}".encode() for n in ("m.int8.onnx", "m.int8.cache", "m.int8.json", "run.json")}

    def run(folder: Path, kill_at: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_WRITER), str(folder), str(kill_at)],
                              env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True, timeout=60, check=False)

    (tmp_path / "whole").mkdir()
    whole = run(tmp_path / "whole", 10**6)
    assert whole.returncode == 0, whole.stderr
    steps = int(whole.stdout)
    assert steps >= 12  # journal, 4 links/renames, 4 replaces, done mark, backups, journal removal
    outcomes = []
    for kill_at in range(steps):
        folder = tmp_path / f"k{kill_at}"
        folder.mkdir()
        for name, data in old.items():
            (folder / name).write_bytes(data)
        killed = run(folder, kill_at)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        journalled = (folder / io.JOURNAL).exists()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            io.write_files_atomically({folder / "other.txt": b"x"})
        assert len(caught) == int(journalled), [str(w.message) for w in caught]
        left = {n: d for n, d in _contents(folder).items() if n != "other.txt" and not n.endswith(".tmp")}
        assert left in (old, new), (kill_at, left)
        outcomes.append("old" if left == old else "new")
        if journalled:
            assert ("rolled that back" in str(caught[0].message)) == (left == old), str(caught[0].message)
        else:  # killed before its journal was in place: nothing was renamed; its staged files go after STALE_AFTER_S
            assert left == old
    assert outcomes[0] == "old" and outcomes[-1] == "new" and outcomes == sorted(outcomes, key=("old", "new").index)


def test_a_journal_that_names_files_outside_its_folder_is_not_followed(tmp_path):
    """A planted (or damaged) journal must not make the next writer move or remove files elsewhere."""
    import json

    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"keep me")
    folder = tmp_path / "out"
    folder.mkdir()
    info = outside.stat()
    (folder / io.JOURNAL).write_text(json.dumps({"pid": 99999999, "command": "trtq x", "done": False, "steps": [
        {"target": "../precious.txt", "backup": ".b.bak", "staged": None, "inode": [info.st_dev, info.st_ino]}]}))
    with pytest.warns(UserWarning, match="is unreadable"):
        io.write_files_atomically(_new_set(folder))
    assert outside.read_bytes() == b"keep me"
    assert _contents(folder) == {p.name: d for p, d in _new_set(folder).items()}
