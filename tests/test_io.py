"""Atomic outputs: all files or none, no temporary file left behind, ordinary permissions."""

import pytest

from trtq.errors import TrtqError


def test_streamed_write_that_fails_leaves_nothing(tmp_path):
    """A chunk source that raises midway leaves neither the target nor a temporary file."""
    from trtq._io import write_files_atomically

    def chunks():
        yield b"first"
        raise OSError(28, "No space left on device")

    with pytest.raises(TrtqError, match="No space left"):
        write_files_atomically({tmp_path / "a.onnx": chunks(), tmp_path / "a.json": b"{}"})
    assert list(tmp_path.iterdir()) == []


def test_outputs_get_the_umask_permissions_not_mkstemps(tmp_path):
    """Atomic writes stage in mkstemp files (0600); the renamed outputs must be as readable as open() makes them."""
    import os

    from trtq._io import atomic_write_bytes, write_files_atomically

    old = os.umask(0o022)
    try:
        write_files_atomically({tmp_path / "a.onnx": b"x", tmp_path / "b.onnx": iter([b"y"])})
        atomic_write_bytes(tmp_path / "c.json", b"{}")
    finally:
        os.umask(old)
    for name in ("a.onnx", "b.onnx", "c.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
