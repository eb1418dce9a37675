"""TorchBackend on CPU against the onnxruntime backend, device errors, and batch prefetching."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiny_models import residual_conv_net

from trtq.calibrate.algorithms import compute_amax
from trtq.calibrate.backend import make_backend
from trtq.calibrate.backend_ort import OrtBackend
from trtq.calibrate.backend_torch import CUDNN_BENCHMARK_MIN_BATCHES, TorchBackend
from trtq.devices import resolve_device
from trtq.errors import TrtqError
from trtq.model import normalize_model

TENSORS = ["input", "r1", "r2", "r3", "pool", "logits"]


def batches(n: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [{"input": (rng.standard_normal((3, 3, 16, 16)) * (1 + i)).astype(np.float32)} for i in range(n)]


def assert_parity(got: dict, expected: dict) -> None:
    """The issue's bar: max within 1e-5 relative; entropy/percentile within one histogram bin."""
    for name, ref in expected.items():
        mine = got[name]
        assert mine.count == ref.count and mine.nan_count == ref.nan_count
        assert mine.amax == pytest.approx(ref.amax, rel=1e-5)
        for method in ("entropy", "percentile", "mse"):
            width = max(ref.bin_width, mine.bin_width)
            assert abs(compute_amax(mine, method) - compute_amax(ref, method)) <= width, (name, method)


def test_cpu_torch_backend_matches_onnxruntime_backend():
    model = normalize_model(residual_conv_net(batch="N"))
    ort_backend = OrtBackend(model, TENSORS)
    torch_backend = TorchBackend(model, TENSORS, device="cpu")
    for batch in batches():
        ort_backend.observe(batch)
        torch_backend.observe(batch)
    expected, got = ort_backend.stats(), torch_backend.stats()
    assert got["input"] == expected["input"]  # same bytes in, identical statistics out
    assert_parity(got, expected)
    assert torch_backend.name == "torch-cpu" and torch_backend.stats_engine == "torch"
    assert torch_backend.fallback_nodes == () and not torch_backend.uses_cuda_graphs


def test_max_only_backend_has_no_histograms():
    model = normalize_model(residual_conv_net(batch="N"))
    backend = TorchBackend(model, ["r1"], histogram=False, device="cpu")
    backend.observe(batches(1)[0])
    stats = backend.stats()["r1"]
    assert stats.hist.size == 0 and stats.amax > 0 and stats.count == 3 * 8 * 16 * 16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for machines without a GPU")
def test_cuda_without_gpu_is_one_clear_sentence():
    with pytest.raises(TrtqError, match=r"--device cuda needs a CUDA GPU, but PyTorch .* sees none") as info:
        resolve_device("cuda")
    assert "--device cpu" in info.value.hint
    with pytest.raises(TrtqError, match="needs a CUDA GPU"):
        make_backend("cuda:1", residual_conv_net(), ["r1"], histogram=True)


def test_bad_device_names():
    with pytest.raises(TrtqError, match="not a device name"):
        resolve_device("gpu0")


def test_cudnn_autotuning_only_for_long_or_open_ended_runs(monkeypatch):
    model = normalize_model(residual_conv_net(batch="N"))
    short = TorchBackend(model, ["r1"], device="cpu", expected_batches=8)
    assert not short.cudnn_benchmark
    assert TorchBackend(model, ["r1"], device="cpu", expected_batches=CUDNN_BENCHMARK_MIN_BATCHES).cudnn_benchmark
    assert TorchBackend(model, ["r1"], device="cpu").cudnn_benchmark  # unknown length: the old behaviour
    assert TorchBackend(model, ["r1"], device="cpu", expected_batches=8, cudnn_benchmark=True).cudnn_benchmark
    seen = []
    step = short._step
    monkeypatch.setattr(short, "_step", lambda feeds: (seen.append(torch.backends.cudnn.benchmark), step(feeds)))
    before = torch.backends.cudnn.benchmark
    short.observe(batches(1)[0])
    assert seen == [False] and torch.backends.cudnn.benchmark == before  # applied inside the step, then restored


def test_calibration_tells_the_backend_how_many_batches_come(monkeypatch, tmp_path):
    from trtq.calibrate import runner
    from trtq.data.sources import open_dataset
    from trtq.model import graph_inputs

    model = normalize_model(residual_conv_net(batch="N"))
    np.save(tmp_path / "x.npy", np.concatenate([b["input"] for b in batches(4)])[:10])  # 10 samples
    dataset = open_dataset(tmp_path / "x.npy", graph_inputs(model), {"input": (4, 3, 16, 16)})
    told = []

    def recording(device, model, tensors, histogram, batches=None):
        told.append(batches)
        return make_backend("cpu", model, tensors, histogram)

    monkeypatch.setattr(runner, "make_backend", recording)
    runner.run_calibration(model, ["r1"], dataset, model_sha256="0" * 64, batch_size=4, device="cuda", progress=False)
    assert told == [3]  # 4 + 4 + 2
