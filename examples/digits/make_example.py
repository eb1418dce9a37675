"""Regenerate trtq's bundled example: a small CNN trained on scikit-learn's digits, plus its data.

Writes, next to this file:
  digits_cnn.onnx        input `image` float32 [N,1,32,32] (pixel/255) -> output `logits` [N,10]
  calib/<class>/*.png    200 training images (20 per class), 32x32 grayscale
  val/<class>/*.png      300 held-out images (30 per class), never seen in training

Why it is built this way:
- The 8x8 digits (values 0..16) are upsampled once to 32x32 uint8 PNGs, and the network is
  trained on exactly those uint8 pixels / 255. trtq's "none" preset (resize to the input size,
  which is a no-op for 32x32 files; scale 1/255; grayscale for 1-channel inputs) therefore
  reproduces the training preprocessing bit for bit.
- The architecture exercises TensorRT's INT8 placement rules: a Conv-BN-ReLU stem, residual
  blocks (Conv -> ReLU -> Conv, Add with the skip, ReLU), MaxPool, a depthwise Conv,
  GlobalAveragePool, Flatten and a Gemm head. BatchNorm is folded into the convolutions by the
  exporter (eval mode).

PyTorch is needed only to regenerate these files, never by trtq or its tests:
    pip install torch==2.13.0          # the CPU build is enough
    python examples/digits/make_example.py

Seeds are fixed and training runs on one CPU thread, so a rerun with the same torch version
gives the same weights and accuracy.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn

SEED = 0
SIZE = 32
CALIB_PER_CLASS = 20
VAL_PER_CLASS = 30
EPOCHS = 30
BATCH = 64
OPSET = 17
HERE = Path(__file__).resolve().parent


def upsample(digit: np.ndarray) -> np.ndarray:
    """One 8x8 digit (0..16) as a 32x32 uint8 image: bilinear resize of the 0..1 values, x255."""
    small = Image.fromarray((digit / 16.0).astype(np.float32))
    big = np.asarray(small.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(np.rint(big * 255.0), 0, 255).astype(np.uint8)


def split(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of (train, calib, val): val is held out, calib is a subset of train; stratified."""
    train, calib, val = [], [], []
    for cls in range(10):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        val.append(idx[:VAL_PER_CLASS])
        train.append(idx[VAL_PER_CLASS:])
        calib.append(idx[VAL_PER_CLASS : VAL_PER_CLASS + CALIB_PER_CLASS])
    return (np.sort(np.concatenate(train)), np.sort(np.concatenate(calib)),
            np.sort(np.concatenate(val)))


def conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1, kernel: int = 3) -> nn.Sequential:
    """Conv (no bias; BN supplies it) followed by BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


class Residual(nn.Module):
    """Conv-BN-ReLU -> Conv-BN, Add the skip, ReLU: the pattern TensorRT fuses into one INT8 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(channels, channels)
        self.conv2 = conv_bn(channels, channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))) + x)


class DigitsCNN(nn.Module):
    """32x32x1 -> stem 16ch -> MaxPool -> residual -> depthwise/2 + pointwise 32ch -> residual -> GAP -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, 16), nn.ReLU(),                      # stem, 32x32
            nn.MaxPool2d(2),                                # 16x16
            Residual(16),
            conv_bn(16, 16, stride=2, groups=16), nn.ReLU(),  # depthwise, 8x8
            conv_bn(16, 32, kernel=1), nn.ReLU(),           # pointwise
            Residual(32),
            nn.AdaptiveAvgPool2d(1),                        # GlobalAveragePool
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Adam with a cosine schedule; random 0..2 px shifts as the only augmentation."""
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = EPOCHS * ((len(images) + BATCH - 1) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    padded = nn.functional.pad(images, (2, 2, 2, 2))
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(images), BATCH):
            idx = order[start : start + BATCH]
            dy, dx = torch.randint(0, 5, (2,), generator=gen).tolist()
            batch = padded[idx, :, dy : dy + SIZE, dx : dx + SIZE]
            opt.zero_grad()
            loss_fn(model(batch), labels[idx]).backward()
            opt.step()
            sched.step()
    model.eval()


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    """images[i] as folder/<label>/<dataset index>.png, replacing whatever the folder held."""
    if folder.exists():
        shutil.rmtree(folder)
    for i in indices:
        out = folder / str(int(labels[i]))
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(out / f"{int(i):04d}.png", optimize=True)


def read_pngs(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read folder/<label>/*.png back the way trtq's "none" preset does: grayscale, /255."""
    files = sorted(folder.glob("*/*.png"))
    x = np.stack([np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255.0 for f in files])
    return x[:, None], np.array([int(f.parent.name) for f in files])


def export(model: nn.Module, path: Path) -> None:
    """ONNX opset 17 with a dynamic batch dim "N"; BN folded; checked and shape-inferred."""
    dummy = torch.zeros(1, 1, SIZE, SIZE)
    torch.onnx.export(
        model, (dummy,), str(path), dynamo=False, opset_version=OPSET,
        input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=True,
    )
    proto = onnx.load(str(path))
    proto.producer_name, proto.producer_version = "trtq-examples-digits", "1"
    proto.doc_string = "Small CNN on scikit-learn digits (32x32 grayscale, pixel/255); trtq example."
    onnx.checker.check_model(proto, full_check=True)
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    onnx.save(proto, str(path))


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
    train_idx, calib_idx, val_idx = split(labels, np.random.default_rng(SEED))

    model = DigitsCNN()
    x = torch.from_numpy(images[:, None].astype(np.float32) / 255.0)
    y = torch.from_numpy(labels)
    train(model, x[train_idx], y[train_idx])
    with torch.no_grad():
        train_acc = (model(x[train_idx]).argmax(1) == y[train_idx]).float().mean().item()
        val_acc = (model(x[val_idx]).argmax(1) == y[val_idx]).float().mean().item()
    params = sum(p.numel() for p in model.parameters())

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "digits_cnn.onnx"
    export(model, onnx_path)
    write_pngs(args.out / "calib", images, labels, calib_idx)
    write_pngs(args.out / "val", images, labels, val_idx)

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    val_x, val_y = read_pngs(args.out / "val")
    (logits,) = session.run(["logits"], {"image": val_x})
    onnx_acc = float((logits.argmax(1) == val_y).mean())
    print(f"parameters: {params}  onnx bytes: {onnx_path.stat().st_size}")
    print(f"train images: {len(train_idx)}  calib: {len(calib_idx)}  val: {len(val_idx)}")
    print(f"top-1 accuracy  train: {train_acc:.4f}  val (torch): {val_acc:.4f}  "
          f"val (onnxruntime, PNGs): {onnx_acc:.4f}")


if __name__ == "__main__":
    main()
