"""Precision of the non-INT8 regions: `--high-precision fp16` converts them to FP16 inside the ONNX.

TensorRT 11 removed the FP16 builder flag; precision now lives in the graph's tensor types
(docs/design.md, "TensorRT 11"). This pass rewrites a (Q/DQ) model so that every node that can runs in FP16, and
keeps FP32 where FP16 would hurt:

- tensors whose observed range would overflow FP16 (|x| * headroom > 65504): every node that
  reads or writes one stays FP32;
- the final score heads: a Sigmoid/Softmax/LogSoftmax with no Conv/Gemm/MatMul after it, and the
  node producing its input (logits need the precision; scores collapse otherwise);
- ops whose ONNX schema has no float16 variant, ops with subgraphs, ops from other domains, ops
  that create tensors from a dtype attribute, and nodes the caller names.

Graph inputs and outputs stay FP32 (Casts at the boundary), so callers feed and read float32 as
before. Q/DQ pairs take FP16 scales when the model's opset is >= 19 (raised with onnx's version
converter where possible) and their consumers run in FP16; otherwise they stay FP32 with Casts
around them. Inputs a schema fixes to float (e.g. Resize scales) stay float32. onnxruntime's CPU
provider runs the result: it inserts Casts itself around ops that lack FP16 kernels.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import TensorProto, defs, helper, numpy_helper

from trtq.data import Dataset
from trtq.errors import TrtqError
from trtq.model import (
    QUANTIZABLE_OPS,
    check_structure,
    default_opset,
    infer_types_checked,
    infer_types_in_place,
    name_unnamed_nodes,
    tensor_types,
)
from trtq.quantize.qdq import unique_name

MODES = ("fp16", "fp32")
FP16_MAX = 65504.0
DEFAULT_HEADROOM = 2.0
"""A tensor stays FP32 when its observed amax times this would exceed FP16_MAX: data the
calibration set did not show can reach further."""
MIN_FP16_SCALE = 2.0**-14
"""Q/DQ scales below FP16's smallest normal number keep their pair in FP32."""
FP16_QDQ_OPSET = 19
SCORE_OPS = ("Sigmoid", "Softmax", "LogSoftmax")
KEEP_OPS = ("Range", "NonMaxSuppression", "RoiAlign", "TopK", "RandomNormal", "RandomUniform", "RandomNormalLike",
            "RandomUniformLike", "Multinomial", "EyeLike", "Bernoulli")
"""Ops kept in FP32: index/box computations where FP16 rounding changes results, and dtype-creating ops."""
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_FLOAT16_TYPE = "tensor(float16)"


@dataclass(frozen=True)
class KeptNode:
    """A node left in FP32 and why."""

    node: str
    op_type: str
    reason: str


@dataclass(frozen=True)
class PrecisionResult:
    """The converted model and what stayed FP32."""

    model: onnx.ModelProto
    mode: str
    fp16_nodes: tuple[str, ...] = ()
    kept_fp32: tuple[KeptNode, ...] = ()
    casts: int = 0
    fp16_qdq_pairs: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        """JSON-friendly view (without the model)."""
        return {
            "mode": self.mode,
            "fp16_nodes": len(self.fp16_nodes),
            "kept_fp32": [k.__dict__ for k in self.kept_fp32],
            "casts": self.casts,
            "fp16_qdq_pairs": self.fp16_qdq_pairs,
            "notes": list(self.notes),
        }


def observe_amax(
    model: onnx.ModelProto, dataset: Dataset, tensors: Sequence[str], batch_size: int = 1
) -> dict[str, float]:
    """Max |x| of `tensors` of an FP32 model over `dataset` (one pass, no histograms)."""
    from trtq.calibrate.backend import make_backend

    if not tensors:
        return {}
    backend = make_backend("cpu", model, list(tensors), histogram=False)
    for batch in dataset.batches(batch_size):
        backend.observe(batch)
    return {name: float(stats.amax) for name, stats in backend.stats().items()}


@dataclass(frozen=True)
class HighPrecision:
    """`--high-precision MODE` for the quantized variants of one FP32 model.

    The ranges that guard against FP16 overflow are found once (`high_precision`); `apply` then
    converts any quantized variant, so the mixed-precision search can measure each candidate as
    it would be written, and the written model is the one it measured.
    """

    mode: str
    ranges: Mapping[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    keep_nodes: tuple[str, ...] = ()
    headroom: float = DEFAULT_HEADROOM

    def apply(self, quantized: onnx.ModelProto) -> PrecisionResult:
        """`quantized` with what is not INT8 in this mode (unchanged for fp32)."""
        if self.mode == "fp32":
            return PrecisionResult(quantized, self.mode)
        result = convert_to_fp16(quantized, self.ranges, keep_nodes=self.keep_nodes, headroom=self.headroom)
        return replace(result, notes=(*result.notes, *self.notes))

    def finish(self, quantized: onnx.ModelProto) -> onnx.ModelProto:
        """Just the converted model (what the mixed-precision search measures)."""
        return self.apply(quantized).model


def high_precision(
    mode: str,
    *,
    amax: Mapping[str, float] | None = None,
    fp32_model: onnx.ModelProto | None = None,
    dataset: Dataset | None = None,
    batch_size: int = 1,
    keep_nodes: Iterable[str] = (),
    headroom: float = DEFAULT_HEADROOM,
) -> HighPrecision:
    """The conversion for `--high-precision MODE`, with its ranges.

    Ranges come from `amax` (e.g. the calibration table); tensors it lacks are observed by
    running `fp32_model` over `dataset` when both are given (one pass, max only).
    """
    if mode not in MODES:
        raise TrtqError(f"--high-precision {mode!r} is not one of {', '.join(MODES)}.", "use fp16 or fp32.")
    if mode == "fp32":
        return HighPrecision(mode)
    ranges = dict(amax or {})
    notes: list[str] = []
    if fp32_model is not None and dataset is not None:
        types = tensor_types(fp32_model)
        produced = {o for node in fp32_model.graph.node for o in node.output if o}
        missing = [t for t in produced if types.get(t) == TensorProto.FLOAT and t not in ranges]
        ranges.update(observe_amax(fp32_model, dataset, missing, batch_size))
    else:
        notes.append("ranges only from the calibration table; tensors it lacks were not checked for FP16 overflow")
    return HighPrecision(mode, ranges, tuple(notes), tuple(keep_nodes), headroom)


def apply_high_precision(
    quantized: onnx.ModelProto,
    mode: str,
    *,
    amax: Mapping[str, float] | None = None,
    fp32_model: onnx.ModelProto | None = None,
    dataset: Dataset | None = None,
    batch_size: int = 1,
    keep_nodes: Iterable[str] = (),
    headroom: float = DEFAULT_HEADROOM,
) -> PrecisionResult:
    """`--high-precision MODE` on one quantized model: "fp32" leaves it as it is, "fp16" converts
    (see `high_precision` for where the ranges come from)."""
    return high_precision(mode, amax=amax, fp32_model=fp32_model, dataset=dataset, batch_size=batch_size,
                          keep_nodes=keep_nodes, headroom=headroom).apply(quantized)


def final_score_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Sigmoid/Softmax/LogSoftmax nodes with no Conv/ConvTranspose/Gemm/MatMul downstream (output heads)."""
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    heads = []
    for node in model.graph.node:
        if node.op_type not in SCORE_OPS:
            continue
        seen: set[str] = set()
        frontier = list(node.output)
        reaches_compute = False
        while frontier and not reaches_compute:
            name = frontier.pop()
            for reader in consumers.get(name, []):
                if reader.name in seen:
                    continue
                seen.add(reader.name)
                if reader.op_type in QUANTIZABLE_OPS:
                    reaches_compute = True
                    break
                frontier.extend(reader.output)
        if not reaches_compute:
            heads.append(node)
    return heads


def _formal_types(node: onnx.NodeProto, opset: int) -> tuple[list[str], list[str], dict[str, list[str]]] | None:
    """Type strings of each input/output slot and the allowed types of each type variable (None: no schema)."""
    if node.domain not in ("", "ai.onnx"):
        return None
    try:
        schema = defs.get_schema(node.op_type, opset, "")
    except defs.SchemaError:
        return None
    allowed = {c.type_param_str: list(c.allowed_type_strs) for c in schema.type_constraints}

    def slots(formal: Sequence, count: int) -> list[str]:
        if not formal:
            return []
        return [formal[min(i, len(formal) - 1)].type_str for i in range(count)]

    return slots(schema.inputs, len(node.input)), slots(schema.outputs, len(node.output)), allowed


def _fp16_ok(type_str: str, allowed: Mapping[str, list[str]]) -> bool:
    return _FLOAT16_TYPE in allowed.get(type_str, [type_str])


_FLOAT8_ONLY_CHANGES = frozenset({"QuantizeLinear", "DequantizeLinear", "Cast", "CastLike"})
"""Ops whose schemas changed by opset 19 only for float8 types (a `saturate` attribute that applies to
them alone) and, for Q/DQ, to allow float16 scales: for what trtq writes, opset 19 means the same."""


def _same_up_to(model: onnx.ModelProto, opset: int) -> bool:
    """Whether declaring `opset` changes no node of `model` (no schema changed between its opset and
    that one, subgraphs and other domains aside): then raising the opset needs no conversion."""
    current = default_opset(model)
    for node in model.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return False
        if node.domain not in ("", "ai.onnx") or node.op_type in _FLOAT8_ONLY_CHANGES:
            continue
        try:
            if defs.get_schema(node.op_type, current).since_version != defs.get_schema(node.op_type, opset).since_version:
                return False
        except defs.SchemaError:
            return False
    return True


def _raise_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    if default_opset(model) >= FP16_QDQ_OPSET:
        return model, None
    note = f"opset raised from {default_opset(model)} to {FP16_QDQ_OPSET} for FP16 Q/DQ scales"
    if _same_up_to(model, FP16_QDQ_OPSET):  # what the version converter would do, without its cost (1.4 s on ResNet-50)
        raised = onnx.ModelProto()
        raised.CopyFrom(model)
        for entry in raised.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = FP16_QDQ_OPSET
        infer_types_in_place(raised)  # the converter leaves the types inferred, and the conversion reads them
        return raised, note
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, FP16_QDQ_OPSET)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises bare RuntimeError/ValueError subtypes per op
        return model, f"Q/DQ pairs kept in FP32: raising opset {default_opset(model)} to 19 failed ({exc})"
    return converted, note


@dataclass
class _Plan:
    fp16: set[str]
    kept: dict[str, str]
    qdq_fp16: set[str]  # names of DequantizeLinear/QuantizeLinear nodes whose pair runs FP16


def convert_to_fp16(
    model: onnx.ModelProto,
    amax: Mapping[str, float],
    *,
    keep_nodes: Iterable[str] = (),
    headroom: float = DEFAULT_HEADROOM,
) -> PrecisionResult:
    """Convert every node that can run in FP16 (see the module doc); `amax` are observed ranges by tensor."""
    model, opset_note = _raise_opset(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    name_unnamed_nodes(graph)  # nodes are planned by name; the version converter adds unnamed ones
    nodes = {node.name: node.op_type for node in graph.node}
    if any(init.data_location == TensorProto.EXTERNAL for init in graph.initializer):
        raise TrtqError(
            "FP16 conversion needs the model's weights loaded, not external data references.",
            "load the model with its external data first.",
        )
    types = tensor_types(out)
    initializers = {init.name: init for init in graph.initializer}
    for node in graph.node:  # inserted DQs carry no value_info: a DQ writes its scale's type
        if node.op_type == "DequantizeLinear" and node.output[0] not in types and node.input[1] in initializers:
            types[node.output[0]] = initializers[node.input[1]].data_type
    ranges = _ranges(out, amax, initializers)
    plan = _plan(out, types, ranges, set(keep_nodes), FP16_MAX / max(headroom, 1.0))
    casts = _rewrite(out, types, initializers, plan)
    del graph.value_info[:]
    try:
        infer_types_checked(out)
        check_structure(out)
    except Exception as exc:  # InferenceError / ValidationError: a bug in this pass, with the node named
        raise AssertionError(f"FP16 conversion produced an invalid model: {exc}") from exc
    kept = tuple(KeptNode(name, nodes[name], reason) for name, reason in plan.kept.items())
    notes = (opset_note,) if opset_note else ()
    return PrecisionResult(
        out,
        "fp16",
        tuple(n for n in nodes if n in plan.fp16),
        kept,
        casts,
        len([n for n in plan.qdq_fp16 if nodes.get(n) == "DequantizeLinear"]),
        notes,
    )


def _ranges(
    model: onnx.ModelProto, amax: Mapping[str, float], initializers: Mapping[str, TensorProto]
) -> dict[str, float]:
    """amax per tensor: given ranges, initializer values, and Q/DQ outputs (the range of what was quantized)."""
    ranges = dict(amax)
    for name, init in initializers.items():
        if init.data_type == TensorProto.FLOAT:
            values = numpy_helper.to_array(init)
            ranges[name] = float(np.abs(values).max()) if values.size else 0.0
    quantizer = {node.output[0]: node for node in model.graph.node if node.op_type == "QuantizeLinear"}
    for node in model.graph.node:
        q = quantizer.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if q is not None and q.input[0] in ranges:
            ranges[node.output[0]] = ranges[q.input[0]]
    return ranges


def _plan(
    model: onnx.ModelProto, types: Mapping[str, int], ranges: Mapping[str, float], keep: set[str], limit: float
) -> _Plan:
    opset = default_opset(model)
    kept: dict[str, str] = {}
    fp16: set[str] = set()
    producer = {o: node for node in model.graph.node for o in node.output if o}
    for head in final_score_nodes(model):
        kept[head.name] = f"final {head.op_type} (score head)"
        source = producer.get(head.input[0]) if head.input else None
        if source is not None and source.op_type not in _QDQ:
            kept.setdefault(source.name, f"computes the input of final {head.op_type} {head.name!r}")
    for node in model.graph.node:
        if node.op_type in _QDQ or node.name in kept:
            continue
        floats = [t for t in (*node.input, *node.output) if t and types.get(t) == TensorProto.FLOAT]
        if not floats and not _creates_float(node):
            continue
        reason = _keep_reason(node, opset, floats, ranges, keep, limit)
        if reason:
            kept[node.name] = reason
        else:
            fp16.add(node.name)
    return _Plan(fp16, kept, _plan_qdq(model, fp16, opset))


def _creates_float(node: onnx.NodeProto) -> bool:
    return node.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT for a in node.attribute)


def _keep_reason(
    node: onnx.NodeProto, opset: int, floats: Sequence[str], ranges: Mapping[str, float], keep: set[str], limit: float
) -> str | None:
    if node.name in keep:
        return "kept by the caller"
    if node.op_type in KEEP_OPS:
        return f"{node.op_type} stays FP32"
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return "has a subgraph"
    if any(a.name == "dtype" for a in node.attribute):
        return "creates a tensor of a fixed dtype"
    formal = _formal_types(node, opset)
    if formal is None:
        return f"no ONNX schema for {node.domain or 'ai.onnx'}::{node.op_type}"
    in_types, out_types, allowed = formal
    if not any(_fp16_ok(t, allowed) for t in (*in_types, *out_types)):
        return f"{node.op_type} has no float16 variant"
    over = [(t, ranges[t]) for t in floats if ranges.get(t, 0.0) > limit]
    if over:
        name, value = max(over, key=lambda item: item[1])
        return f"tensor {name!r} reaches {value:.6g}, beyond FP16's safe range ({limit:.6g})"
    return None


def _plan_qdq(model: onnx.ModelProto, fp16: set[str], opset: int) -> set[str]:
    """Q/DQ pairs that take FP16 scales: opset >= 19, every DQ reader runs FP16, scale representable."""
    if opset < FP16_QDQ_OPSET:
        return set()
    initializers = {init.name: init for init in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            readers[name].append(node)
    quantizer = {node.output[0]: node for node in model.graph.node if node.op_type == "QuantizeLinear"}
    chosen: set[str] = set()
    for dq in model.graph.node:
        if dq.op_type != "DequantizeLinear":
            continue
        q = quantizer.get(dq.input[0])
        users = readers.get(dq.output[0], [])
        scale = initializers.get(dq.input[1])
        if q is None or scale is None or not users or any(u.name not in fp16 for u in users):
            continue
        if q.input[1] != dq.input[1] or len(readers[dq.input[1]]) != 2:
            continue  # the scale must belong to this pair alone
        values = numpy_helper.to_array(scale).astype(np.float64)
        if values.min() < MIN_FP16_SCALE or values.max() > FP16_MAX:
            continue
        chosen.update((q.name, dq.name))
    return _same_scale_type(model, chosen, quantizer)


def _same_scale_type(model: onnx.ModelProto, chosen: set[str], quantizer: Mapping[str, onnx.NodeProto]) -> set[str]:
    """`chosen` less the pairs of every node that reads one chosen and one unchosen pair: TensorRT wants one
    scale type for all the quantized inputs of a layer (a MatMul with an FP16 and an FP32 scale fails to
    build: "type mismatch between matmul operand scales"). Dropping a pair can split another node, so repeat."""
    pairs = {dq.output[0]: (quantizer[dq.input[0]].name, dq.name) for dq in model.graph.node
             if dq.op_type == "DequantizeLinear" and dq.input[0] in quantizer}
    chosen = set(chosen)
    changed = True
    while changed:
        changed = False
        for node in model.graph.node:
            read = [pairs[name] for name in node.input if name in pairs]
            if len(read) > 1 and 0 < sum(pair[1] in chosen for pair in read) < len(read):
                for pair in read:
                    chosen.difference_update(pair)
                changed = True
    return chosen


def _rewrite(
    model: onnx.ModelProto, types: Mapping[str, int], initializers: Mapping[str, TensorProto], plan: _Plan
) -> int:
    """Apply the plan: FP16 initializers and attributes, Casts on every edge whose precision changes."""
    graph = model.graph
    opset = default_opset(model)
    runs_fp16 = plan.fp16 | plan.qdq_fp16
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name:
                readers[name].append((node, i))
    # 1. which inputs each FP16 node wants in FP16 (schema type variables that allow it)
    wants: dict[tuple[str, int], bool] = {}
    for node in graph.node:
        if node.name not in runs_fp16:
            continue
        if node.op_type in _QDQ:
            float_slots = [0] if node.op_type == "QuantizeLinear" else []
            for i in float_slots:
                wants[(node.name, i)] = True
            continue
        in_types, _, allowed = _formal_types(node, opset)  # type: ignore[misc]
        for i, name in enumerate(node.input):
            if name and types.get(name) == TensorProto.FLOAT:
                wants[(node.name, i)] = _fp16_ok(in_types[i], allowed)
    # 2. what each tensor is stored as after conversion
    stored: dict[str, int] = {}
    for node in graph.node:
        for slot, name in enumerate(node.output):
            if not name or (types.get(name) != TensorProto.FLOAT and not _creates_float(node)):
                continue
            if node.op_type == "DequantizeLinear":
                stored[name] = TensorProto.FLOAT16 if node.name in plan.qdq_fp16 else TensorProto.FLOAT
            elif node.name in plan.fp16:
                _, out_types, allowed = _formal_types(node, opset)  # type: ignore[misc]
                fp16_out = _fp16_ok(out_types[slot], allowed) if out_types else False
                stored[name] = TensorProto.FLOAT16 if fp16_out or _creates_float(node) else TensorProto.FLOAT
            else:
                stored[name] = TensorProto.FLOAT
    # 3. initializers read only as FP16 become FP16; shared ones get an FP16 copy
    used = {v for node in graph.node for v in (*node.input, *node.output, node.name)} | set(initializers)
    used |= {vi.name for vi in (*graph.input, *graph.output)}
    new_inits: list[TensorProto] = []
    for name, init in initializers.items():
        if init.data_type != TensorProto.FLOAT:
            continue
        uses = readers.get(name, [])
        as_fp16 = [wants.get((n.name, i), False) or _is_fp16_scale(n, i, plan) for n, i in uses]
        if uses and all(as_fp16):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), name))
            stored[name] = TensorProto.FLOAT16
        elif any(as_fp16):
            copy = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16),
                                           unique_name(f"{name}_fp16", used))
            new_inits.append(copy)
            for (n, i), fp16_use in zip(uses, as_fp16):
                if fp16_use:
                    n.input[i] = copy.name
            stored[name] = TensorProto.FLOAT
        else:
            stored[name] = TensorProto.FLOAT
    graph.initializer.extend(new_inits)
    for node in graph.node:
        if node.name in plan.fp16 and _creates_float(node):
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = TensorProto.FLOAT16
        if node.name in plan.fp16 and stored.get(node.output[0] if node.output else "") == TensorProto.FLOAT16:
            for attr in node.attribute:  # ConstantOfShape/Constant: the value attribute sets the output's dtype
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16),
                                                            attr.t.name))
    for vi in graph.input:
        if vi.name in types and types[vi.name] == TensorProto.FLOAT:
            stored.setdefault(vi.name, TensorProto.FLOAT)
    # 4. graph outputs stay FP32: an FP16 producer writes `<name>_fp16`, a Cast writes the output
    producer = {o: node.name for node in graph.node for o in node.output if o}
    new_nodes: dict[str | None, list[onnx.NodeProto]] = defaultdict(list)  # inserted after a producer (None: first)
    casts = 0
    for vi in graph.output:
        name = vi.name
        if stored.get(name) != TensorProto.FLOAT16:
            continue
        inner = unique_name(f"{name}_fp16", used)
        for node in graph.node:
            node.output[:] = [inner if v == name else v for v in node.output]
            node.input[:] = [inner if v == name else v for v in node.input]
        new_nodes[producer[name]].append(
            helper.make_node("Cast", [inner], [name], name=unique_name(f"{name}_Cast_fp32", used), to=TensorProto.FLOAT)
        )
        producer[inner] = producer[name]
        stored[inner], stored[name] = TensorProto.FLOAT16, TensorProto.FLOAT
        casts += 1
    # 5. Casts where a reader wants another precision than the stored one (one per tensor and type)
    cast_names: dict[tuple[str, int], str] = {}

    def cast_of(name: str, to: int) -> str:
        key = (name, to)
        if key not in cast_names:
            suffix = "fp16" if to == TensorProto.FLOAT16 else "fp32"
            out_name = unique_name(f"{name}_{suffix}", used)
            cast_names[key] = out_name
            new_nodes[producer.get(name)].append(
                helper.make_node("Cast", [name], [out_name], name=unique_name(f"{name}_Cast_{suffix}", used), to=to)
            )
        return cast_names[key]

    for node in list(graph.node):
        if node.op_type == "DequantizeLinear":
            continue  # int8 data; its scale is converted with its pair
        for i, name in enumerate(node.input):
            if not name or name not in stored or (node.op_type == "QuantizeLinear" and i > 0):
                continue
            want = TensorProto.FLOAT16 if wants.get((node.name, i), False) else TensorProto.FLOAT
            if stored[name] != want:
                node.input[i] = cast_of(name, want)
    ordered = list(new_nodes.get(None, []))
    for node in graph.node:
        ordered.append(node)
        ordered.extend(new_nodes.get(node.name, []))
    del graph.node[:]
    graph.node.extend(ordered)
    return casts + len(cast_names)


def _is_fp16_scale(node: onnx.NodeProto, index: int, plan: _Plan) -> bool:
    return node.op_type in _QDQ and node.name in plan.qdq_fp16 and index == 1

