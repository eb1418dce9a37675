"""TensorRT-RTX builds trtq's FP8 and smoothed INT8 Q/DQ models ahead of time (no GPU needed): the
build log's layer list (DETAILED profiling) gives each engine layer's type and input types, so the
tests see which GEMMs run in FP8/INT8 and whether --smooth's Mul costs a kernel of its own.

Skipped where `tensorrt_rtx_bindings` is not installed.
"""

import numpy as np
import pytest

trt = pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX (tensorrt-rtx-cu13-bindings) is not installed")

from rtx_layers import engine_layers
from transformer_models import SEQ, token_data

from trtq import api

SHAPES = {n: (1, SEQ) for n in ("input_ids", "attention_mask", "token_type_ids")}


def gemm_input_types(onnx_path: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[str, ...]]:
    """Each gemm layer's input datatypes, built for an Ada GPU (SM 8.9, the first with FP8)."""
    return {layer.name: layer.inputs for layer in engine_layers(onnx_path, shapes) if layer.kind == "gemm"}


@pytest.mark.parametrize("high_precision", ["fp32", "fp16"])
def test_fp8_bert_gemms_run_in_fp8(transformer_onnx, tmp_path, high_precision):
    model = transformer_onnx("bert", False)
    np.savez(tmp_path / "calib.npz", **token_data(8))
    result = api.quantize(model, tmp_path / "calib.npz", progress=False, options=api.QuantizeOptions(
        precision="fp8", high_precision=high_precision, output_dir=str(tmp_path)))
    gemms = gemm_input_types(result.onnx_path, SHAPES)
    # 16 MatMuls; TensorRT fuses each layer's Q, K and V projections into one GEMM: 2 x (1 + 5) layers
    assert len(gemms) == 12
    for name, types in gemms.items():
        assert types[:2] == ("FP8", "FP8"), (name, types)


def test_smoothing_muls_fuse_into_the_kernels_before_them(transformer_onnx, tmp_path):
    model = transformer_onnx("bert", False)  # post-LN: every smoothed input gets a Mul (after LayerNorm or GELU)
    np.savez(tmp_path / "calib.npz", **token_data(8))
    plain = api.quantize(model, tmp_path / "calib.npz", progress=False,
                         options=api.QuantizeOptions(method="max", output_dir=str(tmp_path / "plain")))
    smooth = api.quantize(model, tmp_path / "calib.npz", progress=False,
                          options=api.QuantizeOptions(method="max", smooth="auto", output_dir=str(tmp_path / "s")))
    assert smooth.smoothing.mul_nodes == 8
    before, after = engine_layers(plain.onnx_path, SHAPES), engine_layers(smooth.onnx_path, SHAPES)
    assert len(after) == len(before)  # the 8 Muls add no kernel: each joins its producer and the quantize after it
    gemms = [layer.inputs for layer in after if layer.kind == "gemm"]
    assert len(gemms) == 12 and all(types[:2] == ("Int8", "Int8") for types in gemms)
