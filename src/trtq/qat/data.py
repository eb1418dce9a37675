"""Fine-tuning data held in memory, with a batch order that is a pure function of the step.

Step `k` reads batch `k mod batches_per_epoch` of the permutation seeded by (seed, epoch), so a run
resumed at step `k` sees exactly the batches an uninterrupted run would have seen: no iterator
state to save. Samples are the data set's inputs (already preprocessed and checked by
`trtq.data`), optionally with one class label each.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from trtq.data import Dataset
from trtq.errors import TrtqError

MEMORY_BUDGET = 4 << 30
"""Fine-tuning samples are held in memory up to this many bytes."""

DEVICE_BUDGET = 1 << 30
"""Samples up to this many bytes move to the training device once, so batches never cross the bus."""


@dataclass(frozen=True)
class Batch:
    """One training batch: inputs by name (on the device), labels, and the sample indices."""

    feeds: dict[str, torch.Tensor]
    labels: torch.Tensor | None
    indices: torch.Tensor


class TrainingData:
    """Samples {input name: array (N, ...)} and optional labels (N,), batched by step."""

    def __init__(self, arrays: Mapping[str, np.ndarray], labels: Sequence[int] | np.ndarray | None,
                 description: str, batch_size: int, seed: int = 0) -> None:
        if not arrays:
            raise TrtqError(f"Fine-tuning data {description} has no inputs.", "pass data for the model's inputs.")
        counts = {name: len(a) for name, a in arrays.items()}
        self.num_samples = next(iter(counts.values()))
        if len(set(counts.values())) != 1:
            raise TrtqError(f"Fine-tuning data {description} has different sample counts per input: {counts}.",
                            "give every input the same number of samples.")
        if self.num_samples == 0:
            raise TrtqError(f"Fine-tuning data {description} holds no samples.", "pass a non-empty data source.")
        if labels is not None and len(labels) != self.num_samples:
            raise TrtqError(f"Fine-tuning data {description} has {self.num_samples} samples but {len(labels)} labels.",
                            "give one label per sample.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise TrtqError(f"Batch size {batch_size!r} is not a positive integer.", "use a batch size >= 1.")
        self.arrays = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.description = description
        self.batch_size = min(batch_size, self.num_samples)
        self.seed = seed
        self.batches_per_epoch = self.num_samples // self.batch_size
        self._order: tuple[int, np.ndarray] | None = None

    @classmethod
    def from_dataset(cls, dataset: Dataset, batch_size: int, labels: Sequence[int] | None = None,
                     seed: int = 0, budget: int = MEMORY_BUDGET) -> TrainingData:
        """Read a whole `trtq.data` data set into memory (failing clearly past `budget` bytes)."""
        blocks: list[dict[str, np.ndarray]] = []
        held = 0
        for batch in dataset.batches(min(64, dataset.num_samples or 64)):
            held += sum(a.nbytes for a in batch.values())
            if held > budget:
                raise TrtqError(
                    f"Fine-tuning data {dataset.description} takes more than {budget >> 20} MiB in memory.",
                    "use fewer samples (--limit N) for fine-tuning.",
                )
            blocks.append(batch)
        if not blocks:
            raise TrtqError(f"Fine-tuning data {dataset.description} yielded no samples.",
                            "pass a non-empty data source.")
        arrays = {name: np.concatenate([b[name] for b in blocks]) for name in blocks[0]}
        return cls(arrays, labels, dataset.description, batch_size, seed)

    @property
    def device(self) -> torch.device:
        """Where the samples are held."""
        return next(iter(self.arrays.values())).device

    def to(self, device: torch.device, budget: int = DEVICE_BUDGET) -> TrainingData:
        """Keep the samples on `device` when they take at most `budget` bytes (else on the host)."""
        held = sum(a.numel() * a.element_size() for a in self.arrays.values())
        if held <= budget:
            self.arrays = {name: a.to(device) for name, a in self.arrays.items()}
            self.labels = None if self.labels is None else self.labels.to(device)
        return self

    def order(self, epoch: int) -> np.ndarray:
        """The sample permutation of one epoch (deterministic in seed and epoch)."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_samples))
        return self._order[1]

    def indices(self, step: int) -> np.ndarray:
        """Sample indices of the batch at `step` (0-based)."""
        epoch, position = divmod(step, self.batches_per_epoch)
        start = position * self.batch_size
        return self.order(epoch)[start:start + self.batch_size]

    def batch(self, step: int, device: torch.device) -> Batch:
        """The batch at `step`, moved to `device`."""
        idx = torch.from_numpy(self.indices(step))
        first = next(iter(self.arrays.values()))
        at = idx.to(first.device, non_blocking=True)
        feeds = {name: a[at].to(device, non_blocking=True) for name, a in self.arrays.items()}
        labels = None if self.labels is None else self.labels[at.to(self.labels.device)].to(device)
        return Batch(feeds, labels, at)

    def sequential(self, batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """All samples in order, as numpy batches (evaluation, teacher outputs)."""
        size = batch_size or self.batch_size
        for start in range(0, self.num_samples, size):
            yield {name: a[start:start + size].cpu().numpy() for name, a in self.arrays.items()}
