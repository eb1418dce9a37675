"""Automatic mixed precision: keep the fewest, most sensitive layers out of INT8 until a target holds.

1. Evaluate the all-INT8 model; if the target holds, exclude nothing.
2. Rank layers by sensitivity (`local` by default: one pass over a spread subset of the data).
3. Find how many of the most sensitive layers to keep out by bisection over the ranked list
   (about log2(layers) evaluations, where a greedy scan needs one per excluded layer), checking
   the *real* metric each time.
4. Prune: put each excluded layer back into INT8 (least sensitive first) and keep it there
   if the target still holds.
5. Confirm the result on every sample; if it misses there, resume the bisection on every sample.

Every evaluation but the final one stops as soon as the samples seen decide the target (the
metric is further from it than `DECISION_Z` standard errors, with a finite-population
correction, so an evaluation of every sample is exact), seeing the batches in an order spread
over the data set. The FP32 reference runs once and its outputs are cached. What remains is
reported with what each layer buys (the metric with that layer back in INT8) and what it costs
(its share of the model's INT8 MACs).

The excluded layers are returned as anchored `--exclude-nodes` patterns, so a later
`trtq quantize --exclude-nodes ...` reproduces the result without searching again.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import onnx
from tqdm import tqdm

from trtq._format import fmt
from trtq.calibrate.grids import INT8, Grid
from trtq.data import Dataset
from trtq.errors import TrtqError
from trtq.evaluate.evaluator import Evaluation, Evaluator
from trtq.evaluate.metrics import snr_db
from trtq.evaluate.scoring import MaskRequest, TokenMask
from trtq.evaluate.sensitivity import (
    SensitivityResult,
    analyze_sensitivity,
    layer_macs,
    quantized_layers,
)
from trtq.evaluate.tasks import Task, TaskScores, make_task
from trtq.model import graph_outputs
from trtq.quantize import Placement, insert_qdq, plan_placement
from trtq.runtime import RunnerFactory

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
    """One evaluation of the search: which layers were excluded, the metric it gave, on how many samples."""

    excluded: tuple[str, ...]
    metric: float
    holds: bool
    phase: str  # "int8", "bisect", "prune" or "final"
    samples: int = 0
    seconds: float = 0.0


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
    phase_seconds: tuple[tuple[str, float], ...] = ()
    """Where the search's time went: reference, ranking, and each evaluation phase."""
    measured_on: str = "the Q/DQ model"
    """What every evaluation measured: the Q/DQ model, or it after a final transformation (FP16)."""
    all_excluded: bool = False
    """Whether the target holds only with every quantizable layer out of INT8 (nothing INT8 is left)."""
    mask: TokenMask | None = None
    """The attention mask whose marked positions the target (and the ranking) was measured over."""

    @property
    def exclude_nodes(self) -> tuple[str, ...]:
        """Anchored regexes for `--exclude-nodes`, one per excluded layer."""
        return tuple(layer.pattern for layer in self.excluded)

    @property
    def full_evaluations(self) -> float:
        """The search's cost in passes over the data (its evaluations' samples over the data's)."""
        return round(sum(s.samples for s in self.steps) / max(self.final.samples, 1), 2)

    def require(self) -> MixedPrecisionResult:
        """Return self if the target holds, else raise a TrtqError saying how close it came."""
        if not self.holds:
            fp16 = "FP16" in self.measured_on
            raise TrtqError(
                f"Target {self.target} was not reached: best {self.target.metric} was "
                f"{fmt(self.final_metric, 4, spec='g')} with {len(self.excluded)} layers excluded, measured on "
                f"{self.measured_on}.",
                "relax the target, calibrate with another --method"
                + (", or keep the rest in FP32 (--high-precision fp32)." if fp16 else ", or raise the exclusion limit."),
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
            "full_evaluations": self.full_evaluations,
            "steps": [
                {"excluded": list(s.excluded), "metric": num(s.metric), "holds": s.holds, "phase": s.phase,
                 "samples": s.samples, "seconds": round(s.seconds, 3)}
                for s in self.steps
            ],
            "seconds": round(self.seconds, 3),
            "phase_seconds": {phase: round(seconds, 3) for phase, seconds in self.phase_seconds},
            "notes": list(self.notes),
            "measured_on": self.measured_on,
            "all_excluded": self.all_excluded,
            "mask": self.mask.to_dict() if self.mask else None,
        }


def node_pattern(name: str) -> str:
    """An `--exclude-nodes` regex matching exactly this node name."""
    return f"^{re.escape(name)}$"


RANKING_SAMPLES = 32
"""Local sensitivity ranks layers on at most this many samples (spread over the data set)."""
SEARCH_PASSES = 6.0
"""Pruning goes on while the whole search has cost fewer passes over the data than this ..."""
PRUNE_PASSES = 1.5
"""... and in any case until pruning alone has cost this many."""


def proven_miss(target: Target, evaluation: Evaluation, reference: TaskScores | None,
                signal_power: Mapping[str, float], total: int) -> bool:
    """Whether the samples seen so far already prove that `target` misses on all `total` samples,
    whatever the others give (a bound, not an estimate: the search decides as it would on every sample).

    SNR: the error power seen only grows, and the FP32 outputs' power over every sample is known.
    Top-k drops: the remaining samples can at best all be right.
    """
    if target.metric == "snr":
        return any(
            not target.holds(snr_db(signal_power[o.name], sums[1].sum()))
            for o in evaluation.outputs
            if (sums := evaluation.sample_sums.get(o.name)) is not None and o.name in signal_power
        )
    key = TARGET_METRICS[target.metric][2]
    if target.metric in ("top1-drop", "top5-drop") and reference is not None and evaluation.task is not None:
        if key not in evaluation.task.values or key not in reference.values:
            return False
        seen = evaluation.task.samples
        correct = evaluation.task.values[key] / 100.0 * seen
        best = 100.0 * (correct + (total - seen)) / total
        return not target.holds(reference.values[key] - best)
    return False


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
    early_stop: bool = True,
    runner: RunnerFactory | None = None,
    progress: bool = True,
    finish: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None,
    finished_as: str = "the Q/DQ model after the FP16 conversion, as written",
    grid: Grid = INT8,
    mask: MaskRequest = True,
    residual: bool = False,
    reference: onnx.ModelProto | None = None,
) -> MixedPrecisionResult:
    """Find the layers to keep out of INT8 so that `target` holds on `dataset`.

    `model` is the normalised FP32 model (`trtq.api.prepare_model(...).model`), `amax` its
    calibrated ranges; `exclude_nodes`/`exclude_ops` are the user's own exclusions, kept as
    they are. A task-based target without `task` gets the default task for the data (labels
    from class folders when there are any, else FP32 agreement; for detect, yolo when the outputs have its layout).
    `finish` turns each candidate Q/DQ model into the model that will be written (the FP16
    conversion of `--high-precision fp16`): every evaluation then measures that model, so the
    target holds for what is written (`finished_as` says what it is).
    `grid` is what the quantized layers run in (INT8, or FP8 E4M3 for `--precision fp8`).
    `early_stop=False` evaluates every candidate on every sample. `runner` runs the models
    (default: onnxruntime on the CPU). `mask`: True detects the attention mask (the target and the
    ranking are then measured over real tokens), False scores every position, a name picks the input.
    `residual`: the placement puts Q/DQ on transformer residual Adds too (`--residual-qdq`).
    `reference`: the FP32 model the candidates are measured against, where `model` is not it
    (`model`'s weights were rounded to the FP8 grid by `--weight-ranges mse`).
    """
    start = time.perf_counter()
    target = parse_target(target) if isinstance(target, str) else target
    notes: list[str] = []
    if target.task is not None and (task is None or task.name != target.task):
        task = make_task(target.task, dataset, graph_outputs(model))
        notes.append(f"task for the target: {task.describe()}")
    evaluator = Evaluator(reference if reference is not None else model, dataset, batch_size=batch_size, task=task,
                          runner=runner, progress=False, mask=mask)
    notes.extend(evaluator.mask_notes)
    phases: dict[str, float] = {"reference": time.perf_counter() - start}
    reference_scores = evaluator.reference_scores
    total = evaluator.samples
    base = plan_placement(model, exclude_nodes=exclude_nodes, exclude_ops=exclude_ops, grid=grid, residual=residual)
    steps: list[SearchStep] = []
    full: dict[tuple[str, ...], tuple[Evaluation, float]] = {}
    bar = tqdm(desc=f"--target {target}", unit="eval", disable=not progress, dynamic_ncols=True, leave=False)

    def placement_without(layers: Sequence[str]) -> Placement:
        return plan_placement(
            model, exclude_nodes=[*exclude_nodes, *(node_pattern(n) for n in layers)], exclude_ops=exclude_ops,
            grid=grid, residual=residual, ranged=amax.keys(),
        )

    def candidate(layers: Sequence[str]) -> onnx.ModelProto:
        quantized = insert_qdq(model, placement_without(layers), amax)
        return finish(quantized) if finish is not None else quantized

    def stop(evaluation: Evaluation) -> bool:
        return proven_miss(target, evaluation, reference_scores, evaluator.signal_power, total)

    decided: dict[tuple[str, ...], tuple[Evaluation, float]] = {}

    def check(layers: Sequence[str], phase: str, exact: bool = False) -> tuple[Evaluation, float]:
        """Evaluate with `layers` excluded: on every sample when `exact`, else until the target is decided."""
        key = tuple(sorted(layers))
        known = full.get(key) or (None if exact else decided.get(key))
        if known is not None:
            return known
        began = time.perf_counter()
        evaluation = evaluator.evaluate(
            candidate(layers), label=f"{phase} {len(layers)}", decide=None if exact or not early_stop else stop
        )
        value = target.measure(evaluation, reference_scores)
        decided[key] = (evaluation, value)
        if evaluation.complete:
            full[key] = (evaluation, value)
        steps.append(SearchStep(tuple(layers), value, target.holds(value), phase, evaluation.samples,
                                time.perf_counter() - began))
        phases[phase] = phases.get(phase, 0.0) + steps[-1].seconds
        bar.update(1)
        bar.set_postfix_str(f"{target.metric} {value:.4g}, {len(layers)} kept out ({phase})", refresh=True)
        return evaluation, value

    sensitivity: SensitivityResult | None = None

    def rank() -> list[str]:
        nonlocal sensitivity
        began = time.perf_counter()
        subset = evaluator.subset(RANKING_SAMPLES) if ranking == "local" else dataset
        sensitivity = analyze_sensitivity(
            model, base, amax, subset, method=ranking, task=task,
            batch_size=evaluator.batch_size,  # 1 where the model runs at batch 1 only
            evaluator=evaluator if ranking == "exact" else None, runner=runner, progress=progress,
            mask=evaluator.mask if evaluator.mask is not None else False,
        )
        phases["ranking"] = time.perf_counter() - began
        return [layer.node for layer in sensitivity.layers if math.isfinite(layer.snr_db)]

    def prune_layers(excluded: list[str]) -> list[str]:
        """Put layers back into INT8, least sensitive first, while the target holds; sweep again after a
        sweep that put one back (keeping a layer out can stop mattering once another is out), within
        the budget of passes."""
        budget = max(PRUNE_PASSES, SEARCH_PASSES - sum(s.samples for s in steps) / total) * total
        spent, removed = 0, True
        while removed and len(excluded) > 1:
            removed = False
            for node in list(reversed(excluded)):
                if spent >= budget:
                    notes.append("pruning stopped at its budget of passes over the data; "
                                 "some kept-out layers may not be needed")
                    return excluded
                trial = [n for n in excluded if n != node]
                known = tuple(sorted(trial)) in decided
                evaluation, with_layer[node] = check(trial, "prune")
                spent += 0 if known else evaluation.samples
                if target.holds(with_layer[node]):
                    excluded, removed = trial, True
        return excluded

    def cap(already: int, available: int) -> int:
        return available if max_exclusions is None else max(0, min(max_exclusions - already, available))

    try:
        int8_eval, int8_value = check([], "int8")
        excluded: list[str] = []
        with_layer: dict[str, float] = {}
        if not target.holds(int8_value):
            ranked = rank()
            high = cap(0, len(ranked))
            excluded = _bisect(ranked, high, lambda k: target.holds(check(ranked[:k], "bisect")[1]))
            if len(excluded) > 1 and target.holds(check(excluded, "bisect")[1]) and prune:
                excluded = prune_layers(excluded)
        final_eval, final_value = check(excluded, "final", exact=True)
        if len(excluded) == 1:
            with_layer[excluded[0]] = int8_value
    finally:
        bar.close()
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
    all_excluded = bool(excluded) and not quantized_layers(placement_without(excluded))
    if sensitivity is not None:
        notes.append(
            f"ranking: {sensitivity.method} sensitivity over {sensitivity.samples} samples "
            f"in {sensitivity.seconds:.1f} s"
        )
    notes.append(
        f"{len(steps)} evaluations, {sum(s.samples for s in steps) / max(total, 1):.1f} passes over the "
        f"{total} samples (an evaluation stops once its samples prove a miss)"
    )
    return MixedPrecisionResult(
        target=target,
        holds=target.holds(final_value),
        int8_metric=int8_value,
        final_metric=final_value,
        excluded=result_layers,
        placement=placement_without(excluded),
        reference=reference_scores,
        int8=int8_eval,
        final=final_eval,
        ranking_method=ranking,
        steps=tuple(steps),
        seconds=time.perf_counter() - start,
        notes=tuple(notes),
        phase_seconds=tuple(phases.items()),
        measured_on=finished_as if finish is not None else "the Q/DQ model",
        all_excluded=all_excluded,
        mask=evaluator.mask,
    )


def _bisect(ranked: Sequence[str], high: int, holds: Callable[[int], bool]) -> list[str]:
    """The shortest non-empty prefix of `ranked` (at most `high` layers) for which `holds` is true,
    assuming that keeping more layers out never hurts (the empty prefix is known to miss). All
    `high` layers are taken to hold without a check (it is the caller's to check that prefix,
    which is returned when no shorter one holds)."""
    low = 0
    while high - low > 1:
        middle = (low + high) // 2
        if holds(middle):
            high = middle
        else:
            low = middle
    return list(ranked[:high])
