"""The committed example (examples/digits): the ONNX model, its data, and its FP32 accuracy.

The model, drawn (BN folded into the convolutions by the exporter):

    image[N,1,32,32] -> Conv -> Relu -> MaxPool ─┬─> Conv -> Relu -> Conv -> Add -> Relu
                                                 └──────────────────────────^
      -> Conv(depthwise, group 16, stride 2) -> Relu -> Conv(1x1, 32) -> Relu ─┬─> Conv -> Relu -> Conv -> Add -> Relu
                                                                               └──────────────────────────^
      -> GlobalAveragePool -> Flatten -> Gemm -> logits[N,10]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from trtq.model import TensorSpec, inspect_model, load_model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits"
MODEL = EXAMPLE / "digits_cnn.onnx"
CLASSES = [str(c) for c in range(10)]


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return load_model(MODEL)


def read_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """folder/<label>/*.png as trtq's "none" preset reads them: grayscale, /255, NCHW."""
    files = sorted(folder.glob("*/*.png"))
    images = np.stack([np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255.0 for f in files])
    labels = np.array([int(f.parent.name) for f in files])
    return images[:, None], labels, files


def test_model_is_small_and_valid(model: onnx.ModelProto) -> None:
    assert MODEL.stat().st_size < 500_000
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    info = inspect_model(MODEL, model)
    assert info.opset == 17
    assert 10_000 < info.num_parameters < 100_000


def test_model_io(model: onnx.ModelProto) -> None:
    info = inspect_model(MODEL, model)
    assert info.inputs == (TensorSpec("image", ("N", 1, 32, 32), "float32"),)
    assert info.outputs == (TensorSpec("logits", ("N", 10), "float32"),)


def test_model_ops_cover_the_placement_rules(model: onnx.ModelProto) -> None:
    counts = inspect_model(MODEL, model).op_counts
    assert counts == {
        "Add": 2, "Conv": 7, "Flatten": 1, "Gemm": 1, "GlobalAveragePool": 1, "MaxPool": 1, "Relu": 7,
    }
    groups = [
        next((a.i for a in node.attribute if a.name == "group"), 1)
        for node in model.graph.node if node.op_type == "Conv"
    ]
    assert groups.count(16) == 1 and groups.count(1) == 6  # one depthwise conv
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    for add in (n for n in model.graph.node if n.op_type == "Add"):
        # residual: one input from the branch's last Conv, the other the skip from elsewhere
        assert [producer.get(i, "graph input") for i in add.input].count("Conv") == 1


@pytest.mark.parametrize("split, per_class", [("calib", 20), ("val", 30)])
def test_data_folders(split: str, per_class: int) -> None:
    folder = EXAMPLE / split
    assert sorted(p.name for p in folder.iterdir()) == CLASSES
    for cls in CLASSES:
        files = sorted((folder / cls).glob("*.png"))
        assert len(files) == per_class
        with Image.open(files[0]) as image:
            assert (image.mode, image.size) == ("L", (32, 32))


def test_val_is_held_out_from_calib() -> None:
    calib = {p.name for p in (EXAMPLE / "calib").glob("*/*.png")}  # names are dataset indices
    val = {p.name for p in (EXAMPLE / "val").glob("*/*.png")}
    assert len(calib) == 200 and len(val) == 300
    assert not calib & val


def test_fp32_accuracy_on_val() -> None:
    images, labels, _ = read_folder(EXAMPLE / "val")
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": images})
    assert logits.shape == (300, 10)
    assert float((logits.argmax(1) == labels).mean()) >= 0.9
    (single,) = session.run(["logits"], {"image": images[:1]})  # the batch dim is dynamic
    np.testing.assert_allclose(single, logits[:1], rtol=1e-4, atol=1e-4)
