"""The contract every task metric meets, and the scores tasks hand back.

A task (`Task`) is bound to one data set and hands out scorers (`TaskScorer`): one per evaluated
model, fed batch by batch with the model's outputs and the FP32 reference outputs of the same
samples; a scorer's result is `TaskScores`. Without labels, the FP32 model's own outputs are the
ground truth and the numbers are agreement, not accuracy; every result says which
(`TaskScores.against`). Tasks live in `trtq.evaluate.classification` and
`trtq.evaluate.detection`; `trtq.evaluate.tasks.make_task` picks one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from trtq.evaluate.metrics import OutputMetrics

TASKS = ("classify", "detect")
AGAINST_LABELS = "labels"
AGAINST_FP32 = "fp32"
"""`TaskScores.against`: measured against ground-truth labels, or against the FP32 model's outputs."""


@dataclass(frozen=True)
class ScoredAgainst:
    """What a task metric was scored against: how many reference objects (e.g. boxes) in how many
    samples, from where, and a warning when they are too few for the metric to rank models."""

    against: str
    source: str
    """e.g. "COCO annotations ann.json" or "FP32 detections with score >= 0.25"."""
    objects: int
    samples: int
    samples_with_objects: int
    unit: str = "boxes"
    warning: str | None = None

    def sentence(self) -> str:
        """e.g. "scored against 9 boxes (FP32 detections with score >= 0.25) in 7 of 32 images"."""
        return (f"scored against {self.objects} {self.unit} ({self.source}) in {self.samples_with_objects} of "
                f"{self.samples} images")

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return {"against": self.against, "source": self.source, "objects": self.objects, "samples": self.samples,
                "samples_with_objects": self.samples_with_objects, "unit": self.unit, "warning": self.warning,
                "sentence": self.sentence()}

    @classmethod
    def from_dict(cls, data: Mapping) -> ScoredAgainst:
        """Inverse of `to_dict`."""
        return cls(str(data["against"]), str(data["source"]), int(data["objects"]), int(data["samples"]),
                   int(data["samples_with_objects"]), str(data.get("unit", "boxes")), data.get("warning"))


@dataclass(frozen=True)
class TaskScores:
    """Task metrics of one model, in percent: e.g. {"top1": 98.3, "top5": 100.0} or {"map": .., "map50": ..}.

    `scored_against` says what the metric was measured against (detection: reference boxes), and
    `parts` holds the agreement of parts of an output measured apart (a YOLO head's box values and
    its class scores), for a candidate model.
    """

    task: str
    against: str
    values: dict[str, float]
    samples: int
    scored_against: ScoredAgainst | None = None
    parts: tuple[OutputMetrics, ...] = ()

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        out = {"task": self.task, "against": self.against, "values": dict(self.values), "samples": self.samples}
        if self.scored_against is not None:
            out["scored_against"] = self.scored_against.to_dict()
        if self.parts:
            out["parts"] = [p.to_dict() for p in self.parts]
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> TaskScores:
        """Inverse of `to_dict`."""
        against = data.get("scored_against")
        return cls(
            str(data["task"]),
            str(data["against"]),
            {k: float(v) for k, v in data["values"].items()},
            int(data["samples"]),
            ScoredAgainst.from_dict(against) if against else None,
            tuple(OutputMetrics(**{**p, **{k: float(v) for k, v in p.items() if v in ("inf", "-inf")}})
                  for p in data.get("parts", ())),
        )


@dataclass(frozen=True)
class TaskComparison:
    """Task metrics of the FP32 reference and a candidate, and the drop (reference - candidate, in points)."""

    reference: TaskScores
    candidate: TaskScores

    @property
    def scored_against(self) -> ScoredAgainst | None:
        """What both models were scored against (the same reference)."""
        return self.candidate.scored_against or self.reference.scored_against

    @property
    def drops(self) -> dict[str, float]:
        """Percentage points lost per metric (positive = the candidate is worse)."""
        return {k: self.reference.values[k] - v for k, v in self.candidate.values.items() if k in self.reference.values}

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return {"reference": self.reference.to_dict(), "candidate": self.candidate.to_dict(), "drops": self.drops}


class TaskScorer(Protocol):
    """Accumulates one model's task metric over the data set, batch by batch."""

    def update(
        self, outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], start: int, count: int | None = None
    ) -> None:
        """Add a batch: the model's outputs, the FP32 outputs of the same samples, the index of its first
        sample and its sample count (outputs without a batch dim cannot tell it)."""

    def result(self) -> TaskScores:
        """The metrics over everything seen."""


class Task(Protocol):
    """A task metric bound to one data set."""

    name: str
    against: str

    def scorer(self) -> TaskScorer:
        """A fresh scorer for one model."""

    def describe(self) -> str:
        """One line: what is measured against what."""
