"""Run candidate models against an FP32 reference on a fixed data set, many times, cheaply.

Sensitivity analysis and automatic mixed precision evaluate dozens of candidates on the same
samples. The Evaluator runs the FP32 model once, keeps the input batches and reference outputs
in memory when they fit a byte budget (else re-reads the data and re-runs the reference on every
evaluation), and scores each candidate on output agreement (`OutputMetrics`) and, when a task is
given, on the task metric (`TaskScores`).
"""

from __future__ import annotations

import os
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from trtq.data import Dataset
from trtq.errors import TrtqError
from trtq.evaluate.metrics import OutputAccumulator, OutputMetrics
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
        np.savez(path, **{f"a{i}": a for i, a in enumerate(arrays.values())})
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
    optional task metric."""

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
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.task = task
        self.progress = progress
        self._make_runner = runner or runner_factory("cpu")
        if isinstance(reference, onnx.ModelProto):
            self.output_names = [o.name for o in reference.graph.output]
            self._session: Runner | None = None
        else:
            self._session = self._as_runner(reference)
            self.output_names = list(self._session.output_names)
        self._reference = reference
        self._store = _BatchStore(cache_bytes, disk_bytes)
        weakref.finalize(self, self._store.close)
        self.evaluations = 0
        start = time.perf_counter()
        scorer = task.scorer() if task else None
        signal = {name: OutputAccumulator(name) for name in self.output_names}
        samples = 0
        for first, feed, ref in self._run_reference():
            samples += _count(feed)
            if scorer is not None:
                scorer.update(ref, ref, first, _count(feed))
            for name in self.output_names:
                signal[name].update(ref[name], ref[name])
            self._store.add(first, feed, ref)
        if samples == 0:
            raise TrtqError(f"Data {dataset.description} yielded no samples.", "pass a non-empty data source.")
        self.samples = samples
        self.signal_power = {name: acc.ref_sq for name, acc in signal.items()}
        """Per output, the FP32 outputs' summed power over every sample (the SNR's numerator)."""
        self._noise = np.zeros(len(self._store)) if self._store.complete else None
        self.reference_scores = scorer.result() if scorer is not None else None
        self.reference_seconds = time.perf_counter() - start

    @property
    def cached(self) -> bool:
        """Whether inputs and FP32 outputs are kept (in memory or in temporary files)."""
        return self._store.complete

    def _run_reference(self) -> Iterator[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        if self._session is None:
            assert isinstance(self._reference, onnx.ModelProto)
            self._session = self._make_runner(self._reference)
        first = 0
        for batch in self.dataset.batches(self.batch_size):
            feed = dict(batch)
            values = self._session.run(self.output_names, feed)
            yield first, feed, dict(zip(self.output_names, values))
            first += _count(feed)

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
    ) -> Evaluation:
        """Run `candidate` over the data and score it against the FP32 outputs.

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
                f"{label} has no output {missing[0]!r}; the FP32 model's outputs are {self.output_names}.",
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
            done = 0
            order = self._noisiest_first() if decide is not None and self._store.complete else None
            for position, (first, feed, ref) in enumerate(self._batches(order)):
                values = dict(zip(self.output_names, session.run(self.output_names, feed)))
                noise = 0.0
                for name in self.output_names:
                    before = accumulators[name].err_sq
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

    def _as_runner(self, model: onnx.ModelProto | ort.InferenceSession | Runner) -> Runner:
        if isinstance(model, onnx.ModelProto):
            return self._make_runner(model)
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
        )

    def task_comparison(self, evaluation: Evaluation) -> TaskComparison | None:
        """FP32 vs candidate task metrics, when a task is set."""
        if self.reference_scores is None or evaluation.task is None:
            return None
        return TaskComparison(self.reference_scores, evaluation.task)


def _count(feed: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(feed.values())))


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

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """The cached batches as they are (their size is the evaluator's batch size)."""
        return iter(self._feeds)
