"""The executor on CUDA against onnxruntime on torchvision models exported both ways.

Run on the GPU machine (torchvision and a GPU are there): python -m pytest tests/torch -q -m gpu
Random-init weights are enough: the test compares two executions of the same graph.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
ort = pytest.importorskip("onnxruntime")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the GPU machine, not on CI)"),
]

from trtq.model import normalize_model
from trtq.torch import OnnxModule


class RetinaNetCore(torch.nn.Module):
    """Backbone + FPN + head of a torchvision RetinaNet: what gets quantized (postprocessing stays FP32)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.head(list(self.model.backbone(x).values()))
        return out["cls_logits"], out["bbox_regression"]


def export(module: torch.nn.Module, args: tuple, path, dynamo: bool) -> onnx.ModelProto:
    kwargs = {"dynamo": dynamo, "input_names": ["images"]}
    if not dynamo:
        kwargs["opset_version"] = 17
    try:
        torch.onnx.export(module, args, str(path), **kwargs)
    except Exception as exc:  # exporters raise many types; a failed export is reported, not a trtq failure
        if dynamo:
            pytest.skip(f"the dynamo exporter failed on this model here: {type(exc).__name__}: {str(exc)[:200]}")
        raise
    return normalize_model(onnx.load(str(path)))


def run_both(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], dict, OnnxModule]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    module = OnnxModule(model, device="cuda")
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            for _ in range(2):  # the second run replays cached shape arithmetic
                got = module.run(feeds)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    return expected, {k: v.cpu().numpy() for k, v in got.items()}, module


def assert_close(expected: list[np.ndarray], got: dict, names: tuple[str, ...]) -> None:
    for name, ref in zip(names, expected):
        out = got[name]
        assert out.shape == ref.shape and out.dtype == ref.dtype, name
        scale = float(np.abs(ref).max()) or 1.0
        assert float(np.abs(out - ref).max()) <= 1e-4 * scale, (name, float(np.abs(out - ref).max()), scale)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_resnet50(tmp_path, dynamo):
    torch.manual_seed(0)
    net = torchvision.models.resnet50().eval()
    x = torch.randn(2, 3, 224, 224)
    model = export(net, (x,), tmp_path / "resnet50.onnx", dynamo)
    expected, got, module = run_both(model, {"images": x.numpy()})
    assert_close(expected, got, module.output_names)
    assert module.fallback_nodes == () and module.last_run_capturable


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_retinanet_backbone_fpn_head(tmp_path, dynamo):
    torch.manual_seed(0)
    det = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None).eval()
    x = torch.rand(2, 3, 320, 320)
    model = export(RetinaNetCore(det), (x,), tmp_path / "retinanet.onnx", dynamo)
    expected, got, module = run_both(model, {"images": x.numpy()})
    assert_close(expected, got, module.output_names)
    assert module.fallback_nodes == () and module.last_run_capturable


def test_retinanet_with_postprocessing_falls_back_for_nms(tmp_path):
    # The full detector, NMS included: NonMaxSuppression runs through onnxruntime and is reported.
    torch.manual_seed(0)
    det = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=320, max_size=320, score_thresh=0.0).eval()
    image = torch.rand(3, 320, 320)
    model = export(det, ([image],), tmp_path / "retinanet_full.onnx", dynamo=False)
    expected, got, module = run_both(model, {"images": image.numpy()})
    assert any("NonMaxSuppression" in name for name in module.fallback_nodes), module.fallback_nodes
    assert not module.last_run_capturable
    boxes = dict(zip(module.output_names, expected))
    first = module.output_names[0]
    assert got[first].shape == boxes[first].shape  # same number of detections
