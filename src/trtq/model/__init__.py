"""Load, inspect and normalise ONNX models: inputs, outputs, dynamic dims, opset, op counts.

Everything downstream talks about the model through the small frozen dataclasses here (`TensorSpec`,
`ModelInfo`). The package by job: `load` (read a model and what it declares), `summary` (`trtq inspect`),
`shapes` (--shape and the shapes a run uses), `normalize` (the form quantization works on), `weights`
(weightless copies and streamed serialisation). Import from `trtq.model`.
"""

from __future__ import annotations

from trtq.model.load import (
    QUANTIZABLE_OPS,
    UNNAMED_DIMS,
    Dim,
    TensorSpec,
    default_opset,
    file_sha256,
    graph_inputs,
    graph_outputs,
    load_model,
    model_file,
    tensor_spec,
    tensor_types,
)
from trtq.model.normalize import (
    MIN_QDQ_OPSET,
    inline_functions,
    name_unnamed_nodes,
    normalize_model,
    normalized_node_names,
)
from trtq.model.shapes import (
    PartialShape,
    distinct_placeholder_dims,
    infer_types_checked,
    infer_types_in_place,
    inferred_shapes,
    missing_shapes_error,
    parse_shapes,
    requested_shapes,
    resolve_input_shapes,
    shape_placeholder,
)
from trtq.model.summary import ModelInfo, inspect_model
from trtq.model.weights import (
    EXTERNAL_ALIGNMENT,
    PROTOBUF_LIMIT,
    add_stub,
    check_structure,
    external_data_chunks,
    initializer_bytes,
    serialized_chunks,
    split_initializers,
)

__all__ = [
    "EXTERNAL_ALIGNMENT",
    "MIN_QDQ_OPSET",
    "PROTOBUF_LIMIT",
    "QUANTIZABLE_OPS",
    "UNNAMED_DIMS",
    "Dim",
    "ModelInfo",
    "PartialShape",
    "TensorSpec",
    "add_stub",
    "check_structure",
    "default_opset",
    "distinct_placeholder_dims",
    "external_data_chunks",
    "file_sha256",
    "graph_inputs",
    "graph_outputs",
    "infer_types_checked",
    "infer_types_in_place",
    "inferred_shapes",
    "initializer_bytes",
    "inline_functions",
    "inspect_model",
    "load_model",
    "missing_shapes_error",
    "model_file",
    "name_unnamed_nodes",
    "normalize_model",
    "normalized_node_names",
    "parse_shapes",
    "requested_shapes",
    "resolve_input_shapes",
    "serialized_chunks",
    "shape_placeholder",
    "split_initializers",
    "tensor_spec",
    "tensor_types",
]
