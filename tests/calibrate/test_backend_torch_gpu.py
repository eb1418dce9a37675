"""GPU calibration backend on a CUDA device: kernels vs the CPU collector, parity with onnxruntime.

Run on the GPU machine: python -m pytest tests/calibrate/test_backend_torch_gpu.py -q
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the GPU machine, not on CI)"),
]

sys.path.insert(0, str(Path(__file__).parent))
from test_backend_torch import TENSORS, assert_parity, batches
from test_backend_torch_stats import stream
from tiny_models import residual_conv_net

from trtq.calibrate.backend_ort import OrtBackend
from trtq.calibrate.backend_torch import TorchBackend
from trtq.calibrate.collector import StatsCollector
from trtq.calibrate.gpu_stats import DeviceStats
from trtq.model import normalize_model


def kernel_stats(engine: str) -> DeviceStats:
    try:
        return DeviceStats(["x"], "cuda", engine=engine)
    except RuntimeError as exc:
        pytest.skip(f"engine {engine} unavailable here: {exc}")


@pytest.mark.parametrize("engine", ["nvrtc", "cupy", "torch"])
def test_engine_equals_collector_bit_for_bit(engine):
    kernel_stats(engine)
    data = stream()
    names = list(data[0])
    ref = StatsCollector(names)
    dev = DeviceStats(names, "cuda", engine=engine)
    for batch in data:
        for i, name in enumerate(names):
            ref.update(name, batch[name])
            dev.update(i, torch.from_numpy(batch[name]).cuda())
        dev.end_batch()
    expected, got = ref.stats(), dev.stats()
    for name in names:
        assert got[name] == expected[name], name


@pytest.mark.parametrize("engine", ["nvrtc", "cupy"])
def test_kernels_on_large_and_unaligned_tensors(engine):
    kernel_stats(engine)
    rng = np.random.default_rng(11)
    big = np.maximum(rng.standard_normal(40_000_003), 0).astype(np.float32)  # many grid-stride rounds
    ref = StatsCollector(["big", "offset"])
    dev = DeviceStats(["big", "offset"], "cuda", engine=engine)
    gpu = torch.from_numpy(big).cuda()
    for scale in (1.0, 5.0):
        ref.update("big", big * np.float32(scale))
        ref.update("offset", big[1:1_000_001] * np.float32(scale))
        dev.update(0, gpu * scale)
        dev.update(1, (gpu * scale)[1:1_000_001])  # data_ptr not 16-byte aligned: scalar path
        dev.end_batch()
    expected, got = ref.stats(), dev.stats()
    assert got["big"] == expected["big"] and got["offset"] == expected["offset"]


def test_cuda_backend_matches_onnxruntime_and_replays_a_graph():
    model = normalize_model(residual_conv_net(batch="N"))
    ort_backend = OrtBackend(model, TENSORS)
    graphs = TorchBackend(model, TENSORS, device="cuda")
    eager = TorchBackend(model, TENSORS, device="cuda", cuda_graphs=False)
    for batch in batches(5):
        ort_backend.observe(batch)
        graphs.observe(batch)
        eager.observe(batch)
    expected = ort_backend.stats()
    assert graphs.uses_cuda_graphs, graphs.graph_note
    assert graphs.stats_engine in ("nvrtc", "cupy")
    assert_parity(graphs.stats(), expected)
    assert_parity(eager.stats(), expected)
    assert graphs.stats()["input"] == expected["input"]


def test_steady_state_needs_no_host_synchronisation():
    model = normalize_model(residual_conv_net(batch="N"))
    backend = TorchBackend(model, TENSORS, device="cuda", cuda_graphs=False)
    data = batches(3)
    backend.observe(data[0])  # first batch: plans, cuDNN autotuning, kernel compilation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in data[1:]:
            backend.observe(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert backend.stats()["r1"].count == 3 * 3 * 8 * 16 * 16
