"""The fine-tuning loop: the FP32 model teaches its fake-quantized copy.

Label-free by default: the loss is the distance between the student's outputs (and optionally
intermediate features) and the teacher's on the same inputs, each term normalised by the
teacher's power so that it reads as 1/SNR and outputs of different scales weigh alike. Labels or
any other loss plug in as a `LossFn`.

Adam with two parameter groups (weights at `lr`, log step sizes at `scale_lr`), cosine decay of
both over `steps`, batches chosen by step (`TrainingData`), so a resumed run repeats the
uninterrupted one exactly. On CUDA the step is replayed from a captured graph (`trtq.qat.step`).
Every `check_every` steps the loss is checked: NaN/Inf, or more than `divergence` times the first
interval's loss, stops the run (`TrainingDiverged`) and leaves the last good checkpoint in place.
Checkpoints are written only when every trained tensor is finite.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from trtq.errors import TrtqError
from trtq.evaluate.metrics import OutputAccumulator, OutputMetrics
from trtq.evaluate.mixed import Target
from trtq.evaluate.scoring import MaskDetector, MaskRequest, TokenMask
from trtq.model import TensorSpec
from trtq.qat.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from trtq.qat.data import TrainingData
from trtq.qat.model import QatModel
from trtq.qat.step import (
    StepRunner,
    make_optimizer,
    normalise_learning_rates,
    set_learning_rates,
)

TEACHER_CACHE_BYTES = 256 << 20
"""Teacher outputs for every training sample are computed once when they take at most this."""

EPS = 1e-12


@dataclass(frozen=True)
class LossInputs:
    """What a loss function sees for one batch (tensors on the training device)."""

    student: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor]
    labels: torch.Tensor | None
    feeds: dict[str, torch.Tensor]


LossFn = Callable[[LossInputs], torch.Tensor]


class TeacherModel(Protocol):
    """The FP32 model QAT learns from: an `OnnxModule` or anything that runs feeds to named tensors."""

    def run(self, feeds: Mapping[str, torch.Tensor | np.ndarray],
            outputs: Sequence[str] | None = None) -> dict[str, torch.Tensor]: ...


def normalised_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean((s - t)^2) / mean(t^2): the noise-to-signal power ratio (1/SNR) of one tensor."""
    s, t = student.float(), teacher.float()
    return (s - t).pow(2).mean() / (t.pow(2).mean() + EPS)


@dataclass(frozen=True)
class Distillation:
    """Label-free loss: normalised MSE of each output, plus `feature_weight` times the mean over
    `features` (intermediate tensors of both models)."""

    outputs: tuple[str, ...]
    features: tuple[str, ...] = ()
    feature_weight: float = 1.0

    @property
    def tensors(self) -> tuple[str, ...]:
        """Every tensor the loss reads from student and teacher."""
        return (*self.outputs, *self.features)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        # sum() of tensors is a tensor (its start, 0, is added to the first term)
        loss = cast(torch.Tensor, sum(normalised_mse(inputs.student[n], inputs.teacher[n]) for n in self.outputs))
        loss = loss / len(self.outputs)
        if self.features:
            feats = sum(normalised_mse(inputs.student[n], inputs.teacher[n]) for n in self.features)
            loss = loss + self.feature_weight * feats / len(self.features)
        return loss


@dataclass(frozen=True)
class LabelLoss:
    """Cross-entropy of class scores `output` against the labels, plus `distill_weight` times the
    label-free distillation of every output in `outputs`."""

    output: str
    outputs: tuple[str, ...] = ()
    distill_weight: float = 0.0

    @property
    def tensors(self) -> tuple[str, ...]:
        """Every tensor the loss reads from student and teacher."""
        return tuple(dict.fromkeys((self.output, *self.outputs)))

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        if inputs.labels is None:
            raise TrtqError("The label loss needs labels, and the fine-tuning data has none.",
                            "give labels (class sub-folders or a label file), or fine-tune label-free.")
        loss = F.cross_entropy(inputs.student[self.output].float(), inputs.labels)
        if self.distill_weight and self.outputs:
            loss = loss + self.distill_weight * Distillation(self.outputs)(inputs)
        return loss


@dataclass(frozen=True)
class TrainOptions:
    """How the fine-tuning runs."""

    steps: int = 2000
    lr: float = 1e-5
    scale_lr: float = 1e-3
    eval_every: int = 100
    checkpoint_every: int = 100
    check_every: int = 10
    divergence: float = 100.0
    target: Target | None = None
    cuda_graph: bool = True
    """On CUDA, replay each step from a captured graph (see `trtq.qat.step`)."""

    def validate(self) -> None:
        """Fail with one sentence on a nonsensical option."""
        for name in ("steps", "eval_every", "checkpoint_every", "check_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "steps" else 1):
                kind = "non-negative" if name == "steps" else "positive"
                flag = f"--{name.replace('_', '-')}"
                raise TrtqError(f"{flag} {value!r} is not a {kind} integer.", f"give a whole number for {flag}.")
        for name in ("lr", "scale_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise TrtqError(f"--{name.replace('_', '-')} {value!r} is not a non-negative number.",
                                "e.g. --lr 1e-5.")
        if self.target is not None and self.target.metric not in ("snr", "cosine"):
            raise TrtqError(f"--target {self.target} is not one fine-tuning can check; it measures agreement with "
                            "the FP32 model.", 'use --target "snr>=X" or "cosine>=X".')


@dataclass(frozen=True)
class Progress:
    """One evaluation during training: the loss since the last one and agreement with FP32."""

    step: int
    loss: float | None
    snr_db: float
    cosine: float
    top1_agreement: float | None
    seconds: float

    def to_dict(self) -> dict:
        """JSON-friendly view (infinities as strings)."""
        return {k: (str(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class TrainResult:
    """How the fine-tuning went."""

    start_step: int
    steps: int
    stopped: str
    """"steps" (ran them all), "target" (the target held) or "resumed-finished" (nothing left to do)."""
    history: tuple[Progress, ...]
    train_seconds: float
    samples: int
    checkpoint: str | None = None
    best_step: int | None = None
    """The evaluation step whose state the model holds at the end (the best by the monitored metric)."""
    step_mode: str = "eager"
    """How steps ran: "eager", "cuda-graph", or "eager (why no graph)"."""

    @property
    def samples_per_second(self) -> float:
        """Training throughput of this run (forward, backward and update; evaluations excluded)."""
        return self.samples / self.train_seconds if self.train_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return {"start_step": self.start_step, "steps": self.steps, "stopped": self.stopped,
                "train_seconds": round(self.train_seconds, 3), "samples": self.samples,
                "samples_per_second": round(self.samples_per_second, 1), "checkpoint": self.checkpoint,
                "best_step": self.best_step, "step_mode": self.step_mode,
                "history": [p.to_dict() for p in self.history]}


class TrainingDiverged(TrtqError):
    """The loss became NaN/Inf or blew up; the last good checkpoint was kept."""


@dataclass(frozen=True)
class Agreement:
    """Agreement of a model's outputs with the FP32 teacher's on the monitoring data."""

    outputs: tuple[OutputMetrics, ...]

    @property
    def snr_db(self) -> float:
        """Worst output's aggregate SNR."""
        return min(o.snr_db for o in self.outputs)

    @property
    def cosine(self) -> float:
        """Worst output's cosine similarity."""
        return min(o.cosine for o in self.outputs)

    @property
    def top1_agreement(self) -> float | None:
        """Top-1 agreement of the first output that looks like class scores."""
        return next((o.top1_agreement for o in self.outputs if o.top1_agreement is not None), None)


class Monitor:
    """Scores a model against the teacher on fixed batches (teacher outputs computed once).

    As `trtq compare` scores: outputs an attention mask covers over real tokens (`inputs` and
    `mask` as for `trtq.evaluate.scoring.MaskDetector`; no inputs: every position), top-1 for
    `class_scores` outputs (None: [N, C] outputs).
    """

    def __init__(self, teacher: TeacherModel, batches: Sequence[Mapping[str, np.ndarray]],
                 outputs: Sequence[str], inputs: Sequence[TensorSpec] = (), mask: MaskRequest = True,
                 class_scores: frozenset[str] | None = None) -> None:
        self.batches = [dict(b) for b in batches]
        self.outputs = tuple(outputs)
        self.class_scores = class_scores
        with torch.no_grad():
            self.reference = [{n: v.detach().cpu().numpy() for n, v in teacher.run(b, self.outputs).items()}
                              for b in self.batches]
        detector = MaskDetector(inputs, mask, "the monitoring samples")
        for batch, ref in zip(self.batches, self.reference):
            if detector.active:
                detector.update(batch, ref)
        self.mask: TokenMask | None
        self.mask, self.mask_notes = detector.result()

    def measure(self, model: QatModel) -> Agreement:
        """Per-output agreement of `model` with the teacher."""
        accumulators = {n: OutputAccumulator(n, None if self.class_scores is None else n in self.class_scores)
                        for n in self.outputs}
        masked = set(self.mask.outputs) if self.mask is not None else set()
        with torch.no_grad():
            for batch, ref in zip(self.batches, self.reference):
                values = model.run(batch, self.outputs)
                for name in self.outputs:
                    value = values[name].detach().cpu().numpy()
                    if name in masked:
                        mask = self.mask.input  # type: ignore[union-attr]
                        accumulators[name].update(ref[name], value, self.mask.positions(np.asarray(batch[mask])), mask)  # type: ignore[union-attr]
                    else:
                        accumulators[name].update(ref[name], value)
        return Agreement(tuple(acc.result() for acc in accumulators.values()))


def _measured(target: Target, agreement: Agreement) -> float:
    return agreement.snr_db if target.metric == "snr" else agreement.cosine


def _learning_rate_factor(step: int, steps: int) -> float:
    """Cosine decay from 1 at step 0 to 0 at `steps`."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / max(steps, 1)))


@dataclass
class _Teacher:
    """Teacher tensors per batch: from a per-sample cache, or computed on the fly."""

    module: TeacherModel
    names: tuple[str, ...]
    cache: dict[str, torch.Tensor] | None = field(default=None)

    def build_cache(self, data: TrainingData, device: torch.device) -> None:
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        held = 0
        with torch.no_grad():
            for batch in data.sequential():  # the training batch: fixed-batch models take no other
                values = self.module.run(batch, self.names)
                for name in self.names:
                    parts[name].append(values[name].detach())
                    held += values[name].numel() * values[name].element_size()
                if held > TEACHER_CACHE_BYTES:
                    return
        self.cache = {n: torch.cat(v).to(device) for n, v in parts.items()}

    def __call__(self, feeds: Mapping[str, torch.Tensor], indices: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.cache is not None:
            idx = indices.to(next(iter(self.cache.values())).device)
            return {n: v[idx] for n, v in self.cache.items()}
        with torch.no_grad():
            return self.module.run(feeds, self.names)


@dataclass
class _Best:
    """The best evaluated state so far (restored at the end: evaluations can dip mid-run)."""

    step: int
    score: float
    trained: dict[str, torch.Tensor]

    def offer(self, step: int, score: float, qmodel: QatModel) -> None:
        if score > self.score or (math.isnan(self.score) and not math.isnan(score)):
            self.step, self.score, self.trained = step, score, qmodel.trained_state()


def train(
    qmodel: QatModel,
    teacher: TeacherModel,
    data: TrainingData,
    loss_fn: LossFn,
    loss_tensors: Sequence[str],
    monitor: Monitor,
    options: TrainOptions,
    *,
    checkpoint_path: Path | None = None,
    fingerprint: str = "",
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Fine-tune `qmodel` for `options.steps` optimizer steps in all (a resumed run counts the
    steps already done), stopping early when `options.target` holds; `qmodel` ends holding the
    best evaluated state (by the target's metric, else SNR against the teacher).

    `teacher` is the FP32 model (any module with `run(feeds, names)`); `loss_tensors` are the
    tensors `loss_fn` reads from both models. `on_step(step)` is called after each step (tests
    use it to interrupt a run).
    """
    options.validate()
    device = qmodel.device
    names = tuple(dict.fromkeys(loss_tensors))
    capturable = options.cuda_graph and device.type == "cuda"
    optimizer = make_optimizer(qmodel, options.lr, options.scale_lr, capturable)
    base_lrs = [options.lr, options.scale_lr]
    target = options.target

    def score(agreement: Agreement) -> float:
        return _measured(target, agreement) if target is not None else agreement.snr_db

    if resume:
        if checkpoint_path is None:
            raise TrtqError("Resuming needs a checkpoint path.", "pass the checkpoint of the interrupted run.")
        saved = load_checkpoint(checkpoint_path, fingerprint)
        qmodel.load_trained_state(saved.trained)
        optimizer.load_state_dict(saved.optimizer)
        normalise_learning_rates(optimizer, capturable, device)
        start, history = saved.step, [Progress(**h) for h in saved.history]
        best = _Best(saved.best_step, saved.best_score, saved.best_trained)
        agreement = monitor.measure(qmodel)
    else:
        first, agreement = _evaluate(qmodel, monitor, 0, None, 0.0)
        start, history, best = 0, [first], _Best(0, score(agreement), qmodel.trained_state())
        if checkpoint_path is not None:
            _save(checkpoint_path, qmodel, optimizer, start, fingerprint, history, best)
    if (target is not None and target.holds(score(agreement))) or start >= options.steps:
        stopped = "target" if target is not None and target.holds(score(agreement)) else "steps"
        _restore_best(qmodel, best, start)
        return TrainResult(start, start, stopped, tuple(history), 0.0, 0, _str(checkpoint_path), best.step)

    teach = _Teacher(teacher, names)
    teach.build_cache(data, device)
    step, last_good, stopped, samples = start, start, "steps", 0
    interval_loss = torch.zeros((), device=device)
    interval_steps, eval_loss, eval_steps, reference = 0, 0.0, 0, None
    began, overhead = time.perf_counter(), 0.0
    runner = StepRunner(qmodel, optimizer, data, teach, teach.cache,
                        lambda s, t, labels, feeds: loss_fn(LossInputs(s, t, labels, feeds)),
                        names, interval_loss, options.cuda_graph)
    bar = tqdm(total=options.steps, initial=start, desc="fine-tuning", unit="step", disable=not progress,
               dynamic_ncols=True, leave=False)
    try:
        while step < options.steps and stopped == "steps":
            factor = _learning_rate_factor(step, options.steps)
            set_learning_rates(optimizer, [base * factor for base in base_lrs])
            samples += runner.step(step)
            interval_steps += 1
            step += 1
            bar.update(1)
            if on_step is not None:
                on_step(step)
            evaluate = step % options.eval_every == 0 or step == options.steps
            keep = checkpoint_path is not None and (step % options.checkpoint_every == 0 or step == options.steps)
            if interval_steps < options.check_every and not evaluate and not keep:
                continue
            paused = time.perf_counter()
            mean_loss = float(interval_loss) / interval_steps
            reference = mean_loss if reference is None else reference
            if not math.isfinite(mean_loss) or mean_loss > options.divergence * max(reference, EPS):
                raise _diverged(mean_loss, step - interval_steps, step, last_good, checkpoint_path, options)
            eval_loss, eval_steps = eval_loss + mean_loss * interval_steps, eval_steps + interval_steps
            interval_loss.zero_()
            interval_steps = 0
            bar.set_postfix(loss=f"{mean_loss:.3g}", refresh=False)
            if evaluate:
                point, agreement = _evaluate(qmodel, monitor, step, eval_loss / eval_steps,
                                             paused - began - overhead)
                history.append(point)
                best.offer(step, score(agreement), qmodel)
                eval_loss, eval_steps = 0.0, 0
                bar.set_postfix(loss=f"{mean_loss:.3g}", snr=f"{point.snr_db:.1f}dB")
                if target is not None and target.holds(score(agreement)):
                    stopped = "target"
            if checkpoint_path is not None and (keep or stopped == "target"):
                if not qmodel.all_finite():
                    raise _diverged(math.nan, last_good, step, last_good, checkpoint_path, options)
                _save(checkpoint_path, qmodel, optimizer, step, fingerprint, history, best)
                last_good = step
            overhead += time.perf_counter() - paused
    finally:
        bar.close()
    seconds = time.perf_counter() - began - overhead
    _restore_best(qmodel, best, step)
    return TrainResult(start, step, stopped, tuple(history), seconds, samples, _str(checkpoint_path), best.step,
                       runner.mode)


def _restore_best(qmodel: QatModel, best: _Best, step: int) -> None:
    if best.step != step:
        qmodel.load_trained_state(best.trained)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _evaluate(qmodel: QatModel, monitor: Monitor, step: int, loss: float | None,
              seconds: float) -> tuple[Progress, Agreement]:
    agreement = monitor.measure(qmodel)
    point = Progress(step=step, loss=loss, snr_db=agreement.snr_db, cosine=agreement.cosine,
                     top1_agreement=agreement.top1_agreement, seconds=round(seconds, 3))
    return point, agreement


def _save(path: Path, qmodel: QatModel, optimizer: torch.optim.Optimizer, step: int, fingerprint: str,
          history: Sequence[Progress], best: _Best) -> None:
    save_checkpoint(path, Checkpoint(step=step, fingerprint=fingerprint, trained=qmodel.trained_state(),
                                     optimizer=optimizer.state_dict(), history=[asdict(p) for p in history],
                                     best_step=best.step, best_score=best.score, best_trained=best.trained))


def _diverged(loss: float, first: int, last: int, last_good: int, checkpoint: Path | None,
              options: TrainOptions) -> TrainingDiverged:
    what = f"became {loss}" if not math.isfinite(loss) else f"grew to {loss:.3g}, over {options.divergence:g}x its start"
    kept = (f"the last good checkpoint (step {last_good}) is kept at {checkpoint}" if checkpoint is not None
            else "no checkpoint was being written")
    return TrainingDiverged(
        f"The fine-tuning loss {what} between steps {first} and {last} (lr {options.lr:g}, scale lr "
        f"{options.scale_lr:g}); stopped, {kept}, and wrote no output.",
        "lower --lr (e.g. by 10x) and run again with --resume to continue from the last good checkpoint.",
    )
