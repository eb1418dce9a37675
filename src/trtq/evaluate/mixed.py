"""Automatic mixed precision: keep the fewest, most sensitive layers out of INT8 until a target holds.

1. Evaluate the all-INT8 model; if the target holds, exclude nothing.
2. Rank layers by sensitivity (`local` by default: about one pass over the data).
3. Greedily exclude the next most sensitive layer, re-checking the *real* metric each time,
   until the target holds.
4. Prune: put each excluded layer back into INT8 (least sensitive first) and keep it there
   if the target still holds. What remains is reported with what each layer buys (the metric
   with that layer back in INT8) and what it costs (its share of the model's INT8 MACs).

The excluded layers are returned as anchored `--exclude-nodes` patterns, so a later
`trtq quantize --exclude-nodes ...` reproduces the result without searching again.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import onnx

from trtq.calibrate.grids import INT8, Grid
from trtq.data import Dataset
from trtq.errors import TrtqError
from trtq.evaluate.evaluator import Evaluation, Evaluator
from trtq.evaluate.sensitivity import analyze_sensitivity, layer_macs, quantized_layers
from trtq.evaluate.tasks import Task, TaskScores, make_task
from trtq.model import graph_outputs
from trtq.quantize import Placement, insert_qdq, plan_placement

TARGET_METRICS: dict[str, tuple[str, str | None, str | None]] = {
    # name: (comparison, task it needs, task metric)
    "snr": (">=", None, None),
    "cosine": (">=", None, None),
    "top1-drop": ("<=", "classify", "top1"),
    "top5-drop": ("<=", "classify", "top5"),
    "map-drop": ("<=", "detect", "map"),
    "map50-drop": ("<=", "detect", "map50"),
}
_TARGET = re.compile(r"^\s*([a-z0-9-]+)\s*(<=|>=)\s*([-+]?[0-9]*\.?[0-9]+)\s*(db|%)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Target:
    """An accuracy target such as `top1-drop<=0.5` (points of top-1 lost) or `snr>=30` (dB, every output)."""

    metric: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"

    @property
    def task(self) -> str | None:
        """The task the metric needs ("classify", "detect") or None for output agreement."""
        return TARGET_METRICS[self.metric][1]

    def measure(self, evaluation: Evaluation, reference: TaskScores | None) -> float:
        """The target's metric for one evaluation."""
        if self.metric == "snr":
            return evaluation.snr_db
        if self.metric == "cosine":
            return evaluation.cosine
        key = TARGET_METRICS[self.metric][2]
        if reference is None or evaluation.task is None or key not in evaluation.task.values:
            raise TrtqError(
                f"Target {self} needs the {key} metric, which this task does not produce.",
                f"use --task {self.task} on data it applies to.",
            )
        return reference.values[key] - evaluation.task.values[key]

    def holds(self, value: float) -> bool:
        """Whether a measured value meets the target."""
        if math.isnan(value):
            return False
        return value >= self.value if self.op == ">=" else value <= self.value


def parse_target(text: str) -> Target:
    """Parse `--target`: `snr>=30`, `cosine>=0.999`, `top1-drop<=0.5`, `top5-drop<=0.2`, `map-drop<=1.0`,
    `map50-drop<=1`. Drops are in points of the task metric (percent); snr in dB, for every output."""
    match = _TARGET.match(text or "")
    if not match:
        raise TrtqError(
            f"--target {text!r} is not of the form METRIC<=VALUE or METRIC>=VALUE.",
            'e.g. --target "top1-drop<=0.5", "snr>=30" or "map-drop<=1.0".',
        )
    metric, op, value = match[1].lower(), match[2], float(match[3])
    if metric not in TARGET_METRICS:
        raise TrtqError(
            f"--target metric {metric!r} is not one of {', '.join(TARGET_METRICS)}.", 'e.g. --target "top1-drop<=0.5".'
        )
    want = TARGET_METRICS[metric][0]
    if op != want:
        raise TrtqError(
            f"--target {text!r} uses {op}, but {metric} targets are written {metric}{want}VALUE.",
            f'write --target "{metric}{want}{value:g}".',
        )
    return Target(metric, op, value)


@dataclass(frozen=True)
class ExcludedLayer:
    """A layer kept in high precision: what it buys and what it costs."""

    node: str
    op_type: str
    pattern: str
    sensitivity_snr_db: float
    metric_with_layer_int8: float | None
    """The target metric with this layer put back into INT8 (the others still excluded)."""
    macs: int
    macs_share: float
    """Share of the quantizable layers' MACs this layer takes out of INT8."""

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class SearchStep:
    """One evaluation of the search: which layers were excluded and the metric it gave."""

    excluded: tuple[str, ...]
    metric: float
    holds: bool
    phase: str  # "int8", "greedy" or "prune"


@dataclass(frozen=True)
class MixedPrecisionResult:
    """The outcome of the search: layers excluded, metrics before and after, the final placement."""

    target: Target
    holds: bool
    int8_metric: float
    final_metric: float
    excluded: tuple[ExcludedLayer, ...]
    placement: Placement
    reference: TaskScores | None
    int8: Evaluation
    final: Evaluation
    ranking_method: str
    steps: tuple[SearchStep, ...]
    seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def exclude_nodes(self) -> tuple[str, ...]:
        """Anchored regexes for `--exclude-nodes`, one per excluded layer."""
        return tuple(layer.pattern for layer in self.excluded)

    def require(self) -> MixedPrecisionResult:
        """Return self if the target holds, else raise a TrtqError saying how close it came."""
        if not self.holds:
            raise TrtqError(
                f"Target {self.target} was not reached: best {self.target.metric} was {self.final_metric:.4g} "
                f"with {len(self.excluded)} layers excluded.",
                "relax the target, calibrate with another --method, or raise the exclusion limit.",
            )
        return self

    def to_dict(self) -> dict:
        """JSON-friendly view."""

        def num(v: float) -> float | str:
            return str(v) if not math.isfinite(v) else v

        return {
            "target": str(self.target),
            "holds": self.holds,
            "int8_metric": num(self.int8_metric),
            "final_metric": num(self.final_metric),
            "excluded": [layer.to_dict() for layer in self.excluded],
            "exclude_nodes": list(self.exclude_nodes),
            "reference": self.reference.to_dict() if self.reference else None,
            "int8": self.int8.to_dict(),
            "final": self.final.to_dict(),
            "ranking_method": self.ranking_method,
            "evaluations": len(self.steps),
            "steps": [
                {"excluded": list(s.excluded), "metric": num(s.metric), "holds": s.holds, "phase": s.phase}
                for s in self.steps
            ],
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
        }


def node_pattern(name: str) -> str:
    """An `--exclude-nodes` regex matching exactly this node name."""
    return f"^{re.escape(name)}$"


def search_mixed_precision(
    model: onnx.ModelProto,
    amax: Mapping[str, float],
    dataset: Dataset,
    target: Target | str,
    *,
    exclude_nodes: Sequence[str] = (),
    exclude_ops: Sequence[str] = (),
    task: Task | None = None,
    ranking: str = "local",
    batch_size: int = 1,
    max_exclusions: int | None = None,
    prune: bool = True,
    progress: bool = True,
    grid: Grid = INT8,
) -> MixedPrecisionResult:
    """Find the layers to keep out of INT8 so that `target` holds on `dataset`.

    `model` is the normalised FP32 model (`trtq.api.prepare_model(...).model`), `amax` its
    calibrated ranges; `exclude_nodes`/`exclude_ops` are the user's own exclusions, kept as
    they are. A task-based target without `task` gets the default task for the data (labels
    from class folders when there are any, else FP32 agreement; for detect, yolo when the outputs have its layout).
    `grid` is what the quantized layers run in (INT8, or FP8 E4M3 for `--precision fp8`).
    """
    start = time.perf_counter()
    target = parse_target(target) if isinstance(target, str) else target
    notes: list[str] = []
    if target.task is not None and (task is None or task.name != target.task):
        task = make_task(target.task, dataset, graph_outputs(model))
        notes.append(f"task for the target: {task.describe()}")
    evaluator = Evaluator(model, dataset, batch_size=batch_size, task=task, progress=False)
    reference = evaluator.reference_scores
    base = plan_placement(model, exclude_nodes=exclude_nodes, exclude_ops=exclude_ops, grid=grid)
    steps: list[SearchStep] = []
    evaluations: dict[tuple[str, ...], tuple[Evaluation, float]] = {}

    def placement_without(layers: Sequence[str]) -> Placement:
        return plan_placement(
            model, exclude_nodes=[*exclude_nodes, *(node_pattern(n) for n in layers)], exclude_ops=exclude_ops,
            grid=grid,
        )

    def check(layers: Sequence[str], phase: str) -> tuple[Evaluation, float]:
        key = tuple(sorted(layers))
        if key not in evaluations:
            evaluation = evaluator.evaluate(
                insert_qdq(model, placement_without(layers), amax), label=f"{phase} {len(layers)}"
            )
            evaluations[key] = (evaluation, target.measure(evaluation, reference))
        evaluation, value = evaluations[key]
        steps.append(SearchStep(tuple(layers), value, target.holds(value), phase))
        return evaluation, value

    int8_eval, int8_value = check([], "int8")
    excluded: list[str] = []
    final_eval, final_value = int8_eval, int8_value
    sensitivity = None
    if not target.holds(int8_value):
        sensitivity = analyze_sensitivity(
            model,
            base,
            amax,
            dataset,
            method=ranking,
            task=task,
            batch_size=evaluator.batch_size,  # 1 where the model runs at batch 1 only
            evaluator=evaluator if ranking == "exact" else None,
            progress=progress,
        )
        candidates = [layer.node for layer in sensitivity.layers if math.isfinite(layer.snr_db)]
        limit = len(candidates) if max_exclusions is None else max_exclusions
        for node in candidates[:limit]:
            excluded.append(node)
            final_eval, final_value = check(excluded, "greedy")
            if target.holds(final_value):
                break
    with_layer: dict[str, float] = {}
    if prune and target.holds(final_value) and len(excluded) > 1:
        for node in list(reversed(excluded)):
            trial = [n for n in excluded if n != node]
            trial_eval, trial_value = check(trial, "prune")
            with_layer[node] = trial_value
            if target.holds(trial_value):
                excluded = trial
                final_eval, final_value = trial_eval, trial_value
    elif len(excluded) == 1 and target.holds(final_value):
        with_layer[excluded[0]] = int8_value
    macs = layer_macs(model, dataset.shapes)
    quantizable_macs = sum(macs.get(n, 0) for n in quantized_layers(base)) or 1
    ops = {node.name: node.op_type for node in model.graph.node}
    scores = {layer.node: layer.snr_db for layer in sensitivity.layers} if sensitivity else {}
    result_layers = tuple(
        ExcludedLayer(
            node,
            ops[node],
            node_pattern(node),
            scores.get(node, math.nan),
            with_layer.get(node),
            macs.get(node, 0),
            macs.get(node, 0) / quantizable_macs,
        )
        for node in excluded
    )
    if sensitivity is not None:
        notes.append(
            f"ranking: {sensitivity.method} sensitivity over {sensitivity.samples} samples "
            f"in {sensitivity.seconds:.1f} s"
        )
    return MixedPrecisionResult(
        target=target,
        holds=target.holds(final_value),
        int8_metric=int8_value,
        final_metric=final_value,
        excluded=result_layers,
        placement=placement_without(excluded),
        reference=reference,
        int8=int8_eval,
        final=final_eval,
        ranking_method=ranking,
        steps=tuple(steps),
        seconds=time.perf_counter() - start,
        notes=tuple(notes),
    )
