"""Run candidate models against an FP32 reference on a fixed data set, many times, cheaply.

Sensitivity analysis and automatic mixed precision evaluate dozens of candidates on the same
samples. The Evaluator runs the FP32 model once, keeps the input batches and reference outputs
in memory when they fit a byte budget (else re-reads the data and re-runs the reference on every
evaluation), and scores each candidate on output agreement (`OutputMetrics`) and, when a task is
given, on the task metric (`TaskScores`).

Token models are scored over real tokens: the reference pass also detects the attention mask
(`trtq.evaluate.scoring`); outputs it covers are scored over the positions it marks, and their
FP32 power (what early stopping measures noise against) is summed over those positions too.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from trtq.calibrate.ort_failures import (
    ORT_ERRORS,
    BatchSizeError,
    explain_run_failure,
    explain_session_failure,
)
from trtq.data import Dataset
from trtq.errors import TrtqError
from trtq.evaluate.metrics import OutputAccumulator, OutputMetrics
from trtq.evaluate.scoring import (
    MaskDetector,
    MaskRequest,
    TokenMask,
    class_score_outputs,
    leading_mask,
    mask_positions,
)
from trtq.evaluate.tasks import Task, TaskComparison, TaskScorer, TaskScores
from trtq.runtime import Runner, RunnerFactory, runner_factory
from trtq.runtime.ort_runner import OrtRunner

CACHE_BYTES = 512 << 20
"""Input batches plus FP32 outputs up to this size stay in memory between evaluations."""
DISK_CACHE_BYTES = 8 << 30
"""Beyond the memory budget, up to this many more bytes of them go to temporary files (else the FP32
model runs again for every evaluation)."""


@dataclass(frozen=True)
class Evaluation:
    """How one candidate model did: per-output agreement with FP32, and the task metric."""

    outputs: tuple[OutputMetrics, ...]
    task: TaskScores | None
    seconds: float
    complete: bool = True
    """False when an early-stopping evaluation stopped before the last sample (see `Evaluator.evaluate`)."""
    sample_sums: Mapping[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False, compare=False)
    """Per output: each sample's reference power and error power (what the SNR sums add up)."""
    mask: TokenMask | None = None
    """The attention mask whose marked positions the masked outputs were scored over."""

    @property
    def samples(self) -> int:
        """How many samples this evaluation scored."""
        return self.outputs[0].samples if self.outputs else 0

    @property
    def snr_db(self) -> float:
        """The worst output's aggregate SNR (what `--target snr>=X` checks)."""
        return min(o.snr_db for o in self.outputs)

    @property
    def cosine(self) -> float:
        """The worst output's cosine similarity."""
        return min(o.cosine for o in self.outputs)

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return {
            "outputs": [o.to_dict() for o in self.outputs],
            "task": self.task.to_dict() if self.task else None,
            "seconds": round(self.seconds, 3),
            "samples": self.samples,
            "mask": self.mask.to_dict() if self.mask else None,
        }


class _BatchStore:
    """Input batches and FP32 outputs kept between evaluations: in memory up to `memory_bytes`, then in
    .npy files of a temporary folder (read back memory-mapped) up to `disk_bytes`.

    A recogniser's [N, 40, 18710] scores take 3 MB a sample: 200 samples do not fit a sensible
    memory budget, and re-running the FP32 model for every candidate doubled the cost of a search.
    """

    def __init__(self, memory_bytes: int, disk_bytes: int) -> None:
        self._memory_left = memory_bytes
        self._disk_left = disk_bytes
        self._items: list[tuple[int, dict[str, np.ndarray] | str, dict[str, np.ndarray] | str]] = []
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self.complete = True
        """False once a batch fitted neither budget (then nothing more is kept)."""

    def add(self, first: int, feed: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
        if not self.complete:
            return
        size = sum(a.nbytes for a in feed.values()) + sum(a.nbytes for a in ref.values())
        if size <= self._memory_left:
            self._memory_left -= size
            self._items.append((first, feed, ref))
        elif size <= self._disk_left:
            self._disk_left -= size
            self._items.append((first, self._spill(feed, "in"), self._spill(ref, "ref")))
        else:
            self.complete = False
            self.close()

    def _spill(self, arrays: dict[str, np.ndarray], kind: str) -> str:
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="trtq-eval-")
        path = os.path.join(self._folder.name, f"{len(self._items)}-{kind}.npz")
        named: dict[str, Any] = {f"a{i}": a for i, a in enumerate(arrays.values())}
        np.savez(path, **named)
        with open(path + ".names", "w", encoding="utf-8") as handle:
            handle.write("\n".join(arrays))
        return path

    @staticmethod
    def _load(item: dict[str, np.ndarray] | str) -> dict[str, np.ndarray]:
        if isinstance(item, dict):
            return item
        with open(item + ".names", encoding="utf-8") as handle:
            names = handle.read().split("\n")
        with np.load(item) as data:
            return {name: data[f"a{i}"] for i, name in enumerate(names)}

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]:
        first, feed, ref = self._items[index]
        return first, self._load(feed), self._load(ref)

    def close(self) -> None:
        """Drop everything kept (and the temporary folder)."""
        self._items = []
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None


class Evaluator:
    """Scores candidates of one FP32 `reference` model (or a session running it) on `dataset`, with an
    optional task metric.

    `mask`: True detects the attention mask, False scores every position, a name or a TokenMask
    (from an earlier detection) picks it. `graph`: the reference's graph when `reference` is a
    session or runner (which outputs are class scores is read from it; without one, [N, C] outputs are).
    """

    def __init__(
        self,
        reference: onnx.ModelProto | ort.InferenceSession | Runner,
        dataset: Dataset,
        *,
        batch_size: int = 1,
        task: Task | None = None,
        cache_bytes: int = CACHE_BYTES,
        disk_bytes: int = DISK_CACHE_BYTES,
        runner: RunnerFactory | None = None,
        progress: bool = False,
        mask: MaskRequest | TokenMask = True,
        graph: onnx.ModelProto | None = None,
        name: str = "the FP32 model",
    ) -> None:
        self.dataset = dataset
        self.name = name
        self.batch_size = batch_size
        self.task = task
        self.progress = progress
        self.make_runner = runner or runner_factory("cpu")
        if isinstance(reference, onnx.ModelProto):
            self.output_names = [o.name for o in reference.graph.output]
            self._session: Runner | None = None
        else:
            self._session = self._as_runner(reference)
            self.output_names = list(self._session.output_names)
        self._reference = reference
        graph = reference if isinstance(reference, onnx.ModelProto) else graph
        forced = (getattr(task, "output", None),) if task is not None and task.name == "classify" else ()
        self.class_scores = class_score_outputs(graph, [f for f in forced if f]) if graph is not None else None
        self.evaluations = 0
        start = time.perf_counter()

        def first_pass() -> tuple[MaskDetector, dict[tuple[str, bool], dict[str, float]], TaskScorer | None,
                                  dict[str, OutputAccumulator], int]:
            """Run the FP32 model over the data once: keep what fits, score the task, look for the mask."""
            self._store = _BatchStore(cache_bytes, disk_bytes)
            weakref.finalize(self, self._store.close)
            detector = MaskDetector(dataset.inputs, False if isinstance(mask, TokenMask) else mask, dataset.description)
            masked_power: dict[tuple[str, bool], dict[str, float]] = {}
            scorer = task.scorer() if task else None
            signal = {name: OutputAccumulator(name) for name in self.output_names}
            samples = 0
            for first, feed, ref in self._run_reference():
                samples += _count(feed)
                if scorer is not None:
                    scorer.update(ref, ref, first, _count(feed))
                for output in self.output_names:
                    signal[output].update(ref[output], ref[output])
                if detector.active:
                    detector.update(feed, ref)
                watched = ((mask.input, mask.additive),) if isinstance(mask, TokenMask) else detector.viable()
                for input_name, additive in watched:  # FP32 power over the positions each possible mask marks
                    _add_masked_power(masked_power.setdefault((input_name, additive), {}), ref,
                                      mask_positions(np.asarray(feed[input_name]), additive))
                self._store.add(first, feed, ref)
            return detector, masked_power, scorer, signal, samples

        try:
            detector, masked_power, scorer, signal, samples = first_pass()
        except BatchSizeError as exc:  # the model runs one sample at a time only: evaluate it so
            if self.batch_size == 1:
                raise
            warnings.warn(f"{exc.message} Evaluating one sample at a time instead.", stacklevel=2)
            self._store.close()
            self.batch_size = 1
            detector, masked_power, scorer, signal, samples = first_pass()
        if samples == 0:
            raise TrtqError(f"Data {dataset.description} yielded no samples.", "pass a non-empty data source.")
        self.samples = samples
        if isinstance(mask, TokenMask):
            self.mask: TokenMask | None = mask
            self.mask_notes: tuple[str, ...] = ()
        else:
            self.mask, self.mask_notes = detector.result()
        self.signal_power = {name: acc.ref_sq for name, acc in signal.items()}
        """Per output, the FP32 outputs' summed power over every sample (the SNR's numerator), over the
        positions the mask marks for masked outputs."""
        if self.mask is not None:
            power = masked_power[self.mask.input, self.mask.additive]
            self.signal_power.update({name: power[name] for name in self.mask.outputs})
        self._noise = np.zeros(len(self._store)) if self._store.complete else None
        self.reference_scores = scorer.result() if scorer is not None else None
        self.reference_seconds = time.perf_counter() - start

    @property
    def cached(self) -> bool:
        """Whether inputs and FP32 outputs are kept (in memory or in temporary files)."""
        return self._store.complete

    def _run_reference(self) -> Iterator[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """The FP32 model over the data; it is the user's model, so its failures are the user's to fix."""
        if self._session is None:
            assert isinstance(self._reference, onnx.ModelProto)
            try:
                self._session = self.make_runner(self._reference)
            except ORT_ERRORS as exc:
                problem = explain_session_failure(self._reference, self.name)
                if problem is None:
                    raise
                raise problem from exc
        first = 0
        for batch in self.dataset.batches(self.batch_size):
            feed = dict(batch)
            try:
                values = self._session.run(self.output_names, feed)
            except ORT_ERRORS as exc:
                raise self._failure(self._session, self._reference, feed, first, exc, self.name) from exc
            yield first, feed, dict(zip(self.output_names, values))
            first += _count(feed)

    def _failure(self, runner: Runner, model: object, feed: Mapping[str, np.ndarray], first: int, exc: BaseException,
                 name: str) -> BaseException:
        """What to raise when a user's model (`runner`, from `model`) failed on `feed`: a TrtqError naming the
        sample where onnxruntime fails on it (see `explain_run_failure`), else `exc` itself."""
        reference = runner.session if isinstance(runner, OrtRunner) else model
        if not isinstance(reference, (ort.InferenceSession, onnx.ModelProto)):
            return exc
        problem = explain_run_failure(reference, feed, first, name, str(self.dataset.source),
                                      f"pass --batch-size 1 (it is {self.batch_size})")
        return problem if problem is not None else exc

    def _batches(self, order: Sequence[int] | None = None) -> Iterator[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        if self._store.complete:
            return (self._store[i] for i in (order if order is not None else range(len(self._store))))
        return self._run_reference()

    def _noisiest_first(self) -> list[int]:
        """Cached batches, those that were noisiest in earlier evaluations first (spread order among equals)."""
        spread = spread_order(len(self._store))
        if self._noise is None:
            return spread
        rank = {index: position for position, index in enumerate(spread)}
        noise = self._noise
        return sorted(spread, key=lambda i: (-noise[i], rank[i]))

    def subset(self, max_samples: int) -> Dataset:
        """At most `max_samples` of the data (whole cached batches, spread over the data set), as a Dataset.

        From the cache when the batches are kept (no data is read again), else the data set itself.
        """
        if not self._store.complete or self.samples <= max_samples:
            return self.dataset
        feeds, count = [], 0
        for i in spread_order(len(self._store)):
            if count >= max_samples:
                break
            feed = self._store[i][1]
            feeds.append(feed)
            count += _count(feed)
        return CachedBatches(self.dataset, feeds, count)

    def evaluate(
        self,
        candidate: onnx.ModelProto | ort.InferenceSession | Runner,
        label: str = "candidate",
        decide: Callable[[Evaluation], bool] | None = None,
        user_model: str | None = None,
    ) -> Evaluation:
        """Run `candidate` over the data and score it against the FP32 outputs.

        `user_model` names a candidate the user gave (`trtq compare`): where it fails on data the FP32
        model runs, that is theirs to fix (one sentence); a candidate trtq made keeps the traceback of
        its failure, a bug in trtq.

        With `decide`, cached batches come noisiest first (by earlier evaluations; else spread
        over the data set) and `decide` sees the scores so far after each batch; when it returns
        True the evaluation stops there (`complete` is then False unless that was the last batch).
        """
        start = time.perf_counter()
        session = self._as_runner(candidate)
        produced = session.output_names
        missing = [name for name in self.output_names if name not in produced]
        if missing:
            raise TrtqError(
                f"{user_model or label} has no output {missing[0]!r}; the FP32 model's outputs are {self.output_names}.",
                "compare a quantized model with the FP32 model it was made from.",
            )
        unfed = [i.name for i in session.session.get_inputs() if i.name not in self.dataset.input_names] \
            if isinstance(session, OrtRunner) else []
        if unfed:
            raise TrtqError(
                f"{user_model or label} takes input {unfed[0]!r}, which the FP32 model does not have (its inputs are "
                f"{list(self.dataset.input_names)}).",
                "compare a quantized model with the FP32 model it was made from.",
            )
        accumulators = {name: OutputAccumulator(name, None if self.class_scores is None else name in self.class_scores)
                        for name in self.output_names}
        masked = set(self.mask.outputs) if self.mask is not None else set()
        scorer = self.task.scorer() if self.task else None
        with tqdm(
            total=self.samples,
            desc=label[:40],
            unit="sample",
            disable=not self.progress,
            dynamic_ncols=True,
            leave=False,
        ) as bar:
            done = 0
            order = self._noisiest_first() if decide is not None and self._store.complete else None
            for position, (first, feed, ref) in enumerate(self._batches(order)):
                try:
                    values = dict(zip(self.output_names, session.run(self.output_names, feed)))
                except ORT_ERRORS as exc:
                    if user_model is None:
                        raise
                    raise self._failure(session, candidate, feed, first, exc, user_model) from exc
                noise = 0.0
                for name in self.output_names:
                    before = accumulators[name].err_sq
                    if name in masked:
                        mask = self.mask.input  # type: ignore[union-attr]
                        accumulators[name].update(ref[name], values[name], self.mask.positions(feed[mask]), mask)  # type: ignore[union-attr]
                    else:
                        accumulators[name].update(ref[name], values[name])
                    if self.signal_power[name] > 0:
                        noise = max(noise, (accumulators[name].err_sq - before) / self.signal_power[name])
                if self._noise is not None:
                    self._noise[order[position] if order is not None else position] = noise
                if scorer is not None:
                    scorer.update(values, ref, first, _count(feed))
                done += _count(feed)
                bar.update(_count(feed))
                if decide is not None and done < self.samples and decide(
                    self._scores(accumulators, scorer, start, complete=False)
                ):
                    break
        self.evaluations += 1
        return self._scores(accumulators, scorer, start, complete=done >= self.samples)

    def evaluate_each(
        self,
        produce: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]],
                          Iterator[tuple[str, Mapping[str, np.ndarray]]]],
        keys: Sequence[str],
        label: str = "candidates",
    ) -> dict[str, Evaluation]:
        """Score many candidates in one pass over the batches: `produce(feed, fp32_outputs)` yields, per
        key, that candidate's outputs for the batch (one candidate's at a time, so only one is held).
        For candidates that share work per batch (exact sensitivity runs FP32 once per batch and each
        layer's model only from the layer on)."""
        start = time.perf_counter()
        masked = set(self.mask.outputs) if self.mask is not None else set()
        accumulators = {key: {name: OutputAccumulator(name, None if self.class_scores is None else
                                                      name in self.class_scores) for name in self.output_names}
                        for key in keys}
        scorers = {key: self.task.scorer() if self.task else None for key in keys}
        with tqdm(total=self.samples, desc=label[:40], unit="sample", disable=not self.progress, dynamic_ncols=True,
                  leave=False) as bar:
            for first, feed, ref in self._batches():
                for key, values in produce(feed, ref):
                    for name in self.output_names:
                        if name in masked:
                            mask = self.mask.input  # type: ignore[union-attr]
                            accumulators[key][name].update(ref[name], values[name],
                                                           self.mask.positions(feed[mask]), mask)  # type: ignore[union-attr]
                        else:
                            accumulators[key][name].update(ref[name], values[name])
                    scorer = scorers[key]
                    if scorer is not None:
                        scorer.update(values, ref, first, _count(feed))
                bar.update(_count(feed))
        self.evaluations += len(keys)
        return {key: self._scores(accumulators[key], scorers[key], start, complete=True) for key in keys}

    def _as_runner(self, model: onnx.ModelProto | ort.InferenceSession | Runner) -> Runner:
        if isinstance(model, onnx.ModelProto):
            return self.make_runner(model)
        if isinstance(model, ort.InferenceSession):
            return OrtRunner(model)
        return model

    def _scores(
        self, accumulators: Mapping[str, OutputAccumulator], scorer: TaskScorer | None, start: float, complete: bool
    ) -> Evaluation:
        return Evaluation(
            outputs=tuple(acc.result() for acc in accumulators.values()),
            task=scorer.result() if scorer is not None else None,
            seconds=time.perf_counter() - start,
            complete=complete,
            sample_sums={name: acc.sample_sums() for name, acc in accumulators.items()},
            mask=self.mask,
        )

    def task_comparison(self, evaluation: Evaluation) -> TaskComparison | None:
        """FP32 vs candidate task metrics, when a task is set."""
        if self.reference_scores is None or evaluation.task is None:
            return None
        return TaskComparison(self.reference_scores, evaluation.task)


def _count(feed: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(feed.values())))


def _add_masked_power(sums: dict[str, float], outputs: Mapping[str, np.ndarray], mask: np.ndarray) -> None:
    """Add each output's power over the positions `mask` marks, for outputs whose leading dims it covers."""
    for name, value in outputs.items():
        marked = leading_mask(np.shape(value), mask)
        if marked is None:
            continue
        x = np.asarray(value)
        x = x.astype(np.float32) if x.dtype != np.float64 else x
        x = x.reshape(marked.size, -1)
        sums[name] = sums.get(name, 0.0) + float(np.einsum("pe,pe,p->", x, x, marked.reshape(-1).astype(x.dtype)))


def spread_order(n: int) -> list[int]:
    """0..n-1 in an order whose every prefix is spread over the range (bit-reversal order).

    Data sets are often sorted (class sub-folders), so a prefix in file order would see few classes.
    """
    bits = max(1, (n - 1).bit_length())
    order = sorted(range(1 << bits), key=lambda i: int(f"{i:0{bits}b}"[::-1], 2))
    return [i for i in order if i < n]


class CachedBatches(Dataset):
    """Batches already in memory (a subset of `parent`'s samples), re-iterable like any Dataset."""

    def __init__(self, parent: Dataset, feeds: list[dict[str, np.ndarray]], count: int) -> None:
        super().__init__(parent.source, parent.inputs, parent.shapes, count,
                         f"{count} of the samples of {parent.description}")
        self._feeds = feeds

    def batches(self, batch_size: int, only: Collection[int] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """The cached batches as they are (their size is the evaluator's batch size); `only`: those at these indices."""
        if only is None:
            return iter(self._feeds)
        wanted = set(only)
        return (feed for index, feed in enumerate(self._feeds) if index in wanted)
