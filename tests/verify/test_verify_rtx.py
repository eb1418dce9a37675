"""Every Q/DQ model trtq writes in these tests is built by a real NVIDIA builder (TensorRT-RTX, ahead
of time, no GPU) and every layer trtq quantized runs in INT8 (FP8 for --precision fp8).

Models, each quantized by trtq here:

- the bundled digits CNN (INT8, INT8 + --high-precision fp16);
- a small detector-style CNN exported by torch's legacy and dynamo exporters (INT8, INT8 + fp16, FP8):

      x -> conv-bn-silu (s2) -> conv-bn-silu (s2) -+-> conv 1x1 -> conv 3x3 -> (+) -> depthwise 3x3 -> maxpool
                                                   +-------------------------------^
        |
        (+) -> convtranspose 2x2 (s2) -> concat with the stem's output -> conv 1x1 head -> sigmoid
        maxpool -> global average pool -> linear

- a tiny BERT (tests/support/transformer_models.py) from both exporters (INT8; INT8 + fp16; FP8);
- PaddleOCR's PP-OCRv6 det and rec and its direction classifier from the rapidocr wheel, at small
  shapes (paddle2onnx exports: opset 11, Identity chains).

The exceptions (ConvTranspose in float, pairs before average pooling unfused) and why they are
right are in tests/support/verify_checks.py, which asserts them.

Skipped with the reason where TensorRT-RTX (`pip install -e '.[verify]'`) is not installed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

trt = pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (pip install -e '.[verify]')")

from verify_checks import assert_quantized_layers_run_quantized, op_types

from trtq import api
from trtq.cli import main
from trtq.errors import TrtqError

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "examples" / "digits"
# ---------------------------------------------------------------------------------------------
# models


def _cnn():
    import torch

    def block(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                                   torch.nn.BatchNorm2d(cout), torch.nn.SiLU())

    class Detector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.down = block(3, 16, stride=2), block(16, 32, stride=2)
            self.b1, self.b2 = block(32, 32, 1), block(32, 32)
            self.dw, self.pool = block(32, 32, groups=32), torch.nn.MaxPool2d(2)
            self.up = torch.nn.ConvTranspose2d(32, 16, 2, 2)
            self.head, self.fc = torch.nn.Conv2d(32, 8, 1), torch.nn.Linear(32, 10)

        def forward(self, x):
            s = self.stem(x)
            d = self.down(s)
            r = d + self.b2(self.b1(d))
            p = self.pool(self.dw(r))
            up = torch.cat([self.up(r), s], 1)
            return torch.sigmoid(self.head(up)), self.fc(torch.nn.functional.adaptive_avg_pool2d(p, 1).flatten(1))

    torch.manual_seed(0)
    model = Detector().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _export_cnn(path: Path, dynamo: bool) -> Path:
    import warnings

    import torch

    x = torch.randn(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(_cnn(), (x,), str(path), dynamo=True, input_names=["x"], external_data=False,
                              verbose=False)
        else:
            torch.onnx.export(_cnn(), (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}})
    return path


@pytest.fixture(scope="session")
def cnn_onnx(tmp_path_factory):
    """`get(dynamo)`: the detector-style CNN exported by torch's legacy or dynamo exporter, and calibration data."""
    pytest.importorskip("torch", reason="the CNN is exported with torch")
    folder = tmp_path_factory.mktemp("verify_cnn")
    np.save(folder / "calib.npy", np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    made: dict[bool, Path] = {}

    def get(dynamo: bool) -> tuple[Path, Path]:
        if dynamo:
            pytest.importorskip("onnxscript", reason="torch's dynamo exporter needs onnxscript")
        if dynamo not in made:
            made[dynamo] = _export_cnn(folder / f"cnn_{'dynamo' if dynamo else 'legacy'}.onnx", dynamo)
        return made[dynamo], folder / "calib.npy"

    return get


def quantize(model: Path, calib: Path, out: Path, **options) -> Path:
    data = options.pop("data", api.DataOptions())
    result = api.quantize(model, calib, data=data, progress=False,
                          options=api.QuantizeOptions(output_dir=str(out), **options))
    return Path(result.onnx_path)


# ---------------------------------------------------------------------------------------------
# real builds


@pytest.mark.parametrize("high_precision", ["fp32", "fp16"])
def test_digits_example_runs_int8(tmp_path, high_precision):
    path = quantize(DIGITS / "digits_cnn.onnx", DIGITS / "calib", tmp_path, high_precision=high_precision,
                    data=api.DataOptions(preset="none", limit=32))
    result = api.verify(path, progress=False)
    assert result.summary.startswith("8 of 8 quantized layers run in INT8")
    assert {v.op_type for v in result.layers} == {"Conv", "Gemm"}
    assert_quantized_layers_run_quantized(result, "int8")
    # the one pair that cannot fuse: the input of the final global average pool
    assert [op_types(path)[c] for p in result.unfused_pairs for c in p.float_readers] == ["GlobalAveragePool"]
    assert result.engine_compute_layers == result.engine_low_precision_compute_layers == 8


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("high_precision", ["fp32", "fp16"])
def test_torch_cnn_exports_run_int8(cnn_onnx, tmp_path, dynamo, high_precision):
    model, calib = cnn_onnx(dynamo)
    path = quantize(model, calib, tmp_path, high_precision=high_precision)
    result = api.verify(path, progress=False)
    assert_quantized_layers_run_quantized(result, "int8")
    assert sorted(v.op_type for v in result.layers) == ["Conv"] * 6 + ["ConvTranspose", "Gemm"]
    assert [v.op_type for v in result.float_layers] == ["ConvTranspose"]  # TensorRT-RTX: deconv in float


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_torch_cnn_runs_fp8_convolutions(cnn_onnx, tmp_path, dynamo):
    """FP8 placement keeps convs with <= 16 channels, the ConvTranspose and pooling out; the two 32-channel
    convs and the Gemm it quantizes run in FP8 (TensorRT-RTX has FP8 convolutions, not only GEMMs)."""
    model, calib = cnn_onnx(dynamo)
    path = quantize(model, calib, tmp_path, precision="fp8")
    result = api.verify(path, progress=False)
    assert_quantized_layers_run_quantized(result, "fp8")
    assert sorted(v.op_type for v in result.layers) == ["Conv", "Conv", "Gemm"]
    assert result.summary == "3 of 3 quantized layers run in FP8"


@pytest.mark.parametrize(("dynamo", "high_precision", "precision"),
                         [(False, "fp32", "int8"), (True, "fp32", "int8"), (False, "fp16", "int8"),
                          (True, "fp32", "fp8")], ids=["legacy", "dynamo", "legacy-fp16", "dynamo-fp8"])
def test_tiny_bert_runs_int8_and_fp8(transformer_onnx, tmp_path, dynamo, high_precision, precision):
    from transformer_models import SEQ, token_data

    np.savez(tmp_path / "calib.npz", **token_data(8))
    path = quantize(transformer_onnx("bert", dynamo), tmp_path / "calib.npz", tmp_path, high_precision=high_precision,
                    precision=precision)
    shapes = {name: (1, SEQ) for name in ("input_ids", "attention_mask", "token_type_ids")}
    result = api.verify(path, api.VerifyOptions(shapes=shapes), progress=False)
    assert_quantized_layers_run_quantized(result, precision)
    assert result.summary.startswith(f"16 of 16 quantized layers run in {precision.upper()}")
    assert result.unfused_pairs == ()
    # TensorRT fuses each encoder layer's Q, K and V projections into one GEMM: 2 x (1 + 5) GEMM layers
    assert result.engine_compute_layers == result.engine_low_precision_compute_layers == 12
    assert sum(len(v.fused_with) == 2 for v in result.layers) == 6


@pytest.mark.parametrize(("name", "shape"), [("PP-OCRv6_det_small.onnx", (1, 3, 64, 64)),
                                             ("PP-OCRv6_rec_small.onnx", (1, 3, 48, 64)),
                                             ("ch_ppocr_mobile_v2.0_cls_mobile.onnx", (1, 3, 48, 48))],
                         ids=["det", "rec", "cls"])
def test_paddleocr_models_run_int8(tmp_path, name, shape):
    rapidocr = pytest.importorskip("rapidocr", reason="PaddleOCR's models come from the rapidocr wheel")
    model = Path(rapidocr.__file__).parent / "models" / name
    if not model.is_file():
        pytest.skip(f"rapidocr {getattr(rapidocr, '__version__', '?')} has no {name}")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).random((4, *shape[1:])).astype(np.float32))
    path = quantize(model, tmp_path / "calib.npy", tmp_path / "out")
    result = api.verify(path, api.VerifyOptions(shapes={"x": shape}), progress=False)
    assert_quantized_layers_run_quantized(result, "int8")
    assert result.low_precision >= 50


def test_an_independent_reading_of_the_log_counts_the_same(tmp_path):
    """The engine's convolution/GEMM layers with Int8 inputs, counted from the raw build log by a regex
    of this test's own, match what verify reports."""
    path = quantize(DIGITS / "digits_cnn.onnx", DIGITS / "calib", tmp_path, data=api.DataOptions(preset="none",
                                                                                                 limit=16))

    class Log(trt.ILogger):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[str] = []

        def log(self, severity, message) -> None:
            self.messages.append(message)

    log = Log()
    builder = trt.Builder(log)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, log)
    assert parser.parse_from_file(str(path))
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 1, 32, 32), (1, 1, 32, 32), (1, 1, 32, 32))
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None
    lines = next(m for m in log.messages if m.startswith("Layers:")).split("\n")
    int8 = [line for line in lines if re.search(r"LayerType: (correlation|gemm)", line)
            and re.findall(r"Datatype: (\w+)", line.split("Constants:")[0]) == ["Int8"]]
    del parser
    result = api.verify(path, progress=False)
    assert len(int8) == result.engine_low_precision_compute_layers == result.low_precision == 8


# ---------------------------------------------------------------------------------------------
# the command, its record and report, its errors


def test_cli_json_record_and_report(tmp_path, capsys):
    path = quantize(DIGITS / "digits_cnn.onnx", DIGITS / "calib", tmp_path, data=api.DataOptions(preset="none",
                                                                                                 limit=16))
    assert main(["verify", str(path), "--json", "--shape", "image:2x1x32x32"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["summary"].startswith("8 of 8 quantized layers run in INT8")
    assert payload["quantized_layers"] == payload["low_precision_layers"] == 8
    assert payload["profile"]["image"]["opt"] == [2, 1, 32, 32]
    assert {v["node"] for v in payload["layers"]} >= {"/head/Gemm"}
    assert Path(payload["record"]) == tmp_path / "trtq-verify.json"
    assert main(["report", str(tmp_path)]) == 0
    html = (tmp_path / "trtq-report.html").read_text()
    assert "per-layer precision in TensorRT-RTX" in html and "8 of 8 quantized layers run in INT8" in html
    assert "GlobalAveragePool" in (tmp_path / "trtq-report.md").read_text()


def test_api_verify_saves_the_record_it_is_given(tmp_path):
    from trtq.report import RunRecord

    path = quantize(DIGITS / "digits_cnn.onnx", DIGITS / "calib", tmp_path, data=api.DataOptions(preset="none",
                                                                                                 limit=16))
    result = api.verify(path, progress=False)
    assert not (tmp_path / "trtq-verify.json").exists()  # no record unless asked, as compare and sensitivity
    result = api.verify(path, progress=False, record=RunRecord({"from": "api"}, directory=tmp_path / "records"))
    saved = json.loads((tmp_path / "records" / "trtq-verify.json").read_text())
    assert saved["settings"] == {"from": "api"}
    assert saved["result"]["summary"] == result.to_dict()["summary"]


def test_a_blocked_record_path_stops_verify_before_the_build(tmp_path, monkeypatch):
    from trtq.report import RunRecord

    path = quantize(DIGITS / "digits_cnn.onnx", DIGITS / "calib", tmp_path, data=api.DataOptions(preset="none",
                                                                                                 limit=16))
    (tmp_path / "trtq-verify.json").mkdir()
    monkeypatch.setattr(api, "verify_model", lambda *a, **k: pytest.fail("built although the record cannot be written"))
    with pytest.raises(TrtqError, match=r"trtq-verify\.json is a directory"):
        api.verify(path, progress=False, record=RunRecord({}))


def test_text_output_and_quiet(tmp_path, capsys):
    path = quantize(DIGITS / "digits_cnn.onnx", DIGITS / "calib", tmp_path, data=api.DataOptions(preset="none",
                                                                                                 limit=16))
    assert main(["verify", str(path), "--layers"]) == 0
    out, err = capsys.readouterr()
    assert "8 of 8 quantized layers run in INT8" in out and "ok  /head/Gemm (Gemm)" in out
    assert "built in" in err and "wrote" in out
    assert main(["verify", str(path), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "wrote" not in out


def _unparseable(path: Path) -> Path:
    """x -> Relu -> (custom-domain op the parser has no importer for) -> y"""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Mystery", ["r"], ["y"], name="mystery", domain="example.custom")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("example.custom", 1)]), path)
    return path


def test_a_model_the_parser_rejects_is_one_sentence_and_exit_2(tmp_path, capsys):
    path = _unparseable(tmp_path / "mystery.onnx")
    with pytest.raises(TrtqError) as info:
        api.verify(path, progress=False)
    assert info.value.message.startswith(f"TensorRT-RTX's ONNX parser rejected {path} at node mystery (Mystery)")
    assert "finding about the model" in info.value.hint
    assert main(["verify", str(path)]) == 2
    err = capsys.readouterr().err
    assert "trtq: error: TensorRT-RTX's ONNX parser rejected" in err and "Traceback" not in err
    assert not (tmp_path / "trtq-verify.json").exists()


def test_without_tensorrt_rtx_the_error_gives_the_pip_command(tmp_path, monkeypatch):
    import sys

    path = quantize(DIGITS / "digits_cnn.onnx", DIGITS / "calib", tmp_path, data=api.DataOptions(preset="none",
                                                                                                 limit=16))
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", None)
    with pytest.raises(TrtqError) as info:
        api.verify(path, progress=False)
    assert info.value.message.startswith("TensorRT-RTX is not installed in this Python environment")
    assert "pip install tensorrt-rtx-cu13-libs==1.7.1.116 tensorrt-rtx-cu13-bindings==1.7.1.116" in info.value.message


def test_missing_shape_names_the_input(tmp_path):
    model = tmp_path / "m.onnx"
    _unparseable(model)
    m = onnx.load(model)
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "width"
    onnx.save(m, model)
    with pytest.raises(TrtqError, match="--shape x:1xD1"):
        api.verify(model, progress=False)


def test_shapes_come_from_the_quantize_run_that_wrote_the_model(tmp_path, capsys):
    """x [N, 4, H, W] -> conv 3x3 (4 -> 8) -> relu -> y: quantized on 8x8 samples, verified without --shape."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, "H", "W"])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(1).standard_normal((4, 4, 8, 8)).astype(np.float32))
    assert main(["quantize", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy"), "--output-dir",
                 str(tmp_path / "out"), "--quiet"]) == 0  # the command writes trtq-quantize.json beside the model
    path = tmp_path / "out" / "m.int8.onnx"
    result = api.verify(path, progress=False)
    assert result.profile["x"]["opt"] == [1, 4, 8, 8] and result.summary == "1 of 1 quantized layers run in INT8"
    note = "shape of 'x' taken from the quantize run that wrote the model (trtq-quantize.json): 1x4x8x8"
    assert result.shape_notes == (note,)
    assert api.verify(path, api.VerifyOptions(shapes={"x": (2, 4, 6, 6)}), progress=False).shape_notes == ()
    moved = tmp_path / "moved" / path.name
    moved.parent.mkdir()
    moved.write_bytes(path.read_bytes())
    with pytest.raises(TrtqError, match=r"--shape x:1x4xD2xD3"):
        api.verify(moved, progress=False)


def same_named_dims(tmp_path, name: str) -> Path:
    """x [1, 3, name, name] -> Relu -> y [1, 3, name, name]."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, name, name])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, name, name])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    return tmp_path / "m.onnx"


def test_dims_of_one_name_must_agree_in_tensorrt(tmp_path):
    """x [1, 3, S, S] built at 4x6 is a finding about the model whose hint says why (TensorRT takes dims of
    one name to be equal): the exporter named them alike on purpose."""
    path = same_named_dims(tmp_path, "S")
    with pytest.raises(TrtqError) as info:
        api.verify(path, api.VerifyOptions(shapes={"x": (1, 3, 4, 6)}), progress=False)
    assert "could not build it" in info.value.message and "same name ('S')" in info.value.hint
    assert api.verify(path, api.VerifyOptions(shapes={"x": (1, 3, 4, 4)}), progress=False).layers == ()


def test_placeholder_dims_get_distinct_names_in_the_copy_the_builder_gets(tmp_path):
    """paddle2onnx names every dynamic dim '?', which meant nothing: verify hands the builder a copy whose
    dims have names of their own, says so, and leaves the file as it was."""
    path = same_named_dims(tmp_path, "?")
    before = path.read_bytes()
    result = api.verify(path, api.VerifyOptions(shapes={"x": (1, 3, 4, 6)}), progress=False)
    assert result.profile["x"]["opt"] == [1, 3, 4, 6] and result.engine_bytes > 0
    assert result.shape_notes == ("2 dynamic input dims shared the placeholder name '?', which TensorRT reads as one "
                                  "dim; renamed x_dim2, x_dim3 in the copy handed to the builder (the file is "
                                  "unchanged)",)
    assert path.read_bytes() == before
