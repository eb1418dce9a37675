"""Run candidate models against an FP32 reference on a fixed data set, many times, cheaply.

Sensitivity analysis and automatic mixed precision evaluate dozens of candidates on the same
samples. The Evaluator runs the FP32 model once, keeps the input batches and reference outputs
in memory when they fit a byte budget (else re-reads the data and re-runs the reference on every
evaluation), and scores each candidate on output agreement (`OutputMetrics`) and, when a task is
given, on the task metric (`TaskScores`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from trtq.calibrate.ort_failures import ORT_ERRORS, BatchSizeError, explain_run_failure, explain_session_failure
from trtq.calibrate.ort_session import make_session
from trtq.data import Dataset
from trtq.errors import TrtqError
from trtq.evaluate.metrics import OutputAccumulator, OutputMetrics
from trtq.evaluate.tasks import Task, TaskComparison, TaskScorer, TaskScores

CACHE_BYTES = 512 << 20
"""Input batches plus FP32 outputs up to this size stay in memory between evaluations."""


@dataclass(frozen=True)
class Evaluation:
    """How one candidate model did: per-output agreement with FP32, and the task metric."""

    outputs: tuple[OutputMetrics, ...]
    task: TaskScores | None
    seconds: float

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
        }


class Evaluator:
    """Scores candidates of one FP32 `reference` model (or a session running it) on `dataset`, with an
    optional task metric."""

    def __init__(
        self,
        reference: onnx.ModelProto | ort.InferenceSession,
        dataset: Dataset,
        *,
        batch_size: int = 1,
        task: Task | None = None,
        cache_bytes: int = CACHE_BYTES,
        progress: bool = False,
        name: str = "the FP32 model",
    ) -> None:
        self.dataset = dataset
        self.name = name
        self.batch_size = batch_size
        self.task = task
        self.progress = progress
        if isinstance(reference, ort.InferenceSession):
            self.output_names = [o.name for o in reference.get_outputs()]
            self._session: ort.InferenceSession | None = reference
        else:
            self.output_names = [o.name for o in reference.graph.output]
            self._session = None
        self._reference = reference
        self._cache: list[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]] | None = []
        self._cache_bytes = cache_bytes
        self.evaluations = 0
        start = time.perf_counter()
        try:
            scorer = self._first_pass()
        except BatchSizeError as exc:  # the model runs one sample at a time only: evaluate it so
            if self.batch_size == 1:
                raise
            warnings.warn(f"{exc.message} Evaluating one sample at a time instead.", stacklevel=2)
            self.batch_size, self._cache = 1, []
            scorer = self._first_pass()
        self.reference_scores = scorer.result() if scorer is not None else None
        self.reference_seconds = time.perf_counter() - start

    def _first_pass(self) -> TaskScorer | None:
        """Run the FP32 model over the data once: count the samples, keep what fits the cache, score the task."""
        scorer = self.task.scorer() if self.task else None
        samples = 0
        cached = 0
        for first, feed, ref in self._run_reference():
            samples += _count(feed)
            if scorer is not None:
                scorer.update(ref, ref, first, _count(feed))
            if self._cache is not None:
                cached += sum(a.nbytes for a in feed.values()) + sum(a.nbytes for a in ref.values())
                if cached <= self._cache_bytes:
                    self._cache.append((first, feed, ref))
                else:
                    self._cache = None
        if samples == 0:
            raise TrtqError(f"Data {self.dataset.description} yielded no samples.", "pass a non-empty data source.")
        self.samples = samples
        return scorer

    @property
    def cached(self) -> bool:
        """Whether inputs and FP32 outputs are held in memory."""
        return self._cache is not None

    def _run_reference(self) -> Iterator[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """The FP32 model over the data; it is the user's model, so its failures are the user's to fix."""
        if self._session is None:
            try:
                self._session = make_session(self._reference)  # type: ignore[arg-type]
            except ORT_ERRORS as exc:
                problem = explain_session_failure(self._reference, self.name)  # type: ignore[arg-type]
                if problem is None:
                    raise
                raise problem from exc
        first = 0
        for batch in self.dataset.batches(self.batch_size):
            feed = dict(batch)
            try:
                values = self._session.run(self.output_names, feed)
            except ORT_ERRORS as exc:
                raise self._failure(self._session, feed, first, exc, self.name) from exc
            yield first, feed, dict(zip(self.output_names, values))
            first += _count(feed)

    def _failure(self, session: ort.InferenceSession, feed: Mapping[str, np.ndarray], first: int,
                 exc: BaseException, name: str) -> BaseException:
        """What to raise when `session` (a user's model) failed on `feed`: a TrtqError naming the sample."""
        problem = explain_run_failure(session, feed, first, name, str(self.dataset.source),
                                      f"pass --batch-size 1 (it is {self.batch_size})")
        return problem if problem is not None else exc

    def _batches(self) -> Iterator[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        if self._cache is not None:
            return iter(self._cache)
        return self._run_reference()

    def evaluate(self, candidate: onnx.ModelProto | ort.InferenceSession, label: str = "candidate",
                 user_model: str | None = None) -> Evaluation:
        """Run `candidate` over the data and score it against the FP32 outputs.

        `user_model` names a candidate the user gave (`trtq compare`): where it fails on the data
        that the FP32 model runs, the error is theirs (one sentence); a candidate trtq made keeps
        the traceback of its failure, a bug in trtq.
        """
        start = time.perf_counter()
        session = candidate if isinstance(candidate, ort.InferenceSession) else make_session(candidate)
        produced = [o.name for o in session.get_outputs()]
        missing = [name for name in self.output_names if name not in produced]
        if missing:
            raise TrtqError(
                f"{user_model or label} has no output {missing[0]!r}; the FP32 model's outputs are {self.output_names}.",
                "compare a quantized model with the FP32 model it was made from.",
            )
        unfed = [i.name for i in session.get_inputs() if i.name not in self.dataset.input_names]
        if unfed:
            raise TrtqError(
                f"{user_model or label} takes input {unfed[0]!r}, which the FP32 model does not have (its inputs are "
                f"{list(self.dataset.input_names)}).",
                "compare a quantized model with the FP32 model it was made from.",
            )
        accumulators = {name: OutputAccumulator(name) for name in self.output_names}
        scorer = self.task.scorer() if self.task else None
        with tqdm(
            total=self.samples,
            desc=label[:40],
            unit="sample",
            disable=not self.progress,
            dynamic_ncols=True,
            leave=False,
        ) as bar:
            for first, feed, ref in self._batches():
                try:
                    values = dict(zip(self.output_names, session.run(self.output_names, feed)))
                except ORT_ERRORS as exc:
                    if user_model is None:
                        raise
                    raise self._failure(session, feed, first, exc, user_model) from exc
                for name in self.output_names:
                    accumulators[name].update(ref[name], values[name])
                if scorer is not None:
                    scorer.update(values, ref, first, _count(feed))
                bar.update(_count(feed))
        self.evaluations += 1
        return Evaluation(
            outputs=tuple(acc.result() for acc in accumulators.values()),
            task=scorer.result() if scorer is not None else None,
            seconds=time.perf_counter() - start,
        )

    def task_comparison(self, evaluation: Evaluation) -> TaskComparison | None:
        """FP32 vs candidate task metrics, when a task is set."""
        if self.reference_scores is None or evaluation.task is None:
            return None
        return TaskComparison(self.reference_scores, evaluation.task)


def _count(feed: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(feed.values())))
