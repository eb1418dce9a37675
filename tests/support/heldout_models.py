"""Model families nobody tuned trtq's placement to, for the held-out `trtq verify` check
(tests/verify/test_verify_heldout.py): torchvision-style CNNs written out in torch (torchvision
itself does not import beside this project's CPU torch), transformers' ViT, ConvNeXt and DETR from
configs, and Ultralytics' YOLOv8n from its yaml. Random weights, seeded; small shapes. Each
builder returns (module, example inputs, input names); `export` writes it with torch's legacy or
dynamo exporter.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Heldout:
    """One held-out model: how to build it, its input shape (batch 1, NCHW) and what it needs."""

    name: str
    build: Callable[[], object]
    shape: tuple[int, ...]
    needs: tuple[str, ...] = ("torch",)
    dynamo_batch: bool = True
    """Whether torch.export takes a dynamic batch for it (transformers' ConvNeXt specialises the batch)."""


def _nn():  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    return torch, nn


def mobilenet_v3():  # type: ignore[no-untyped-def]
    """A MobileNetV3-small-style classifier (torchvision's block structure):

        x -> conv 3x3 s2 (3->16) BN hardswish
          -> [inverted residual: 1x1 expand BN act -> depthwise kxk (s) BN act -> (SE: avgpool -> 1x1 -> relu
              -> 1x1 -> hardsigmoid -> mul) -> 1x1 project BN (+ skip when stride 1 and same width)] x 4
          -> 1x1 conv (->96) BN hardswish -> avgpool -> linear 96->128 hardswish -> dropout -> linear 128->10
    """
    torch, nn = _nn()

    class SE(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.pool, self.fc1, self.fc2 = nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, max(c // 4, 8), 1), \
                nn.Conv2d(max(c // 4, 8), c, 1)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(self.pool(x)))))

    class Block(nn.Module):
        def __init__(self, cin: int, exp: int, cout: int, k: int, stride: int, se: bool, act) -> None:  # type: ignore[no-untyped-def]
            super().__init__()
            layers = [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), act(),
                      nn.Conv2d(exp, exp, k, stride, k // 2, groups=exp, bias=False), nn.BatchNorm2d(exp), act()]
            if se:
                layers.append(SE(exp))
            layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.block, self.skip = nn.Sequential(*layers), stride == 1 and cin == cout

        def forward(self, x):  # type: ignore[no-untyped-def]
            y = self.block(x)
            return x + y if self.skip else y

    class MobileNetV3(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
            self.blocks = nn.Sequential(Block(16, 16, 16, 3, 2, True, nn.ReLU), Block(16, 72, 24, 3, 2, False, nn.ReLU),
                                        Block(24, 88, 24, 3, 1, False, nn.ReLU),
                                        Block(24, 96, 40, 5, 2, True, nn.Hardswish))
            self.head = nn.Sequential(nn.Conv2d(40, 96, 1, bias=False), nn.BatchNorm2d(96), nn.Hardswish(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 128), nn.Hardswish(),
                                      nn.Dropout(0.2), nn.Linear(128, 10))

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.head(self.blocks(self.stem(x)))

    return _seeded(MobileNetV3)


def resnext():  # type: ignore[no-untyped-def]
    """A ResNeXt-style classifier: grouped 3x3 convs (32 groups) in bottlenecks, a strided projection skip:

        x -> conv 7x7 s2 (3->32) BN relu -> maxpool 3x3 s2
          -> [bottleneck: 1x1 (->64) BN relu -> 3x3 groups=32 (s) BN relu -> 1x1 (->out) BN; + skip (1x1 s BN
              when the shape changes) -> relu] x 2 -> global avgpool -> flatten -> fc 128->10
    """
    torch, nn = _nn()

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(cin, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.Conv2d(64, 64, 3, stride, 1, groups=32, bias=False), nn.BatchNorm2d(64),
                                      nn.ReLU(), nn.Conv2d(64, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.down = None if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):  # type: ignore[no-untyped-def]
            return torch.relu(self.body(x) + (x if self.down is None else self.down(x)))

    class ResNeXt(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 32, 7, 2, 3, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            self.layers = nn.Sequential(Bottleneck(32, 64, 1), Bottleneck(64, 128, 2))
            self.fc = nn.Linear(128, 10)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))

    return _seeded(ResNeXt)


def retinanet():  # type: ignore[no-untyped-def]
    """A RetinaNet-style detector: backbone, FPN (lateral 1x1, nearest 2x upsample + add, 3x3 smooth, P6 by
    a strided conv), and shared class and box heads (4 x conv 3x3 + relu, then the predictor) over the levels:

        x -> C3 (s8, 32) -> C4 (s16, 64) -> C5 (s32, 128)
        P5 = lat5(C5); P4 = lat4(C4) + up(P5); P3 = lat3(C3) + up(P4); P_i = smooth_i(P_i); P6 = conv s2(C5)
        per level: cls = sigmoid(cls_head(P)) [N, A*K, H, W] -> [N, H*W*A, K]; box = box_head(P) -> [N, H*W*A, 4]
        scores = concat over levels [N, sum, K]; boxes = concat [N, sum, 4]
    """
    torch, nn = _nn()

    def conv_bn(cin: int, cout: int, stride: int):  # type: ignore[no-untyped-def]
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def head(out: int):  # type: ignore[no-untyped-def]
        layers = [m for _ in range(4) for m in (nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU())]
        return nn.Sequential(*layers, nn.Conv2d(32, out, 3, 1, 1))

    class RetinaNet(nn.Module):
        anchors, classes = 3, 5

        def __init__(self) -> None:
            super().__init__()
            self.c3 = nn.Sequential(conv_bn(3, 16, 2), conv_bn(16, 16, 2), conv_bn(16, 32, 2))
            self.c4, self.c5 = conv_bn(32, 64, 2), conv_bn(64, 128, 2)
            self.lat = nn.ModuleList(nn.Conv2d(c, 32, 1) for c in (32, 64, 128))
            self.smooth = nn.ModuleList(nn.Conv2d(32, 32, 3, 1, 1) for _ in range(3))
            self.p6 = nn.Conv2d(128, 32, 3, 2, 1)
            self.cls, self.box = head(self.anchors * self.classes), head(self.anchors * 4)

        def forward(self, x):  # type: ignore[no-untyped-def]
            c3 = self.c3(x)
            c4 = self.c4(c3)
            c5 = self.c5(c4)
            p5 = self.lat[2](c5)
            p4 = self.lat[1](c4) + nn.functional.interpolate(p5, scale_factor=2.0, mode="nearest")
            p3 = self.lat[0](c3) + nn.functional.interpolate(p4, scale_factor=2.0, mode="nearest")
            levels = [self.smooth[0](p3), self.smooth[1](p4), self.smooth[2](p5), self.p6(c5)]
            scores, boxes = [], []
            for p in levels:
                n, _, h, w = p.shape
                scores.append(torch.sigmoid(self.cls(p)).view(n, self.anchors, self.classes, h, w)
                              .permute(0, 3, 4, 1, 2).reshape(n, -1, self.classes))
                boxes.append(self.box(p).view(n, self.anchors, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
            return torch.cat(scores, 1), torch.cat(boxes, 1)

    return _seeded(RetinaNet)


def unet():  # type: ignore[no-untyped-def]
    """A U-Net-style segmenter with a ConvTranspose decoder and bilinear upsampling at the end:

        x -> enc1 (2 x conv 3x3 BN relu, 3->16) -> maxpool -> enc2 (16->32) -> maxpool -> bottleneck (32->64)
          -> ConvTranspose 2x2 s2 (64->32) -> concat enc2 -> dec2 (64->32) -> ConvTranspose 2x2 s2 (32->16)
          -> concat enc1 -> dec1 (32->16) -> conv 1x1 (16->4) -> bilinear 2x upsample -> logits [N,4,2H,2W]
    """
    torch, nn = _nn()

    def double(cin: int, cout: int):  # type: ignore[no-untyped-def]
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc1, self.enc2, self.mid = double(3, 16), double(16, 32), double(32, 64)
            self.up2, self.dec2 = nn.ConvTranspose2d(64, 32, 2, 2), double(64, 32)
            self.up1, self.dec1 = nn.ConvTranspose2d(32, 16, 2, 2), double(32, 16)
            self.out = nn.Conv2d(16, 4, 1)

        def forward(self, x):  # type: ignore[no-untyped-def]
            e1 = self.enc1(x)
            e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
            m = self.mid(nn.functional.max_pool2d(e2, 2))
            d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
            d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
            return nn.functional.interpolate(self.out(d1), scale_factor=2.0, mode="bilinear", align_corners=False)

    return _seeded(UNet)


def vit():  # type: ignore[no-untyped-def]
    """transformers' ViTForImageClassification from a config: patch embedding (Conv 4x4 s4), [CLS] token,
    2 encoder layers (hidden 64, 4 heads, MLP 128, GELU), LayerNorm, classifier on [CLS]."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=32, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=128, num_labels=10)
    return _seeded(lambda: _Logits(ViTForImageClassification(config)))


def convnext():  # type: ignore[no-untyped-def]
    """transformers' ConvNextForImageClassification from a config: patchify stem (Conv 4x4 s4), blocks of
    depthwise 7x7 conv -> channels-last LayerNorm -> Linear 4x -> GELU -> Linear (MatMul over NHWC) ->
    layer scale -> residual, downsampling between stages, pooled LayerNorm, classifier."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[32, 64], depths=[1, 1], num_labels=10)
    return _seeded(lambda: _Logits(ConvNextForImageClassification(config)))


def detr():  # type: ignore[no-untyped-def]
    """transformers' DetrForObjectDetection from a config, with transformers' own ResNet backbone
    (no timm): ResNet (2 stages) -> 1x1 projection -> sine positions -> 1 encoder and 1 decoder layer
    (d_model 32, 2 heads, FFN 64) over 10 object queries -> class logits [N,10,6] and boxes [N,10,4]."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1],
                            layer_type="basic", out_features=["stage2"])
    config = DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False,
                        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10,
                        num_labels=5, auxiliary_loss=False)
    _, nn = _nn()

    class Outputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.detr = DetrForObjectDetection(config)

        def forward(self, x):  # type: ignore[no-untyped-def]
            out = self.detr(pixel_values=x)
            return out.logits, out.pred_boxes

    return _seeded(Outputs)


def yolov8n():  # type: ignore[no-untyped-def]
    """Ultralytics' YOLOv8n from its yaml (random weights; C2f, SPPF, the DFL box head), its Detect head in
    export mode as Ultralytics' ONNX exporter sets it: [N, 4 + 80, anchors]. torchvision (which Ultralytics
    imports but this path does not use: NMS runs after the model) is stubbed where it does not import."""
    _stub_torchvision()
    from ultralytics.nn.tasks import DetectionModel

    def make():  # type: ignore[no-untyped-def]
        model = DetectionModel("yolov8n.yaml", verbose=False).eval()
        model = model.fuse(verbose=False) if "verbose" in model.fuse.__code__.co_varnames else model.fuse()
        for module in model.modules():
            if type(module).__name__ == "Detect":
                module.export, module.format, module.dynamic = True, "onnx", True
        return model

    _, nn = _nn()

    class Outputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = make()

        def forward(self, x):  # type: ignore[no-untyped-def]
            out = self.model(x)
            return out[0] if isinstance(out, (tuple, list)) else out

    return _seeded(Outputs)


def _stub_torchvision() -> None:
    """Let Ultralytics import without torchvision: a module with the version it checks and an ops.nms that is
    never called on the export path."""
    if importlib.util.find_spec("torchvision") is not None or "torchvision" in sys.modules:
        return
    version = importlib.metadata.version

    def patched(name: str) -> str:
        return "0.28.0" if name == "torchvision" else version(name)

    importlib.metadata.version = patched  # type: ignore[assignment]
    stub = types.ModuleType("torchvision")
    stub.__version__ = "0.28.0"  # type: ignore[attr-defined]
    stub.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    ops = types.ModuleType("torchvision.ops")

    def nms(*args: object, **kwargs: object) -> None:
        raise NotImplementedError("torchvision is stubbed: NMS is not part of the exported model")

    ops.nms = nms  # type: ignore[attr-defined]
    stub.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = stub, ops


def _Logits(model):  # type: ignore[no-untyped-def]
    """A transformers classifier with a plain tensor output (`logits`)."""
    _, nn = _nn()

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.model(pixel_values=x).logits

    return Logits()


def _seeded(make: Callable[[], object]):  # type: ignore[no-untyped-def]
    torch, _ = _nn()
    torch.manual_seed(0)
    module = make()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return module.eval()


_TRANSFORMERS = ("torch", "transformers")
MODELS: tuple[Heldout, ...] = (
    Heldout("mobilenetv3", mobilenet_v3, (1, 3, 64, 64)),
    Heldout("resnext", resnext, (1, 3, 64, 64)),
    Heldout("retinanet", retinanet, (1, 3, 128, 128)),
    Heldout("unet", unet, (1, 3, 64, 64)),
    Heldout("vit", vit, (1, 3, 32, 32), _TRANSFORMERS),
    Heldout("convnext", convnext, (1, 3, 64, 64), _TRANSFORMERS, dynamo_batch=False),
    Heldout("detr", detr, (1, 3, 64, 64), _TRANSFORMERS),
    Heldout("yolov8n", yolov8n, (1, 3, 64, 64), ("torch", "ultralytics")),
)
BY_NAME = {m.name: m for m in MODELS}


def export(model: Heldout, path: Path, dynamo: bool) -> Path:
    """Export `model` to `path` with torch's legacy (opset 17) or dynamo exporter, dynamic batch (static for
    dynamo where the model does not allow it)."""
    torch, _ = _nn()
    module = model.build()
    x = torch.rand(model.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            shapes = ({0: torch.export.Dim("N", max=64)},) if model.dynamo_batch else None
            program = torch.onnx.export(module, (x,), dynamo=True, input_names=["x"], dynamic_shapes=shapes,
                                        verbose=False)
            program.save(str(path), external_data=False)
        else:
            torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                              dynamic_axes={"x": {0: "N"}})
    return path
