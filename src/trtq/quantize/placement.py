"""Decide where Q/DQ pairs go, following TensorRT's placement rules (docs/design.md, "Q/DQ rules").

- inputs (activation and weight) of Conv, ConvTranspose, Gemm, MatMul are quantized;
- weights per output channel, activations per tensor; biases and outputs never;
- on a residual Add fed by a convolution, the *other* (skip) input is quantized so TensorRT can
  fuse the Add into the convolution;
- MaxPool / AveragePool / GlobalAveragePool inputs are quantized (TensorRT runs them in INT8
  between quantized convolutions, as NVIDIA ModelOpt's reference placement does), except a MaxPool
  input that another reader of the same tensor takes in float (YOLO's SPPF, whose pooled tensors also
  feed a Concat): TensorRT-RTX left exactly those pairs unfused (2 of YOLOv8's 125) and runs those
  pools in float, and without them every pair fuses;
- excluded nodes (by name regex or op type) keep their inputs in high precision;
- convolutions that sum at most MIN_CONV_REDUCTION products per output (input channels per
  group x filter taps, e.g. a 1x1 squeeze-excitation conv over 2 channels) stay in high precision:
  INT8 saves nothing there, and TensorRT-RTX folds such a conv into a float pointwise kernel;
- a layer none of whose data inputs depends on the input data (computed from initializers and the
  inputs' shapes alone, as DETR's first decoder layer computes its object queries from zeros and a
  learned embedding) stays in high precision: TensorRT computes it at build time, so Q/DQ there
  only adds rounding.

`residual=True` (`--residual-qdq`) also puts Q/DQ on both inputs of the residual Adds of
transformer blocks (an Add of a MatMul/Gemm branch and the residual stream, read by a LayerNorm or
the next residual Add), as NVIDIA ModelOpt's INT8 mode does: TensorRT can then run the Add and
carry the residual stream in INT8, at a cost in accuracy (the stream itself is rounded to 8 bits).
Convolution residuals keep the default (Q/DQ on the skip input only, so the Add fuses into the
convolution).

Attention (`attention_matmuls`): Q.K^T (BMM1) and softmax.V (BMM2) are MatMuls like any other,
so both inputs of each get Q/DQ, which TensorRT's INT8 fused attention kernels read. Those kernels
stop at 512 tokens; beyond that `long_attention` names the pairs that should stay in high
precision (as ModelOpt does in INT8 mode), and the callers exclude them.

FP8 (E4M3, `grid=FP8_E4M3`) follows NVIDIA ModelOpt's FP8 mode: only Conv, Gemm, MatMul and the
residual Add get Q/DQ (no ConvTranspose, no pooling), and convolutions without FP8 kernels that
pay off stay in high precision (<= 16 input or output channels, or more than 32 filter taps).
FP8 has no calibration cache (implicit TensorRT builds are INT8 only), so it has no cache tensors.

The result is a plan (which tensor, which consumers, which axis, which grid); nothing is edited here.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from trtq.calibrate.grids import INT8, Grid
from trtq.errors import TrtqError
from trtq.model import QUANTIZABLE_OPS, inferred_shapes, tensor_types

POOLING_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool")
MAX_POOLING_OPS = ("MaxPool",)
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
ALREADY_QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                         "MatMulIntegerToFloat", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "QGemm", "QAttention")
"""Ops of an already quantized model: Q/DQ, onnxruntime's `quantize_dynamic` (integer Conv/MatMul fed by
DynamicQuantizeLinear) and its com.microsoft quantized ops; every `QLinear*` op (`already_quantized`) too."""
NONDETERMINISTIC_OPS = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                        "Bernoulli")
"""Ops whose output is not a constant even when their inputs are."""
SHAPE_OPS = ("Shape", "Size")
"""Ops whose output depends on their input's shape only, not on its values."""
SCORE_OPS = ("Sigmoid", "Softmax", "LogSoftmax")
"""Ops whose inputs must not be INT8 in an implicit build: scores collapse (YOLO/RetinaNet heads)."""
MIN_CONV_REDUCTION = 4
"""Convolutions summing this many products per output or fewer stay out of INT8/FP8 (see the module docstring)."""
FP8_OPS = ("Conv", "Gemm", "MatMul")
"""Compute ops that get FP8 Q/DQ (ModelOpt's FP8 mode)."""
FP8_MIN_CONV_CHANNELS = 16
"""Convolutions with this many input or output channels or fewer stay out of FP8 (ModelOpt's rule:
no FP8 kernel beats FP16 there)."""
FP8_MAX_CONV_TAPS = 32
"""Convolutions whose filter has more taps than this (e.g. 7x7) stay out of FP8 (ModelOpt's rule)."""
MHA_INT8_MAX_SEQ = 512
"""Longest key sequence TensorRT's INT8 fused attention kernels run (the fMHA v2 kernels of its BERT
plugin stop at 512); ModelOpt drops the attention MatMuls' INT8 Q/DQ beyond it."""
ATTENTION_SCORE_PATH = ("Add", "Sub", "Mul", "Div", "Where", "Cast", "Identity")
"""Ops between Q.K^T and its Softmax: scaling and the additive or boolean mask."""
ATTENTION_PROBS_PATH = ("Cast", "Identity", "Dropout", "Where", "IsNaN")
"""Ops between the Softmax and softmax.V (exporters zero fully masked rows with IsNaN/Where)."""
RESIDUAL_READERS = ("LayerNormalization", "ReduceMean", "SimplifiedLayerNormalization", "Add")
"""What reads a transformer block's residual Add: the next LayerNorm (ReduceMean in a decomposed
one) or, on a pre-norm stream, the next residual Add."""


@dataclass(frozen=True)
class QuantTarget:
    """One tensor to quantize and the node inputs that should read its dequantized value."""

    tensor: str
    kind: str  # "activation" or "weight"
    consumers: tuple[tuple[str, int], ...]  # (node name, input index)
    axis: int | None = None  # per-channel axis for weights; None = per tensor


@dataclass(frozen=True)
class Placement:
    """Where Q/DQ goes, plus the activation tensors calibration must observe."""

    targets: tuple[QuantTarget, ...]
    excluded_nodes: tuple[str, ...] = ()
    cache_tensors: tuple[str, ...] = ()
    """Float activations that get a line in the TensorRT calibration cache (implicit builds)."""
    grid: Grid = INT8
    """What the Q/DQ pairs quantize to: INT8 (scale = amax / 127) or FP8 E4M3 (scale = amax / 448)."""

    @property
    def activation_tensors(self) -> tuple[str, ...]:
        """Activations that get Q/DQ pairs (their ranges come from calibration)."""
        return tuple(t.tensor for t in self.targets if t.kind == "activation")

    @property
    def weight_tensors(self) -> tuple[str, ...]:
        """Weights that get per-channel Q/DQ pairs (their ranges come from the weights themselves)."""
        return tuple(t.tensor for t in self.targets if t.kind == "weight")

    @property
    def calibrated_tensors(self) -> tuple[str, ...]:
        """Every activation calibration must observe: Q/DQ inputs and cache tensors, sorted."""
        return tuple(sorted(set(self.activation_tensors) | set(self.cache_tensors)))


@dataclass
class _Graph:
    """Producer/consumer indexes of a graph (read-only helper)."""

    model: onnx.ModelProto
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = field(default_factory=lambda: defaultdict(list))
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)
    ops: dict[str, str] = field(default_factory=dict)  # node name -> op type
    outputs: set[str] = field(default_factory=set)  # the graph's output names

    @classmethod
    def index(cls, model: onnx.ModelProto) -> _Graph:
        g = cls(model)
        for node in model.graph.node:
            for out in node.output:
                if out:
                    g.producer[out] = node
            for i, name in enumerate(node.input):
                if name:
                    g.consumers[name].append((node, i))
        g.initializers = {init.name: init for init in model.graph.initializer}
        g.types = tensor_types(model)
        g.ops = {node.name: node.op_type for node in model.graph.node}
        g.outputs = {output.name for output in model.graph.output}
        return g

    def is_weight(self, name: str) -> bool:
        return name in self.initializers

    def is_float(self, name: str) -> bool:
        return self.types.get(name) in FLOAT_TYPES

    def is_constant(self, name: str) -> bool:
        """True for a value computed from initializers alone (e.g. paddle2onnx's bias: Reshape(weight, shape))."""
        return self._computed_from(name, "_constant", ())

    def is_data_free(self, name: str) -> bool:
        """True for a value that does not depend on the input data: computed from initializers and the
        shapes of tensors alone (Shape, Size), e.g. DETR's zero object queries, ConstantOfShape(Shape(x))."""
        return self._computed_from(name, "_data_free", SHAPE_OPS)

    def _computed_from(self, name: str, memo: str, shape_ops: tuple[str, ...]) -> bool:
        """True when `name` is computed from initializers alone, taking the outputs of `shape_ops` as known."""
        known: dict[str, bool] = self.__dict__.setdefault(memo, {})
        stack = [name]
        while stack:
            current = stack[-1]
            if current in known:
                stack.pop()
                continue
            if current in self.initializers:
                known[current] = True
                stack.pop()
                continue
            node = self.producer.get(current)
            if node is None or node.op_type in NONDETERMINISTIC_OPS:
                known[current] = False
                stack.pop()
                continue
            if node.op_type in shape_ops:
                known[current] = True
                stack.pop()
                continue
            pending = [i for i in node.input if i and i not in known]
            if pending:
                stack.extend(pending)
                continue
            known[current] = all(known[i] for i in node.input if i)
            stack.pop()
        return known[name]


def _weight_axis(node: onnx.NodeProto, input_index: int, rank: int) -> int:
    """Output-channel axis of a weight as laid out for this node."""
    if node.op_type in ("Conv", "ConvTranspose"):
        return 0  # KCRS for Conv; ConvTranspose CKRS, axis 0 as NVIDIA advises (docs/design.md)
    if node.op_type == "Gemm":
        attrs = {a.name: a.i for a in node.attribute}
        if input_index == 1:
            return 0 if attrs.get("transB", 0) else 1
        return 1 if attrs.get("transA", 0) else 0
    # MatMul: B is [..., K, N] -> output channels on the last axis; A is [..., M, K] -> axis -2.
    return rank - 1 if input_index == 1 else max(rank - 2, 0)


def _compile(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise TrtqError(
                f"--exclude-nodes pattern {pattern!r} is not a valid regular expression ({exc}).",
                "quote the pattern and escape special characters, e.g. '/model\\.24/.*'.",
            ) from exc
    return compiled


CACHE_SCOPES = ("qdq", "all")
"""Which tensors get calibration-cache lines: those around the INT8 layers of the Q/DQ placement
(`qdq`, the default), or every float activation as TensorRT's own calibrator does (`all`)."""


def already_quantized(op_type: str) -> bool:
    """Whether `op_type` only occurs in a model something already quantized (ALREADY_QUANTIZED_OPS, QLinear*)."""
    return op_type in ALREADY_QUANTIZED_OPS or op_type.startswith("QLinear")


def plan_placement(
    model: onnx.ModelProto,
    exclude_nodes: Sequence[str] = (),
    exclude_ops: Iterable[str] = (),
    cache_scope: str = "qdq",
    grid: Grid = INT8,
    residual: bool = False,
    ranged: Collection[str] | None = None,
) -> Placement:
    """Plan Q/DQ placement on a normalised model (see `trtq.model.normalize_model`) for `grid`;
    `residual`: Q/DQ on both inputs of transformer residual Adds too (module docstring).

    `ranged`: the activations a ranges table has, when re-planning with more layers excluded on ranges
    calibrated for fewer (--target). Excluding one of two summed convolutions moves a residual Add's pair to
    the other input, which was not calibrated; that Add then gets no pair (None: every activation is free)."""
    if cache_scope not in CACHE_SCOPES:
        raise TrtqError(f"--cache-scope {cache_scope!r} is not one of {', '.join(CACHE_SCOPES)}.", "pick one of those.")
    for node in model.graph.node:
        if already_quantized(node.op_type):
            raise TrtqError(
                f"The model already contains quantization node {node.name!r} ({node.op_type}).",
                "pass the original FP32 model, not a quantized one.",
            )
    g = _Graph.index(model)
    patterns = _compile(exclude_nodes)
    excluded_ops = {op.strip() for op in exclude_ops if op.strip()}
    excluded = {
        node.name
        for node in model.graph.node
        if node.op_type in excluded_ops or any(p.search(node.name) for p in patterns)
    }
    fp8 = grid.name != INT8.name
    excluded |= {node.name for node in model.graph.node if _tiny_reduction(g, node) or _data_free_layer(g, node)}
    if fp8:
        excluded |= {node.name for node in model.graph.node if not _fp8_worthwhile(g, node)}

    wanted: dict[str, list[tuple[str, int]]] = defaultdict(list)
    kinds: dict[str, str] = {}
    axes: dict[str, int | None] = {}

    def want(name: str, node: onnx.NodeProto, index: int) -> None:
        if not name or not g.is_float(name):
            return
        if g.is_weight(name):
            init = g.initializers[name]
            if len(init.dims) < 2:
                return  # 1-D constants are biases/scales, never quantized
            kinds[name] = "weight"
            axes[name] = _weight_axis(node, index, len(init.dims))
        else:
            kinds[name] = "activation"
            axes[name] = None
        wanted[name].append((node.name, index))

    for node in model.graph.node:
        if node.name in excluded:
            continue
        if node.op_type in QUANTIZABLE_OPS:
            data_inputs = (0, 1)  # Conv/ConvT: X, W; Gemm: A, B; MatMul: A, B. Never the bias.
            for index in data_inputs:
                if index < len(node.input):
                    want(node.input[index], node, index)
        elif node.op_type in POOLING_OPS and not fp8:
            if _feeds_quantized(g, node.output[0], excluded):
                want(node.input[0], node, 0)
        elif node.op_type == "Add" and len(node.input) == 2:
            if residual and _transformer_residual(g, node, excluded):
                want(node.input[0], node, 0)
                want(node.input[1], node, 1)
                continue
            skip = _residual_skip_input(g, node, excluded)
            if skip is not None and (ranged is None or node.input[skip] in ranged):
                want(node.input[skip], node, skip)

    for name in [name for name, consumers in wanted.items() if _pooled_beside_float(g, name, consumers)]:
        wanted[name] = [(node, index) for node, index in wanted[name] if g.ops[node] not in MAX_POOLING_OPS]
    targets = tuple(QuantTarget(tensor=name, kind=kinds[name], consumers=tuple(consumers), axis=axes[name])
                    for name, consumers in wanted.items() if consumers)
    return Placement(
        targets=targets,
        excluded_nodes=tuple(sorted(excluded)),
        cache_tensors=() if fp8 else _cache_tensors(g, excluded, _int8_outputs(g, targets) if cache_scope == "qdq" else None),
        grid=grid,
    )


def _tiny_reduction(g: _Graph, node: onnx.NodeProto) -> bool:
    """True for a Conv whose outputs each sum at most MIN_CONV_REDUCTION products (known weights only)."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return False
    weight = g.initializers.get(node.input[1])
    if weight is None or len(weight.dims) < 3:
        return False
    products = weight.dims[1]
    for size in weight.dims[2:]:
        products *= size
    return products <= MIN_CONV_REDUCTION


def _data_free_layer(g: _Graph, node: onnx.NodeProto) -> bool:
    """True for a Conv/ConvTranspose/Gemm/MatMul whose data inputs (0 and 1) do not depend on the input data."""
    return node.op_type in QUANTIZABLE_OPS and len(node.input) >= 2 and all(
        g.is_data_free(name) for name in node.input[:2] if name)


def _fp8_worthwhile(g: _Graph, node: onnx.NodeProto) -> bool:
    """False for compute nodes that stay out of FP8: ConvTranspose, and convolutions with few
    channels or large filters (see FP8_MIN_CONV_CHANNELS, FP8_MAX_CONV_TAPS); True for the rest."""
    if node.op_type not in QUANTIZABLE_OPS:
        return True
    if node.op_type not in FP8_OPS:
        return False
    if node.op_type != "Conv":
        return True
    weight = g.initializers.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None or len(weight.dims) < 3:
        return False
    out_channels, in_channels, taps = weight.dims[0], weight.dims[1], 1
    for size in weight.dims[2:]:
        taps *= size
    return out_channels > FP8_MIN_CONV_CHANNELS and in_channels > FP8_MIN_CONV_CHANNELS and taps <= FP8_MAX_CONV_TAPS


def _pooled_beside_float(g: _Graph, tensor: str, quantized: list[tuple[str, int]]) -> bool:
    """True when a MaxPool reads `tensor` quantized while another reader (or the graph's output) takes it in
    float: a Q/DQ pair TensorRT-RTX does not fuse (it would produce the tensor both ways) and runs the pool in float.
    (Average pooling's pairs are another matter: TensorRT-RTX averages in float for compute capability 8.x anyway.)"""
    if not any(g.ops[node] in MAX_POOLING_OPS for node, _ in quantized):
        return False
    readers = {(node.name, index) for node, index in g.consumers.get(tensor, [])}
    return bool(readers - set(quantized)) or tensor in g.outputs


def _feeds_quantized(g: _Graph, tensor: str, excluded: set[str]) -> bool:
    """True when a pooling output reaches a quantized compute op (so INT8 pooling pays off)."""
    seen: set[str] = set()
    frontier = [tensor]
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        for node, _ in g.consumers.get(name, []):
            if node.name in excluded:
                continue
            if node.op_type in QUANTIZABLE_OPS or node.op_type in POOLING_OPS or node.op_type == "Add":
                return True
            if node.op_type in ("Relu", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity"):
                frontier.extend(node.output)
    return False


def _residual_skip_input(g: _Graph, add: onnx.NodeProto, excluded: set[str]) -> int | None:
    """Index of the skip input of a residual Add fed by a convolution on its other input.

    An input computed from initializers alone is a bias (paddle2onnx adds a convolution's bias as
    Add(conv, Reshape(offset, shape))), never a residual: TensorRT folds it into the convolution.
    """
    a, b = add.input
    if g.is_constant(a) or g.is_constant(b) or not (g.is_float(a) and g.is_float(b)):
        return None

    def from_conv(name: str) -> bool:
        node = g.producer.get(name)
        if node is not None and node.op_type == "BatchNormalization":
            node = g.producer.get(node.input[0])
        return (
            node is not None
            and node.op_type in ("Conv", "ConvTranspose")
            and node.name not in excluded
            and len(g.consumers.get(name, [])) == 1
        )

    a_conv, b_conv = from_conv(a), from_conv(b)
    if a_conv and not b_conv:
        return 1
    if b_conv and not a_conv:
        return 0
    if a_conv and b_conv:
        return 1  # projection shortcut: fuse the main branch (input 0), quantize the other
    return None


def _transformer_residual(g: _Graph, add: onnx.NodeProto, excluded: set[str]) -> bool:
    """Whether `add` is a transformer block's residual Add: two float activations, one of them a
    MatMul/Gemm branch (through a bias Add), its output read by a LayerNorm or the next residual
    Add, and not on the way to a Softmax (the attention mask's Add)."""
    a, b = add.input
    if g.is_constant(a) or g.is_constant(b) or not (g.is_float(a) and g.is_float(b)):
        return False

    def from_gemm(name: str) -> bool:
        node = g.producer.get(name)
        if node is not None and node.op_type == "Add" and any(g.is_constant(i) for i in node.input):
            node = g.producer.get(next(i for i in node.input if not g.is_constant(i)))
        return node is not None and node.op_type in ("MatMul", "Gemm") and node.name not in excluded

    if not (from_gemm(a) or from_gemm(b)) or _reaches_softmax(g, add.output[0]):
        return False
    return any(node.op_type in RESIDUAL_READERS for node, _ in _readers_past_identity(g, add.output[0]))


def _reaches_softmax(g: _Graph, tensor: str, depth: int = 0) -> bool:
    for node, _ in g.consumers.get(tensor, []):
        if node.op_type == "Softmax":
            return True
        if node.op_type in ATTENTION_SCORE_PATH and depth < 6 and any(
                _reaches_softmax(g, out, depth + 1) for out in node.output):
            return True
    return False


def attention_matmuls(model: onnx.ModelProto) -> tuple[tuple[str, str | None], ...]:
    """The attention blocks of `model`: (Q.K^T MatMul, softmax.V MatMul or None) node names.

    Q.K^T is a MatMul whose output reaches a Softmax through scaling and masking only;
    softmax.V the MatMul reading that Softmax's output as its first input.
    """
    g = _Graph.index(model)
    blocks = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or not _reaches_softmax(g, node.output[0]):
            continue
        blocks.append((node.name, _probs_matmul(g, node.output[0])))
    return tuple(blocks)


def _probs_matmul(g: _Graph, scores: str) -> str | None:
    """The MatMul that multiplies the Softmax of `scores` (through scaling/masking) with V."""
    frontier, seen = [scores], set()
    softmax_outputs = []
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        for node, _ in g.consumers.get(name, []):
            if node.op_type == "Softmax":
                softmax_outputs.append(node.output[0])
            elif node.op_type in ATTENTION_SCORE_PATH:
                frontier.extend(node.output)
    frontier, seen = softmax_outputs, set()
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        for node, index in g.consumers.get(name, []):
            if node.op_type == "MatMul" and index == 0:
                return node.name
            if node.op_type in ATTENTION_PROBS_PATH:
                frontier.extend(node.output)
    return None


def long_attention(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]],
                   limit: int = MHA_INT8_MAX_SEQ) -> dict[str, int]:
    """Attention MatMuls (Q.K^T and softmax.V) whose key sequence is longer than `limit` at
    `input_shapes` (shape inference on a weightless copy), with that length. Unknown lengths count
    as short."""
    blocks = attention_matmuls(model)
    if not blocks:
        return {}
    shapes = inferred_shapes(model, input_shapes)
    producer_output = {node.name: node.output[0] for node in model.graph.node}
    long: dict[str, int] = {}
    for scores, probs in blocks:
        dims = shapes.get(producer_output[scores], ())
        keys = dims[-1] if dims else 0
        if keys > limit:
            long[scores] = keys
            if probs is not None:
                long[probs] = keys
    return long


FUSED_PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Add")
FUSED_ACTIVATIONS = ("Relu", "LeakyRelu", "Clip", "BatchNormalization")


def _readers_past_identity(g: _Graph, name: str) -> list[tuple[onnx.NodeProto, int]]:
    """The nodes reading `name`, with Identity nodes (TensorRT removes them) replaced by their readers.

    An Identity whose output is a graph output counts as a reader itself: that tensor must exist.
    """
    outputs = {o.name for o in g.model.graph.output}
    readers: list[tuple[onnx.NodeProto, int]] = []
    for node, index in g.consumers.get(name, []):
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            readers.extend(_readers_past_identity(g, node.output[0]))
        else:
            readers.append((node, index))
    return readers


def _fused_away(g: _Graph, name: str) -> bool:
    """True for a tensor TensorRT fuses away: a Conv/BN/Add output read only by a following
    activation or BatchNorm, or a convolution's output read only by its residual Add (Identity
    nodes in between do not count: TensorRT removes them first).

    Such tensors need no calibration-cache entry, and observing them would block onnxruntime's
    own fusions and cost a histogram pass for nothing.
    """
    producer = g.producer.get(name)
    readers = _readers_past_identity(g, name)
    if producer is None or producer.op_type not in FUSED_PRODUCERS or len(readers) != 1:
        return False
    if name in {o.name for o in g.model.graph.output}:
        return False
    reader = readers[0][0]
    if reader.op_type in FUSED_ACTIVATIONS:
        return True
    return reader.op_type == "Add" and producer.op_type in ("Conv", "ConvTranspose", "BatchNormalization")


def _int8_outputs(g: _Graph, targets: Sequence[QuantTarget]) -> list[str]:
    """Inputs and (post-fusion) outputs of the layers the Q/DQ placement runs in INT8.

    In an implicit build a layer whose input or output tensor has no scale falls back from INT8,
    so these are the cache lines that reproduce the Q/DQ model's INT8 regions. A compute node's
    output is followed through what TensorRT fuses into it (BatchNorm, ReLU-like activations, a
    residual Add and the activation after it).
    """
    names = [t.tensor for t in targets if t.kind == "activation"]
    consumers = {node_name for t in targets for node_name, _ in t.consumers}
    for node in g.model.graph.node:
        if node.name not in consumers or not node.output:
            continue
        tensor = node.output[0]
        while _fused_away(g, tensor):
            tensor = _readers_past_identity(g, tensor)[0][0].output[0]
        names.append(tensor)
    return names


def _cache_tensors(g: _Graph, excluded: set[str], candidates: Sequence[str] | None) -> tuple[str, ...]:
    """Float activations for the implicit-build cache: `candidates`, or (None) every graph input
    and node output.

    Left out: outputs of excluded nodes, tensors read only by excluded nodes or score ops (so
    TensorRT keeps those in higher precision), scores, and tensors fused away (`_fused_away`).
    """
    if candidates is not None:
        names = list(candidates)
    else:
        names = [vi.name for vi in g.model.graph.input if vi.name not in g.initializers]
        for node in g.model.graph.node:
            if node.op_type not in ("Constant", "Shape"):
                names.extend(out for out in node.output if out)
    produced_by_excluded = {out for node in g.model.graph.node if node.name in excluded for out in node.output}
    names = [name for name in names if name not in produced_by_excluded]
    keep = []
    for name in names:
        if not g.is_float(name) or _fused_away(g, name):
            continue
        readers = g.consumers.get(name, [])
        if readers and all(node.op_type in SCORE_OPS or node.name in excluded for node, _ in readers):
            continue
        producer = g.producer.get(name)
        if producer is not None and producer.op_type in SCORE_OPS:
            continue
        keep.append(name)
    return tuple(dict.fromkeys(keep))
