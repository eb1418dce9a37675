"""An independent count of a Q/DQ model's quantized layers that TensorRT-RTX runs in INT8/FP8.

The held-out check for `trtq verify`: the same question answered without trtq's code. The model
is built straight through the TensorRT-RTX bindings (tests/support/rtx_layers.py), and the ONNX
graph is read with onnx alone:

- a quantized layer is a Conv, ConvTranspose, Gemm or MatMul one of whose first two inputs comes
  from a DequantizeLinear, directly or through ops that only move or relabel data (Identity,
  Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Cast);
- it runs quantized when an engine layer that names it in its metadata, other than a generated
  pointwise or data-movement kernel (type `kgen`, named `__myl_<ops>`), reads only Int8/FP8 data at
  run time (its constants aside). Fused kernels of type `kgen` with their own names (the attention
  kernel `_gemm_mha_v2` that does both attention MatMuls and the Softmax) count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from rtx_layers import engine_layers

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
MOVE_OPS = ("Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Cast")
LOW = ("Int8", "FP8")


@dataclass(frozen=True)
class Count:
    """Quantized ONNX layers (name -> op type) and the names of those the engine runs at low precision."""

    quantized: dict[str, str]
    low_precision: frozenset[str]

    def float_layers(self) -> dict[str, str]:
        """Quantized layers the engine does not run at low precision (name -> op type)."""
        return {name: op for name, op in self.quantized.items() if name not in self.low_precision}


def quantized_layers(model: onnx.ModelProto) -> dict[str, str]:
    """Name -> op type of every Conv/ConvTranspose/Gemm/MatMul that reads a DequantizeLinear's output."""
    producer = {out: node for node in model.graph.node for out in node.output}

    def dequantized(tensor: str) -> bool:
        node = producer.get(tensor)
        while node is not None and node.op_type in MOVE_OPS:
            node = producer.get(node.input[0])
        return node is not None and node.op_type == "DequantizeLinear"

    return {node.name: node.op_type for node in model.graph.node
            if node.op_type in LAYER_OPS and any(dequantized(t) for t in node.input[:2] if t)}


def count(onnx_path: str | Path, shapes: dict[str, tuple[int, ...]], capability: str | None = None) -> Count:
    """Build `onnx_path` at `shapes` (portable engine unless `capability`) and count its quantized layers."""
    quantized = quantized_layers(onnx.load(str(onnx_path), load_external_data=False))
    low = {name for layer in engine_layers(str(onnx_path), shapes, capability)
           if not (layer.kind == "kgen" and layer.name.startswith("__myl_"))
           and layer.runtime_inputs and all(t in LOW for t in layer.runtime_inputs)
           for name in layer.onnx_nodes if name in quantized}
    return Count(quantized, frozenset(low))
