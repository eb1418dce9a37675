"""On a CUDA GPU: training steps replayed from a CUDA graph equal eager steps (skipped without one)."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import residual_conv_net

torch = pytest.importorskip("torch", reason="QAT needs PyTorch (pip install torch); CI installs only .[test]")

from trtq.model import normalize_model
from trtq.qat.data import TrainingData
from trtq.qat.model import QatModel
from trtq.qat.train import Distillation, Monitor, TrainOptions, train
from trtq.quantize import plan_placement
from trtq.torch import OnnxModule

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CUDA-graph step path)"),
]


def _run(cuda_graph: bool) -> tuple[dict[str, torch.Tensor], str, float]:
    model = normalize_model(residual_conv_net(batch="N"))
    placement = plan_placement(model)
    amax = {name: 2.0 for name in placement.calibrated_tensors}
    device = torch.device("cuda")
    qmodel = QatModel(model, placement, amax, device=device)
    teacher = OnnxModule(model, device=device)
    x = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)
    data = TrainingData({"input": x}, None, "random", batch_size=8).to(device)
    loss = Distillation(("scores",))
    options = TrainOptions(steps=12, lr=1e-3, scale_lr=1e-3, eval_every=6, checkpoint_every=6, cuda_graph=cuda_graph)
    result = train(qmodel, teacher, data, loss, loss.tensors, Monitor(teacher, [{"input": x[:8]}], ("scores",)),
                   options, progress=False)
    return qmodel.trained_state(), result.step_mode, result.history[-1].snr_db


def test_cuda_graph_steps_equal_eager_steps():
    torch.backends.cudnn.deterministic = True
    eager, eager_mode, eager_snr = _run(cuda_graph=False)
    graphed, graph_mode, graph_snr = _run(cuda_graph=True)
    assert eager_mode == "eager"
    assert graph_mode == "cuda-graph"
    for name, value in eager.items():
        torch.testing.assert_close(graphed[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert graph_snr == pytest.approx(eager_snr, abs=0.05)
