"""A zoo of real ONNX exports, made from PyPI packages during the test run (no model hub).

Users bring models from several exporters, each with its own habits: torch's legacy exporter
(`dynamo=False`: Constant nodes, `/mod/Op` names), torch's dynamo exporter (opset 18, functions),
paddle2onnx (Identity chains, opset 11, weights in Constant nodes) and tf2onnx (NHWC inputs behind
a Transpose, `model/layer/op` names). Tests built only with onnx.helper miss what these do, so the
zoo exports real architectures with each of them, at small shapes, and writes sample data beside:

    from zoo import ZOO, build
    for entry in ZOO:
        files = build(entry)          # ZooFiles: the .onnx, calibration and held-out data
        ...                           # trtq quantize files.onnx --calib files.calib
        result = quantize(entry, tmp_path / entry.name)   # or its Q/DQ model through the API

Exports are cached under ~/.cache/trtq-zoo (or $TRTQ_ZOO_CACHE), in a folder keyed by this file's
text and the exporters' package versions, so a session exports each model once and later sessions
not at all. Each entry names the modules its exporter needs; `missing(entry)` says which are
absent, for a skip with a reason. PaddleOCR's models come from the `rapidocr==3.10.0` wheel: the
installed package when its files have the expected hashes, else the wheel fetched with
`pip download --no-deps` (examples/models/fetch_rapidocr.py) into the same cache.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SAMPLES = 8
"""Calibration samples per model (and as many held-out ones): enough to exercise every path, cheap."""
VERSIONED_PACKAGES = ("torch", "transformers", "onnxscript", "onnx", "tensorflow", "tensorflow-cpu", "tf2onnx",
                      "keras", "numpy")
"""Packages whose versions change what the exporters write: part of the cache key."""


@dataclass(frozen=True)
class ZooFiles:
    """One built zoo model: the .onnx and its sample data (.npy for one input, .npz keyed by input name)."""

    onnx: Path
    calib: Path
    held_out: Path


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: how it is exported and what it needs.

    `shapes` is the shape of one sample of each input (batch 1), as the data files hold them;
    trtq takes dynamic dims from the data, so no `--shape` is needed, but `shape_args()` spells
    them for commands that want them explicit. `task` is "classify" where the model ends in
    class scores, "detect" for a detector `compare --task detect` decodes, else None.
    """

    name: str
    exporter: str  # torch-legacy, torch-dynamo, paddle2onnx, tf2onnx, ultralytics
    family: str  # cnn, transformer, ocr-detector, ocr-recognizer, ocr-classifier, detector, deformable-cnn
    needs: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    export: Callable[[Path], None] = field(repr=False)
    data: Callable[[np.random.Generator, int], dict[str, np.ndarray]] = field(repr=False)
    task: str | None = None
    limit: int | None = None
    """Samples the tests give the costly models (`--limit`), where all of SAMPLES would take too long."""
    postprocess: str | None = None
    """The `--postprocess` preset `compare --task detect` needs, where the layout alone does not decide it."""

    def shape_args(self) -> list[str]:
        """`--shape NAME:AxBxC` options for every input, at the data's shape."""
        return [arg for name, shape in self.shapes.items() for arg in ("--shape", f"{name}:{'x'.join(map(str, shape))}")]


def missing(entry: ZooEntry) -> list[str]:
    """Modules the entry's exporter needs that are not importable here."""
    return [module for module in entry.needs if importlib.util.find_spec(module) is None]


@functools.cache
def cache_root() -> Path:
    """The zoo's cache folder for this zoo definition and these exporter versions (fixed per process)."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for package in VERSIONED_PACKAGES:
        try:
            digest.update(f"{package}=={importlib.metadata.version(package)};".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{package} absent;".encode())
    base = Path(os.environ.get("TRTQ_ZOO_CACHE") or Path.home() / ".cache" / "trtq-zoo")
    return base / digest.hexdigest()[:16]


def build(entry: ZooEntry) -> ZooFiles:
    """Export `entry` and write its data, or reuse the cached files. Raises if the exporter is missing.

    Once per process: later calls return the same files. The model is built in a temporary sibling folder and
    renamed into place when complete, so an interrupted run (or a test run in another worktree at the same
    time) never sees half a model.
    """
    return _build(entry.name)


@functools.cache
def _build(name: str) -> ZooFiles:
    entry = BY_NAME[name]
    absent = missing(entry)
    if absent:
        raise RuntimeError(f"zoo model {entry.name} needs {', '.join(absent)}, which is not installed")
    root = cache_root()
    folder = root / entry.name
    files = ZooFiles(folder / "model.onnx", folder / f"calib{_suffix(entry)}", folder / f"held_out{_suffix(entry)}")
    if files.held_out.is_file():
        return files
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=root))
    try:
        entry.export(work / "model.onnx")
        for seed, stem in ((0, "calib"), (1, "held_out")):
            _save(work / f"{stem}{_suffix(entry)}", entry.data(np.random.default_rng(seed), SAMPLES))
        try:
            work.rename(folder)
        except OSError:  # another process finished first: keep its copy
            if not files.held_out.is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return files


def quantize(entry: ZooEntry, output_dir: Path, **options: object):  # type: ignore[no-untyped-def]
    """The Q/DQ model of `entry` (trtq.api.quantize on its calibration data, `entry.limit` samples):
    the QuantizeResult, whose `onnx_path` is the Q/DQ ONNX. `options` are QuantizeOptions fields,
    e.g. precision="fp8" or high_precision="fp16"."""
    from trtq import api

    files = build(entry)
    return api.quantize(files.onnx, str(files.calib), data=api.DataOptions(limit=entry.limit),
                        options=api.QuantizeOptions(output_dir=str(output_dir), **options), progress=False)


def _suffix(entry: ZooEntry) -> str:
    return ".npy" if len(entry.shapes) == 1 else ".npz"


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    if path.suffix == ".npy":
        np.save(path, next(iter(arrays.values())))
    else:
        np.savez(path, **arrays)


# ---------------------------------------------------------------------------------------------
# Data: smooth random images (neighbouring pixels correlate, as in photos) and token batches.


def _images(shape: tuple[int, ...], layout: str = "NCHW") -> Callable[[np.random.Generator, int], dict]:
    def make(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        c, h, w = shape[1:] if layout == "NCHW" else (shape[3], shape[1], shape[2])
        coarse = rng.uniform(-1.0, 1.0, (n, c, max(h // 4, 1), max(w // 4, 1))).astype(np.float32)
        fine = coarse.repeat(4, axis=2).repeat(4, axis=3)[:, :, :h, :w]
        fine = np.pad(fine, ((0, 0), (0, 0), (0, h - fine.shape[2]), (0, w - fine.shape[3])), mode="edge")
        images = 0.8 * fine + 0.2 * rng.uniform(-1.0, 1.0, fine.shape).astype(np.float32)
        if layout == "NHWC":
            images = images.transpose(0, 2, 3, 1)
        return {"x": np.ascontiguousarray(images, dtype=np.float32)}

    return make


BERT_SEQ = 16
BERT_VOCAB = 100


def _tokens(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Token ids with [CLS]=1 ... [SEP]=2 and padding (id 0, mask 0) after a random length; two segments."""
    ids = rng.integers(3, BERT_VOCAB, (n, BERT_SEQ))
    lengths = rng.integers(BERT_SEQ // 2, BERT_SEQ + 1, n)
    positions = np.arange(BERT_SEQ)[None, :]
    mask = (positions < lengths[:, None]).astype(np.int64)
    ids[:, 0] = 1
    ids[np.arange(n), lengths - 1] = 2
    ids = ids * mask
    types = ((positions >= (lengths[:, None] // 2)) & (mask == 1)).astype(np.int64)
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask, "token_type_ids": types}


# ---------------------------------------------------------------------------------------------
# torch models (random weights, seeded)


def _cnn():  # type: ignore[no-untyped-def]
    """A small residual CNN classifier.

        x [N,3,H,W]
          |
        conv1 3x3 (3->8) -> bn -> relu -------------+
          |                                         | (skip)
        conv2 3x3 (8->8) -> relu -> conv3 3x3 (8->8)|
                                          |         |
                                         add <------+
                                          |
                                        relu -> maxpool 2x2 -> conv4 3x3 s2 (8->16) -> relu
                                          -> mean over H,W (ReduceMean) -> fc (16->10) -> logits [N,10]
    """
    import torch
    from torch import nn

    class SmallResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
            self.conv2, self.conv3 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.conv4 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn(self.conv1(x)))
            x = torch.relu(x + self.conv3(torch.relu(self.conv2(x))))
            x = torch.relu(self.conv4(self.pool(x)))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    net = SmallResNet()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _bert():  # type: ignore[no-untyped-def]
    """A tiny BertModel from a transformers config (random weights): 2 layers, hidden 32, 2 heads.

        input_ids, token_type_ids [batch,seq] -> embeddings (+ positions) -> LayerNorm
          -> 2 x [self-attention (Q/K/V MatMul, masked by attention_mask) -> Add+LayerNorm -> FFN 32->64->32 (GELU)
                  -> Add+LayerNorm]
          -> last_hidden_state [batch,seq,32];  first token -> dense 32->32 -> tanh -> pooler_output [batch,32]
    """
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=BERT_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)
    torch.manual_seed(0)
    bert = BertModel(config).eval()

    class Outputs(torch.nn.Module):
        """BertModel with a plain tuple output, so both exporters name the outputs alike."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state, out.pooler_output

    return Outputs().eval()


def _crnn():  # type: ignore[no-untyped-def]
    """A small CRNN text recogniser: convolutions, then a bidirectional LSTM over the width.

        x [N,3,16,64] -> conv 3x3 (3->8) -> bn -> relu -> maxpool 2 -> conv 3x3 (8->16) -> relu
          -> conv 3x3 (16->16) -> relu -> maxpool 2 -> [N,16,4,16] -> columns as a sequence [T=16, N, 64]
          -> neck Linear (64->32) -> bidirectional LSTM (hidden 16) -> [T, N, 32]
          -> Linear (32->12) -> per-step class logits, batch first -> logits [N, 16, 12]
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class CRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.conv2, self.conv3 = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
            self.neck, self.rnn = nn.Linear(16 * 4, 32), nn.LSTM(32, 16, bidirectional=True)
            self.fc = nn.Linear(32, 12)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.max_pool2d(torch.relu(self.bn(self.conv1(x))), 2)
            x = F.max_pool2d(torch.relu(self.conv3(torch.relu(self.conv2(x)))), 2)
            n, c, h, w = x.shape
            y, _ = self.rnn(self.neck(x.permute(3, 0, 1, 2).reshape(w, n, c * h)))
            return self.fc(y).permute(1, 0, 2)

    torch.manual_seed(0)
    return CRNN().eval()


def _deformable():  # type: ignore[no-untyped-def]
    """A CNN that samples its features at learned offsets (GridSample, as deformable attention does).

        x [N,3,32,32] -> conv 3x3 (3->8) -> relu -> f
          f -> conv 3x3 (8->2) -> tanh * 0.1 -> offsets; grid = regular [-1,1] grid + offsets
          GridSample(f, grid, bilinear, zeros) -> conv 3x3 s2 (8->16) -> relu -> conv 3x3 (16->16) -> relu
          -> mean -> Linear (16->10) -> logits [N,10]
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Deformable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.offset = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 3, padding=1)
            self.conv2, self.fc = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Linear(16, 10)
            self.conv3 = nn.Conv2d(16, 16, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = torch.relu(self.conv1(x))
            n, _, h, w = f.shape
            ys = torch.linspace(-1, 1, h).view(1, h, 1).expand(n, h, w)
            xs = torch.linspace(-1, 1, w).view(1, 1, w).expand(n, h, w)
            grid = torch.stack([xs, ys], -1) + 0.1 * torch.tanh(self.offset(f)).permute(0, 2, 3, 1)
            sampled = F.grid_sample(f, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            return self.fc(torch.relu(self.conv3(torch.relu(self.conv2(sampled)))).mean((2, 3)))

    torch.manual_seed(0)
    return Deformable().eval()


TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DETR_SIZE = 64
CRNN_SHAPE = (1, 3, 16, 64)


def _logits_and_boxes(model):  # type: ignore[no-untyped-def]
    """A transformers object detector with a plain (logits, pred_boxes) tuple output, named alike by both exporters."""
    import torch

    class Outputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values):  # type: ignore[no-untyped-def]
            out = self.model(pixel_values=pixel_values)
            return out.logits, out.pred_boxes

    return Outputs().eval()


def _detr_outputs(model):  # type: ignore[no-untyped-def]
    """`_logits_and_boxes` of a DETR-style detector whose class head's no-object logit gets a bias of +3, as
    training gives it (most queries find nothing), so `compare --task detect` recognises the DETR layout
    without --postprocess.
    """
    import torch

    head = [m for m in model.class_labels_classifier.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.bias[-1] += 3.0
    return _logits_and_boxes(model)


def _detr():  # type: ignore[no-untyped-def]
    """A tiny DetrForObjectDetection from a transformers config (random weights), ResNet backbone without timm.

        pixel_values [1,3,64,64] -> ResNet (4 basic stages, 8-32 channels) -> 1x1 conv to d_model 32
          -> + sine positions -> 1 encoder layer (self-attention, FFN 32->64->32)
          -> 1 decoder layer over 10 object queries (self- and cross-attention, FFN)
          -> class head (Linear 32->6: 5 classes + no object) -> logits [1,10,6]
          -> box MLP (3 Linear) -> Sigmoid -> pred_boxes [1,10,4] (cx, cy, w, h normalised)
    """
    import torch
    from transformers import DetrConfig, DetrForObjectDetection

    backbone = {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16, 16, 32], "depths": [1, 1, 1, 1],
                "layer_type": "basic", "out_features": ["stage4"]}
    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=32,
                        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10, num_labels=5)
    torch.manual_seed(0)
    return _detr_outputs(DetrForObjectDetection(config).eval())


def _rtdetr():  # type: ignore[no-untyped-def]
    """A tiny RTDetrForObjectDetection (transformers; random weights, no timm): deformable attention samples
    its features with GridSample, and a TopK picks the decoder's queries from the encoder's anchor scores.

        pixel_values [1,3,64,64] -> ResNet (4 basic stages, 8-32 channels; strides 8/16/32 out)
          -> hybrid encoder (1 attention layer on the coarsest map, FPN/PAN fusion, hidden 16)
          -> anchor scores -> TopK (10 queries) -> 1 decoder layer (self-attention; multi-scale deformable
             cross-attention: GridSample at 2 points per level and head)
          -> logits [1,10,5] (sigmoid per class, no no-object column) and pred_boxes [1,10,4] (cx, cy, w, h normalised)
    """
    import torch
    from transformers import RTDetrConfig, RTDetrForObjectDetection

    backbone = {"model_type": "rt_detr_resnet", "embedding_size": 8, "hidden_sizes": [8, 16, 16, 32],
                "depths": [1, 1, 1, 1], "layer_type": "basic", "out_features": ["stage2", "stage3", "stage4"],
                "out_indices": [2, 3, 4]}
    config = RTDetrConfig(backbone_config=backbone, use_pretrained_backbone=False, use_timm_backbone=False,
                          encoder_hidden_dim=16, encoder_in_channels=[16, 16, 32], encode_proj_layers=[2],
                          encoder_ffn_dim=32, encoder_attention_heads=2, encoder_layers=1, d_model=16,
                          decoder_ffn_dim=32, decoder_attention_heads=2, decoder_layers=1, decoder_n_points=2,
                          decoder_in_channels=[16, 16, 16], num_queries=10, num_labels=5, anchor_image_size=None)
    torch.manual_seed(0)
    return _logits_and_boxes(RTDetrForObjectDetection(config).eval())


def _yolos():  # type: ignore[no-untyped-def]
    """A tiny YolosForObjectDetection (random weights): a ViT whose extra detection tokens become the queries.

        pixel_values [1,3,64,64] -> 16x16 patches (Conv) -> 16 patch + 1 CLS + 10 detection tokens (+ positions)
          -> 2 ViT layers (hidden 32, 2 heads, MLP 64) -> the 10 detection tokens
          -> class MLP -> logits [1,10,6] (5 classes + no object); box MLP -> Sigmoid -> pred_boxes [1,10,4]
    """
    import torch
    from transformers import YolosConfig, YolosForObjectDetection

    config = YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         image_size=[DETR_SIZE, DETR_SIZE], patch_size=16, num_detection_tokens=10, num_labels=5)
    torch.manual_seed(0)
    return _detr_outputs(YolosForObjectDetection(config).eval())


def _torch_export(make: Callable, dynamo: bool, family: str, opset: int | None = None) -> Callable[[Path], None]:
    def export(path: Path) -> None:
        import torch

        module = make()
        if family == "cnn":
            args: tuple = (torch.from_numpy(_images((1, 3, 32, 32))(np.random.default_rng(0), 2)["x"]),)
            names, outputs = ["x"], ["logits"]
        elif family == "detector":  # fixed 64x64 (YOLOS's position embeddings are sized to it), dynamic batch
            args = (torch.from_numpy(_images((1, 3, DETR_SIZE, DETR_SIZE))(np.random.default_rng(0), 1)["x"]),)
            names, outputs = ["pixel_values"], ["logits", "pred_boxes"]
        elif family in ("ocr-recognizer", "deformable-cnn"):  # dynamic batch
            shape = CRNN_SHAPE if family == "ocr-recognizer" else (1, 3, 32, 32)
            args = (torch.from_numpy(_images(shape)(np.random.default_rng(0), 1)["x"]),)
            names, outputs = ["x"], ["logits"]
        else:
            tokens = _tokens(np.random.default_rng(0), 2)
            args = tuple(torch.from_numpy(tokens[name]) for name in TOKEN_INPUTS)
            names, outputs = list(TOKEN_INPUTS), ["last_hidden_state", "pooler_output"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not dynamo:
                if family == "cnn":
                    axes = {"x": {0: "N", 2: "H", 3: "W"}, "logits": {0: "N"}}
                elif family in ("detector", "ocr-recognizer", "deformable-cnn"):
                    axes = {name: {0: "N"} for name in (*names, *outputs)}
                else:
                    axes = {**{n: {0: "batch", 1: "seq"} for n in (*names, "last_hidden_state")},
                            "pooler_output": {0: "batch"}}
                torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17, input_names=names,
                                  output_names=outputs, dynamic_axes=axes)
                return
            dim = torch.export.Dim
            if family == "cnn":
                shapes: tuple = ({0: dim("N", max=64), 2: dim("H", min=16, max=512), 3: dim("W", min=16, max=512)},)
            elif family in ("detector", "ocr-recognizer", "deformable-cnn"):
                shapes = ({0: dim("N", max=64)},)
            else:
                batch, seq = dim("batch", max=64), dim("seq", min=4, max=64)
                shapes = tuple({0: batch, 1: seq} for _ in names)
            program = torch.onnx.export(module, args, dynamo=True, input_names=names, output_names=outputs,
                                        dynamic_shapes=shapes, opset_version=opset, verbose=False)
            program.save(str(path), external_data=False)

    return export


# ---------------------------------------------------------------------------------------------
# paddle2onnx: PaddleOCR's models from the rapidocr wheel


def _rapidocr_model(key: str) -> Callable[[Path], None]:
    def export(path: Path) -> None:
        spec = importlib.util.spec_from_file_location("fetch_rapidocr", REPO / "examples" / "models" / "fetch_rapidocr.py")
        assert spec is not None and spec.loader is not None
        fetcher = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fetcher)
        member, digest = fetcher.MODELS[key]
        installed = importlib.util.find_spec("rapidocr")
        if installed is not None and installed.origin is not None:
            candidate = Path(installed.origin).parent / "models" / Path(member).name
            if candidate.is_file() and fetcher.sha256(candidate.read_bytes()) == digest:
                shutil.copyfile(candidate, path)
                return
        fetched = fetcher.fetch(path.parent / "rapidocr", [key], cache=cache_root().parent / "wheels")
        shutil.move(fetched[key], path)

    return export


# ---------------------------------------------------------------------------------------------
# tf2onnx: a small Keras CNN (NHWC), converted in a subprocess so TensorFlow never loads beside torch


KERAS_SCRIPT = '''
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, tensorflow as tf, tf2onnx
keras.utils.set_random_seed(0)
inp = keras.Input((None, None, 3), name="x")
x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inp)
x = keras.layers.BatchNormalization()(x)
x = keras.layers.ReLU()(x)
y = keras.layers.DepthwiseConv2D(3, padding="same")(x)
y = keras.layers.Conv2D(8, 1)(y)
x = keras.layers.Add()([x, y])
x = keras.layers.MaxPooling2D()(x)
x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
x = keras.layers.GlobalAveragePooling2D()(x)
x = keras.layers.Dense(10)(x)
out = keras.layers.Softmax(name="probs")(x)
model = keras.Model(inp, out)
spec = (tf.TensorSpec((None, None, None, 3), tf.float32, name="x"),)
tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, output_path=sys.argv[1])
'''
"""A Keras CNN in TensorFlow's NHWC layout:

    x [N,H,W,3] -> (tf2onnx: Transpose to NCHW) -> conv 3x3 (3->8, BatchNorm folded) -> relu ---+
                     -> depthwise 3x3 -> conv 1x1 (8->8) -> add <---------------------------------+
                     -> maxpool 2x2 -> conv 3x3 s2 (8->16) -> relu -> global average pool
                     -> dense (MatMul 16->10) -> softmax -> probs [N,10]
"""


def _keras_export(path: Path) -> None:
    subprocess.run([sys.executable, "-c", KERAS_SCRIPT, str(path)], check=True, capture_output=True, timeout=600)


# ---------------------------------------------------------------------------------------------
# Ultralytics: YOLOv8n from its yaml (random weights), exported by `model.export(format="onnx")`


ULTRALYTICS = ("ultralytics==8.4.190", "ultralytics-thop==2.2.3", "opencv-python-headless==5.1.0.95", "psutil==7.2.2")
"""What `from ultralytics import YOLO` and its ONNX export import, installed with --no-deps into a private folder
of the cache (the shared environment keeps none of it). Ultralytics also lists torchvision: its PyPI wheel is
built for CUDA, so its C ops do not load beside the CPU build of torch, and importing it fails. The export
of a detection model never calls it; ultralytics only reads its version (importlib.metadata), so the folder
holds a bare `torchvision` dist-info record and no torchvision code."""

ULTRALYTICS_SCRIPT = '''
import shutil, sys, torch
from ultralytics import YOLO
torch.manual_seed(0)
path = YOLO("yolov8n.yaml").export(format="onnx", imgsz=64, dynamic=False, simplify=False)
shutil.move(path, sys.argv[1])
'''
"""YOLOv8n (Ultralytics' export: opset from torch's exporter, one `output0` [1, 84, 84]):

    images [1,3,64,64] -> CSPDarknet backbone (Conv+BN+SiLU, C2f blocks, SPPF) -> PAN neck (Upsample, Concat)
      -> Detect head at strides 8/16/32: box DFL (Softmax over 16 bins, Conv) and class logits (Sigmoid)
      -> output0 [1, 4+80, 84 anchors] (cx, cy, w, h in pixels, then 80 class scores)
"""


def _ultralytics_packages() -> Path:
    """The private site folder with ULTRALYTICS installed (once per machine, under the zoo cache)."""
    key = hashlib.sha256(";".join(ULTRALYTICS).encode()).hexdigest()[:12]
    site = cache_root().parent / "packages" / f"ultralytics-{key}"
    if site.is_dir():
        return site
    site.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".ultralytics-", dir=site.parent))
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(work),
                        *ULTRALYTICS], check=True, capture_output=True, timeout=1200)
        record = work / "torchvision-0.28.0.dist-info"
        record.mkdir()
        (record / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
        try:
            work.rename(site)
        except OSError:  # another process finished first
            if not site.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return site


def _ultralytics_export(path: Path) -> None:
    site = _ultralytics_packages()
    env = {**os.environ, "PYTHONPATH": str(site), "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(path.parent / "config")}
    subprocess.run([sys.executable, "-c", ULTRALYTICS_SCRIPT, str(path)], check=True, capture_output=True,
                   timeout=900, cwd=path.parent, env=env)


# ---------------------------------------------------------------------------------------------

_TORCH = ("torch",)
_DYNAMO = ("torch", "onnxscript")
_BERT = ("torch", "transformers")
_BERT_DYNAMO = ("torch", "transformers", "onnxscript")

ZOO: tuple[ZooEntry, ...] = (
    ZooEntry("cnn-legacy", "torch-legacy", "cnn", _TORCH, {"x": (1, 3, 32, 32)},
             _torch_export(_cnn, False, "cnn"), _images((1, 3, 32, 32)), task="classify"),
    ZooEntry("cnn-dynamo", "torch-dynamo", "cnn", _DYNAMO, {"x": (1, 3, 32, 32)},
             _torch_export(_cnn, True, "cnn"), _images((1, 3, 32, 32)), task="classify"),
    ZooEntry("bert-legacy", "torch-legacy", "transformer", _BERT, {n: (1, BERT_SEQ) for n in TOKEN_INPUTS},
             _torch_export(_bert, False, "transformer"), _tokens),
    ZooEntry("bert-dynamo", "torch-dynamo", "transformer", _BERT_DYNAMO, {n: (1, BERT_SEQ) for n in TOKEN_INPUTS},
             _torch_export(_bert, True, "transformer", opset=18), _tokens),
    ZooEntry("ppocr-det", "paddle2onnx", "ocr-detector", (), {"x": (1, 3, 32, 32)},
             _rapidocr_model("det"), _images((1, 3, 32, 32)), limit=2),
    ZooEntry("ppocr-rec", "paddle2onnx", "ocr-recognizer", (), {"x": (1, 3, 48, 32)},
             _rapidocr_model("rec"), _images((1, 3, 48, 32)), limit=2),
    ZooEntry("ppocr-cls", "paddle2onnx", "ocr-classifier", (), {"x": (1, 3, 48, 64)},
             _rapidocr_model("cls"), _images((1, 3, 48, 64)), task="classify", limit=2),
    ZooEntry("yolov8-ultralytics", "ultralytics", "detector", _TORCH, {"images": (1, 3, 64, 64)},
             _ultralytics_export, _images((1, 3, 64, 64)), task="detect", limit=2),
    ZooEntry("detr-legacy", "torch-legacy", "detector", _BERT, {"pixel_values": (1, 3, DETR_SIZE, DETR_SIZE)},
             _torch_export(_detr, False, "detector"), _images((1, 3, DETR_SIZE, DETR_SIZE)), task="detect", limit=2),
    ZooEntry("yolos-dynamo", "torch-dynamo", "detector", _BERT_DYNAMO, {"pixel_values": (1, 3, DETR_SIZE, DETR_SIZE)},
             _torch_export(_yolos, True, "detector"), _images((1, 3, DETR_SIZE, DETR_SIZE)), task="detect", limit=2),
    ZooEntry("rtdetr-hf-legacy", "torch-legacy", "detector", _BERT, {"pixel_values": (1, 3, DETR_SIZE, DETR_SIZE)},
             _torch_export(_rtdetr, False, "detector"), _images((1, 3, DETR_SIZE, DETR_SIZE)), task="detect",
             limit=2, postprocess="detr-sigmoid"),
    ZooEntry("crnn-legacy", "torch-legacy", "ocr-recognizer", _TORCH, {"x": CRNN_SHAPE},
             _torch_export(_crnn, False, "ocr-recognizer"), _images(CRNN_SHAPE)),
    ZooEntry("deformable-legacy", "torch-legacy", "deformable-cnn", _TORCH, {"x": (1, 3, 32, 32)},
             _torch_export(_deformable, False, "deformable-cnn"), _images((1, 3, 32, 32)), task="classify"),
    ZooEntry("keras-cnn", "tf2onnx", "cnn", ("tensorflow", "tf2onnx"), {"x": (1, 32, 32, 3)},
             _keras_export, _images((1, 32, 32, 3), layout="NHWC"), task="classify"),
)
"""Every zoo model. Names are unique; tests parametrize over them."""

BY_NAME = {entry.name: entry for entry in ZOO}
