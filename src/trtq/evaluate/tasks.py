"""Task metrics: what a quantized model's users care about, beside raw output agreement.

- classification: top-1 / top-5 accuracy against labels (class sub-folders of an image folder,
  a label file, or a .npy of class indices; see `trtq.evaluate.classification`);
- detection: COCO mAP@0.5 and mAP@0.5:0.95 (see `trtq.evaluate.detection`, boxes from
  `trtq.evaluate.postprocess`).

`make_task` binds one to a data set from CLI-style options. The contract both meet (`Task`,
`TaskScorer`, `TaskScores`) is `trtq.evaluate.task_contract`, re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trtq.data import Dataset
from trtq.errors import TrtqError
from trtq.evaluate.classification import (
    ClassificationScorer,
    ClassificationTask,
    Labels,
    load_labels,
    pick_scores_output,
)
from trtq.evaluate.task_contract import (
    AGAINST_FP32,
    AGAINST_LABELS,
    TASKS,
    ScoredAgainst,
    Task,
    TaskComparison,
    TaskScorer,
    TaskScores,
)
from trtq.model import TensorSpec

__all__ = [
    "AGAINST_FP32",
    "AGAINST_LABELS",
    "TASKS",
    "ClassificationScorer",
    "ClassificationTask",
    "Labels",
    "ScoredAgainst",
    "Task",
    "TaskComparison",
    "TaskScorer",
    "TaskScores",
    "check_task_options",
    "load_labels",
    "make_task",
    "pick_scores_output",
]


def check_task_options(task: str, *, labels: object = None, output: object = None, coco: object = None,
                       postprocess: object = None, ref_conf: object = None) -> None:
    """Refuse a task's detail options that the other task would use and this one would ignore."""
    if task not in TASKS:
        raise TrtqError(f"--task {task!r} is not one of {', '.join(TASKS)}.", "pick one of those.")
    if task == "classify" and ref_conf is not None:
        raise TrtqError("--ref-conf applies to --task detect (FP32 pseudo-boxes), not --task classify.",
                        "drop --ref-conf.")
    unused = {"classify": (("--coco", coco), ("--postprocess", postprocess)),
              "detect": (("--labels", labels), ("--task-output", output))}[task]
    for option, value in unused:
        if value is not None:
            raise TrtqError(f"{option} does not apply to --task {task}.", f"drop {option}, or use the other --task.")


def make_task(
    task: str,
    dataset: Dataset,
    outputs: Sequence[TensorSpec],
    *,
    labels: str | Path | None = None,
    output: str | None = None,
    coco: str | Path | None = None,
    postprocess: str | None = None,
    use_labels: bool = True,
    ref_conf: float | None = None,
) -> Task:
    """A task bound to `dataset` and the model's `outputs`, from CLI-style options.

    For `classify`, labels come from `labels`, else from the data's class folders when it has
    them (and `use_labels`), else the FP32 outputs serve as ground truth. For `detect`,
    `coco` is a COCO annotation JSON (else FP32 detections with score >= `ref_conf` are the
    ground truth) and `postprocess` a preset name or a .py file (None: yolo when the outputs have
    its layout; see `trtq.evaluate.postprocess`).
    """
    check_task_options(task, labels=labels, output=output, coco=coco, postprocess=postprocess, ref_conf=ref_conf)
    if task == "classify":
        name = pick_scores_output(outputs, output)
        bound: Labels | None = None
        if labels is not None:
            bound = load_labels(labels, dataset)
        elif use_labels and dataset.labels is not None:
            bound = load_labels(None, dataset)
        return ClassificationTask(name, bound)
    if task == "detect":
        from trtq.evaluate.detection import DetectionTask

        return DetectionTask.create(dataset, postprocess, coco, ref_conf)
    raise TrtqError(f"--task {task!r} is not one of {', '.join(TASKS)}.", "pick one of those.")
