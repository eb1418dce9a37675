"""Normalise a model before quantization: local functions inlined, opset raised to what Q/DQ needs
(weights left out of the converter), constants folded, every node named."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx

from trtq.errors import TrtqError
from trtq.model.load import default_opset
from trtq.model.weights import add_stub, split_initializers, weightless

MIN_QDQ_OPSET = 13
"""Per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute) needs opset 13."""


def normalize_model(
    model: onnx.ModelProto, source: str = "model", copy: bool = True, min_opset: int = MIN_QDQ_OPSET
) -> onnx.ModelProto:
    """Return a copy (or, with copy=False, `model` itself, changed) ready for analysis and Q/DQ insertion.

    - Constant nodes become initializers (exporters emit weights either way),
    - every node gets a unique name (`<OpType>_<index>` where it had none), so nodes can be
      excluded and reported by name,
    - local functions are inlined (a new model then, even with copy=False),
    - the default-domain opset is raised to >= `min_opset` (13: per-channel Q/DQ; 19: FP8 Q/DQ),
      via onnx's version converter,
    - shapes and types are inferred.
    """
    from onnx import numpy_helper, shape_inference, version_converter

    if copy:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    else:
        out = model
    out = inline_functions(out, source)
    # Name the nodes before the version converter runs: it keeps names but inserts unnamed nodes, which
    # would shift the `<OpType>_<index>` names away from those `normalized_node_names` gives the original.
    folded = _foldable_constants(out.graph)
    kept_nodes = [node for index, node in enumerate(out.graph.node) if index not in folded]
    for node, name in zip(kept_nodes, _node_names(kept_nodes)):
        node.name = name
    if default_opset(out) < min_opset:
        need = "per-channel Q/DQ" if min_opset <= MIN_QDQ_OPSET else "FP8 Q/DQ (float8e4m3fn)"
        try:
            out = _convert_version_weightless(out, min_opset, version_converter.convert_version)
        except Exception as exc:  # the converter raises bare RuntimeError/ValueError subtypes
            raise TrtqError(
                f"{source} uses opset {default_opset(out)}; {need} needs opset >= "
                f"{min_opset} and onnx's version converter failed ({exc}).",
                f"re-export the model with opset {min_opset} or newer.",
            ) from exc
    graph = out.graph
    folded = _foldable_constants(graph)
    if folded:
        for index in folded:
            node = graph.node[index]
            tensor = numpy_helper.to_array(node.attribute[0].t)
            graph.initializer.append(numpy_helper.from_array(tensor, node.output[0]))
        kept = [node for index, node in enumerate(graph.node) if index not in folded]
        del graph.node[:]
        graph.node.extend(kept)
    name_unnamed_nodes(graph)  # the nodes the version converter added
    try:
        inferred = shape_inference.infer_shapes(weightless(out), data_prop=True)
    except Exception as exc:  # onnx raises InferenceError for inconsistent graphs
        raise TrtqError(
            f"{source} fails ONNX shape inference ({exc}).",
            "run onnx.checker on the model and re-export it.",
        ) from exc
    del out.graph.value_info[:]
    out.graph.value_info.extend(inferred.graph.value_info)
    for mine, theirs in zip(out.graph.output, inferred.graph.output):
        mine.CopyFrom(theirs)
    return out


def _convert_version_weightless(
    model: onnx.ModelProto, opset: int, convert: Callable[[onnx.ModelProto, int], onnx.ModelProto]
) -> onnx.ModelProto:
    """`convert(model, opset)` run on a copy without the large weights, which then go back by name.

    onnx's version converter serialises the whole model into C++ and back; its adapters rewrite
    nodes and add small constants (Split/Squeeze axes as inputs) but never change an existing
    weight, so converting the skeleton gives the same model (a test checks it) at a fraction of
    the cost (PP-OCRv6 det, 9.9 MB: 0.6 s less).
    """
    skeleton, large = split_initializers(model)
    for init in large:
        add_stub(skeleton.graph, init)
    converted = convert(skeleton, opset)
    weights = {init.name: init for init in large}
    inits = list(converted.graph.initializer)
    for init in inits:
        if init.name in weights and not init.raw_data:
            init.CopyFrom(weights.pop(init.name))
    if weights:  # a weight the converter dropped or rewrote: convert the whole model instead
        return convert(model, opset)
    position = {init.name: index for index, init in enumerate(model.graph.initializer)}
    inits.sort(key=lambda init: position.get(init.name, len(position)))  # the original order, new ones last
    ordered = [onnx.TensorProto() for _ in inits]
    for copy, init in zip(ordered, inits):
        copy.CopyFrom(init)
    del converted.graph.initializer[:]
    converted.graph.initializer.extend(ordered)
    return converted


def _foldable_constants(graph: onnx.GraphProto) -> set[int]:
    """Positions in `graph.node` of the Constant nodes holding a tensor value that normalisation
    turns into initializers.

    Positions, not the node messages: protobuf hands out a fresh Python wrapper on each access
    and (upb backend) reuses a freed wrapper's address, so `id()` of a node is no identity.
    """
    existing = {init.name for init in graph.initializer}
    return {
        index for index, node in enumerate(graph.node)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1
        and node.attribute[0].name == "value" and node.output[0] not in existing
    }


def _node_names(nodes: Sequence[onnx.NodeProto]) -> list[str]:
    """Each node's name, or `<OpType>_<index>` (made unique) where it has none."""
    used = {node.name for node in nodes if node.name}
    names = []
    for index, node in enumerate(nodes):
        name = node.name
        if not name:
            name = f"{node.op_type}_{index}"
            while name in used:
                name += "_"
            used.add(name)
        names.append(name)
    return names


def name_unnamed_nodes(graph: onnx.GraphProto) -> None:
    """Give every node of `graph` that has no name `<OpType>_<index>` (made unique), in place.

    Nodes are identified by name downstream; onnx's version converter, for one, adds unnamed ones.
    """
    for node, name in zip(graph.node, _node_names(graph.node)):
        node.name = name


def inline_functions(model: onnx.ModelProto, source: str = "model") -> onnx.ModelProto:
    """`model` with its local functions inlined, or `model` itself when it has none.

    A Conv or MatMul inside a function is a layer like any other (onnx-tensorrt inlines functions
    too), and onnx's version converter drops functions, leaving calls onnxruntime cannot resolve.
    """
    if not model.functions:
        return model
    try:
        from onnx import inliner
    except ImportError as exc:  # onnx < 1.16
        raise TrtqError(f"{source} has local functions, which trtq inlines with onnx >= 1.16 "
                        f"(onnx {onnx.__version__} is installed).", "pip install 'onnx>=1.16'.") from exc
    return inliner.inline_local_functions(model)


def normalized_node_names(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """The names `normalize_model` gives the nodes of `model`, mapped to the original nodes.

    Nodes that normalisation adds (the version converter's, for an opset below 13) are not among them;
    the nodes of a model with local functions are those of its inlined copy.
    """
    model = inline_functions(model)
    folded = _foldable_constants(model.graph)
    nodes = [node for index, node in enumerate(model.graph.node) if index not in folded]
    return dict(zip(_node_names(nodes), nodes))
