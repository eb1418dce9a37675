"""Held out: model families nobody tuned trtq's placement to (tests/support/heldout_models.py:
MobileNetV3 with hardswish and squeeze-excitation, ResNeXt grouped convs, a RetinaNet/FPN detector,
a U-Net with ConvTranspose, transformers' ViT, ConvNeXt and DETR, Ultralytics' YOLOv8n), each
exported by torch's legacy and dynamo exporters, quantized by `trtq quantize` as a user runs it
(default options), then checked by `trtq verify` and, independently, by a second TensorRT-RTX
build read without trtq's code (tests/support/rtx_count.py):

- both name the same quantized layers and the same ones running in INT8;
- every quantized Conv/Gemm/MatMul runs in INT8; the only exceptions are those of
  tests/support/verify_checks.py (ConvTranspose in float, pairs before average pooling unfused)
  and the unfused pairs named per model in UNFUSED_READERS, each with its reason.

Each case takes 5-30 s here (export, calibration, two builds), so all are marked `slow`
(`python -m pytest --slow tests/verify/test_verify_heldout.py`). Skipped with the reason where
TensorRT-RTX, an exporter or a model's package is not installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json

import numpy as np
import pytest

pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (pip install -e '.[verify]')")
pytest.importorskip("torch", reason="the held-out models are exported with torch")

import heldout_models
import rtx_count
from verify_checks import assert_quantized_layers_run_quantized

from trtq import api
from trtq.cli import main

UNFUSED_READERS = {
    "resnext": frozenset({"Add"}),
    "retinanet": frozenset({"Add"}),
}
"""Pairs that do not fuse in TensorRT-RTX 1.7 although datacenter TensorRT fuses them (trtq's reading of the
build logs; the layers around them all run in INT8):

- Add: the pair on a residual skip input whose only reader is the Add (ResNeXt's projection shortcut, the
  FPN's upsampled top-down path). TensorRT-RTX adds in a generated float kernel after the convolution, so
  it quantizes and dequantizes the skip in float; TensorRT 10/11 fuse the Add into the convolution and
  read the skip in INT8, which is why trtq (as ModelOpt) quantizes it.
YOLOv8n's SPPF MaxPools (three chained 5x5 stride-1 pools, all four tensors concatenated) had the only other
unfused pairs: the Concat reads the pools' inputs in float, so TensorRT-RTX ran those pools in float; trtq's
placement now leaves those pairs out, and every pair of the model fuses.
"""


def trtq(*args: str) -> dict:
    """`trtq ARGS --json` in this process: its JSON result (fails with stderr on a non-zero exit)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "--json", "--quiet"])
    assert code == 0, f"trtq {' '.join(args)} exited {code}:\n{err.getvalue()}"
    return json.loads(out.getvalue())


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("name", [m.name for m in heldout_models.MODELS])
def test_heldout_model_runs_int8_and_verify_agrees_with_an_independent_count(name, dynamo, tmp_path):
    model = heldout_models.BY_NAME[name]
    absent = [module for module in model.needs if importlib.util.find_spec(module) is None]
    if absent:
        pytest.skip(f"{name} needs {', '.join(absent)}, which is not installed")
    if dynamo and importlib.util.find_spec("onnxscript") is None:
        pytest.skip("torch's dynamo exporter needs onnxscript")
    onnx_path = heldout_models.export(model, tmp_path / f"{name}.onnx", dynamo)
    rng = np.random.default_rng(0)
    coarse = rng.uniform(-1, 1, (8, model.shape[1], model.shape[2] // 8, model.shape[3] // 8))
    images = coarse.repeat(8, 2).repeat(8, 3) + 0.2 * rng.uniform(-1, 1, (8, *model.shape[1:]))
    np.save(tmp_path / "calib.npy", images.astype(np.float32))

    quantized = trtq("quantize", str(onnx_path), "--calib", str(tmp_path / "calib.npy"),
                     "--output-dir", str(tmp_path / "out"))
    result = api.verify(quantized["onnx_path"], progress=False)  # the shapes the quantize run recorded
    assert_quantized_layers_run_quantized(result, "int8", UNFUSED_READERS.get(name, frozenset()))

    independent = rtx_count.count(quantized["onnx_path"], {"x": model.shape})
    assert {v.node: v.op_type for v in result.layers} == independent.quantized
    assert {v.node for v in result.layers if v.ok} == independent.low_precision
    assert independent.float_layers() == {n: op for n, op in independent.quantized.items() if op == "ConvTranspose"}
    print(f"\n{name} ({'dynamo' if dynamo else 'legacy'}): trtq verify: {result.summary}; independent: "
          f"{len(independent.low_precision)} of {len(independent.quantized)} in INT8")
