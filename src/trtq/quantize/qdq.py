"""Insert QuantizeLinear/DequantizeLinear pairs into an ONNX graph from a placement plan.

Symmetric INT8 as TensorRT requires: zero point 0 (int8), scale = amax / 127 (strictly
positive constants); weights per output channel (`axis`), activations per tensor. One pair per
quantized tensor, shared by every consumer the plan names; other consumers keep the original.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtq.errors import TrtqError
from trtq.formats.ranges import MIN_AMAX, scale_from_amax
from trtq.model import tensor_types
from trtq.quantize.placement import Placement, QuantTarget


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
    """Return a copy of `model` with a Q/DQ pair on every target of `placement`.

    `activation_amax` must hold an amax for every activation target; weight amax is computed
    from the weights themselves (per channel).
    """
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
        scale, zero_point = scale_and_zero_point(target, initializers, activation_amax, np_dtype)
        base = target.tensor
        scale_name = unique_name(f"{base}_scale", used)
        zp_name = unique_name(f"{base}_zero_point", used)
        q_out = unique_name(f"{base}_quantized", used)
        dq_out = unique_name(f"{base}_dequantized", used)
        graph.initializer.extend(
            [numpy_helper.from_array(scale, scale_name), numpy_helper.from_array(zero_point, zp_name)]
        )
        axis_attr = {"axis": target.axis} if target.axis is not None else {}
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
) -> tuple[np.ndarray, np.ndarray]:
    """The Q/DQ scale (per channel for weights) and zero point (0, int8) of one placement target."""
    if target.kind == "weight":
        values = numpy_helper.to_array(initializers[target.tensor])
        amax = weight_amax(values, target.axis if target.axis is not None else 0)
        scale = np.maximum(amax, MIN_AMAX) / 127.0
        return scale.astype(np_dtype), np.zeros(scale.shape, dtype=np.int8)
    scale = np.array(scale_from_amax(activation_amax[target.tensor]), dtype=np_dtype)
    if np_dtype is np.float16 and not np.isfinite(scale):
        raise TrtqError(
            f"Range of tensor {target.tensor!r} ({activation_amax[target.tensor]}) overflows float16.",
            "keep that layer in FP32 with --exclude-nodes.",
        )
    return scale, np.array(0, dtype=np.int8)
