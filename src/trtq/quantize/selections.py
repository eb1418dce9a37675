"""Discrete choices inside a model (TopK, ArgMax/ArgMin, NonMaxSuppression), pinned to given indices.

Two FP32 models that compute the same values up to float rounding can still pick different queries
where scores nearly tie (a DETR's TopK over anchor scores), and everything after the choice differs
wholesale. To compare what a transformation did to the values, the transformed model is run with the
original's choices: `pin_selections` turns each choice's index output into a graph input, fed with
the indices the original computed.
"""

from __future__ import annotations

import onnx
from onnx import helper

SELECTION_OPS = ("TopK", "ArgMax", "ArgMin", "NonMaxSuppression")
"""Ops whose integer outputs are choices: a rounding-sized change of their input can change them."""


def pin_selections(model: onnx.ModelProto) -> tuple[onnx.ModelProto, tuple[str, ...]]:
    """A copy of `model` whose main-graph selection ops take their index outputs from graph inputs of
    the same names, and those names. A TopK's values output becomes GatherElements(input, indices)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    pinned: list[str] = []
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type not in SELECTION_OPS or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        indices = node.output[1] if node.op_type == "TopK" else node.output[0]
        if not indices:  # a TopK whose indices nobody reads: its values alone, kept as they are
            nodes.append(node)
            continue
        pinned.append(indices)
        if node.op_type == "TopK" and node.output[0]:
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
            nodes.append(helper.make_node("GatherElements", [node.input[0], indices], [node.output[0]],
                                          name=f"{node.name}_pinned", axis=axis))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.extend(helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None) for name in pinned)
    kept = set(pinned)
    infos = [vi for vi in graph.value_info if vi.name not in kept]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return out, tuple(pinned)


def expose_choices(model: onnx.ModelProto, choices: tuple[str, ...]) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs also include the index tensors `choices` (int64)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    out.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None)
                            for name in choices if name not in present)
    return out
