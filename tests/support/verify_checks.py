"""What the TensorRT-RTX verify tests assert about a build of trtq's output, and the exceptions they allow.

Every layer trtq quantized runs in INT8 (FP8 for --precision fp8), except where TensorRT-RTX 1.7
does differently from the datacenter TensorRT trtq's placement targets:

- ConvTranspose runs in float whatever its Q/DQ (per-tensor or per-channel weight scales on either
  axis, every kernel size, stride, channel count and compute capability tried), so its Q/DQ pairs
  do not fuse either; TensorRT 10/11 have INT8 deconvolution, so trtq keeps quantizing it;
- AveragePool/GlobalAveragePool average in float (in the default portable engine, built for 8.x
  among others), so a Q/DQ pair on their input is a quantize and a dequantize in float (MaxPool
  runs on Int8 data); datacenter TensorRT has INT8 pooling.
"""

from __future__ import annotations

from pathlib import Path

import onnx

KNOWN_FLOAT_OPS = {"ConvTranspose"}
"""Quantized ops TensorRT-RTX 1.7 runs in float whatever their Q/DQ."""
KNOWN_FLOAT_READERS = {"ConvTranspose", "AveragePool", "GlobalAveragePool"}
"""Readers before which a Q/DQ pair cannot fuse in TensorRT-RTX 1.7."""


def op_types(path: str | Path) -> dict[str, str]:
    """Parser layer name -> op type of every node of the ONNX file."""
    from trtq.tensorrt.layers import onnx_layer_name

    return {onnx_layer_name(n): n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def assert_quantized_layers_run_quantized(result, precision: str,  # type: ignore[no-untyped-def]
                                          unfused_readers: frozenset[str] = frozenset()) -> None:
    """Every quantized Conv/Gemm/MatMul of `result` (an api.VerifyResult) runs in `precision`; only the
    exceptions above stay in float or unfused, and pairs before readers of the ops in `unfused_readers`
    (exceptions a caller names for one model, with its reason)."""
    assert result.layers, "trtq quantized no layer"
    types = op_types(result.model)
    for verdict in result.layers:
        if verdict.op_type in KNOWN_FLOAT_OPS:
            assert not verdict.ok and "ConvTranspose" in (verdict.reason or ""), verdict
            continue
        assert verdict.ok and verdict.runs_in == precision, verdict
    for pair in result.unfused_pairs:
        readers = {types[c] for c in pair.float_readers}
        assert readers and readers <= KNOWN_FLOAT_READERS | unfused_readers, pair
