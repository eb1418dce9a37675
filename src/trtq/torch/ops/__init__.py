"""ONNX operators as torch functions, one small function per op type.

Each function takes an `OpContext` (attributes, opset, compute device) and the node's inputs as
tensors (None for an omitted optional input) and returns one tensor or a tuple. Inputs listed in
`host` are shape-like (a Reshape's shape, a Slice's starts...): the executor passes them as CPU
tensors so that reading them needs no device synchronisation. A function raises `Unsupported`
for an attribute combination it does not implement; the executor then runs that node with
onnxruntime instead.

The implementations live in one module per op family (elementwise, nn, shapes, reductions,
resampling, quantization, sequence: GridSample and LSTM), each registering into `OPS` (`registry`) when imported; importing this
package imports them all.
"""

from __future__ import annotations

from trtq.torch.ops import elementwise, nn, quantization, reductions, resampling, sequence, shapes
from trtq.torch.ops.registry import (
    DATA_DEPENDENT_OPS,
    OPS,
    SHAPE_OPS,
    OpContext,
    OpDef,
    Result,
    Tensor,
    Unsupported,
    floats,
    ints,
    op,
    scalar,
)

FAMILIES = (elementwise, nn, shapes, reductions, resampling, quantization, sequence)
"""The modules whose import registers the ops."""

__all__ = ["DATA_DEPENDENT_OPS", "FAMILIES", "OPS", "SHAPE_OPS", "OpContext", "OpDef", "Result", "Tensor",
           "Unsupported", "floats", "ints", "op", "scalar"]
