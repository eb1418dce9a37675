"""Every CLI command on every model of the zoo (tests/support/zoo.py): real exports from torch's legacy
and dynamo exporters, paddle2onnx (PP-OCRv6 from the rapidocr wheel), Ultralytics and tf2onnx.

Each command must exit 0, and what it wrote must hold up: Q/DQ pairs placed, excluded layers really
without Q/DQ, the written models loading in onnxruntime with finite outputs, finite SNRs. The FP32
exports are cached between runs; what trtq writes is made fresh in a temporary folder per model.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from zoo import BY_NAME, ZOO, ZooEntry, ZooFiles, build, missing

from trtq.calibrate.algorithms import METHODS
from trtq.cli import main


def trtq(*args: str) -> dict:
    """Run `trtq ARGS --json` in this process; its JSON result (the test fails, with stderr, on a non-zero exit)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "--json"])
    assert code == 0, f"trtq {' '.join(args)} exited {code}:\n{err.getvalue()}"
    return json.loads(out.getvalue())


@dataclass(frozen=True)
class Zoo:
    """One zoo model with its data, a folder for what trtq writes, and the default `quantize` run in it."""

    entry: ZooEntry
    files: ZooFiles
    out: Path
    layers: tuple[str, ...]
    quantized: dict

    def args(self, data: Path | None = None) -> list[str]:
        """Options every data-reading command gets: the samples (--limit on the costly models)."""
        limit = ["--limit", str(self.entry.limit)] if self.entry.limit else []
        return [str(data or self.files.calib), *limit]


@pytest.fixture(scope="module", params=[entry.name for entry in ZOO])
def zoo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    entry = BY_NAME[request.param]
    absent = missing(entry)
    if absent:
        pytest.skip(f"the {entry.exporter} export needs {', '.join(absent)} (pip install '.[test]')")
    files = build(entry)
    out = tmp_path_factory.mktemp(entry.name)
    layers = tuple(trtq("inspect", str(files.onnx))["quantizable_nodes"])
    quantized = trtq("quantize", str(files.onnx), "--calib", *Zoo(entry, files, out, layers, {}).args(),
                     "--output-dir", str(out))
    return Zoo(entry, files, out, layers, quantized)


def run_model(path: str | Path, data: Path, limit: int = 2) -> list[np.ndarray]:
    """Outputs of the model at `path` in onnxruntime on the first `limit` samples of `data`."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    arrays = np.load(data)
    feeds = ({session.get_inputs()[0].name: arrays} if isinstance(arrays, np.ndarray)
             else {i.name: arrays[i.name] for i in session.get_inputs()})
    return [out for i in range(limit) for out in session.run(None, {k: v[i:i + 1] for k, v in feeds.items()})]


def dq_fed_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that read a DequantizeLinear output (the layers running in INT8)."""
    dq = {o for node in model.graph.node if node.op_type == "DequantizeLinear" for o in node.output}
    return {node.name for node in model.graph.node
            if node.op_type != "QuantizeLinear" and any(i in dq for i in node.input)}


def finite_snrs(report: dict) -> list[float]:
    """The SNR of every output of a `compare --json` report; fails unless each is a number (inf allowed)."""
    snrs = [float(o["snr_db"]) for o in report["outputs"] if o["snr_db"] is not None]  # JSON spells inf "inf"
    assert snrs and len(snrs) == len(report["outputs"]) and not any(math.isnan(s) for s in snrs), report["outputs"]
    return snrs


def test_inspect_counts_parameters_and_layers(zoo: Zoo) -> None:
    info = trtq("inspect", str(zoo.files.onnx))
    assert info["num_parameters"] > 1000 and info["num_parameters"] >= info["constant_parameters"]
    assert [i["name"] for i in info["inputs"]] == list(zoo.entry.shapes)
    assert len(zoo.layers) >= 5
    if zoo.entry.name == "ppocr-cls":  # its weights live in Constant nodes only
        assert info["constant_parameters"] == info["num_parameters"] > 100_000


def test_quantize_places_qdq_and_the_model_runs(zoo: Zoo) -> None:
    result = zoo.quantized
    assert result["qdq_pairs"] > 0 and result["quantized_weights"] > 0 and result["cache_entries"] > 0
    dynamic = {i.name for i in onnx.load(str(zoo.files.onnx), load_external_data=False).graph.input
               if any(not d.HasField("dim_value") for d in i.type.tensor_type.shape.dim[1:])}  # batch defaults to 1
    assert result["shapes"] == {name: list(shape) for name, shape in zoo.entry.shapes.items() if name in dynamic}
    model = onnx.load(result["onnx_path"])
    assert len(dq_fed_nodes(model)) >= len(zoo.layers) // 2
    assert all(np.isfinite(o).all() for o in run_model(result["onnx_path"], zoo.files.held_out))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "auto"])  # auto, the default, made `zoo.quantized`
def test_quantize_with_each_method(zoo: Zoo, method: str) -> None:
    result = trtq("quantize", str(zoo.files.onnx), "--calib", *zoo.args(), "--method", method,
                  "--output-dir", str(zoo.out / method))
    assert result["method"] == method and result["qdq_pairs"] == zoo.quantized["qdq_pairs"]
    assert all(np.isfinite(o).all() for o in run_model(result["onnx_path"], zoo.files.held_out))


def test_quantize_fp8_runs_in_onnxruntime(zoo: Zoo) -> None:
    result = trtq("quantize", str(zoo.files.onnx), "--calib", *zoo.args(), "--precision", "fp8",
                  "--output-dir", str(zoo.out / "fp8"))
    model = onnx.load(result["onnx_path"])
    zero_points = {n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    types = {init.data_type for init in model.graph.initializer if init.name in zero_points}
    assert result["qdq_pairs"] > 0 and types == {onnx.TensorProto.FLOAT8E4M3FN}
    assert all(np.isfinite(o).all() for o in run_model(result["onnx_path"], zoo.files.held_out))


def test_exclude_nodes_leaves_that_layer_without_qdq(zoo: Zoo) -> None:
    kept_anyway = set(zoo.quantized["excluded_nodes"])  # layers the placement keeps in high precision itself
    first = next(layer for layer in zoo.layers if layer not in kept_anyway)
    result = trtq("quantize", str(zoo.files.onnx), "--calib", *zoo.args(), "--exclude-nodes",
                  f"^{re.escape(first)}$", "--output-dir", str(zoo.out / "exclude-nodes"))
    assert set(result["excluded_nodes"]) == kept_anyway | {first}
    int8 = dq_fed_nodes(onnx.load(result["onnx_path"]))
    assert first not in int8 and first in dq_fed_nodes(onnx.load(zoo.quantized["onnx_path"]))
    assert 0 < result["qdq_pairs"] < zoo.quantized["qdq_pairs"]


def test_exclude_ops_leaves_every_layer_of_that_op_without_qdq(zoo: Zoo) -> None:
    model = onnx.load(str(zoo.files.onnx))
    ops = {node.name: node.op_type for node in model.graph.node}
    op = ops.get(zoo.layers[-1]) or next(n.op_type for n in model.graph.node if n.op_type in ("Gemm", "MatMul", "Conv"))
    result = trtq("quantize", str(zoo.files.onnx), "--calib", *zoo.args(), "--exclude-ops", op,
                  "--output-dir", str(zoo.out / "exclude-ops"))
    written = onnx.load(result["onnx_path"])
    written_ops = {node.name: node.op_type for node in written.graph.node}
    excluded = set(result["excluded_nodes"]) - set(zoo.quantized["excluded_nodes"])
    assert excluded and {written_ops[n] for n in excluded} == {op}
    assert not any(written_ops[n] == op for n in dq_fed_nodes(written))


def test_compare_reports_finite_snr(zoo: Zoo) -> None:
    report = trtq("compare", str(zoo.files.onnx), zoo.quantized["onnx_path"], "--data", *zoo.args(zoo.files.held_out),
                  "--output-dir", str(zoo.out))
    finite_snrs(report)
    assert report["samples"] == (zoo.entry.limit or 8)
    if zoo.entry.task == "detect":  # COCO mAP against FP32 pseudo-boxes, saying how many; YOLO's SNR split
        detect = trtq("compare", str(zoo.files.onnx), zoo.quantized["onnx_path"], "--data",
                      *zoo.args(zoo.files.held_out), "--task", "detect", "--ref-conf", "0.01",
                      *(["--postprocess", zoo.entry.postprocess] if zoo.entry.postprocess else []),
                      "--output-dir", str(zoo.out / "detect"))
        task, said = detect["task"], " ".join(detect["notes"])
        against = task["reference"]["scored_against"]
        assert against["unit"] == "boxes" and against["samples"] == report["samples"] and against["objects"] > 0
        assert task["reference"]["values"]["map50"] == pytest.approx(100.0)  # FP32 against its own boxes
        assert 0.0 <= task["candidate"]["values"]["map50"] <= 100.0
        parts = {part["name"]: part["snr_db"] for part in task["candidate"].get("parts", [])}
        assert not any(math.isnan(v) for v in parts.values())
        if zoo.entry.exporter == "ultralytics":  # a YOLO head: box values and class scores apart
            assert set(parts) == {"output0 boxes", "output0 scores"}
            assert "yolo postprocess, picked by the layout" in said
        elif zoo.entry.postprocess:  # transformers' RT-DETR: sigmoid scores, no no-object class to pick it by
            assert f"{zoo.entry.postprocess} postprocess)" in said
        else:  # transformers' DETR/YOLOS: queries with a no-object class
            assert "detr postprocess, picked because the outputs are logits" in said


def test_target_keeps_layers_out_until_it_holds(zoo: Zoo) -> None:
    """A target just above what all-INT8 reaches: the search must exclude at least one layer."""
    held_out = zoo.args(zoo.files.held_out)
    report = trtq("compare", str(zoo.files.onnx), zoo.quantized["onnx_path"], "--data", *held_out)
    target = f"snr>={min(finite_snrs(report)) + 0.05:.2f}"
    result = trtq("quantize", str(zoo.files.onnx), "--calib", *zoo.args(), "--target", target,
                  "--target-data", held_out[0], "--output-dir", str(zoo.out / "target"))
    mixed = result["mixed"]
    assert mixed["holds"] and mixed["excluded"] and mixed["final_metric"] >= mixed["int8_metric"]
    kept_out = {layer["node"] for layer in mixed["excluded"]}
    assert not kept_out & dq_fed_nodes(onnx.load(result["onnx_path"]))


def test_high_precision_fp16_runs_in_onnxruntime(zoo: Zoo) -> None:
    result = trtq("quantize", str(zoo.files.onnx), "--calib", *zoo.args(), "--high-precision", "fp16",
                  "--output-dir", str(zoo.out / "fp16"))
    assert result["precision"]["fp16_nodes"] > 0
    model = onnx.load(result["onnx_path"])
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    assert all(np.isfinite(o).all() for o in run_model(result["onnx_path"], zoo.files.held_out))
    finite_snrs(trtq("compare", str(zoo.files.onnx), result["onnx_path"], "--data", *zoo.args(zoo.files.held_out),
                     "--output-dir", str(zoo.out / "fp16")))


@pytest.mark.parametrize("method", ["local", "exact"])
def test_sensitivity_ranks_every_layer(zoo: Zoo, method: str) -> None:
    result = trtq("sensitivity", str(zoo.files.onnx), "--calib", *zoo.args(), "--method", method,
                  "--output-dir", str(zoo.out))
    ranked = [layer["node"] for layer in result["layers"]]
    quantized = set(zoo.layers) - set(zoo.quantized["excluded_nodes"])
    assert len(set(ranked)) == len(ranked) and quantized <= set(ranked)  # and pooling/residual-Add inputs
    assert not any(math.isnan(float(layer["snr_db"])) for layer in result["layers"])  # JSON spells inf "inf"


def test_report_renders_the_runs(zoo: Zoo) -> None:
    trtq("compare", str(zoo.files.onnx), zoo.quantized["onnx_path"], "--data", *zoo.args(zoo.files.held_out),
         "--output-dir", str(zoo.out))
    written = trtq("report", str(zoo.out))
    html = Path(written["html"]).read_text()
    assert html.startswith("<!DOCTYPE html>") and zoo.files.onnx.name in html
    assert Path(written["markdown"]).stat().st_size > 0


def test_finetune_three_steps(zoo: Zoo) -> None:
    pytest.importorskip("torch", reason="trtq finetune needs PyTorch")
    result = trtq("finetune", str(zoo.files.onnx), "--calib", *zoo.args(), "--steps", "3", "--batch-size", "2",
                  "--eval-every", "3", "--output-dir", str(zoo.out / "qat"))
    assert result["training"]["steps"] == 3
    assert all(np.isfinite(o).all() for o in run_model(result["onnx_path"], zoo.files.held_out))


def test_smooth_quantize_runs_in_onnxruntime(zoo: Zoo) -> None:
    """SmoothQuant (--smooth) folds scales into the layers before their inputs: the written model must still run."""
    result = trtq("quantize", str(zoo.files.onnx), "--calib", *zoo.args(), "--smooth",
                  "--output-dir", str(zoo.out / "smooth"))
    assert result["qdq_pairs"] > 0
    assert all(np.isfinite(o).all() for o in run_model(result["onnx_path"], zoo.files.held_out))


def test_verify_builds_the_qdq_model(zoo: Zoo) -> None:
    """A real NVIDIA builder (TensorRT-RTX, on the CPU) parses and builds the Q/DQ model trtq wrote."""
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (pip install -e '.[verify]')")
    result = trtq("verify", zoo.quantized["onnx_path"], *zoo.entry.shape_args(), "--output-dir", str(zoo.out / "verify"))
    assert result["engine_bytes"] > 0 and result["quantized_layers"] > 0
    assert 0 < result["low_precision_layers"] <= result["quantized_layers"]
    if zoo.entry.name == "ppocr-cls":  # paddle2onnx names every dynamic dim '?'; trtq's Q/DQ model names them apart
        inputs = onnx.load(zoo.quantized["onnx_path"], load_external_data=False).graph.input
        assert [d.dim_param or d.dim_value for d in inputs[0].type.tensor_type.shape.dim] == [
            -1, 3, "x_dim2", "x_dim3"]  # paddle2onnx writes the batch as -1
        assert any("shared the placeholder name '?'" in note for note in zoo.quantized["notes"])
