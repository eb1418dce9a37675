"""Every model of the real-export zoo (tests/support/zoo.py: torch legacy and dynamo CNN and BERT,
PaddleOCR det/rec/cls from paddle2onnx, a tf2onnx Keras CNN), quantized by trtq as INT8, INT8 +
--high-precision fp16 and FP8, is built by TensorRT-RTX (ahead of time, no GPU) and:

- every layer trtq quantized runs in INT8/FP8; the exceptions and why they are right are in
  tests/support/verify_checks.py (ConvTranspose in float, pairs before average pooling unfused);
- `trtq verify`'s count agrees with an independent one (tests/support/rtx_count.py: a second
  build straight through the bindings, the ONNX graph read with onnx alone) on which quantized
  layers run at low precision.

Ranges come from `--method max`: TensorRT's fusion depends on where the Q/DQ pairs are, not on their
scales, and the default `auto` (candidate tables judged end to end) takes ten times as long. The
PaddleOCR models still take 5-10 s a case here (opset upgrade, then two builds of 50-90 layers), so
the default run keeps one of them (PP-OCRv6 det, INT8: the family's ConvTranspose and pooling
exceptions); the other eight cases are marked `slow` and run with `--slow`.

Skipped with the reason where TensorRT-RTX (`pip install -e '.[verify]'`) or a zoo model's exporter
is not installed.
"""

from __future__ import annotations

import pytest

pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (pip install -e '.[verify]')")

import rtx_count
import zoo
from verify_checks import assert_quantized_layers_run_quantized

from trtq import api

VARIANTS = {"int8": ("int8", "fp32"), "int8-fp16": ("int8", "fp16"), "fp8": ("fp8", "fp32")}
"""The Q/DQ models trtq writes: (precision, high precision) per variant."""
UNFUSED_READERS = {"rtdetr-hf-legacy": frozenset({"Add"})}
"""Unfused pairs named per model: in RT-DETR's RepVGG blocks (a 3x3 and a 1x1 convolution of one input, summed,
then SiLU) TensorRT-RTX 1.7 adds in float after both convolutions instead of fusing the Add into one of them, so
the pair trtq puts on the 1x1 branch for that fusion is dequantized before the Add (its convolutions still read
INT8). YOLOv8's SPPF MaxPools, whose pairs did not fuse either, now read float (placement rule), so every pair
of that model fuses."""
DEFAULT = {("ppocr-det", "int8")}
"""The PaddleOCR cases that run by default; the others are `slow`."""


def cases() -> list:
    params = []
    for entry in zoo.ZOO:
        for variant in VARIANTS:
            slow = entry.exporter == "paddle2onnx" and (entry.name, variant) not in DEFAULT
            params.append(pytest.param(entry, variant, id=f"{entry.name}-{variant}",
                                       marks=[pytest.mark.slow] if slow else []))
    return params


@pytest.mark.parametrize(("entry", "variant"), cases())
def test_every_quantized_layer_of_every_zoo_model_runs_quantized(entry, variant, tmp_path):
    absent = zoo.missing(entry)
    if absent:
        pytest.skip(f"zoo model {entry.name} needs {', '.join(absent)}, which is not installed")
    precision, high_precision = VARIANTS[variant]
    quantized = zoo.quantize(entry, tmp_path, precision=precision, high_precision=high_precision, method="max")
    shapes = entry.shapes  # PP-OCR cls names every dynamic dim '?': trtq gives them distinct names, so 48x64 builds
    result = api.verify(quantized.onnx_path, api.VerifyOptions(shapes=shapes), progress=False)
    assert_quantized_layers_run_quantized(result, precision, UNFUSED_READERS.get(entry.name, frozenset()))

    independent = rtx_count.count(quantized.onnx_path, shapes)
    assert {v.node: v.op_type for v in result.layers} == independent.quantized
    assert {v.node for v in result.layers if v.ok} == independent.low_precision
