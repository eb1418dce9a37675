"""Run candidate models against an FP32 reference on a fixed data set, many times, cheaply.

Sensitivity analysis and automatic mixed precision evaluate dozens of candidates on the same
samples. The Evaluator runs the FP32 model once, keeps the input batches and reference outputs
in memory when they fit a byte budget (else re-reads the data and re-runs the reference on every
evaluation), and scores each candidate on output agreement (`OutputMetrics`) and, when a task is
given, on the task metric (`TaskScores`).

Token models are scored over real tokens: the reference pass also detects the attention mask
(`trtq.evaluate.scoring`), and outputs it covers are scored over the positions it marks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from trtq.calibrate.ort_session import make_session
from trtq.data import Dataset
from trtq.errors import TrtqError
from trtq.evaluate.metrics import OutputAccumulator, OutputMetrics
from trtq.evaluate.scoring import (
    MaskDetector,
    MaskRequest,
    TokenMask,
    class_score_outputs,
)
from trtq.evaluate.tasks import Task, TaskComparison, TaskScores

CACHE_BYTES = 512 << 20
"""Input batches plus FP32 outputs up to this size stay in memory between evaluations."""


@dataclass(frozen=True)
class Evaluation:
    """How one candidate model did: per-output agreement with FP32, and the task metric."""

    outputs: tuple[OutputMetrics, ...]
    task: TaskScores | None
    seconds: float
    mask: TokenMask | None = None
    """The attention mask whose marked positions the masked outputs were scored over."""

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
            "mask": self.mask.to_dict() if self.mask else None,
        }


class Evaluator:
    """Scores candidates of one FP32 `reference` model (or a session running it) on `dataset`, with an
    optional task metric.

    `mask`: True detects the attention mask, False scores every position, a name or a TokenMask
    (from an earlier detection) picks it. `graph`: the reference's graph when `reference` is a
    session (which outputs are class scores is read from it; without one, [N, C] outputs are).
    """

    def __init__(
        self,
        reference: onnx.ModelProto | ort.InferenceSession,
        dataset: Dataset,
        *,
        batch_size: int = 1,
        task: Task | None = None,
        cache_bytes: int = CACHE_BYTES,
        progress: bool = False,
        mask: MaskRequest | TokenMask = True,
        graph: onnx.ModelProto | None = None,
    ) -> None:
        self.dataset = dataset
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
        graph = reference if isinstance(reference, onnx.ModelProto) else graph
        forced = (getattr(task, "output", None),) if task is not None and task.name == "classify" else ()
        self.class_scores = class_score_outputs(graph, [f for f in forced if f]) if graph is not None else None
        detector = MaskDetector(dataset.inputs, False if isinstance(mask, TokenMask) else mask, dataset.description)
        self._cache: list[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]] | None = []
        self._cache_bytes = cache_bytes
        self.evaluations = 0
        start = time.perf_counter()
        scorer = task.scorer() if task else None
        samples = 0
        cached = 0
        for first, feed, ref in self._run_reference():
            samples += _count(feed)
            if scorer is not None:
                scorer.update(ref, ref, first, _count(feed))
            if detector.active:
                detector.update(feed, ref)
            if self._cache is not None:
                cached += sum(a.nbytes for a in feed.values()) + sum(a.nbytes for a in ref.values())
                if cached <= cache_bytes:
                    self._cache.append((first, feed, ref))
                else:
                    self._cache = None
        if samples == 0:
            raise TrtqError(f"Data {dataset.description} yielded no samples.", "pass a non-empty data source.")
        self.samples = samples
        if isinstance(mask, TokenMask):
            self.mask: TokenMask | None = mask
            self.mask_notes: tuple[str, ...] = ()
        else:
            self.mask, self.mask_notes = detector.result()
        self.reference_scores = scorer.result() if scorer is not None else None
        self.reference_seconds = time.perf_counter() - start

    @property
    def cached(self) -> bool:
        """Whether inputs and FP32 outputs are held in memory."""
        return self._cache is not None

    def _run_reference(self) -> Iterator[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        if self._session is None:
            self._session = make_session(self._reference)
        first = 0
        for batch in self.dataset.batches(self.batch_size):
            feed = dict(batch)
            values = self._session.run(self.output_names, feed)
            yield first, feed, dict(zip(self.output_names, values))
            first += _count(feed)

    def _batches(self) -> Iterator[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        if self._cache is not None:
            return iter(self._cache)
        return self._run_reference()

    def evaluate(self, candidate: onnx.ModelProto | ort.InferenceSession, label: str = "candidate") -> Evaluation:
        """Run `candidate` over the data and score it against the FP32 outputs."""
        start = time.perf_counter()
        session = candidate if isinstance(candidate, ort.InferenceSession) else make_session(candidate)
        produced = [o.name for o in session.get_outputs()]
        missing = [name for name in self.output_names if name not in produced]
        if missing:
            raise TrtqError(
                f"{label} has no output {missing[0]!r}; the FP32 model's outputs are {self.output_names}.",
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
            for first, feed, ref in self._batches():
                values = dict(zip(self.output_names, session.run(self.output_names, feed)))
                for name in self.output_names:
                    if name in masked:
                        mask = self.mask.input  # type: ignore[union-attr]
                        accumulators[name].update(ref[name], values[name], feed[mask], mask)
                    else:
                        accumulators[name].update(ref[name], values[name])
                if scorer is not None:
                    scorer.update(values, ref, first, _count(feed))
                bar.update(_count(feed))
        self.evaluations += 1
        return Evaluation(
            outputs=tuple(acc.result() for acc in accumulators.values()),
            task=scorer.result() if scorer is not None else None,
            seconds=time.perf_counter() - start,
            mask=self.mask,
        )

    def task_comparison(self, evaluation: Evaluation) -> TaskComparison | None:
        """FP32 vs candidate task metrics, when a task is set."""
        if self.reference_scores is None or evaluation.task is None:
            return None
        return TaskComparison(self.reference_scores, evaluation.task)


def _count(feed: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(feed.values())))
