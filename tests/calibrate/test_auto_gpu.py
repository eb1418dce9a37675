"""`--method auto` with the GPU backend: statistics on the device, the judging from the same samples.

Run on the GPU machine: python -m pytest tests/calibrate/test_auto_gpu.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the GPU machine, not on CI)"),
]

from tiny_models import residual_conv_net, save

from trtq import api


@pytest.mark.parametrize(("judge_layers", "settled"), [(False, False), (True, False), (False, True)])
def test_auto_on_cuda_explains_every_tensor_and_agrees_with_cpu(tmp_path, judge_layers, settled, monkeypatch):
    import trtq.calibrate.auto as auto_module

    if not settled:  # the tables race on 4 judging samples (a model too large to check on every sample)
        monkeypatch.setattr(auto_module, "SETTLE_VALUES", 0)
    model = save(residual_conv_net(batch="N"), tmp_path / "net.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32))
    results = {
        device: api.quantize(model, tmp_path / "calib.npy", progress=False,
                             options=api.QuantizeOptions(method="auto", device=device, judge_layers=judge_layers,
                                                         output_dir=str(tmp_path / device)))
        for device in ("cpu", "cuda")
    }
    cpu, gpu = results["cpu"], results["cuda"]
    assert set(gpu.choices) == set(cpu.choices) and gpu.range_samples == cpu.range_samples == (32 if settled else 4)
    assert gpu.range_checked_on == cpu.range_checked_on == ("every sample" if settled else "judging samples")
    # 4 judged samples, one from each of 4 batches (the batch dim is dynamic); the local judge (--judge-layers)
    # judges on the first of them (LOCAL_BATCHES), and without it no choice is judged layer by layer
    assert all(c.judged_samples == (1 if judge_layers else 0) for c in gpu.choices.values())
    assert all((c.snr_db is not None) == judge_layers for c in gpu.choices.values())
    for name, choice in gpu.choices.items():  # ranges match within a histogram bin, so choices agree closely
        assert choice.amax_over_max == pytest.approx(cpu.choices[name].amax_over_max, rel=0.02, abs=1e-3), name
