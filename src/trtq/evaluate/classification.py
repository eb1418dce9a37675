"""Classification: top-1 / top-5 accuracy of one output of class scores against labels (class
sub-folders of an image folder, a label file, or a .npy of class indices), or agreement with
the FP32 model's arg-max when there are none."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trtq.data import Dataset
from trtq.data.arrays import numpy_file_problem
from trtq.errors import TrtqError
from trtq.evaluate.task_contract import AGAINST_FP32, AGAINST_LABELS, TaskScores
from trtq.model import TensorSpec

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
    paths = dataset.image_paths
    folder_labels = dataset.labels
    folder_names = dataset.class_names
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
        raise TrtqError(f"Label file {numpy_file_problem(path, exc, 'npy')}.", "save it with np.save().") from exc
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
