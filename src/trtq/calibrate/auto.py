"""`--method auto`: per quantized tensor, the candidate range that harms its consuming layers least.

Candidates come from the streamed histogram (max, entropy, mse and a few percentiles). Each is
judged, as in EasyQuant and AIMET's range search, by the error it causes in the outputs of the
layers that read the tensor: every such layer runs with its weights on the target grid (per
channel) and its quantized inputs fake-quantized, on the activations of the first few calibration
samples, against the same layer in FP32. The winner has the smallest error, summed over its
consumers relative to each consumer's output power; near-ties go to the larger range, which is
safer on data the judge did not see.

The work is a few onnxruntime runs, whatever the backend that gathered the statistics:
1. one FP32 pass over the judging samples with the layers' inputs exposed;
2. one "bag" model holding a copy of every consuming node per judged input (weights already
   fake-quantized, the judged input as a graph input) and one holding the nodes as they are
   (the FP32 reference); the bag runs once per candidate slot, all layers at once.
A layer reading two quantized activations (attention's Q.K^T and P.V) judges each with the
other at its current choice; a second round settles them after the first choices are made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper
from tqdm import tqdm

from trtq.calibrate.algorithms import (
    INT8_LEVELS,
    amax_entropy,
    amax_max,
    amax_mse,
    amax_percentile,
    compute_amax,
)
from trtq.calibrate.collector import TensorStats
from trtq.calibrate.grids import INT8, Grid
from trtq.formats.ranges import RangeChoice
from trtq.model import tensor_types

DEFAULT_PERCENTILE = 99.99
CANDIDATE_PERCENTILES = (99.9, DEFAULT_PERCENTILE, 99.999)
"""Percentiles offered as candidates besides max, entropy and mse."""

FALLBACK = "mse"
"""The range of tensors the judge cannot score (no quantized consumer, or a failed run); also the
start point for the other inputs of two-activation layers."""

JUDGE_SAMPLES = 4
"""Fewest calibration samples the candidates are judged on (spread evenly over the calibration data)."""

JUDGE_SHARE = 8
"""Beyond JUDGE_SAMPLES, one calibration sample in this many is judged on."""

JUDGE_MAX_SAMPLES = 16
"""Most samples judged on, whatever the calibration set's size."""

LOCAL_BATCHES = 2
"""Judging batches the consuming layers are run on (the end-to-end check uses all of them): the
layer runs cost one forward pass per candidate and batch, the whole-table runs one per table."""

TIE_TOLERANCE = 0.02
"""Candidates whose error is within this share of the best count as tied; the largest amax wins."""


@dataclass(frozen=True)
class JudgedLayer:
    """A node that reads quantized activations, as the range search needs to run it.

    Built from the Q/DQ placement (`trtq.api`), so that calibration need not know placement rules.
    """

    node: str
    activations: tuple[tuple[int, str], ...]
    """(input index, tensor) of each input quantized per tensor."""
    weights: tuple[tuple[int, str, int], ...] = ()
    """(input index, initializer, per-channel axis) of each quantized weight."""


def candidate_ranges(stats: TensorStats, grid: Grid = INT8) -> dict[str, float]:
    """Candidate amax values of one tensor, by name, distinct, largest first.

    On the INT8 grid `mse` is `trtq.calibrate.algorithms.amax_mse`; on another grid the same search
    runs on that grid's levels.
    """
    found = {
        "max": amax_max(stats),
        "entropy": amax_entropy(stats),
        "mse": amax_mse(stats) if grid.top == INT8_LEVELS and grid.name == "int8" else amax_mse_on_grid(stats, grid),
    }
    for p in CANDIDATE_PERCENTILES:
        found[f"percentile {p:g}"] = amax_percentile(stats, p)
    distinct: dict[str, float] = {}
    for name, value in sorted(found.items(), key=lambda item: -item[1]):
        if value > 0 and all(abs(value - v) > 1e-6 * value for v in distinct.values()):
            distinct[name] = value
    return distinct or {"max": float(stats.amax)}


def amax_mse_on_grid(stats: TensorStats, grid: Grid) -> float:
    """`amax_mse` on any symmetric grid: each bin's count at its centre, thresholds at bin centres 128.."""
    hist = stats.hist
    if stats.amax == 0.0 or hist.size <= 128 or not hist.any():
        return float(stats.amax)
    occupied = np.flatnonzero(hist)
    counts = hist[occupied].astype(np.float64)
    centres = (occupied.astype(np.float32) + 0.5)
    thresholds = np.arange(128, hist.size, dtype=np.float32) + 0.5
    errors = np.empty(thresholds.size, dtype=np.float64)
    for start in range(0, thresholds.size, 64):
        amax = thresholds[start:start + 64, None]
        diff = grid.fake_quantize(np.broadcast_to(centres, (amax.shape[0], centres.size)), amax, axis=0) - centres
        errors[start:start + 64] = (diff.astype(np.float64) ** 2) @ counts
    best = float(thresholds[int(np.argmin(errors))])
    return float(min(best * stats.hist_max / hist.size, stats.amax))


def clipped_share(stats: TensorStats, amax: float) -> float:
    """Share of the observed values with |x| > amax (from the histogram; a partial bin pro rata)."""
    if stats.count == 0 or amax >= stats.amax or not stats.has_histogram or stats.hist_max <= 0:
        return 0.0
    edge = amax / stats.bin_width
    whole = math.ceil(edge)
    above = float(stats.hist[whole:].sum())
    if whole > 0 and whole - 1 < stats.hist.size:
        above += float(stats.hist[whole - 1]) * (whole - edge)
    return above / stats.count



@dataclass(frozen=True)
class _Copy:
    """One judged input of one layer: a copy of the node in the bag model."""

    node: str
    tensor: str
    feed: str
    """The bag input that receives the judged tensor, fake-quantized at a candidate."""
    outputs: tuple[tuple[str, str], ...]
    """(output in the bag, the original node's output) pairs."""


class _Bags:
    """Two models made of the `layers`' nodes only, fed from cached activations.

    `reference`: the nodes as they are (FP32). `bag`: per judged input of each node, a copy with
    its quantized weights on the grid, the judged input as graph input `judge<i>/x`, and its other
    quantized activations as graph inputs `fixed/<tensor>` (fed at their current choice).
    """

    def __init__(self, model: onnx.ModelProto, layers: Sequence[JudgedLayer], grid: Grid) -> None:
        nodes = {node.name: node for node in model.graph.node}
        initializers = {init.name: init for init in model.graph.initializer}
        types = tensor_types(model)

        def info(name: str, like: str) -> onnx.ValueInfoProto:
            return helper.make_tensor_value_info(name, types.get(like, onnx.TensorProto.FLOAT), None)

        ref_nodes: list[onnx.NodeProto] = []
        ref_inputs: dict[str, onnx.ValueInfoProto] = {}
        ref_inits: dict[str, onnx.TensorProto] = {}
        bag_nodes: list[onnx.NodeProto] = []
        bag_inputs: dict[str, onnx.ValueInfoProto] = {}
        bag_inits: dict[str, onnx.TensorProto] = {}
        bag_outputs: list[onnx.ValueInfoProto] = []
        self.copies: list[_Copy] = []
        self.fixed: dict[str, str] = {}
        for layer in layers:
            node = nodes[layer.node]
            weights = {index: (name, axis) for index, name, axis in layer.weights}
            quantized = dict(layer.activations)
            ref = onnx.NodeProto()
            ref.CopyFrom(node)
            for i, out in enumerate(node.output):
                ref.output[i] = f"reference/{out}" if out else ""
            ref_nodes.append(ref)
            for name in node.input:
                if name in initializers:
                    ref_inits[name] = initializers[name]
                elif name:
                    ref_inputs.setdefault(name, info(name, name))
            for tensor in dict.fromkeys(quantized.values()):
                index_in_bag = len(self.copies)
                copy = onnx.NodeProto()
                copy.CopyFrom(node)
                copy.name = f"judge{index_in_bag}"
                feed = f"judge{index_in_bag}/x"
                bag_inputs[feed] = info(feed, tensor)
                for index, name in enumerate(node.input):
                    if not name:
                        continue
                    if quantized.get(index) == tensor:
                        copy.input[index] = feed
                    elif index in quantized:
                        fixed = f"fixed/{quantized[index]}"
                        self.fixed[fixed] = quantized[index]
                        bag_inputs.setdefault(fixed, info(fixed, quantized[index]))
                        copy.input[index] = fixed
                    elif index in weights:
                        weight, axis = weights[index]
                        qname = f"weight/{axis}/{weight}"
                        if qname not in bag_inits:
                            values = numpy_helper.to_array(initializers[weight])
                            bag_inits[qname] = numpy_helper.from_array(grid.fake_quantize_weight(values, axis), qname)
                        copy.input[index] = qname
                    elif name in initializers:
                        bag_inits[name] = initializers[name]
                    else:
                        bag_inputs.setdefault(name, info(name, name))
                pairs = tuple((f"judge{index_in_bag}/y{i}", out) for i, out in enumerate(node.output) if out)
                for i, out in enumerate(node.output):
                    copy.output[i] = f"judge{index_in_bag}/y{i}" if out else ""
                bag_outputs.extend(info(new, old) for new, old in pairs)
                bag_nodes.append(copy)
                self.copies.append(_Copy(layer.node, tensor, feed, pairs))
        self.ref_inputs = list(ref_inputs)
        self.ref_outputs = list(dict.fromkeys(f"reference/{old}" for c in self.copies for _, old in c.outputs))
        self.bag_inputs = list(bag_inputs)
        self.bag_outputs = [new for c in self.copies for new, _ in c.outputs]
        self.reference = _model(model, "trtq_judge_reference", ref_nodes, list(ref_inputs.values()),
                                [info(o, o.removeprefix("reference/")) for o in self.ref_outputs],
                                list(ref_inits.values()))
        self.bag = _model(model, "trtq_judge_bag", bag_nodes, list(bag_inputs.values()), bag_outputs,
                          list(bag_inits.values()))


def _model(like: onnx.ModelProto, name: str, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
           outputs: list[onnx.ValueInfoProto], initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    out = helper.make_model(graph, opset_imports=list(like.opset_import))
    out.ir_version = like.ir_version
    return out


Key = tuple[str, str]
"""(node, judged tensor): one copy's identity across bags."""


class _Judge:
    """Accumulates, batch by batch, the relative output error of every copy in `bags` per candidate
    (noise power over signal power), so that no batch's activations need to be kept."""

    def __init__(self, bags: _Bags, candidates: Mapping[str, Mapping[str, float]], current: Mapping[str, float],
                 grid: Grid, threads: int | None) -> None:
        from trtq.runtime.ort_session import make_session

        self.bags, self.grid, self.current = bags, grid, current
        self.reference = make_session(bags.reference, threads=threads)
        self.bag = make_session(bags.bag, threads=threads)
        self.ordered = {c.tensor: list(candidates[c.tensor].items()) for c in bags.copies}
        self.slots = _slots(bags, candidates)
        self.noise = {(c.node, c.tensor): np.zeros(self.slots) for c in bags.copies}
        self.signal = {(c.node, c.tensor): 0.0 for c in bags.copies}

    def add(self, values: Mapping[str, np.ndarray], bar: tqdm) -> None:
        """Judge every candidate on one batch's FP32 activations (`values`: every input the bags read)."""
        bags, grid = self.bags, self.grid
        refs = dict(zip(bags.ref_outputs, self.reference.run(bags.ref_outputs, {n: values[n] for n in bags.ref_inputs})))
        for c in bags.copies:
            self.signal[(c.node, c.tensor)] += sum(_power(refs[f"reference/{old}"]) for _, old in c.outputs)
        feeds = {name: values[name] for name in bags.bag_inputs if name in values}
        feeds.update({fixed: grid.fake_quantize(values[t], self.current[t]) for fixed, t in bags.fixed.items()})
        for slot in range(self.slots):
            quantized: dict[str, np.ndarray] = {}
            for c in bags.copies:
                choices = self.ordered[c.tensor]
                if c.tensor not in quantized:
                    quantized[c.tensor] = grid.fake_quantize(values[c.tensor], choices[min(slot, len(choices) - 1)][1])
                feeds[c.feed] = quantized[c.tensor]
            outs = dict(zip(bags.bag_outputs, self.bag.run(bags.bag_outputs, feeds)))
            for c in bags.copies:
                if slot < len(self.ordered[c.tensor]):
                    self.noise[(c.node, c.tensor)][slot] += sum(_power(outs[new] - refs[f"reference/{old}"])
                                                                for new, old in c.outputs)
            bar.update(1)

    def errors(self) -> dict[Key, dict[str, float]]:
        """Relative error of every copy per candidate name."""
        return {key: {name: float(self.noise[key][i]) / (self.signal[key] or 1.0)
                      for i, (name, _) in enumerate(self.ordered[key[1]])} for key in self.noise}


def _slots(bags: _Bags, candidates: Mapping[str, Mapping[str, float]]) -> int:
    """Runs of the bag per sample: the most candidates any of its judged tensors has."""
    return max((len(candidates[c.tensor]) for c in bags.copies), default=0)


def _power(x: np.ndarray) -> float:
    flat = np.asarray(x, dtype=np.float32).reshape(-1)
    return float(np.dot(flat, flat))


def _tensor_errors(copy_errors: Mapping[Key, Mapping[str, float]], tensor: str) -> dict[str, float]:
    """A tensor's error per candidate: its copies' relative errors summed over its consumers."""
    total: dict[str, float] = {}
    for (_, t), errors in copy_errors.items():
        if t == tensor:
            for name, value in errors.items():
                total[name] = total.get(name, 0.0) + value
    return total


def _pick(candidates: Mapping[str, float], errors: Mapping[str, float]) -> str:
    """The candidate with the least error; near-ties (TIE_TOLERANCE) go to the largest amax."""
    if not errors:
        return FALLBACK if FALLBACK in candidates else max(candidates, key=candidates.__getitem__)
    best = min(errors.values())
    tied = [name for name in errors if errors[name] <= best * (1.0 + TIE_TOLERANCE) + 1e-30]
    return max(tied, key=candidates.__getitem__)


def _snr(relative_error: float | None) -> float | None:
    if relative_error is None:
        return None
    return math.inf if relative_error <= 0 else -10.0 * math.log10(relative_error)


def explain(stats: TensorStats, method: str, amax: float, errors: Mapping[str, float] | None = None,
            judged_samples: int = 0) -> RangeChoice:
    """Why a tensor got its range: the winner, its amax against max, what it clips, what it scored."""
    errors = errors or {}
    return RangeChoice(
        method=method,
        amax_over_max=amax / stats.amax if stats.amax > 0 else 1.0,
        clipped=clipped_share(stats, amax),
        snr_db=_snr(errors.get(method)),
        max_snr_db=_snr(errors.get("max")),
        candidates={name: s for name, value in errors.items() if (s := _snr(value)) is not None},
        judged_samples=judged_samples,
    )


TABLE_METHODS = ("mse", "percentile")
"""Whole-model tables the per-tensor choice is checked against end to end (percentile at 99.99): the
two fixed methods that came first or within 0.2 dB of first on the real models measured (README)."""

PER_TENSOR = "per-tensor"
"""Name of the table of per-tensor winners among the candidate tables."""

PREFERRED_TABLE = "mse"
"""The table kept unless another one is clearly better end to end: of the fixed methods, mse was
within 0.2 dB of the best on most real models measured (README), so it is the safe default."""

TABLE_MARGIN_DB = 0.25
"""How much higher another table must score on the judging samples to replace PREFERRED_TABLE; a
few samples rank close tables by chance."""

TableScorer = Callable[[Mapping[str, Mapping[str, float]], Sequence[Mapping[str, np.ndarray]]], dict[str, float]]
"""(tables by name, judging batches) -> each table's end-to-end output SNR (dB) on those batches."""


@dataclass(frozen=True)
class AutoRanges:
    """What `choose_ranges` decided: the ranges, why per tensor, and how each candidate table scored."""

    amax: dict[str, float]
    choices: dict[str, RangeChoice]
    table: str
    """The table the ranges come from: PER_TENSOR or one of TABLE_METHODS."""
    table_scores: dict[str, float]
    """End-to-end output SNR (dB) of each candidate table on the judging samples (empty: not scored)."""
    samples: int
    """Samples the tables were scored on (the per-tensor choice used the first LOCAL_BATCHES batches)."""


def fixed_table(stats: Mapping[str, TensorStats], tensors: Sequence[str], method: str, grid: Grid = INT8
                ) -> dict[str, float]:
    """Every tensor's amax by one fixed method (mse on the grid's own levels)."""
    if method == "mse" and grid != INT8:
        return {t: amax_mse_on_grid(stats[t], grid) for t in tensors}
    return {t: compute_amax(stats[t], method) for t in tensors}


def choose_ranges(
    model: onnx.ModelProto,
    layers: Sequence[JudgedLayer],
    stats: Mapping[str, TensorStats],
    batches: Sequence[Mapping[str, np.ndarray]],
    *,
    grid: Grid = INT8,
    score_tables: TableScorer | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> AutoRanges:
    """The amax of every tensor the `layers` quantize, judged on `batches` (model inputs), and why.

    Per tensor, the candidate that least disturbs its consuming layers on the first LOCAL_BATCHES
    batches wins (`_Judge`). With `score_tables`, that table of per-tensor winners and the
    whole-model tables of TABLE_METHODS are then scored end to end on all `batches`, and
    PREFERRED_TABLE is kept unless another is clearly better: measured on real models, the local
    choice alone did worse end to end than the best fixed method on most of them (it cannot see
    how an error grows downstream), so it has to earn its place.
    `stats` must hold histograms of those tensors. Memory: one batch's activations at a time
    (plus the inputs of two-activation layers of the local batches).
    """
    from trtq.runtime.ort_session import make_session

    layers = [layer for layer in layers if layer.activations]
    tensors = list(dict.fromkeys(t for layer in layers for _, t in layer.activations))
    if not tensors:
        return AutoRanges({}, {}, PER_TENSOR, {}, 0)
    candidates = {t: candidate_ranges(stats[t], grid) for t in tensors}
    bags = _Bags(model, layers, grid)
    paired = [layer for layer in layers if len(dict.fromkeys(t for _, t in layer.activations)) > 1]
    second = _Bags(model, paired, grid) if paired else None
    local = batches[:LOCAL_BATCHES]
    graph_inputs = {vi.name for vi in model.graph.input}
    fetch = [name for name in bags.ref_inputs if name not in graph_inputs]
    steps = len(local) * sum(_slots(b, candidates) for b in (bags, second) if b is not None)
    current = {t: candidates[t].get(FALLBACK, max(candidates[t].values())) for t in tensors}
    kept: list[dict[str, np.ndarray]] = []  # what the second round reads (two-activation layers only)
    with tqdm(total=steps, desc="choosing ranges", unit="run", disable=not progress, dynamic_ncols=True,
              leave=False) as bar:
        exposing = make_session(model, threads=threads, outputs=fetch)
        first = _Judge(bags, candidates, current, grid, threads)
        for batch in local:
            values = {name: np.ascontiguousarray(v) for name, v in batch.items()}
            values.update(zip(fetch, exposing.run(fetch, values)))
            first.add(values, bar)
            if second is not None:
                kept.append({name: values[name] for name in second.ref_inputs})
        del exposing
        copy_errors = first.errors()
        winners = {t: _pick(candidates[t], _tensor_errors(copy_errors, t)) for t in tensors}
        if second is not None:  # settle two-activation layers with the other input at its chosen range
            current = {t: candidates[t][winners[t]] for t in tensors}
            settle = _Judge(second, candidates, current, grid, threads)
            for values in kept:
                settle.add(values, bar)
            copy_errors.update(settle.errors())
            winners = {t: _pick(candidates[t], _tensor_errors(copy_errors, t)) for t in tensors}
    judged = sum(len(next(iter(batch.values()))) for batch in local)
    tables = {PER_TENSOR: {t: candidates[t][winners[t]] for t in tensors}}
    tables.update({method: fixed_table(stats, tensors, method, grid) for method in TABLE_METHODS})
    scores = score_tables(tables, batches) if score_tables is not None else {}
    chosen = _pick_table(scores)
    amax = tables[chosen]
    methods = winners if chosen == PER_TENSOR else {t: _method_name(chosen) for t in tensors}
    return AutoRanges(
        amax=amax,
        choices={t: explain(stats[t], methods[t], amax[t], _tensor_errors(copy_errors, t), judged) for t in tensors},
        table=chosen,
        table_scores=scores,
        samples=sum(len(next(iter(batch.values()))) for batch in batches),
    )


def _pick_table(scores: Mapping[str, float]) -> str:
    """The table to keep: PREFERRED_TABLE unless another scored at least TABLE_MARGIN_DB higher."""
    if not scores:
        return PER_TENSOR
    best = max(scores, key=scores.__getitem__)
    if PREFERRED_TABLE in scores and scores[best] < scores[PREFERRED_TABLE] + TABLE_MARGIN_DB:
        return PREFERRED_TABLE
    return best


def _method_name(method: str) -> str:
    """A fixed method's name as a candidate is named ("percentile" -> "percentile 99.99")."""
    return f"percentile {DEFAULT_PERCENTILE:g}" if method == "percentile" else method
