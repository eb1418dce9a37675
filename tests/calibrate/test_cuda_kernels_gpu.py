"""The statistics kernels' disk cache on a CUDA device: compiled once, then loaded; damage recompiles.

Run on the GPU machine: python -m pytest tests/calibrate/test_cuda_kernels_gpu.py -q
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the GPU machine, not on CI)"),
]

sys.path.insert(0, str(Path(__file__).parent))
from test_backend_torch_stats import stream

from trtq.calibrate import cuda_kernels
from trtq.calibrate.collector import StatsCollector
from trtq.calibrate.gpu_stats import _SIGNATURES, CUDA_SOURCE, DeviceStats


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    """An empty cache folder, and no kernels loaded earlier in this process."""
    monkeypatch.setenv("TRTQ_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cuda_kernels, "_LOADED", {})
    return tmp_path


def load() -> cuda_kernels.LoadedKernels:
    return cuda_kernels.load_kernels(CUDA_SOURCE, _SIGNATURES, torch.device("cuda"), "trtq-stats")


def collector_equal(names_data: list[dict]) -> None:
    names = list(names_data[0])
    ref = StatsCollector(names)
    dev = DeviceStats(names, "cuda", engine="nvrtc")
    for batch in names_data:
        for i, name in enumerate(names):
            ref.update(name, batch[name])
            dev.update(i, torch.from_numpy(batch[name]).cuda())
        dev.end_batch()
    expected, got = ref.stats(), dev.stats()
    assert all(got[n] == expected[n] for n in names)


def test_compiled_once_then_loaded_from_the_cache(fresh_cache):
    first = load()
    assert not first.cached and first.compile_seconds > 0 and first.path is not None
    assert first.path.parent == fresh_cache / "kernels" and first.path.exists()
    assert load() is first  # same process: the module is reused
    cuda_kernels._LOADED.clear()  # as a new process would
    second = load()
    assert second.cached and second.compile_seconds == 0 and second.path == first.path
    stats = DeviceStats(["x"], "cuda", engine="nvrtc")
    assert stats.kernel_origin.startswith("kernels from the cache in ")
    collector_equal(stream())  # kernels loaded from the file compute the collector's statistics exactly


@pytest.mark.parametrize("damage", ["digest", "cubin"])
def test_damaged_cache_file_is_rebuilt(fresh_cache, damage):
    path = load().path
    assert path is not None
    cuda_kernels._LOADED.clear()
    if damage == "digest":  # bytes changed after writing: the digest disagrees
        data = path.read_bytes()
        path.write_bytes(data[:-8] + b"garbage!")
    else:  # consistent digest, but not a CUBIN the driver accepts
        cuda_kernels._write_cached(path, b"not a cubin")  # no ELF magic: the driver parses it as PTX text and refuses it
    rebuilt = load()
    assert not rebuilt.cached and rebuilt.path == path
    assert cuda_kernels._read_cached(path) is not None
    collector_equal(stream())


def test_unwritable_cache_still_calibrates(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("TRTQ_CACHE_DIR", str(blocker))
    monkeypatch.setattr(cuda_kernels, "_LOADED", {})
    loaded = load()
    assert not loaded.cached and loaded.path is None and loaded.note.startswith("not cached (")
    assert "not cached (" in DeviceStats(["x"], "cuda", engine="nvrtc").kernel_origin
    collector_equal(stream())
