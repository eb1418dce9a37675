"""Per-layer precisions for implicit TensorRT 10 builds, named by ONNX node.

TensorRT's ONNX parser (onnx-tensorrt, `getNodeName` and `ImporterContext::registerLayer`)
names the layer(s) it creates for a node after the node: `node.name`, or
`node_of_<first output>` when the node has no name; a name already taken gets `_<n>` appended,
n from a counter shared by the whole import. So the layers of node `conv1` are `conv1` and,
when the importer adds more than one layer for it, `conv1_<n>`. trtexec users get the same
list as `--precisionConstraints=obey --layerPrecisions=name:fp16,...` (trtexec splits the list
on commas and each entry on its last colon, and treats `*` as a wildcard).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import onnx

from trtq.errors import TrtqError
from trtq.model import normalized_node_names

LAYER_PRECISIONS = ("fp32", "fp16", "bf16", "int32", "int8")
"""Precisions trtexec 10.x accepts in --layerPrecisions."""

DEFAULT_FALLBACK = "fp16"
"""Precision given to nodes listed without one (nodes kept out of INT8)."""


def onnx_layer_name(node: onnx.NodeProto) -> str:
    """The TensorRT layer name the ONNX parser gives `node` (before de-duplication)."""
    if not node.name and node.output:
        return f"node_of_{node.output[0]}"
    return node.name


def parse_layer_precisions(text: str | Sequence[str] | None) -> dict[str, str]:
    """Parse "node_a:fp16,node_b:fp32" (trtexec's spelling; a bare name means fp16)."""
    if not text:
        return {}
    items = [text] if isinstance(text, str) else list(text)
    result: dict[str, str] = {}
    for part in (p.strip() for item in items for p in item.split(",")):
        if not part:
            continue
        name, sep, precision = part.rpartition(":")
        if not sep:
            name, precision = part, DEFAULT_FALLBACK
        precision = precision.strip().lower()
        if not name or precision not in LAYER_PRECISIONS:
            raise TrtqError(
                f"--layer-precisions entry {part!r} is not node:precision with precision one of "
                f"{', '.join(LAYER_PRECISIONS)}.",
                "write e.g. --layer-precisions \"/model.24/m.0/Conv:fp16,head:fp32\".",
            )
        result[name] = precision
    return result


def load_layer_precisions(path: str | Path) -> dict[str, str]:
    """Read node precisions from JSON: {"layer_precisions": {node: precision}}, {node: precision}, or the
    nodes kept out of INT8 (each gets fp16) as "excluded_nodes": [node, ...], a sensitivity record's
    "sensitive_layers", or a mixed-precision search result's "excluded": [{"node": node, ...}, ...]
    (also inside a run record's "result")."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TrtqError(f"Layer precision file {path} does not exist.", "check the --layer-precisions-from path.") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrtqError(f"Layer precision file {path} is not readable JSON ({exc}).",
                        "pass the JSON that `trtq sensitivity` wrote.") from exc
    if isinstance(payload, dict) and isinstance(payload.get("result"), dict):
        payload = payload["result"]
    if isinstance(payload, dict) and isinstance(payload.get("excluded"), list):
        payload = {"excluded_nodes": [item.get("node") if isinstance(item, dict) else item
                                      for item in payload["excluded"]]}
    if isinstance(payload, dict) and isinstance(payload.get("sensitive_layers"), list):
        payload = {"excluded_nodes": payload["sensitive_layers"]}
    if isinstance(payload, dict) and isinstance(payload.get("layer_precisions"), dict):
        payload = payload["layer_precisions"]
    elif isinstance(payload, dict) and isinstance(payload.get("excluded_nodes"), list):
        payload = {str(name): DEFAULT_FALLBACK for name in payload["excluded_nodes"]}
    if not isinstance(payload, dict) or not all(isinstance(v, str) for v in payload.values()):
        raise TrtqError(
            f"Layer precision file {path} holds neither a node->precision object nor an \"excluded_nodes\" list.",
            "pass the JSON that `trtq sensitivity` wrote, or {\"node\": \"fp16\", ...}.",
        )
    return parse_layer_precisions([f"{name}:{precision}" for name, precision in payload.items()])


def node_layer_names(model: onnx.ModelProto, nodes: Iterable[str]) -> dict[str, str]:
    """ONNX node (by node name, the parser's `node_of_<output>` name, or the name trtq's normalised
    copy gives an unnamed node) -> its parser layer name.

    Raises TrtqError for a name that is no node of `model`, suggesting close matches.
    """
    by_layer = {onnx_layer_name(node): node for node in model.graph.node}
    by_name = {node.name: node for node in model.graph.node if node.name}
    by_normalized = normalized_node_names(model)  # the names trtq's own outputs use (e.g. "Conv_3")
    result: dict[str, str] = {}
    for name in nodes:
        node = by_name.get(name) or by_layer.get(name) or by_normalized.get(name)
        if node is None:
            close = difflib.get_close_matches(name, list(by_layer), n=3)
            raise TrtqError(
                f"--layer-precisions names node {name!r}, which is not a node of the model"
                + (f" (close: {', '.join(close)})." if close else "."),
                "use ONNX node names as `trtq inspect` or Netron shows them.",
            )
        result[name] = onnx_layer_name(node)
    return result


def match_network_layers(layer_names: Mapping[str, str], network_layers: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """For each node's parser layer name, the network layers it produced: the name itself and
    `<name>_<n>` de-duplicated copies (unless that is another node's own name)."""
    wanted = set(layer_names.values())
    present = set(network_layers)
    result: dict[str, tuple[str, ...]] = {}
    for node, base in layer_names.items():
        pattern = re.compile(re.escape(base) + r"_\d+")
        result[node] = tuple(
            layer for layer in network_layers
            if layer == base or (pattern.fullmatch(layer) and layer not in wanted)
        )
        if base not in present:
            raise TrtqError(
                f"Node {node!r} has no TensorRT layer named {base!r} after parsing (constant-folded or fused by the parser).",
                "drop it from --layer-precisions, or name the node that consumes its output.",
            )
    return result


def trtexec_layer_precisions(layer_precisions: Mapping[str, str]) -> str:
    """The --layerPrecisions value for {layer name: precision}; names trtexec cannot express are an error."""
    parts = []
    for name, precision in layer_precisions.items():
        bad = next((c for c in ",'*" if c in name), None)
        if bad:
            raise TrtqError(
                f"Layer {name!r} contains {bad!r}, which trtexec's --layerPrecisions cannot express.",
                "rename the node in the ONNX model, or build with `trtq build` instead of trtexec.",
            )
        parts.append(f"{name}:{precision}")
    return ",".join(parts)
