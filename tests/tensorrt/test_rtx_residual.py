"""What TensorRT makes of `--residual-qdq`: on the tiny BERT (tests/support/transformer_models.py),
built ahead of time by TensorRT-RTX (no GPU needed), the fused bias + residual Add + LayerNorm
kernels read the residual stream as INT8 and write it only as INT8; with the default placement
they write it twice, in FP32 for the next residual Add and in INT8 for the next GEMMs.

Skipped where `tensorrt_rtx_bindings` is not installed.
"""

import numpy as np
import pytest

pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX (tensorrt-rtx-cu13-bindings) is not installed")

from rtx_layers import engine_layers
from transformer_models import SEQ, token_data

from trtq import api


def test_residual_qdq_carries_the_residual_stream_in_int8(transformer_onnx, tmp_path):
    model = transformer_onnx("bert", False)
    np.savez(tmp_path / "calib.npz", **token_data(8))
    shapes = {n: (1, SEQ) for n in ("input_ids", "attention_mask", "token_type_ids")}
    kernels = {}
    for residual in (False, True):
        result = api.quantize(model, tmp_path / "calib.npz", progress=False, options=api.QuantizeOptions(
            method="max", residual_qdq=residual, output_dir=str(tmp_path / str(residual))))
        kernels[residual] = [layer for layer in engine_layers(result.onnx_path, shapes) if layer.kind == "kgen"]
    # the fused LayerNorm kernels (myelin names them by their ops: "Mean" is the LayerNorm's): after the
    # embeddings and after each of the 4 residual Adds (the last one writes the FP32 model output)
    norms = {residual: [k for k in found if "Mean" in k.name] for residual, found in kernels.items()}
    assert len(norms[False]) == len(norms[True]) == 5
    assert sum(set(k.outputs) == {"Float", "Int8"} for k in norms[False]) == 4  # the stream twice
    assert not any("Int8" in k.inputs for k in norms[False])
    assert sum(k.outputs == ("Int8",) for k in norms[True]) == 4  # the stream in INT8 only
    assert sum("Int8" in k.inputs for k in norms[True]) == 4  # each residual Add reads it as INT8
