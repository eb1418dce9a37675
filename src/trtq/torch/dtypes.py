"""ONNX element types <-> torch dtypes."""

from __future__ import annotations

import torch
from onnx import TensorProto

ONNX_TO_TORCH: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.INT8: torch.int8,
    TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32,
    TensorProto.INT64: torch.int64,
    TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
}
"""The element types the executor runs natively (others go to the onnxruntime fallback)."""

TORCH_TO_ONNX: dict[torch.dtype, int] = {v: k for k, v in ONNX_TO_TORCH.items()}


def torch_dtype(elem_type: int) -> torch.dtype:
    """The torch dtype of an ONNX element type; KeyError for types torch cannot hold."""
    return ONNX_TO_TORCH[elem_type]
