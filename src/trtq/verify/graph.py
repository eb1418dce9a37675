"""What a Q/DQ ONNX model asks TensorRT to quantize, read from the graph itself.

Works on any Q/DQ model (trtq's, ModelOpt's, a QAT export's), not only on trtq's own output:

- a *quantized layer* is a Conv, ConvTranspose, Gemm or MatMul with a DequantizeLinear on at
  least one of its data inputs (bias excluded), found through the ops TensorRT moves Q/DQ across
  or folds into the DequantizeLinear (Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Identity,
  and the Cast to FP16 that `--high-precision fp16` puts after a DQ with FP32 scales);
- a *Q/DQ pair* is a QuantizeLinear and the DequantizeLinear(s) reading it, or a DequantizeLinear
  of a quantized constant (weights stored as int8/fp8 initializers, as QAT exports write them).

Layers are named as TensorRT's ONNX parser names them (`node.name`, or `node_of_<first output>`
for unnamed nodes; see trtq.tensorrt.layers), since that is what engine layers' metadata carries.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

import onnx
from onnx import TensorProto

from trtq.model import QUANTIZABLE_OPS, tensor_types
from trtq.tensorrt.layers import onnx_layer_name

TRANSPARENT_OPS = ("Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Cast")
"""Ops between a DequantizeLinear and a compute layer that TensorRT moves the DQ across (or folds into it)."""
DATA_INPUTS = {"Conv": (0, 1), "ConvTranspose": (0, 1), "Gemm": (0, 1), "MatMul": (0, 1)}
"""Inputs of each quantized op that carry data (the bias, input 2, is never quantized)."""
PRECISIONS: dict[int, str] = {
    TensorProto.INT8: "int8", TensorProto.UINT8: "int8", TensorProto.FLOAT8E4M3FN: "fp8",
    TensorProto.FLOAT8E4M3FNUZ: "fp8", TensorProto.FLOAT8E5M2: "fp8", TensorProto.FLOAT8E5M2FNUZ: "fp8",
    TensorProto.INT4: "int4", TensorProto.UINT4: "int4",
}
"""ONNX element type of a quantized tensor -> the precision TensorRT runs it in."""
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class QdqPair:
    """One quantized tensor: its Q (absent for pre-quantized constants) and the DQs reading it."""

    tensor: str
    """The float tensor that is quantized (the Q's input), or the quantized constant a lone DQ reads."""
    quantize: str | None
    """Parser layer name of the QuantizeLinear; None for a DQ of a quantized constant."""
    dequantize: tuple[str, ...]
    kind: str
    """"weight" (a constant) or "activation"."""
    precision: str
    consumers: tuple[str, ...]
    """Parser layer names of the nodes that read the dequantized value (through shape-only ops)."""

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return asdict(self)


@dataclass(frozen=True)
class QuantizedNode:
    """A Conv/ConvTranspose/Gemm/MatMul that reads at least one dequantized input."""

    layer: str
    """The parser's layer name (node name, or node_of_<first output>)."""
    op_type: str
    precision: str
    """"int8" or "fp8" (the quantized type of its inputs; "mixed" when they differ)."""
    quantized_inputs: tuple[int, ...]
    unquantized_inputs: tuple[int, ...]
    """Data inputs read in float (a Q/DQ on one input only cannot run in INT8)."""
    dequantize: tuple[str, ...]
    """Parser layer names of the DequantizeLinear nodes it reads."""

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return asdict(self)


@dataclass(frozen=True)
class QdqGraph:
    """A model's quantized layers and Q/DQ pairs, and the graph indexes the matching needs."""

    nodes: tuple[QuantizedNode, ...]
    pairs: tuple[QdqPair, ...]
    op_types: dict[str, str]
    """Parser layer name -> op type, for every node of the model."""

    @property
    def precisions(self) -> tuple[str, ...]:
        """The quantized precisions the model uses, sorted."""
        return tuple(sorted({node.precision for node in self.nodes} | {pair.precision for pair in self.pairs}))


class _Index:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in model.graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.initializers = {init.name: init for init in model.graph.initializer}
        self.types = tensor_types(model)
        self.constants = {out: node for node in model.graph.node if node.op_type == "Constant" for out in node.output}

    @staticmethod
    def name(node: onnx.NodeProto) -> str:
        """The parser layer name of `node` (what engine layers' metadata names it by)."""
        return onnx_layer_name(node)

    def is_constant(self, tensor: str) -> bool:
        return tensor in self.initializers or tensor in self.constants

    def elem_type(self, tensor: str) -> int | None:
        if tensor in self.initializers:
            return self.initializers[tensor].data_type
        if tensor in self.constants:
            for attr in self.constants[tensor].attribute:
                if attr.name == "value":
                    return attr.t.data_type
        return self.types.get(tensor)

    def quantized_type(self, dq: onnx.NodeProto) -> int | None:
        """The element type a DequantizeLinear reads: its input's, else its zero point's, else its Q's."""
        source = dq.input[0]
        found = self.elem_type(source)
        if found is None and len(dq.input) > 2 and dq.input[2]:
            found = self.elem_type(dq.input[2])
        producer = self.producer.get(source)
        if found is None and producer is not None and producer.op_type == "QuantizeLinear":
            if len(producer.input) > 2 and producer.input[2]:
                found = self.elem_type(producer.input[2])
            else:
                for attr in producer.attribute:
                    if attr.name == "output_dtype" and attr.i:
                        found = attr.i
                found = found or TensorProto.UINT8
        return found

    def dequantize_source(self, tensor: str) -> onnx.NodeProto | None:
        """The DequantizeLinear `tensor` comes from, through shape-only ops; None if none."""
        seen = 0
        while seen < 16:
            node = self.producer.get(tensor)
            if node is None:
                return None
            if node.op_type == "DequantizeLinear":
                return node
            if node.op_type not in TRANSPARENT_OPS or not node.input:
                return None
            tensor = node.input[0]
            seen += 1
        return None

    def readers(self, tensor: str) -> list[onnx.NodeProto]:
        """The nodes that read `tensor`, through shape-only ops."""
        found: list[onnx.NodeProto] = []
        stack = [tensor]
        visited: set[str] = set()
        while stack:
            current = stack.pop()
            if current in visited:
                continue
            visited.add(current)
            for node in self.consumers.get(current, []):
                if node.op_type in TRANSPARENT_OPS and node.input and node.input[0] == current:
                    stack.extend(o for o in node.output if o)
                else:
                    found.append(node)
        return found


def precision_name(elem_type: int | None) -> str:
    """'int8', 'fp8', 'int4', or 'int8' when the type is not declared (opset < 21 Q/DQ default to 8 bit)."""
    return PRECISIONS.get(elem_type or TensorProto.INT8, "int8")


def analyze(model: onnx.ModelProto) -> QdqGraph:
    """The quantized layers and Q/DQ pairs of `model` (see the module docstring)."""
    index = _Index(model)
    nodes: list[QuantizedNode] = []
    for node in model.graph.node:
        if node.op_type not in QUANTIZABLE_OPS:
            continue
        quantized: list[int] = []
        plain: list[int] = []
        dqs: list[str] = []
        precisions: set[str] = set()
        for position in DATA_INPUTS[node.op_type]:
            if position >= len(node.input) or not node.input[position]:
                continue
            dq = index.dequantize_source(node.input[position])
            if dq is None:
                plain.append(position)
                continue
            quantized.append(position)
            dqs.append(index.name(dq))
            precisions.add(precision_name(index.quantized_type(dq)))
        if quantized:
            nodes.append(QuantizedNode(
                layer=index.name(node),
                op_type=node.op_type,
                precision=precisions.pop() if len(precisions) == 1 else "mixed",
                quantized_inputs=tuple(quantized),
                unquantized_inputs=tuple(plain),
                dequantize=tuple(dqs),
            ))
    pairs: list[QdqPair] = []
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            dq_nodes = [c for c in index.consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"]
            if not dq_nodes:
                continue
            tensor, quantize = node.input[0], index.name(node)
        elif node.op_type == "DequantizeLinear" and index.is_constant(node.input[0]):
            dq_nodes, tensor, quantize = [node], node.input[0], None
        else:
            continue
        readers = [r for dq in dq_nodes for r in index.readers(dq.output[0]) if r.op_type not in _QDQ]
        pairs.append(QdqPair(
            tensor=tensor,
            quantize=quantize,
            dequantize=tuple(index.name(dq) for dq in dq_nodes),
            kind="weight" if index.is_constant(tensor) else "activation",
            precision=precision_name(index.quantized_type(dq_nodes[0])),
            consumers=tuple(dict.fromkeys(index.name(r) for r in readers)),
        ))
    op_types = {index.name(node): node.op_type for node in model.graph.node}
    return QdqGraph(tuple(nodes), tuple(pairs), op_types)
