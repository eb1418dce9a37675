"""The kernel cache's files: where they go, and that a damaged or foreign file is never loaded.

Compiling and loading need a GPU (test_cuda_kernels_gpu.py); the file handling is checked here.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from trtq.calibrate.cuda_kernels import (
    CACHE_FORMAT,
    _read_cached,
    _write_cached,
    cache_dir,
    cache_file,
)


def test_cache_dir_follows_trtq_cache_dir_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("TRTQ_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "trtq"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "trtq"
    monkeypatch.setenv("TRTQ_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_cached_cubin_round_trips_and_damage_is_refused(tmp_path):
    path = tmp_path / "kernels" / "k.cubin"
    cubin = b"\x7fELF" + bytes(range(256)) * 3 + b"\n\n"  # binary, with newlines inside
    assert _read_cached(path) is None  # absent
    assert _write_cached(path, cubin) == ""
    assert _read_cached(path) == cubin
    stored = path.read_bytes()
    path.write_bytes(stored[:-1] + bytes([stored[-1] ^ 1]))  # one flipped bit in the CUBIN
    assert _read_cached(path) is None
    path.write_bytes(stored[: len(stored) // 2])  # truncated
    assert _read_cached(path) is None
    path.write_bytes(stored.replace(CACHE_FORMAT, b"trtq-cubin-0", 1))  # another format version
    assert _read_cached(path) is None


def test_unwritable_cache_is_a_note_not_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    note = _write_cached(blocker / "kernels" / "k.cubin", b"cubin")
    assert note.startswith("not cached (") and "TRTQ_CACHE_DIR" in note
    assert blocker.read_text() == "not a folder"


def test_cache_file_changes_with_source_architecture_options_and_nvrtc(monkeypatch, tmp_path):
    monkeypatch.setenv("TRTQ_CACHE_DIR", str(tmp_path))
    base = cache_file("src", ("--gpu-architecture=sm_90",), "13.0", "k")
    assert base.parent == tmp_path / "kernels" and base.name.startswith("k-sm_90-nvrtc13.0-")
    assert base == cache_file("src", ("--gpu-architecture=sm_90",), "13.0", "k")
    others = [cache_file("src2", ("--gpu-architecture=sm_90",), "13.0", "k"),
              cache_file("src", ("--gpu-architecture=sm_89",), "13.0", "k"),
              cache_file("src", ("--gpu-architecture=sm_90", "-lineinfo"), "13.0", "k"),
              cache_file("src", ("--gpu-architecture=sm_90",), "13.1", "k")]
    assert len({base, *others}) == 5
