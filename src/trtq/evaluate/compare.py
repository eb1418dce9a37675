"""`trtq compare`: run the FP32 and the quantized model on the same samples and measure agreement,
plus a task metric (top-1/top-5, mAP) when one is given."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import onnx
import onnxruntime as ort

from trtq.data import Dataset
from trtq.evaluate.evaluator import Evaluator
from trtq.evaluate.metrics import OutputMetrics
from trtq.evaluate.scoring import MaskRequest, TokenMask
from trtq.evaluate.tasks import Task, TaskComparison
from trtq.runtime import Runner, RunnerFactory


@dataclass(frozen=True)
class ComparisonReport:
    """Per-output agreement of a quantized model with its FP32 reference, and the task metric."""

    reference: str
    candidate: str
    data: str
    samples: int
    outputs: tuple[OutputMetrics, ...]
    seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)
    task: TaskComparison | None = None
    shape_notes: tuple[str, ...] = ()
    """Which input shapes were taken from the data."""
    mask: TokenMask | None = None
    """The attention mask whose marked positions the masked outputs were scored over."""
    mask_notes: tuple[str, ...] = ()
    """Why no mask was taken where one might have been (several candidates)."""

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "data": self.data,
            "samples": self.samples,
            "seconds": round(self.seconds, 3),
            "outputs": [o.to_dict() for o in self.outputs],
            "notes": list(self.notes),
            "task": self.task.to_dict() if self.task else None,
            "shape_notes": list(self.shape_notes),
            "mask": self.mask.to_dict() if self.mask else None,
            "mask_notes": list(self.mask_notes),
        }


def compare_models(
    reference: onnx.ModelProto | ort.InferenceSession | Runner,
    candidate: onnx.ModelProto | ort.InferenceSession | Runner,
    dataset: Dataset,
    *,
    task: Task | None = None,
    batch_size: int = 1,
    reference_name: str = "fp32",
    candidate_name: str = "quantized",
    runner: RunnerFactory | None = None,
    progress: bool = True,
    mask: MaskRequest = True,
    graph: onnx.ModelProto | None = None,
) -> ComparisonReport:
    """Run both models over `dataset` (onnxruntime on the CPU, or what `runner` makes): per-output
    metrics and, with a task, FP32-vs-candidate task scores. `mask` and `graph` as for `Evaluator`:
    outputs an attention mask covers are scored over real tokens."""
    start = time.perf_counter()
    evaluator = Evaluator(reference, dataset, batch_size=batch_size, task=task, runner=runner, progress=progress,
                          mask=mask, graph=graph, name=reference_name)
    evaluation = evaluator.evaluate(candidate, label="comparing", user_model=candidate_name)
    return ComparisonReport(
        reference=reference_name,
        candidate=candidate_name,
        data=dataset.description,
        samples=evaluator.samples,
        outputs=evaluation.outputs,
        seconds=time.perf_counter() - start,
        notes=(task.describe(),) if task is not None else (),
        task=evaluator.task_comparison(evaluation),
        shape_notes=(dataset.shape_note,) if dataset.shape_note else (),
        mask=evaluator.mask,
        mask_notes=evaluator.mask_notes,
    )
