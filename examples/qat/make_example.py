"""Build the QAT example: a depthwise CNN on scikit-learn's digits that INT8 PTQ hurts measurably.

Writes `digits_dw.onnx` next to this file: input `image` float32 [N,1,32,32] (pixel/255), output
`logits` [N,10]. It uses the bundled digits example's images (`../digits/calib`, 200 training
images; `../digits/val`, 300 held-out images) and is trained on the same 1,497 training images.

Why PTQ hurts it: a MobileNet-style block (depthwise 3x3 -> BN -> ReLU -> pointwise 1x1) whose
depthwise output channels have very different ranges. That is what BatchNorm folding leaves in
real depthwise networks (Nagel et al., "Data-Free Quantization Through Weight Equalization and
Bias Correction", ICCV 2019: MobileNetV2's per-channel ranges span two orders of magnitude); a
per-tensor INT8 activation then gives the narrow channels only a few levels. Here the spread is
made explicit and reproducible: after training, each depthwise output channel c is multiplied by
k_c (log-uniform in [1/16, 16], seeded) and the pointwise weights reading it are divided by k_c.
ReLU is positively homogeneous, so the FP32 function is unchanged (checked below); INT8 is not.

    pip install torch==2.13.0        # the CPU build is enough
    python examples/qat/make_example.py
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from torch import nn

SEED = 0
SIZE = 32
VAL_PER_CLASS = 30
EPOCHS = 30
BATCH = 64
OPSET = 17
SPREAD = 16.0
HERE = Path(__file__).resolve().parent
DIGITS = HERE.parent / "digits"


def _digits_example() -> ModuleType:
    """examples/digits/make_example.py, whose upsampling and PNG reading this example must share."""
    spec = importlib.util.spec_from_file_location("digits_make_example", DIGITS / "make_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_DIGITS = _digits_example()
upsample, read_pngs = _DIGITS.upsample, _DIGITS.read_pngs


def train_indices(labels: np.ndarray) -> np.ndarray:
    """The training split of examples/digits (everything but the 30 held-out images per class)."""
    rng = np.random.default_rng(SEED)
    train = []
    for cls in range(10):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        train.append(idx[VAL_PER_CLASS:])
    return np.sort(np.concatenate(train))


def block(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
    )


class DepthwiseCNN(nn.Module):
    """32x32x1 -> stem 16ch -> MaxPool -> 2 depthwise-separable blocks -> GAP -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.block1 = block(16, 32, 1)
        self.block2 = block(32, 64, 2)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Adam, one-cycle schedule, random 0..2 px shifts (as examples/digits)."""
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = EPOCHS * ((len(images) + BATCH - 1) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    padded = nn.functional.pad(images, (2, 2, 2, 2))
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(images), BATCH):
            idx = order[start:start + BATCH]
            dy, dx = torch.randint(0, 5, (2,), generator=gen).tolist()
            opt.zero_grad()
            nn.functional.cross_entropy(model(padded[idx, :, dy:dy + SIZE, dx:dx + SIZE]), labels[idx]).backward()
            opt.step()
            sched.step()
    model.eval()


def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Conv with BatchNorm folded in (what exporters do in eval mode), as a new Conv2d with bias."""
    std = torch.sqrt(bn.running_var + bn.eps)
    gain = bn.weight / std
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    groups=conv.groups, bias=True)
    with torch.no_grad():
        out.weight.copy_(conv.weight * gain.reshape(-1, 1, 1, 1))
        out.bias.copy_(bn.bias - bn.running_mean * gain)
    return out


def spread_ranges(model: DepthwiseCNN, rng: np.random.Generator) -> nn.Module:
    """Fold BN and give each depthwise output channel its own scale k_c (pointwise weights / k_c)."""
    layers: list[nn.Module] = [fold(model.stem[0], model.stem[1]), nn.ReLU(), nn.MaxPool2d(2)]
    for blk in (model.block1, model.block2):
        dw, pw = fold(blk[0], blk[1]), fold(blk[3], blk[4])
        k = torch.from_numpy(np.exp(rng.uniform(-np.log(SPREAD), np.log(SPREAD), dw.out_channels))).float()
        with torch.no_grad():
            dw.weight.mul_(k.reshape(-1, 1, 1, 1))
            dw.bias.mul_(k)
            pw.weight.div_(k.reshape(1, -1, 1, 1))
        layers += [dw, nn.ReLU(), pw, nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), model.head]
    return nn.Sequential(*layers).eval()


def export(model: nn.Module, path: Path) -> None:
    """ONNX opset 17, dynamic batch "N", checked."""
    torch.onnx.export(model, (torch.zeros(1, 1, SIZE, SIZE),), str(path), dynamo=False, opset_version=OPSET,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, do_constant_folding=True)
    proto = onnx.load(str(path))
    proto.producer_name, proto.producer_version = "trtq-examples-qat", "1"
    proto.doc_string = "Depthwise CNN on scikit-learn digits (32x32 grayscale, pixel/255); trtq QAT example."
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(onnx.shape_inference.infer_shapes(proto), str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    digits = load_digits()
    labels = digits.target.astype(np.int64)
    images = np.stack([upsample(d) for d in digits.images])
    idx = train_indices(labels)
    x = torch.from_numpy(images[idx][:, None].astype(np.float32) / 255.0)
    model = DepthwiseCNN()
    train(model, x, torch.from_numpy(labels[idx]))
    spread = spread_ranges(model, np.random.default_rng(SEED))
    val_x, val_y = read_pngs(DIGITS / "val")
    with torch.no_grad():
        before = model(torch.from_numpy(val_x))
        after = spread(torch.from_numpy(val_x))
    print(f"max |logit change| from the range spread: {float((before - after).abs().max()):.2e}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "digits_dw.onnx"
    export(spread, path)
    (logits,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"image": val_x})
    print(f"wrote {path}: FP32 top-1 on examples/digits/val (onnxruntime): {float((logits.argmax(1) == val_y).mean()):.4f}")


if __name__ == "__main__":
    main()
