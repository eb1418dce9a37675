"""Task metrics: what a quantized model's users care about, beside raw output agreement.

- classification: top-1 / top-5 accuracy against labels (class sub-folders of an image folder,
  a label file, or a .npy of class indices);
- detection: COCO mAP@0.5 and mAP@0.5:0.95 (see `trtq.evaluate.detection`).

Without labels, the FP32 model's own outputs are the ground truth and the numbers are
agreement, not accuracy; every result says which (`TaskScores.against`).

A task hands out scorers: one per evaluated model, fed batch by batch with the model's outputs
and the FP32 reference outputs of the same samples.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from trtq.data import Dataset
from trtq.errors import TrtqError
from trtq.evaluate.metrics import OutputMetrics
from trtq.model import TensorSpec

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


# ---------------------------------------------------------------------------------------------
# Labels


@dataclass(frozen=True)
class Labels:
    """One class index per sample of a data set, in the data set's order."""

    values: tuple[int, ...]
    class_names: tuple[str, ...] | None
    source: str


def load_labels(source: str | Path | None, dataset: Dataset) -> Labels:
    """The labels of `dataset`'s samples.

    `source` may be:
    - None or the data folder itself: the class sub-folders of an image-folder data set;
    - another folder with class sub-folders: labels matched to the data images by file name;
    - a `.npy` of integer class indices, one per sample in data order;
    - a text file (.txt/.csv/.tsv): one label per line in data order, or `file,label` lines
      (comma, tab or space separated) matched by file name. A label is a class index, or a
      class name when the data's class folders name the classes.
    """
    paths = _image_paths(dataset)
    folder_labels = getattr(dataset, "labels", None)
    folder_names = getattr(dataset, "class_names", None)
    if source is None or (Path(source).is_dir() and _same_path(Path(source), dataset.source)):
        if folder_labels is None:
            raise TrtqError(
                f"Data {dataset.description} has no labels: its images are not in class sub-folders.",
                "pass --labels FILE (one class index per line, or file,label lines), or put the images in "
                "one sub-folder per class.",
            )
        return Labels(tuple(int(v) for v in folder_labels), tuple(folder_names or ()) or None, str(dataset.source))
    path = Path(source)
    if not path.exists():
        raise TrtqError(f"Label source {path} does not exist.", "pass a label file or a folder with class sub-folders.")
    if path.is_dir():
        return _labels_from_folder(path, dataset, paths)
    if path.suffix.lower() == ".npy":
        return _labels_from_npy(path, dataset)
    return _labels_from_text(path, dataset, paths, folder_names)


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == Path(b).resolve()
    except OSError:
        return False


def _image_paths(dataset: Dataset) -> tuple[Path, ...] | None:
    paths = getattr(dataset, "image_paths", None)
    return tuple(paths) if paths is not None else None


def _check_count(count: int, dataset: Dataset, source: Path) -> None:
    if dataset.num_samples is not None and count != dataset.num_samples:
        raise TrtqError(
            f"Label source {source} has {count} labels, but data {dataset.description} has "
            f"{dataset.num_samples} samples.",
            "give exactly one label per sample, in the data's order (or file,label lines).",
        )


def _labels_from_npy(path: Path, dataset: Dataset) -> Labels:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise TrtqError(f"Label file {path} is not a readable .npy file ({exc}).", "save it with np.save().") from exc
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise TrtqError(
            f"Label file {path} holds a {array.dtype} array of shape {array.shape}; expected a 1-D integer array.",
            "save one integer class index per sample: np.save(path, labels.astype(np.int64)).",
        )
    _check_count(len(array), dataset, path)
    return Labels(tuple(int(v) for v in array), None, str(path))


def _labels_from_folder(root: Path, dataset: Dataset, paths: tuple[Path, ...] | None) -> Labels:
    if paths is None:
        raise TrtqError(
            f"Labels from folder {root} are matched to the data by image file name, but data "
            f"{dataset.description} has no files.",
            "pass a label file (one class index per line) for array or load_data() data.",
        )
    classes = sorted(e.name for e in root.iterdir() if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise TrtqError(
            f"Label folder {root} has no class sub-folders.", "put each class's images in its own sub-folder."
        )
    by_name: dict[str, int] = {}
    for index, name in enumerate(classes):
        for file in (root / name).rglob("*"):
            if file.is_file():
                by_name.setdefault(file.name, index)
    return Labels(_match(paths, by_name, root), tuple(classes), str(root))


def _match(paths: Sequence[Path], by_name: Mapping[str, int], source: Path) -> tuple[int, ...]:
    missing = [p.name for p in paths if p.name not in by_name]
    if missing:
        raise TrtqError(
            f"Label source {source} has no label for image {missing[0]!r} ({len(missing)} of {len(paths)} "
            "images unlabelled).",
            "label every image of the data (matched by file name).",
        )
    return tuple(by_name[p.name] for p in paths)


def _labels_from_text(
    path: Path, dataset: Dataset, paths: tuple[Path, ...] | None, class_names: Sequence[str] | None
) -> Labels:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrtqError(f"Label file {path} cannot be read ({exc}).", "pass a UTF-8 text label file.") from exc
    rows = [row for row in _split_rows(text) if row]
    if rows and len(rows[0]) == 2 and not _is_label(rows[0][1], class_names):
        rows = rows[1:]  # a header line such as "file,label"
    index = {name: i for i, name in enumerate(class_names or ())}

    def parse(value: str, line: int) -> int:
        value = value.strip()
        if value.lstrip("-").isdigit():
            return int(value)
        if value in index:
            return index[value]
        known = f"; the data's classes are {list(index)[:10]}" if index else ""
        raise TrtqError(
            f"Label {value!r} on line {line} of {path} is neither a class index nor a known class name{known}.",
            "write class indices (0-based, in the model's output order) or the class folder names.",
        )

    if all(len(row) == 1 for row in rows):
        values = tuple(parse(row[0], n + 1) for n, row in enumerate(rows))
        _check_count(len(values), dataset, path)
        return Labels(values, tuple(class_names) if class_names else None, str(path))
    if paths is None:
        raise TrtqError(
            f"Label file {path} names files, but data {dataset.description} has no files to match them to.",
            "write one label per line, in the data's sample order.",
        )
    by_name = {Path(row[0].strip()).name: parse(row[-1], n + 1) for n, row in enumerate(rows)}
    return Labels(_match(paths, by_name, path), tuple(class_names) if class_names else None, str(path))


def _split_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if any("," in line for line in lines):
        return [[c for c in row if c.strip()] for row in csv.reader(lines)]
    if any("\t" in line for line in lines):
        return [[c for c in line.split("\t") if c.strip()] for line in lines]
    return [line.rsplit(None, 1) for line in lines]


def _is_label(value: str, class_names: Sequence[str] | None) -> bool:
    value = value.strip()
    return value.lstrip("-").isdigit() or value in (class_names or ())


# ---------------------------------------------------------------------------------------------
# Classification


def pick_scores_output(outputs: Sequence[TensorSpec], name: str | None = None) -> str:
    """The output holding class scores: `name` if given, else the only [N, C] output."""
    names = [o.name for o in outputs]
    if name is not None:
        if name not in names:
            raise TrtqError(f"The model has no output {name!r}; its outputs are {names}.", "pick one of them.")
        return _one_score_vector(next(o for o in outputs if o.name == name))
    candidates = [o.name for o in outputs if len(o.shape) == 2 and (not isinstance(o.shape[1], int) or o.shape[1] > 1)]
    if len(candidates) == 1:
        return candidates[0]
    if len(names) == 1:
        return _one_score_vector(outputs[0])
    raise TrtqError(
        f"Cannot tell which output holds the class scores: candidates {candidates or names}.",
        "name it with --task-output NAME.",
    )


def _one_score_vector(output: TensorSpec) -> str:
    """`output`'s name if it holds one vector of class scores per sample ([N, C], or [N, C, 1, 1] from a
    conv head); top-k over a flattened map ([N, 4, 8, 8]) or over tokens ([N, S, C]) would be no accuracy."""
    spread = [d for d in output.shape[1:] if not (isinstance(d, int) and d == 1)]
    if len(spread) > 1:
        raise TrtqError(
            f"--task classify scores one vector of class scores per sample, but output {output.name!r} is "
            f"{output.shape_str()}, which holds {len(spread)} dims of more than one value per sample.",
            "name an [N, classes] output with --task-output, or compare without --task classify (SNR, cosine).",
        )
    return output.name


class ClassificationTask:
    """Top-1 / top-5 accuracy of one output of class scores against labels (or FP32's arg-max)."""

    name = "classify"

    def __init__(self, output: str, labels: Labels | None = None, topk: tuple[int, ...] = (1, 5)) -> None:
        self.output = output
        self.labels = labels
        self.topk = tuple(topk)
        self.against = AGAINST_LABELS if labels is not None else AGAINST_FP32

    def describe(self) -> str:
        """What is measured against what."""
        if self.labels is None:
            return f"classification agreement of {self.output!r} with the FP32 model's top-1 (no labels)"
        return f"classification accuracy of {self.output!r} against labels from {self.labels.source}"

    def scorer(self) -> ClassificationScorer:
        """A fresh scorer."""
        return ClassificationScorer(self)


class ClassificationScorer:
    """Counts top-k hits of one model."""

    def __init__(self, task: ClassificationTask) -> None:
        self.task = task
        self.hits = dict.fromkeys(task.topk, 0)
        self.samples = 0
        self.classes = 0

    def update(
        self, outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], start: int, count: int | None = None
    ) -> None:
        """Add one batch."""
        scores = np.asarray(outputs[self.task.output], dtype=np.float64)
        scores = scores.reshape(scores.shape[0], -1)
        n, self.classes = scores.shape
        if self.task.labels is None:
            truth = np.asarray(reference[self.task.output]).reshape(n, -1).argmax(axis=1)
        else:
            labels = self.task.labels.values
            if start + n > len(labels):
                raise TrtqError(
                    f"The data has more samples than the {len(labels)} labels from {self.task.labels.source}.",
                    "give one label per sample.",
                )
            truth = np.asarray(labels[start : start + n])
            bad = truth[(truth < 0) | (truth >= self.classes)]
            if bad.size:
                raise TrtqError(
                    f"Label {int(bad[0])} from {self.task.labels.source} is out of range for output "
                    f"{self.task.output!r} with {self.classes} classes.",
                    "labels are 0-based class indices in the model's output order.",
                )
        order = np.argsort(-scores, axis=1, kind="stable")
        for k in self.hits:
            self.hits[k] += int((order[:, :k] == truth[:, None]).any(axis=1).sum())
        self.samples += n

    def result(self) -> TaskScores:
        """Top-k in percent; a k larger than the number of classes is left out."""
        values = {
            f"top{k}": 100.0 * hits / self.samples if self.samples else math.nan
            for k, hits in self.hits.items()
            if k == 1 or k < self.classes
        }
        return TaskScores(self.task.name, self.task.against, values, self.samples)


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
    its layout; see `trtq.evaluate.detection`).
    """
    check_task_options(task, labels=labels, output=output, coco=coco, postprocess=postprocess, ref_conf=ref_conf)
    if task == "classify":
        name = pick_scores_output(outputs, output)
        bound: Labels | None = None
        if labels is not None:
            bound = load_labels(labels, dataset)
        elif use_labels and getattr(dataset, "labels", None) is not None:
            bound = load_labels(None, dataset)
        return ClassificationTask(name, bound)
    if task == "detect":
        from trtq.evaluate.detection import DetectionTask

        return DetectionTask.create(dataset, postprocess, coco, ref_conf)
    raise TrtqError(f"--task {task!r} is not one of {', '.join(TASKS)}.", "pick one of those.")
