"""Which quantized activations share one range: MaxPools with Q/DQ pairs on both sides (`trtq.calibrate.shared`).

A placed MaxPool has a pair on its input (TensorRT runs pooling in INT8 between quantized layers), and its
output gets one where a quantized layer reads it, directly or through ops that keep the values on its grid
(Identity, Reshape, ..., Relu). Such input/output pairs are linked; linked pairs form groups (chained pools link
through their shared tensors), and each group's sinks are the members whose pairs feed anything but a linked pool.
"""

from __future__ import annotations

from collections import defaultdict

import onnx

from trtq.calibrate.aliases import REARRANGING_OPS
from trtq.calibrate.shared import RangeGroup
from trtq.quantize.placement import Placement, QuantTarget

GRID_KEEPING_OPS = REARRANGING_OPS | {"Relu"}
"""Ops after a pool whose outputs stay on the pooled values' grid: copies, and Relu (its values are the input's or 0,
which every symmetric grid holds), as in Caffe-style conv -> pool -> relu stages."""
SHARING_OPS = ("MaxPool",)
"""Ops whose output values are a subset of their input values: a Q/DQ pair after one rounds nothing when it
has the input pair's scale. (AveragePool's means fall between grid points, so its output pair must round.)"""


def pooled_groups(model: onnx.ModelProto, placement: Placement) -> tuple[RangeGroup, ...]:
    """The groups of quantized activations linked through MaxPools, in graph order."""
    quantized = {t.tensor: t for t in placement.targets if t.kind == "activation"}
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            if name:
                readers[name].append(node)
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.get(name, name) != name:
            name = parent[name]
        return name

    linked_pools: set[str] = set()
    linked: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in SHARING_OPS or node.domain not in ("", "ai.onnx") or not node.input:
            continue
        source = node.input[0]
        if source not in quantized or (node.name, 0) not in quantized[source].consumers:
            continue
        for pooled in _quantized_copies(node.output[0], readers, quantized):
            linked_pools.add(node.name)
            linked.update((source, pooled))
            a, b = root(source), root(pooled)
            if a != b:
                parent[b] = a
    members: dict[str, list[str]] = defaultdict(list)
    for name in quantized:  # placement order follows the graph
        if name in linked:
            members[root(name)].append(name)
    groups = []
    for names in members.values():
        sinks = [n for n in names if any(node not in linked_pools for node, _ in quantized[n].consumers)]
        groups.append(RangeGroup(members=tuple(names), sinks=tuple(sinks or names)))
    return tuple(groups)


def _quantized_copies(name: str, readers: dict[str, list[onnx.NodeProto]], quantized: dict[str, QuantTarget]
                      ) -> list[str]:
    """`name` and the outputs of GRID_KEEPING_OPS reached from it, those that carry a Q/DQ pair."""
    found: list[str] = []
    todo, seen = [name], {name}
    while todo:
        current = todo.pop()
        if current in quantized:
            found.append(current)
        for node in readers.get(current, ()):
            if node.op_type in GRID_KEEPING_OPS and node.domain in ("", "ai.onnx") and node.input[0] == current \
                    and node.output and node.output[0] not in seen:
                seen.add(node.output[0])
                todo.append(node.output[0])
    return found
