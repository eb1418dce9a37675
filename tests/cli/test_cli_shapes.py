"""Shapes from the data on real torch exports (legacy and dynamo) whose dims are dynamic: quantize,
compare and sensitivity take the sizes from a fixed-shape .npy/.npz, say so in the text and in --json,
and put them in the trtexec commands; --shape still overrides and must agree."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from trtq.cli import main

torch = pytest.importorskip("torch", reason="torch exports the models of these tests")

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _cnn() -> torch.nn.Module:
    """x [N,3,H,W] -> Conv3x3 -> Relu -> Conv3x3 -> Relu -> mean(H,W) -> Linear(8,5) -> y [N,5]"""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))

    return Net().eval()


def _tokens() -> torch.nn.Module:
    """input_ids, token_type_ids [batch,seq] -> Embedding + Embedding -> MatMul(16x16) -> Relu -> * attention_mask
    -> MatMul(16x4) -> out [batch,seq,4]"""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.types = torch.nn.Embedding(50, 16), torch.nn.Embedding(2, 16)
            self.hidden, self.out = torch.nn.Linear(16, 16), torch.nn.Linear(16, 4)

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = torch.relu(self.hidden(self.emb(input_ids) + self.types(token_type_ids)))
            return self.out(h * attention_mask.unsqueeze(-1).float())

    return Net().eval()


@pytest.fixture(scope="module")
def exports(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two models from both exporters, every dim but the CNN's channels dynamic.

    Exporting takes seconds, so the files are kept in pytest's cache (when it is on), keyed by
    this file's text and torch's version (a change to either exports again).
    """
    key = hashlib.sha256(Path(__file__).read_bytes() + torch.__version__.encode()).hexdigest()[:16]
    cache = getattr(pytestconfig, "cache", None)
    root = cache.mkdir(f"trtq-shape-exports-{key}") if cache is not None else tmp_path_factory.mktemp("exports")
    paths = {name: root / f"{name}.onnx" for name in ("cnn-legacy", "tokens-legacy", "cnn-dynamo", "tokens-dynamo")}
    if not (root / "complete").is_file():  # written last: an interrupted export is redone
        _export(root, paths)
        (root / "complete").write_text("")
    return paths


def _export(root: Path, paths: dict[str, Path]) -> None:
    torch.manual_seed(0)
    cnn, tokens = _cnn(), _tokens()
    image = (torch.randn(2, 3, 20, 20),)
    ids = (torch.randint(0, 50, (2, 12)), torch.ones(2, 12, dtype=torch.int64), torch.zeros(2, 12, dtype=torch.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(cnn, image, paths["cnn-legacy"], dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}, "y": {0: "N"}})
        axes = {0: "batch", 1: "seq"}
        torch.onnx.export(tokens, ids, paths["tokens-legacy"], dynamo=False, input_names=list(TOKEN_INPUTS),
                          output_names=["out"], dynamic_axes={n: axes for n in (*TOKEN_INPUTS, "out")})
        pytest.importorskip("onnxscript", reason="torch's dynamo exporter needs onnxscript")
        dim = torch.export.Dim
        torch.onnx.export(cnn, image, paths["cnn-dynamo"], dynamo=True, input_names=["x"], output_names=["y"],
                          dynamic_shapes=({0: dim("N"), 2: dim("H", min=8), 3: dim("W", min=8)},), verbose=False)
        seq = {0: dim("batch"), 1: dim("seq", min=2)}
        torch.onnx.export(tokens, ids, paths["tokens-dynamo"], dynamo=True, input_names=list(TOKEN_INPUTS),
                          output_names=["out"], dynamic_shapes=(seq, seq, seq), verbose=False)
    rng = np.random.default_rng(0)
    np.save(root / "images.npy", rng.standard_normal((8, 3, 24, 24)).astype(np.float32))
    np.savez(root / "tokens.npz", input_ids=rng.integers(0, 50, (8, 12)), attention_mask=np.ones((8, 12), np.int64),
             token_type_ids=np.zeros((8, 12), np.int64))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_cnn_with_dynamic_hw_takes_its_shape_from_the_npy(exports, exporter, tmp_path, capsys):
    model = str(exports[f"cnn-{exporter}"])
    data = str(exports[f"cnn-{exporter}"].parent / "images.npy")
    note = "shape of 'x' taken from the data: 1x3x24x24"
    assert main(["quantize", model, "--calib", data, "--output-dir", str(tmp_path), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert text.count(note) == 1 and "--shapes=x:1x3x24x24" in text
    assert main(["quantize", model, "--calib", data, "--output-dir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["shape_notes"] == [note] and out["shapes"] == {"x": [1, 3, 24, 24]}
    record = json.loads(Path(out["record"]).read_text())
    assert record["result"]["shape_notes"] == [note]
    assert main(["compare", model, out["onnx_path"], "--data", data, "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(note + "\n")
    assert main(["compare", model, out["onnx_path"], "--data", data, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shape_notes"] == [note]
    # --shape overrides, and must agree with the data
    assert main(["quantize", model, "--calib", data, "--output-dir", str(tmp_path), "--shape", "x:2x3x24x24",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["shape_notes"] == [] and out["shapes"] == {"x": [2, 3, 24, 24]}
    assert main(["compare", model, out["onnx_path"], "--data", data, "--shape", "x:1x3x32x32"]) == 2
    assert "--shape x:1x3x32x32 asks for samples of 3x32x32, but" in capsys.readouterr().err


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_three_dynamic_token_inputs_take_their_shapes_from_the_npz(exports, exporter, tmp_path, capsys):
    model = str(exports[f"tokens-{exporter}"])
    data = str(exports[f"tokens-{exporter}"].parent / "tokens.npz")
    note = "shapes taken from the data: 'input_ids' 1x12, 'attention_mask' 1x12, 'token_type_ids' 1x12"
    assert main(["quantize", model, "--calib", data, "--method", "max", "--output-dir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["shape_notes"] == [note]
    assert "--shapes=input_ids:1x12,attention_mask:1x12,token_type_ids:1x12" in out["commands"]["tensorrt-11"]
    assert main(["compare", model, out["onnx_path"], "--data", data, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shape_notes"] == [note] and report["samples"] == 8
    assert main(["sensitivity", model, "--calib", data, "--output-dir", str(tmp_path), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(note + "\n") and "local sensitivity of 2 layers" in text
