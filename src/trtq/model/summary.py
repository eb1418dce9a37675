"""`trtq inspect`: a model's summary (`ModelInfo`): opset, producer, parameters, inputs, outputs,
op counts and the layers trtq can quantize."""

from __future__ import annotations

import collections
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from trtq.model.load import (
    QUANTIZABLE_OPS,
    TensorSpec,
    default_opset,
    file_sha256,
    graph_inputs,
    graph_outputs,
    load_model,
)
from trtq.model.normalize import normalized_node_names


@dataclass(frozen=True)
class ModelInfo:
    """What `trtq inspect` reports about an ONNX model."""

    path: str
    sha256: str
    opset: int
    ir_version: int
    producer: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    op_counts: dict[str, int] = field(default_factory=dict)
    quantizable_nodes: tuple[str, ...] = ()
    num_nodes: int = 0
    num_parameters: int = 0
    """Values held by initializers and by Constant nodes (paddle2onnx and torch's legacy exporter put
    weights in Constant nodes)."""
    constant_parameters: int = 0
    """The part of `num_parameters` held by Constant nodes."""

    def to_dict(self) -> dict:
        """A JSON-serialisable view."""
        return asdict(self)


def inspect_model(path: str | Path, model: onnx.ModelProto | None = None) -> ModelInfo:
    """Summarise a model: IO specs, opset, op counts and the nodes trtq would quantize.

    Nodes are named as `quantize --exclude-nodes` and `sensitivity` name them (`normalized_node_names`).
    """
    path = Path(path)
    if model is None:
        model = load_model(path)
    counts = collections.Counter(node.op_type for node in model.graph.node)
    quantizable = tuple(name for name, node in normalized_node_names(model).items() if node.op_type in QUANTIZABLE_OPS)
    constants = sum(_constant_size(node) for node in model.graph.node
                    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"))
    params = sum(int(np.prod(init.dims)) for init in model.graph.initializer) + constants
    return ModelInfo(
        path=str(path),
        sha256=file_sha256(path),
        opset=default_opset(model),
        ir_version=int(model.ir_version),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=graph_inputs(model),
        outputs=graph_outputs(model),
        op_counts=dict(sorted(counts.items())),
        quantizable_nodes=quantizable,
        num_nodes=len(model.graph.node),
        num_parameters=params,
        constant_parameters=constants,
    )


def _constant_size(node: onnx.NodeProto) -> int:
    """Number of values a Constant node holds (whichever of its value attributes it has)."""
    size = 0
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:
            size += int(np.prod(attr.t.dims))
        elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
            size += int(np.prod(attr.sparse_tensor.dims))
        elif attr.type in (onnx.AttributeProto.FLOATS, onnx.AttributeProto.INTS, onnx.AttributeProto.STRINGS):
            size += len(attr.floats) + len(attr.ints) + len(attr.strings)
        elif attr.type in (onnx.AttributeProto.FLOAT, onnx.AttributeProto.INT, onnx.AttributeProto.STRING):
            size += 1
    return size
