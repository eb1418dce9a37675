"""Which of a model's quantized layers the engine runs at low precision, and which Q/DQ pairs fused.

Each quantized ONNX node (trtq.verify.graph) is found in the engine's layer list
(trtq.tensorrt.enginelog) through the layers' metadata, which names the ONNX nodes whose work a
layer does. Myelin fuses a quantized convolution into a compute layer (`correlation`, `gemm`,
`deconv`, `runtime_fusion`, ...) plus generated pointwise kernels (`kgen`: the bias, activation and
the next layer's quantization); the compute layer is the one that does the node's arithmetic, so
its *runtime inputs* decide: all Int8 means the node runs in INT8, all FP8 in FP8. Several ONNX
nodes may share one compute layer (TensorRT fuses the Q, K and V projections of an attention
block into one GEMM, and names it 'q+k+v').

A Q/DQ pair fused when every node reading its dequantized value runs on the quantized data: a
quantized layer that runs at low precision, or another layer (a residual Add, a pooling, a
Concat) fused into a kernel that reads an Int8/FP8 input. A pair whose readers run in float costs
a quantize and a dequantize in float, which saves nothing and adds rounding error.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from trtq.tensorrt.enginelog import LOW_PRECISION, EngineLayer
from trtq.verify.graph import QdqGraph, QdqPair, QuantizedNode

COMPUTE_WORDS = ("conv", "correlation", "gemm", "matmul", "matrix", "fusion", "attention", "mha", "deconv")
"""A layer type containing one of these does a convolution's or GEMM's arithmetic (kgen kernels do not)."""
PRECISION_OF = {"Int8": "int8", "FP8": "fp8", "Int4": "int4", "FP4": "fp4", "Half": "fp16", "BFloat16": "bf16",
                "Float": "fp32"}
KNOWN_FLOAT = {
    ("rtx", "ConvTranspose"): "TensorRT-RTX 1.7 runs ConvTranspose (deconv) in float whatever its Q/DQ: seen with "
                              "per-tensor and per-channel weight scales on either axis, for every kernel size, stride, "
                              "channel count and compute capability tried (trtq's observation; the log gives no reason)",
}
"""(backend track, op type) -> why such a quantized layer runs in float, where the builder's log does not say."""
KNOWN_FLOAT_READERS = {
    ("rtx", op): "TensorRT-RTX 1.7 averages in float when it builds for compute capability 8.x (the default "
                 "portable engine included), so the pair is quantized and dequantized in float before it; of "
                 "the pooling ops only MaxPool runs on Int8 data there (a 12.0-only build fuses GlobalAveragePool)"
    for op in ("AveragePool", "GlobalAveragePool")
}
"""(backend track, op type) -> why a Q/DQ pair on such a reader's input does not fuse, where the log does not say."""


@dataclass(frozen=True)
class LayerVerdict:
    """How the engine runs one quantized ONNX node."""

    node: str
    op_type: str
    expected: str
    """The quantized precision of its inputs in the ONNX model: int8 or fp8."""
    runs_in: str
    """int8, fp8 (low precision inputs), fp16, bf16, fp32, or "absent" (no engine layer does its work)."""
    ok: bool
    engine_layer: str | None
    engine_layer_type: str | None
    input_types: tuple[str, ...]
    constant_types: tuple[str, ...]
    fused_with: tuple[str, ...]
    """Other quantized ONNX nodes the same engine layer runs (e.g. an attention block's Q, K and V)."""
    reason: str | None = None
    reason_source: str | None = None
    """"log" (the builder said so) or "trtq" (trtq's reading of the model or of a known limitation)."""

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return asdict(self)


@dataclass(frozen=True)
class PairVerdict:
    """Whether one Q/DQ pair fused into the layers that read it."""

    tensor: str
    kind: str
    precision: str
    quantize: str | None
    dequantize: tuple[str, ...]
    consumers: tuple[str, ...]
    fused: bool
    float_readers: tuple[str, ...]
    """The consumers that do not run on the quantized data (why the pair did not fuse)."""
    engine_layers: tuple[str, ...]
    """Engine layers whose metadata names the pair's DequantizeLinear (where its work went)."""
    reason: str | None = None

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return asdict(self)


def is_compute(layer_type: str) -> bool:
    """True for engine layer types that do a convolution's or GEMM's arithmetic."""
    lowered = layer_type.lower()
    return any(word in lowered for word in COMPUTE_WORDS)


def runs_in(types: Sequence[str]) -> str:
    """The precision a layer runs in from its runtime inputs' datatypes."""
    if types and all(t in LOW_PRECISION for t in types):
        kinds = {PRECISION_OF.get(t, t) for t in types}
        return kinds.pop() if len(kinds) == 1 else "+".join(sorted(kinds))
    for word in ("Half", "BFloat16", "Float"):
        if word in types:
            return PRECISION_OF[word]
    return "fp32" if types else "unknown"


class _Engine:
    """Engine layers indexed by the ONNX nodes their metadata (or fused name) names."""

    def __init__(self, layers: Sequence[EngineLayer]) -> None:
        self.layers = layers
        self.by_node: dict[str, list[EngineLayer]] = defaultdict(list)
        for layer in layers:
            for node in dict.fromkeys((*layer.metadata, *layer.name_parts)):
                self.by_node[node].append(layer)

    def compute_layer(self, node: str) -> EngineLayer | None:
        """The layer doing `node`'s arithmetic: a compute layer named after it, else any compute layer
        running it, else any layer running it (its work went into a generated kernel)."""
        candidates = self.by_node.get(node, [])
        compute = [layer for layer in candidates if is_compute(layer.type)]
        named = [layer for layer in compute if node in layer.name_parts]
        found = named or compute or candidates
        return found[0] if found else None


def _log_reason(names: Sequence[str], problems: Sequence[str]) -> str | None:
    """The first WARNING/ERROR message that names one of `names`."""
    for text in problems:
        if any(re.search(rf"(?<![\w/.:-]){re.escape(name)}(?![\w/.-]|:[\w:])", text) for name in names if name):
            return " ".join(text.split())
    return None


TURING = "TensorRT-RTX has no INT8 or FP8 kernels for compute capability 7.5 (Turing): every layer runs in FP16/FP32"


def check_layers(
    graph: QdqGraph, layers: Sequence[EngineLayer], problems: Sequence[str] = (), track: str = "rtx",
    compute_capabilities: Sequence[str] = (),
) -> tuple[tuple[LayerVerdict, ...], tuple[PairVerdict, ...]]:
    """Verdicts for every quantized node and every Q/DQ pair of `graph` against the engine's `layers`.

    `problems` are the build's WARNING/ERROR messages (quoted as the reason where one names the node);
    `compute_capabilities` are the targets of a TensorRT-RTX build (7.5 alone: no INT8/FP8 at all).
    """
    turing = track == "rtx" and tuple(compute_capabilities) == ("7.5",)
    engine = _Engine(layers)
    quantize_of = {dq: pair.quantize for pair in graph.pairs if pair.quantize for dq in pair.dequantize}
    quantized_ops = {name for name, op in graph.op_types.items() if op in ("Conv", "ConvTranspose", "Gemm", "MatMul")}
    verdicts = tuple(_node_verdict(node, engine, problems, track, quantized_ops, quantize_of, turing)
                     for node in graph.nodes)
    by_node = {v.node: v for v in verdicts}
    pairs = tuple(_pair_verdict(pair, engine, by_node, problems, graph.op_types, track) for pair in graph.pairs)
    return verdicts, pairs


def _node_verdict(
    node: QuantizedNode, engine: _Engine, problems: Sequence[str], track: str, quantized_ops: set[str],
    quantize_of: Mapping[str, str], turing: bool = False,
) -> LayerVerdict:
    layer = engine.compute_layer(node.layer)
    if layer is None:
        return LayerVerdict(node.layer, node.op_type, node.precision, "absent", False, None, None, (), (), (),
                            _log_reason([node.layer], problems) or "no engine layer does this node's work (the builder "
                            "removed or folded it)", "log" if _log_reason([node.layer], problems) else "trtq")
    precision = runs_in(layer.input_types)
    expected = node.precision
    ok = precision == expected or (expected == "mixed" and all(t in LOW_PRECISION for t in layer.input_types)
                                   and bool(layer.input_types))
    fused_with = tuple(n for n in dict.fromkeys((*layer.name_parts, *layer.metadata))
                       if n != node.layer and n in quantized_ops)
    reason = source = None
    if not ok:
        logged = _log_reason([node.layer, *node.dequantize], problems)
        if turing:
            reason, source = TURING, "trtq"
        elif logged:
            reason, source = logged, "log"
        elif node.unquantized_inputs:
            inputs = ", ".join(str(i) for i in node.unquantized_inputs)
            reason, source = (f"input {inputs} has no Q/DQ: TensorRT runs a layer at low precision only when all of its "
                              "data inputs are quantized"), "trtq"
        elif (track, node.op_type) in KNOWN_FLOAT:
            reason, source = KNOWN_FLOAT[track, node.op_type], "trtq"
        elif not is_compute(layer.type):
            inputs = ", ".join(layer.input_types) or "no runtime input"
            quantizes = [quantize_of[dq] for dq in node.dequantize if quantize_of.get(dq) in layer.metadata]
            together = " together with its input's QuantizeLinear" if quantizes else ""
            reason, source = (f"its arithmetic went into the generated kernel {layer.name} ({layer.type}){together}; "
                              f"the kernel reads {inputs}, so no engine layer reads {expected.upper()} for it "
                              "(Myelin does this for tiny convolutions and GEMMs)"), "trtq"
        else:
            reason, source = "the build log gives no reason", None
    return LayerVerdict(
        node=node.layer, op_type=node.op_type, expected=expected, runs_in=precision, ok=ok,
        engine_layer=layer.name, engine_layer_type=layer.type, input_types=layer.input_types,
        constant_types=layer.constant_types, fused_with=fused_with, reason=reason, reason_source=source,
    )


def _pair_verdict(
    pair: QdqPair, engine: _Engine, nodes: Mapping[str, LayerVerdict], problems: Sequence[str],
    op_types: Mapping[str, str], track: str,
) -> PairVerdict:
    listing = [layer for dq in pair.dequantize for layer in engine.by_node.get(dq, [])]
    listing = list({layer.name: layer for layer in listing}.values())
    reasons = []
    float_readers = []
    for consumer in pair.consumers:
        verdict = nodes.get(consumer)
        if verdict is not None:
            if not verdict.ok:
                float_readers.append(consumer)
                reasons.append(f"its reader {consumer} ({verdict.op_type}) runs in {verdict.runs_in}")
            continue
        running = engine.by_node.get(consumer, [])
        reading = [layer for layer in running if any(dq in layer.metadata for dq in pair.dequantize)] or running
        # the reader runs on quantized data when a kernel doing its work reads an Int8/FP8 input that another
        # kernel quantized; a kernel that also does the pair's QuantizeLinear quantizes and dequantizes in float
        quantized_elsewhere = [layer for layer in reading if pair.quantize is None or pair.quantize not in layer.metadata]
        if not any(t in LOW_PRECISION for layer in quantized_elsewhere for t in layer.input_types):
            where = ", ".join(f"{layer.name} ({layer.type})" for layer in (reading or listing)[:2])
            float_readers.append(consumer)
            op = op_types.get(consumer, "")
            known = KNOWN_FLOAT_READERS.get((track, op))
            reasons.append(f"its reader {consumer} ({op}) runs in float" +
                           (f" in {where}" if where else " (no engine layer does its work)") +
                           (f": {known}" if known else ""))
    if not pair.consumers:
        reasons.append("nothing reads its dequantized value but the graph output")
    fused = not reasons
    reason = None
    if not fused:
        logged = _log_reason([pair.quantize or "", *pair.dequantize, pair.tensor], problems)
        reason = "; ".join(reasons) + (f" (log: {logged})" if logged else "")
    return PairVerdict(
        tensor=pair.tensor, kind=pair.kind, precision=pair.precision, quantize=pair.quantize,
        dequantize=pair.dequantize, consumers=pair.consumers, fused=fused, float_readers=tuple(float_readers),
        engine_layers=tuple(layer.name for layer in listing), reason=reason,
    )
