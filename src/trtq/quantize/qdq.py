"""Insert QuantizeLinear/DequantizeLinear pairs into an ONNX graph from a placement plan.

Symmetric, as TensorRT requires, on the placement's grid: INT8 (zero point 0 of type int8,
scale = amax / 127) or FP8 E4M3 (zero point 0 of type float8e4m3fn, scale = amax / 448, opset
>= 19); scales are strictly positive constants; weights per output channel (`axis`), activations
per tensor. One pair per quantized tensor, shared by every consumer the plan names; other
consumers keep the original.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtq.calibrate.grids import INT8, Grid
from trtq.errors import TrtqError
from trtq.formats.ranges import MIN_AMAX
from trtq.model import MIN_QDQ_OPSET, default_opset, tensor_types
from trtq.quantize.placement import Placement, QuantTarget

FP8_QDQ_OPSET = 19
"""QuantizeLinear/DequantizeLinear take float8e4m3fn from opset 19."""
ZERO_POINT_TYPES = {"int8": np.int8, "fp8": ml_dtypes.float8_e4m3fn}
"""The zero point's element type, which sets the quantized type in ONNX, per grid."""
MIN_OPSETS = {"int8": MIN_QDQ_OPSET, "fp8": FP8_QDQ_OPSET}
"""The lowest default-domain opset that has each grid's Q/DQ (with per-channel axes)."""


def weight_amax(values: np.ndarray, axis: int) -> np.ndarray:
    """Per-channel max |w| along `axis` (the reduction runs over every other axis)."""
    other = tuple(i for i in range(values.ndim) if i != axis)
    return np.abs(values.astype(np.float32)).max(axis=other)


def unique_name(name: str, used: set[str]) -> str:
    """`name`, or `name_1`, `name_2`, ... : the first not in `used` (which it is then added to)."""
    candidate, n = name, 1
    while candidate in used:
        candidate = f"{name}_{n}"
        n += 1
    used.add(candidate)
    return candidate


def insert_qdq(
    model: onnx.ModelProto, placement: Placement, activation_amax: Mapping[str, float]
) -> onnx.ModelProto:
    """Return a copy of `model` with a Q/DQ pair on every target of `placement`, on its grid.

    `activation_amax` must hold an amax for every activation target; weight amax is computed
    from the weights themselves (per channel).
    """
    opset = default_opset(model)
    if opset < MIN_OPSETS[placement.grid.name]:
        raise ValueError(f"{placement.grid.name} Q/DQ needs opset >= {MIN_OPSETS[placement.grid.name]}, the model has "
                         f"{opset}: normalise it with trtq.model.normalize_model(min_opset=...) first")
    missing = [t.tensor for t in placement.targets if t.kind == "activation" and t.tensor not in activation_amax]
    if missing:
        raise TrtqError(
            f"The ranges table has no range for tensor {missing[0]!r} ({len(missing)} missing in all).",
            "the ranges file belongs to another model or other --exclude options; re-run calibration.",
        )
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    types = tensor_types(out)
    initializers = {init.name: init for init in graph.initializer}
    used = {v for node in graph.node for v in (*node.input, *node.output, node.name)}
    used |= set(initializers) | {vi.name for vi in graph.input}

    nodes_by_name = {node.name: node for node in graph.node}
    after: dict[str, list[onnx.NodeProto]] = {}  # producer node name ("" = graph start) -> new nodes
    producer_of = {out_name: node.name for node in graph.node for out_name in node.output}

    for target in placement.targets:
        elem_type = types.get(target.tensor, TensorProto.FLOAT)
        if elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            raise TrtqError(
                f"Tensor {target.tensor!r} has element type {TensorProto.DataType.Name(elem_type)}; "
                "Q/DQ needs float32 or float16.",
                f"exclude its consumer with --exclude-nodes '{target.consumers[0][0]}'.",
            )
        np_dtype = np.float16 if elem_type == TensorProto.FLOAT16 else np.float32
        scale, zero_point = scale_and_zero_point(target, initializers, activation_amax, np_dtype, placement.grid)
        base = target.tensor
        scale_name = unique_name(f"{base}_scale", used)
        zp_name = unique_name(f"{base}_zero_point", used)
        q_out = unique_name(f"{base}_quantized", used)
        dq_out = unique_name(f"{base}_dequantized", used)
        graph.initializer.extend(
            [numpy_helper.from_array(scale, scale_name), numpy_helper.from_array(zero_point, zp_name)]
        )
        axis_attr: dict[str, Any] = {"axis": target.axis} if target.axis is not None else {}
        q_node = helper.make_node(
            "QuantizeLinear", [base, scale_name, zp_name], [q_out],
            name=unique_name(f"{base}_QuantizeLinear", used), **axis_attr,
        )
        dq_node = helper.make_node(
            "DequantizeLinear", [q_out, scale_name, zp_name], [dq_out],
            name=unique_name(f"{base}_DequantizeLinear", used), **axis_attr,
        )
        after.setdefault(producer_of.get(base, ""), []).extend([q_node, dq_node])
        for node_name, index in target.consumers:
            node = nodes_by_name[node_name]
            if node.input[index] != base:
                raise AssertionError(f"placement names {node_name}:{index} for {base}, node reads {node.input[index]}")
            node.input[index] = dq_out

    insert_after_producers(graph, after)
    return out


def insert_after_producers(graph: onnx.GraphProto, after: Mapping[str, Sequence[onnx.NodeProto]]) -> None:
    """Insert new nodes right after the node (by name) that produces their input, keeping the graph
    topologically sorted; `after[""]` goes first (inputs of graph inputs and initializers)."""
    ordered = list(after.get("", []))
    for node in graph.node:
        ordered.append(node)
        ordered.extend(after.get(node.name, []))
    del graph.node[:]
    graph.node.extend(ordered)


def scale_and_zero_point(
    target: QuantTarget,
    initializers: Mapping[str, onnx.TensorProto],
    activation_amax: Mapping[str, float],
    np_dtype: type,
    grid: Grid = INT8,
) -> tuple[np.ndarray, np.ndarray]:
    """The Q/DQ scale (per channel for weights) and zero point (0, of the grid's type) of one placement target."""
    zero_type = ZERO_POINT_TYPES[grid.name]
    if target.kind == "weight":
        values = numpy_helper.to_array(initializers[target.tensor])
        amax = weight_amax(values, target.axis if target.axis is not None else 0)
        scale = np.maximum(amax, MIN_AMAX) / grid.top
        return scale.astype(np_dtype), np.zeros(scale.shape, dtype=zero_type)
    scale = np.array(max(float(activation_amax[target.tensor]), MIN_AMAX) / grid.top, dtype=np_dtype)
    if np_dtype is np.float16 and not np.isfinite(scale):
        raise TrtqError(
            f"Range of tensor {target.tensor!r} ({activation_amax[target.tensor]}) overflows float16.",
            "keep that layer in FP32 with --exclude-nodes.",
        )
    return scale, np.array(0, dtype=zero_type)
