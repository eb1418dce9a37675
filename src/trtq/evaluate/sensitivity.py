"""Per-layer quantization sensitivity: which layers lose accuracy when they run in INT8.

A *layer* is a node that reads at least one Q/DQ-quantized tensor in the placement (Conv, Gemm,
MatMul, pooling, residual Add). Two methods:

- `exact`: one evaluation per layer, with only that layer's Q/DQ pairs inserted; its score is
  the worst model output's aggregate SNR vs FP32 (and the task metric drop when a task is set).
  Cost: one pass over the data per layer.
- `local`: one pass over the data in total. The FP32 model runs once per batch with every
  layer's inputs and outputs exposed; each layer then runs alone (a one-node model with its own
  Q/DQ pairs) on its cached FP32 inputs, and its score is the SNR of its own output. It ignores
  how noise grows or shrinks downstream, so it ranks well but not perfectly; docs/accuracy.md
  states its measured rank agreement with `exact`.

Both score over real tokens where the data has an attention mask (`trtq.evaluate.scoring`):
`exact` the masked model outputs, `local` each layer's output at the marked positions
([B, S, ...] tensors, attention scores over real query and key positions, heads-first
[B, h, S, d] over real query positions; other layouts over every position).

Results name ONNX nodes, so they map straight back to the model and to `--exclude-nodes`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import helper, shape_inference
from tqdm import tqdm

from trtq.calibrate.ort_failures import ORT_ERRORS, BatchSizeError, explain_run_failure
from trtq.data import Dataset
from trtq.errors import TrtqError
from trtq.evaluate.evaluator import Evaluation, Evaluator
from trtq.evaluate.metrics import snr_db
from trtq.evaluate.scoring import (
    MaskDetector,
    MaskRequest,
    TokenMask,
    attention_score_tensors,
    layer_positions,
)
from trtq.evaluate.tasks import ScoredAgainst, Task
from trtq.model import tensor_types
from trtq.quantize import Placement, QuantTarget, insert_qdq
from trtq.runtime import Runner, RunnerFactory, runner_factory
from trtq.runtime.ort_session import expose_tensors

METHODS = ("local", "exact")
MAIN_TASK_METRIC = {"classify": "top1", "detect": "map"}


@dataclass(frozen=True)
class LayerSensitivity:
    """How much one layer, alone in INT8, degrades the result (lower SNR = more sensitive)."""

    node: str
    op_type: str
    tensors: tuple[str, ...]
    snr_db: float
    task_drop: float | None = None
    macs: int = 0

    def to_dict(self) -> dict:
        """JSON-friendly view (infinities as strings)."""
        out = asdict(self)
        out["tensors"] = list(self.tensors)
        out["snr_db"] = _jsonable(self.snr_db)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> LayerSensitivity:
        """Inverse of `to_dict`."""
        drop = data.get("task_drop")
        return cls(
            str(data["node"]),
            str(data["op_type"]),
            tuple(data["tensors"]),
            float(data["snr_db"]),
            None if drop is None else float(drop),
            int(data.get("macs", 0)),
        )


@dataclass(frozen=True)
class SensitivityResult:
    """Layers ranked most sensitive first, with how the scores were measured."""

    method: str
    layers: tuple[LayerSensitivity, ...]
    samples: int
    seconds: float
    task_metric: str | None = None
    """Name of the task metric behind `task_drop` (e.g. "top1"), when a task was set."""
    scored_against: ScoredAgainst | None = None
    """What the task metric was scored against (detection: reference boxes, and a warning when too few)."""
    mask: TokenMask | None = None
    """The attention mask whose marked positions were scored."""
    mask_notes: tuple[str, ...] = ()

    @property
    def ranking(self) -> tuple[str, ...]:
        """Node names, most sensitive first."""
        return tuple(layer.node for layer in self.layers)

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return {
            "method": self.method,
            "samples": self.samples,
            "seconds": round(self.seconds, 3),
            "task_metric": self.task_metric,
            "layers": [layer.to_dict() for layer in self.layers],
            "scored_against": self.scored_against.to_dict() if self.scored_against else None,
            "mask": self.mask.to_dict() if self.mask else None,
            "mask_notes": list(self.mask_notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> SensitivityResult:
        """Inverse of `to_dict`."""
        return cls(
            str(data["method"]),
            tuple(LayerSensitivity.from_dict(d) for d in data["layers"]),
            int(data["samples"]),
            float(data["seconds"]),
            data.get("task_metric"),
            ScoredAgainst.from_dict(data["scored_against"]) if data.get("scored_against") else None,
            TokenMask.from_dict(data["mask"]) if data.get("mask") else None,
            tuple(data.get("mask_notes", ())),
        )


def _jsonable(value: float) -> float | str:
    return str(value) if math.isinf(value) or math.isnan(value) else value


def quantized_layers(placement: Placement) -> dict[str, tuple[QuantTarget, ...]]:
    """Node name -> the Q/DQ targets it reads, in graph order of first appearance."""
    layers: dict[str, list[QuantTarget]] = defaultdict(list)
    for target in placement.targets:
        for node, _ in target.consumers:
            if target not in layers[node]:
                layers[node].append(target)
    return {node: tuple(targets) for node, targets in layers.items()}


def layer_placement(placement: Placement, nodes: Sequence[str] | set[str]) -> Placement:
    """The part of `placement` that only `nodes` read: their inputs' Q/DQ pairs, nothing else."""
    keep = set(nodes)
    targets = []
    for target in placement.targets:
        consumers = tuple(c for c in target.consumers if c[0] in keep)
        if consumers:
            targets.append(QuantTarget(target.tensor, target.kind, consumers, target.axis))
    return Placement(targets=tuple(targets), excluded_nodes=placement.excluded_nodes, grid=placement.grid)


def _with_input_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """A copy with fixed input dims and freshly inferred shapes (dynamic H/W leave conv outputs unsized)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for vi in fixed.graph.input:
        if vi.name in input_shapes:
            dims = vi.type.tensor_type.shape.dim
            for dim, size in zip(dims, input_shapes[vi.name], strict=False):
                dim.Clear()
                dim.dim_value = int(size)
    del fixed.graph.value_info[:]
    try:
        return shape_inference.infer_shapes(fixed)
    except shape_inference.InferenceError:  # odd graphs keep the shapes they had (MACs may read 0)
        return model


def layer_macs(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, int]:
    """Multiply-accumulates per sample of Conv/ConvTranspose/Gemm/MatMul nodes (0 where shapes are unknown).

    `input_shapes` (e.g. a data set's resolved shapes) size dynamic dims first.
    """
    if input_shapes:
        model = _with_input_shapes(model, input_shapes)
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    macs: dict[str, int] = {}
    for node in model.graph.node:
        out = shapes.get(node.output[0], ()) if node.output else ()
        per_sample = int(np.prod(out[1:])) if len(out) > 1 and all(out[1:]) else 0
        weight = shapes.get(node.input[1], ()) if len(node.input) > 1 else ()
        if node.op_type == "Conv" and len(weight) > 2:
            macs[node.name] = per_sample * int(np.prod(weight[1:]))
        elif node.op_type == "ConvTranspose" and len(weight) > 2:
            src = shapes.get(node.input[0], ())
            macs[node.name] = (int(np.prod(src[1:])) if len(src) > 1 and all(src[1:]) else 0) * int(np.prod(weight[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes.get(node.input[0], ())
            trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
            k = (a[-2] if trans_a else a[-1]) if len(a) >= 2 else 0
            macs[node.name] = per_sample * int(k)  # the first output dim counts as the batch
    return macs


def analyze_sensitivity(
    model: onnx.ModelProto,
    placement: Placement,
    amax: Mapping[str, float],
    dataset: Dataset,
    *,
    method: str = "local",
    task: Task | None = None,
    batch_size: int = 1,
    evaluator: Evaluator | None = None,
    runner: RunnerFactory | None = None,
    progress: bool = True,
    mask: MaskRequest | TokenMask = True,
) -> SensitivityResult:
    """Rank the layers of `placement` by how much INT8 hurts when only that layer is quantized.

    `model` is the normalised FP32 model (`trtq.api.prepare_model`), `amax` the calibrated
    ranges. `exact` may reuse an `evaluator` (and its cached data and mask) across calls. `mask`:
    True detects the attention mask, False scores every position, a name or TokenMask picks it.
    `runner` runs the models (default: onnxruntime on the CPU; `trtq.runtime.runner_factory("cuda")`
    for a GPU).
    """
    if method not in METHODS:
        raise TrtqError(f"Sensitivity method {method!r} is not one of {', '.join(METHODS)}.", "use local or exact.")
    layers = quantized_layers(placement)
    if not layers:
        raise TrtqError(
            "The placement quantizes no layer, so there is nothing to rank.",
            "check --exclude-nodes/--exclude-ops; they may exclude every layer.",
        )
    start = time.perf_counter()
    macs = layer_macs(model, dataset.shapes)
    ops = {node.name: node.op_type for node in model.graph.node}
    if method == "exact":
        if evaluator is None:
            evaluator = Evaluator(model, dataset, batch_size=batch_size, task=task, runner=runner, mask=mask)
        scores, drops, samples, metric, scored_against = _exact(
            model, placement, amax, layers, evaluator, sum(macs.values()) >= SHARED_MIN_MACS, progress
        )
        token_mask, mask_notes = evaluator.mask, evaluator.mask_notes
    else:
        if evaluator is not None:
            mask = evaluator.mask if evaluator.mask is not None else False
        scores, samples, token_mask, mask_notes = _local(model, placement, amax, dataset, layers, batch_size, runner,
                                                         progress, mask)
        drops, metric, scored_against = {}, None, None
    result = [
        LayerSensitivity(
            node, ops[node], tuple(t.tensor for t in targets), scores[node], drops.get(node), macs.get(node, 0)
        )
        for node, targets in layers.items()
    ]
    order = {node: i for i, node in enumerate(layers)}
    # SNR orders (continuous and stable); the task drop, coarse on small data sets, breaks ties
    result.sort(key=lambda s: (s.snr_db, -(s.task_drop or 0.0), order[s.node]))
    return SensitivityResult(method, tuple(result), samples, time.perf_counter() - start, metric, scored_against,
                             token_mask, mask_notes)


def detect_mask(session: Runner, outputs: Sequence[str], dataset: Dataset, batch_size: int,
                request: MaskRequest) -> tuple[TokenMask | None, tuple[str, ...]]:
    """The attention mask of `dataset` (`trtq.evaluate.scoring`), from one pass over the inputs and
    the model `outputs` (which `session` runs) for the first batch; no pass when no input could be one."""
    detector = MaskDetector(dataset.inputs, request, dataset.description)
    if not detector.active:
        return None, ()
    first = True
    for batch in dataset.batches(batch_size):
        detector.update(batch, dict(zip(outputs, session.run(list(outputs), dict(batch)))) if first else None)
        first = False
    return detector.result()


def _exact(
    model: onnx.ModelProto,
    placement: Placement,
    amax: Mapping[str, float],
    layers: Mapping[str, tuple[QuantTarget, ...]],
    evaluator: Evaluator,
    share: bool,
    progress: bool,
) -> tuple[dict[str, float], dict[str, float], int, str | None, ScoredAgainst | None]:
    metric = MAIN_TASK_METRIC.get(evaluator.task.name) if evaluator.task is not None else None
    scores: dict[str, float] = {}
    drops: dict[str, float] = {}

    def record(node: str, evaluation: Evaluation) -> None:
        scores[node] = evaluation.snr_db
        comparison = evaluator.task_comparison(evaluation)
        if comparison is not None and metric is not None:
            drops[node] = comparison.drops.get(metric, 0.0)

    shared = [node for node in layers if downstream_of(model, node) is not None] if share and evaluator.cached else []
    alone = [node for node in layers if node not in set(shared)]
    with tqdm(total=len(layers), desc="sensitivity (exact)", unit="layer", disable=not progress, dynamic_ncols=True,
              leave=False) as bar:
        for group in _groups(model, shared):
            prefix = SharedPrefix(model, placement, amax, group, evaluator.make_runner)
            for node, evaluation in evaluator.evaluate_each(prefix.produce, group, label="sensitivity (exact)").items():
                record(node, evaluation)
            bar.update(len(group))
        for node in alone:  # subgraphs downstream, or data that is not kept: the whole model per layer
            record(node, evaluator.evaluate(insert_qdq(model, layer_placement(placement, {node}), amax), label=node))
            bar.update(1)
    reference = evaluator.reference_scores
    return scores, drops, evaluator.samples, metric, reference.scored_against if reference else None


SHARED_MIN_MACS = 500_000_000
"""Exact sensitivity runs each candidate from its layer on (`SharedPrefix`) for models of at least
this many multiply-accumulates a sample: ResNet-50 (4 G) 1.3x less CPU time, 1.9x less wall time;
on a 30 M MobileNet per-run overheads dominate and running each candidate whole is cheaper."""
GROUP_WEIGHT_BYTES = 1 << 30
"""Exact sensitivity keeps the models of a group of layers open at once, up to this many bytes of
weights in all; each group costs one more FP32 pass."""


def downstream_of(model: onnx.ModelProto, layer: str) -> tuple[list[int], list[str]] | None:
    """Positions of the nodes that `layer`'s output reaches (itself included, graph order) and the
    tensors they read from outside that set (the frontier: FP32 values, the same in the candidate).

    None when one of those nodes holds a subgraph (whose outer-scope reads are not node inputs).
    """
    nodes = model.graph.node
    start = next(i for i, node in enumerate(nodes) if node.name == layer)
    reached, produced = {start}, set(nodes[start].output)
    for index in range(start + 1, len(nodes)):
        if any(name in produced for name in nodes[index].input):
            reached.add(index)
            produced.update(nodes[index].output)
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for index in reached for attr in nodes[index].attribute):
        return None
    initializers = {init.name for init in model.graph.initializer}
    frontier = dict.fromkeys(name for index in sorted(reached) for name in nodes[index].input
                             if name and name not in produced and name not in initializers)
    return sorted(reached), list(frontier)


def _groups(model: onnx.ModelProto, layers: Sequence[str]) -> Iterator[list[str]]:
    """`layers` in groups whose downstream models hold at most GROUP_WEIGHT_BYTES of weights together."""
    sizes = {init.name: len(init.raw_data) or 4 * int(np.prod(init.dims)) for init in model.graph.initializer}
    group: list[str] = []
    total = 0
    for layer in layers:
        found = downstream_of(model, layer)
        assert found is not None
        used = {name for index in found[0] for name in model.graph.node[index].input if name in sizes}
        weight = sum(sizes[name] for name in used)
        if group and total + weight > GROUP_WEIGHT_BYTES:
            yield group
            group, total = [], 0
        group.append(layer)
        total += weight
    if group:
        yield group


class SharedPrefix:
    """Exact sensitivity of several layers from one FP32 pass per batch.

    With only layer L quantized, everything before L computes exactly what FP32 computes. So each
    layer's candidate is cut to the nodes from L on (its Q/DQ pairs included), fed the FP32 values
    of the tensors it reads from before L; outputs L does not reach are FP32's. Per batch, one FP32
    run exposes every such frontier tensor, then each layer's cut model runs: about half the
    compute of running every candidate whole, and models a fraction of the size.
    """

    def __init__(self, model: onnx.ModelProto, placement: Placement, amax: Mapping[str, float],
                 layers: Sequence[str], make_runner: RunnerFactory) -> None:
        self.cuts: dict[str, tuple[Runner, list[str], list[str]]] = {}
        exposed: list[str] = []
        graph_inputs = {vi.name for vi in model.graph.input}
        for layer in layers:
            found = downstream_of(model, layer)
            assert found is not None
            positions, frontier = found
            cut = _cut_model(model, positions, frontier)
            quantized = insert_qdq(cut, layer_placement(placement, {layer}), amax)
            outputs = [vi.name for vi in cut.graph.output]
            self.cuts[layer] = (make_runner(quantized), frontier, outputs)
            exposed.extend(name for name in frontier if name not in graph_inputs)
        self._fetch = list(dict.fromkeys(exposed))
        self._fp32 = make_runner(expose_tensors(model, self._fetch)) if self._fetch else None

    def produce(self, feed: dict[str, np.ndarray],
                ref: dict[str, np.ndarray]) -> Iterator[tuple[str, Mapping[str, np.ndarray]]]:
        """Each layer's candidate outputs for one batch."""
        values = dict(feed)
        if self._fp32 is not None:
            values.update(zip(self._fetch, self._fp32.run(self._fetch, feed)))
        for layer, (runner, frontier, outputs) in self.cuts.items():
            produced = dict(zip(outputs, runner.run(outputs, {name: values[name] for name in frontier})))
            yield layer, {**ref, **produced}


def _cut_model(model: onnx.ModelProto, positions: Sequence[int], frontier: Sequence[str]) -> onnx.ModelProto:
    """The nodes at `positions`, reading `frontier` as graph inputs, producing the graph outputs they make."""
    types = tensor_types(model)
    nodes = [model.graph.node[index] for index in positions]
    used = {name for node in nodes for name in node.input}
    produced = {name for node in nodes for name in node.output}
    inputs = [helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None) for name in frontier]
    outputs = [vi for vi in model.graph.output if vi.name in produced]
    inits = [init for init in model.graph.initializer if init.name in used]
    graph = helper.make_graph(nodes, f"{model.graph.name}_cut", inputs, outputs, initializer=inits,
                              value_info=[vi for vi in model.graph.value_info if vi.name in used | produced])
    cut = helper.make_model(graph, opset_imports=list(model.opset_import))
    cut.ir_version = model.ir_version
    return cut


def single_node_model(model: onnx.ModelProto, node: onnx.NodeProto) -> onnx.ModelProto:
    """A model of `node` alone: its activation inputs become graph inputs, its initializers stay."""
    types = tensor_types(model)
    initializers = {init.name: init for init in model.graph.initializer}
    inputs, inits, seen = [], [], set()
    for name in node.input:
        if not name or name in seen:
            continue
        seen.add(name)
        if name in initializers:
            inits.append(initializers[name])
        else:
            inputs.append(helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None))
    outputs = [helper.make_tensor_value_info(o, types.get(o, onnx.TensorProto.FLOAT), None) for o in node.output if o]
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    graph = helper.make_graph([copy], f"layer_{node.name}", inputs, outputs, initializer=inits)
    out = helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    return out


def _local(
    model: onnx.ModelProto,
    placement: Placement,
    amax: Mapping[str, float],
    dataset: Dataset,
    layers: Mapping[str, tuple[QuantTarget, ...]],
    batch_size: int,
    runner: RunnerFactory | None,
    progress: bool,
    request: MaskRequest | TokenMask = True,
) -> tuple[dict[str, float], int, TokenMask | None, tuple[str, ...]]:
    make = runner or runner_factory("cpu")
    nodes = {node.name: node for node in model.graph.node}
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = {vi.name for vi in model.graph.input}
    sessions, feeds_of, outs_of = {}, {}, {}
    exposed: list[str] = []
    for name in layers:
        node = nodes[name]
        single = single_node_model(model, node)
        sessions[name] = make(insert_qdq(single, layer_placement(placement, {name}), amax))
        feeds_of[name] = [vi.name for vi in single.graph.input]
        outs_of[name] = [o for o in node.output if o]
        exposed.extend(t for t in (*feeds_of[name], *outs_of[name]) if t not in initializers)
    exposed = list(dict.fromkeys(exposed))
    fetch = [t for t in exposed if t not in graph_inputs]
    session = _UserModelRuns(make(expose_tensors(model, fetch)), model, dataset)

    def one_pass(batch_size: int) -> tuple[dict[str, list[_SnrSums]], int, TokenMask | None, tuple[str, ...]]:
        session.batch_size, session.first = batch_size, 0
        mask: TokenMask | None
        mask_notes: tuple[str, ...]
        if isinstance(request, TokenMask):
            mask, mask_notes = request, ()
        else:
            mask, mask_notes = detect_mask(session, [o.name for o in model.graph.output], dataset, batch_size, request)
        attention = attention_score_tensors(model) if mask is not None else set()
        accumulators = {name: [_SnrSums() for _ in outs_of[name]] for name in layers}
        samples = 0
        with tqdm(total=dataset.num_samples, desc="sensitivity (local)", unit="sample", disable=not progress,
                  dynamic_ncols=True, leave=False) as bar:
            for batch in dataset.batches(batch_size):
                values = dict(batch)
                session.first = samples
                values.update(zip(fetch, session.run(fetch, dict(batch))))
                marks = mask.positions(np.asarray(batch[mask.input])) if mask is not None else None
                for name in layers:
                    quantized = sessions[name].run(outs_of[name], {t: values[t] for t in feeds_of[name]})
                    for acc, out_name, q in zip(accumulators[name], outs_of[name], quantized):
                        ref = values[out_name]
                        where = None if marks is None else layer_positions(ref.shape, marks, out_name in attention)
                        acc.update(ref, q, where)
                n = len(next(iter(batch.values())))
                samples += n
                bar.update(n)
        return accumulators, samples, mask, mask_notes

    try:
        accumulators, samples, mask, mask_notes = one_pass(batch_size)
    except BatchSizeError as exc:  # the model runs one sample at a time only: rank the layers so
        if batch_size == 1:
            raise
        warnings.warn(f"{exc.message} Evaluating one sample at a time instead.", stacklevel=2)
        accumulators, samples, mask, mask_notes = one_pass(1)
    scores = {name: min(acc.snr_db() for acc in accs) for name, accs in accumulators.items()}
    return scores, samples, mask, mask_notes


class _UserModelRuns:
    """The user's FP32 model (exposing inner tensors) as a Runner whose onnxruntime failures on the data
    are the user's to fix: one sentence naming the sample (`first` is the batch's first index), or the
    batch size the model cannot take (`batch_size`)."""

    def __init__(self, runner: Runner, model: onnx.ModelProto, dataset: Dataset) -> None:
        self.runner, self.model, self.dataset = runner, model, dataset
        self.first, self.batch_size = 0, 1

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.runner.output_names

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.runner.run(output_names, feeds)
        except ORT_ERRORS as exc:
            problem = explain_run_failure(self.model, feeds, self.first, "the FP32 model", str(self.dataset.source),
                                          f"pass --batch-size 1 (it is {self.batch_size})")
            if problem is None:
                raise
            raise problem from exc


class _SnrSums:
    """Signal and noise power of one tensor over the data set (just what local SNR needs, in few passes)."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0

    def update(self, ref: np.ndarray, quant: np.ndarray, where: np.ndarray | None = None) -> None:
        """Fold one batch; `where` (bool, broadcastable to the tensor) keeps only those elements."""
        r = np.asarray(ref, dtype=np.float32)
        q = np.asarray(quant, dtype=np.float32)
        if where is not None:
            keep = np.broadcast_to(where, r.shape)
            r, q = r[keep], q[keep]
        r = r.reshape(-1)
        e = q.reshape(-1) - r
        self.signal += float(np.dot(r, r))
        self.noise += float(np.dot(e, e))

    def snr_db(self) -> float:
        return snr_db(self.signal, self.noise)


def rank_agreement(a: Sequence[str], b: Sequence[str], top: int = 3) -> dict[str, float]:
    """How well two rankings of the same layers agree: Spearman's rho, Kendall's tau, top-k overlap."""
    common = [x for x in a if x in set(b)]
    n = len(common)
    if n < 2:
        return {"spearman": math.nan, "kendall": math.nan, f"top{top}_overlap": math.nan, "layers": float(n)}
    pos_b = {x: i for i, x in enumerate(x for x in b if x in set(common))}
    ra = np.arange(n, dtype=np.float64)
    rb = np.array([pos_b[x] for x in common], dtype=np.float64)
    spearman = 1.0 - 6.0 * float(((ra - rb) ** 2).sum()) / (n * (n * n - 1))
    concordant = discordant = 0
    for i in range(n):
        for j in range(i + 1, n):
            s = np.sign(rb[j] - rb[i])
            concordant += s > 0
            discordant += s < 0
    kendall = (concordant - discordant) / (n * (n - 1) / 2)
    k = min(top, n)
    overlap = len(set(common[:k]) & set(sorted(pos_b, key=pos_b.__getitem__)[:k])) / k
    return {"spearman": spearman, "kendall": float(kendall), f"top{top}_overlap": overlap, "layers": float(n)}
