"""Tensors that hold another tensor's values, only rearranged: calibrated once.

Calibration statistics (amax, histogram of |x|, element counts) do not depend on the order or
shape of the elements, so the output of Identity, Reshape, Transpose and the like has exactly
its input's statistics. Exporters leave many such nodes (PaddlePaddle's exports put an Identity
after most layers); observing each value once saves a full statistics pass per alias.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx

REARRANGING_OPS = frozenset(
    {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "DepthToSpace", "SpaceToDepth"}
)
"""Default-domain ops whose first output holds exactly the elements of their first input."""


def value_roots(model: onnx.ModelProto, tensors: Sequence[str]) -> dict[str, str]:
    """Map each of `tensors` to the earliest tensor holding the same elements (itself if none).

    Chains are followed (Identity of a Reshape of x maps to x), stopping at initializers, which
    calibration does not observe.
    """
    producers: Mapping[str, onnx.NodeProto] = {out: node for node in model.graph.node for out in node.output}
    constants = {init.name for init in model.graph.initializer}
    roots: dict[str, str] = {}
    for tensor in tensors:
        root = tensor
        seen = {root}
        while True:
            node = producers.get(root)
            if node is None or node.op_type not in REARRANGING_OPS or node.domain not in ("", "ai.onnx"):
                break
            if node.output[0] != root or not node.input or node.input[0] in constants or node.input[0] in seen:
                break
            root = node.input[0]
            seen.add(root)
        roots[tensor] = root
    return roots
