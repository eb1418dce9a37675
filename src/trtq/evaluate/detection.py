"""Detection mAP: postprocess presets, class-aware NMS, and a maintained COCO evaluator.

Postprocess turns a batch of raw model outputs into boxes in each source image's pixels:
- `yolo` (auto), `yolov5`, `yolov8`: one output of rank 3, anchors x (4 box + [objectness] +
  classes). Ultralytics v8+ export it channels-first [N, 4+C, A] without objectness, v5/v7
  channels-last [N, A, 5+C] with it; `yolo` tells them apart by that layout. Boxes are cx, cy,
  w, h in input pixels; confidence >= 0.001, class-aware NMS (IoU 0.7 for v8, 0.6 for v5), at
  most 300 per image, the best class per anchor.
- `torchvision` (alias `retinanet`): torchvision detection exports (RetinaNet, Faster R-CNN,
  FCOS, SSD) whose outputs are already final: boxes [K, 4] x1y1x2y2 in input pixels, scores
  [K], labels [K] (COCO category ids), optionally with a leading batch dim.
- a Python file defining `postprocess(outputs, images)`: `outputs` maps output names to
  batch arrays, `images` is a list of `ImageMeta`; it returns one (boxes x1y1x2y2 in source
  image pixels, scores, class ids) tuple per image.

Input-frame boxes are mapped back through the preprocessing (letterbox, resize or centre
crop) of the image folder. mAP is computed by faster-coco-eval when installed, else
pycocotools (`pip install 'trtq[detect]'`). Without a COCO annotation file, the FP32 model's
detections with score >= 0.25 are the ground truth (agreement, not accuracy).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trtq.data import Dataset, letterbox_geometry
from trtq.data.preprocess import center_crop_geometry
from trtq.errors import TrtqError
from trtq.evaluate.tasks import AGAINST_FP32, AGAINST_LABELS, TaskScores

PRESETS = ("yolo", "yolov5", "yolov8", "torchvision", "retinanet")
CONF_THRESHOLD = 0.001
MAX_DETECTIONS = 300
MAX_NMS_CANDIDATES = 30000
PSEUDO_GT_SCORE = 0.25
"""FP32 detections at or above this score are the ground truth when no annotation file is given."""


@dataclass(frozen=True)
class ImageMeta:
    """One sample's source image and how it was mapped onto the model input."""

    index: int
    file_name: str | None
    size: tuple[int, int]  # source (H, W)
    input_size: tuple[int, int]  # model input (H, W)
    resize: str  # "resize", "letterbox" or "center-crop"

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map x1y1x2y2 boxes from input pixels to source-image pixels, clipped to the image."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
        (h, w), (ih, iw) = self.size, self.input_size
        if self.resize == "letterbox":
            box = letterbox_geometry((h, w), (ih, iw))
            boxes[:, [0, 2]] = (boxes[:, [0, 2]] - box.left) / box.scale
            boxes[:, [1, 3]] = (boxes[:, [1, 3]] - box.top) / box.scale
        elif self.resize == "center-crop":
            (rh, rw), top, left = center_crop_geometry((h, w), (ih, iw))
            boxes[:, [0, 2]] = (boxes[:, [0, 2]] + left) * (w / rw)
            boxes[:, [1, 3]] = (boxes[:, [1, 3]] + top) * (h / rh)
        else:
            boxes[:, [0, 2]] *= w / iw
            boxes[:, [1, 3]] *= h / ih
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        return boxes


@dataclass(frozen=True)
class Detections:
    """Boxes (x1y1x2y2, source pixels), scores and class ids of one image."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        """No detections."""
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))


Postprocess = Callable[[Mapping[str, np.ndarray], Sequence[ImageMeta]], Sequence[Detections]]


def nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, limit: int = MAX_DETECTIONS
) -> np.ndarray:
    """Indices kept by greedy class-aware non-maximum suppression, best score first."""
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    offset = classes.astype(np.float64)[:, None] * (float(np.abs(boxes).max()) + 1.0)
    shifted = boxes.astype(np.float64) + offset  # boxes of different classes never overlap
    x1, y1, x2, y2 = shifted.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < limit:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        union = areas[i] + areas[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def _xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    return np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)


def yolo_postprocess(variant: str = "auto") -> Postprocess:
    """YOLO head decoding + NMS; `variant` "v5" (objectness), "v8" (none) or "auto" (by layout)."""

    def run(outputs: Mapping[str, np.ndarray], images: Sequence[ImageMeta]) -> list[Detections]:
        candidates = [a for a in outputs.values() if np.asarray(a).ndim == 3]
        if len(candidates) != 1:
            raise TrtqError(
                f"The yolo postprocess needs exactly one output of rank 3; the model gives shapes "
                f"{[np.asarray(a).shape for a in outputs.values()]}.",
                "write a postprocess(outputs, images) hook in a .py file and pass --postprocess FILE.",
            )
        raw = np.asarray(candidates[0], dtype=np.float32)
        channels_first = raw.shape[1] < raw.shape[2]
        if channels_first:
            raw = raw.transpose(0, 2, 1)
        objectness = variant == "v5" or (variant == "auto" and not channels_first)
        first = 5 if objectness else 4
        if raw.shape[2] <= first:
            raise TrtqError(
                f"YOLO output has {raw.shape[2]} values per anchor; expected more than {first}.",
                "check --postprocess (yolov5 has objectness, yolov8 has none).",
            )
        iou = 0.6 if objectness else 0.7
        results = []
        for sample, meta in zip(raw, images):
            cls = sample[:, first:]
            if objectness:
                cls = cls * sample[:, 4:5]
            classes = cls.argmax(axis=1)
            scores = cls[np.arange(len(cls)), classes]
            mask = scores >= CONF_THRESHOLD
            boxes, scores, classes = _xywh_to_xyxy(sample[mask, :4]), scores[mask], classes[mask]
            if len(scores) > MAX_NMS_CANDIDATES:
                top = np.argsort(-scores, kind="stable")[:MAX_NMS_CANDIDATES]
                boxes, scores, classes = boxes[top], scores[top], classes[top]
            keep = nms(boxes, scores, classes, iou)
            results.append(Detections(meta.to_source(boxes[keep]), scores[keep].astype(np.float64), classes[keep]))
        return results

    return run


def torchvision_postprocess(outputs: Mapping[str, np.ndarray], images: Sequence[ImageMeta]) -> list[Detections]:
    """Final boxes/scores/labels outputs (torchvision detection exports), per image."""
    arrays = {k: np.asarray(v) for k, v in outputs.items()}
    boxes = [k for k, v in arrays.items() if v.shape[-1:] == (4,) and v.dtype.kind == "f"]
    labels = [k for k, v in arrays.items() if v.dtype.kind in "iu"]
    scores = [k for k, v in arrays.items() if v.dtype.kind == "f" and k not in boxes]
    if len(boxes) != 1 or len(labels) != 1 or len(scores) != 1:
        raise TrtqError(
            f"The torchvision postprocess needs outputs boxes [K,4], scores [K] and integer labels [K]; "
            f"the model gives {[(k, v.shape, str(v.dtype)) for k, v in arrays.items()]}.",
            "write a postprocess(outputs, images) hook in a .py file and pass --postprocess FILE.",
        )
    b, s, c = arrays[boxes[0]], arrays[scores[0]], arrays[labels[0]]
    if b.ndim == 2:
        if len(images) != 1:
            raise TrtqError("torchvision outputs without a batch dim need batch size 1.", "run with batch size 1.")
        b, s, c = b[None], s[None], c[None]
    return [
        Detections(meta.to_source(bi), si.astype(np.float64), ci.astype(np.int64))
        for bi, si, ci, meta in zip(b, s, c, images)
    ]


def load_postprocess(spec: str) -> tuple[Postprocess, str]:
    """A postprocess function and its class-id convention ("index" or "id") from a preset or .py file."""
    if spec in ("yolo", "yolov5", "yolov8"):
        return yolo_postprocess({"yolo": "auto", "yolov5": "v5", "yolov8": "v8"}[spec]), "index"
    if spec in ("torchvision", "retinanet"):
        return torchvision_postprocess, "id"
    path = Path(spec)
    if path.suffix != ".py":
        raise TrtqError(
            f"--postprocess {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a .py file.",
            "pick a preset or pass a Python file defining postprocess(outputs, images).",
        )
    if not path.is_file():
        raise TrtqError(f"Postprocess file {path} does not exist.", "check the --postprocess path.")
    module_spec = importlib.util.spec_from_file_location(f"trtq_postprocess_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
    try:
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as exc:  # the user's code failed on import: report it as their error
        raise TrtqError(
            f"Postprocess file {path} failed to import ({type(exc).__name__}: {exc}).",
            "run it with python to see the traceback.",
        ) from exc
    hook = getattr(module, "postprocess", None)
    if not callable(hook):
        raise TrtqError(
            f"Postprocess file {path} defines no function postprocess(outputs, images).",
            "define it; it returns one (boxes, scores, class_ids) tuple per image.",
        )
    convention = str(getattr(module, "CLASS_IDS", "index"))

    def run(outputs: Mapping[str, np.ndarray], images: Sequence[ImageMeta]) -> list[Detections]:
        produced = list(hook(dict(outputs), list(images)))
        if len(produced) != len(images):
            raise TrtqError(
                f"postprocess() in {path} returned {len(produced)} results for {len(images)} images.",
                "return one (boxes, scores, class_ids) tuple per image.",
            )
        return [
            item
            if isinstance(item, Detections)
            else Detections(
                np.asarray(item[0], np.float64).reshape(-1, 4),
                np.asarray(item[1], np.float64).reshape(-1),
                np.asarray(item[2]).astype(np.int64).reshape(-1),
            )
            for item in produced
        ]

    return run, convention


# ---------------------------------------------------------------------------------------------
# COCO evaluation


def coco_map(ground_truth: Mapping, detections: Sequence[Mapping], image_ids: Sequence[int]) -> dict[str, float]:
    """{"map": mAP@0.5:0.95, "map50": mAP@0.5} in percent, from COCO-format dicts."""
    if not detections:
        return {"map": 0.0, "map50": 0.0}
    try:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    except ImportError:
        try:
            from pycocotools.coco import COCO  # type: ignore[no-redef]
            from pycocotools.cocoeval import COCOeval  # type: ignore[no-redef]
        except ImportError as exc:
            raise TrtqError(
                "Detection mAP needs faster-coco-eval or pycocotools, and neither is installed.",
                "pip install 'trtq[detect]' (or pip install faster-coco-eval).",
            ) from exc
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(ground_truth))
        gt.createIndex()
        dt = gt.loadRes([dict(d) for d in detections])
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {"map": max(float(stats[0]), 0.0) * 100.0, "map50": max(float(stats[1]), 0.0) * 100.0}


def _to_coco(dets: Detections, image_id: int, category: Callable[[int], int]) -> list[dict]:
    out = []
    for (x1, y1, x2, y2), score, cls in zip(dets.boxes, dets.scores, dets.classes):
        out.append(
            {
                "image_id": image_id,
                "category_id": category(int(cls)),
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "score": float(score),
            }
        )
    return out


def pseudo_ground_truth(
    reference: Sequence[Detections],
    image_ids: Sequence[int],
    metas: Sequence[ImageMeta],
    min_score: float = PSEUDO_GT_SCORE,
) -> dict:
    """A COCO ground-truth dict made of FP32 detections with score >= `min_score`."""
    annotations, categories = [], set()
    for dets, image_id in zip(reference, image_ids):
        for (x1, y1, x2, y2), score, cls in zip(dets.boxes, dets.scores, dets.classes):
            if score < min_score:
                continue
            w, h = float(x2 - x1), float(y2 - y1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cls),
                    "bbox": [float(x1), float(y1), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
            categories.add(int(cls))
    images = [{"id": i, "height": m.size[0], "width": m.size[1]} for i, m in zip(image_ids, metas)]
    return {"images": images, "annotations": annotations, "categories": [{"id": c} for c in sorted(categories)]}


class DetectionTask:
    """COCO mAP of a detector on an image folder, against an annotation file or FP32's detections."""

    name = "detect"

    def __init__(
        self,
        postprocess: Postprocess,
        metas: Sequence[ImageMeta],
        image_ids: Sequence[int],
        ground_truth: Mapping | None,
        class_ids: str = "index",
        source: str = "",
    ) -> None:
        self.postprocess = postprocess
        self.metas = tuple(metas)
        self.image_ids = tuple(image_ids)
        self.ground_truth = ground_truth
        self.against = AGAINST_LABELS if ground_truth is not None else AGAINST_FP32
        self.source = source
        self.reference: list[Detections] | None = None
        """FP32 detections, kept once a scorer has seen every sample (pseudo ground truth)."""
        if ground_truth is not None and class_ids == "index":
            ids = sorted(int(c["id"]) for c in ground_truth.get("categories", []))
            self.category: Callable[[int], int] = lambda c: ids[c] if 0 <= c < len(ids) else -1
        else:
            self.category = int

    @classmethod
    def create(cls, dataset: Dataset, postprocess: str, coco: str | Path | None) -> DetectionTask:
        """Bind to an image-folder data set (or array data in annotation order) and a preset or hook."""
        run, convention = load_postprocess(postprocess)
        ground_truth = _load_coco(Path(coco)) if coco is not None else None
        metas, ids = image_metas(dataset, ground_truth)
        return cls(run, metas, ids, ground_truth, convention, str(coco) if coco else "")

    def describe(self) -> str:
        """What is measured against what."""
        if self.ground_truth is None:
            return f"detection mAP against the FP32 model's detections with score >= {PSEUDO_GT_SCORE} (no annotations)"
        return f"detection mAP against COCO annotations {self.source}"

    def scorer(self) -> DetectionScorer:
        """A fresh scorer."""
        return DetectionScorer(self)


class DetectionScorer:
    """Collects one model's detections (and FP32's, for pseudo ground truth) and runs COCO eval."""

    def __init__(self, task: DetectionTask) -> None:
        self.task = task
        self.detections: list[Detections] = []
        self.reference: list[Detections] = []

    def update(self, outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], start: int) -> None:
        """Postprocess one batch."""
        n = len(next(iter(outputs.values()))) if outputs else 0
        metas = self.task.metas[start : start + max(n, 1)]
        self.detections.extend(self.task.postprocess(outputs, metas))
        if self.task.ground_truth is None and self.task.reference is None:
            self.reference.extend(self.task.postprocess(reference, metas))

    def result(self) -> TaskScores:
        """mAP@0.5:0.95 and mAP@0.5 in percent."""
        ids = self.task.image_ids[: len(self.detections)]
        if self.task.ground_truth is None:
            if self.task.reference is None and len(self.reference) == len(self.task.metas):
                self.task.reference = self.reference
            truth = pseudo_ground_truth(self.task.reference or self.reference, ids, self.task.metas)
            category: Callable[[int], int] = int
        else:
            truth, category = self.task.ground_truth, self.task.category  # type: ignore[assignment]
        dets = [d for dets, image_id in zip(self.detections, ids) for d in _to_coco(dets, image_id, category)]
        values = coco_map(truth, dets, ids) if truth.get("annotations") else {"map": 0.0, "map50": 0.0}
        return TaskScores(self.task.name, self.task.against, values, len(self.detections))


def _load_coco(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TrtqError(f"COCO annotation file {path} does not exist.", "check the --coco path.") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrtqError(
            f"COCO annotation file {path} is not readable JSON ({exc}).", "pass a COCO instances_*.json."
        ) from exc
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise TrtqError(
            f"COCO annotation file {path} lacks images/annotations/categories.", "pass a COCO instances_*.json file."
        )
    return data


def _source_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        w, h = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def image_metas(dataset: Dataset, ground_truth: Mapping | None) -> tuple[list[ImageMeta], list[int]]:
    """Per-sample image metadata and COCO image ids.

    Image folders are matched to the annotation by file name (sizes read from the files);
    array or load_data() data is taken to be the annotation's images in order, resized.
    """
    name = dataset.inputs[0].name
    shape = dataset.shapes[name]
    pre = getattr(dataset, "preprocess", None)
    layout = getattr(pre, "layout", None) or "NCHW"
    input_hw = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    by_file = {Path(im["file_name"]).name: im for im in (ground_truth or {}).get("images", []) if "file_name" in im}
    paths = getattr(dataset, "image_paths", None)
    metas, ids = [], []
    if paths is not None:
        missing = [p.name for p in paths if ground_truth is not None and p.name not in by_file]
        if missing:
            raise TrtqError(
                f"Image {missing[0]!r} of the data is not in the COCO annotation file "
                f"({len(missing)} of {len(paths)} missing).",
                "evaluate on the images the annotation file lists (matched by file name).",
            )
        for index, path in enumerate(paths):
            image_id = int(by_file[path.name]["id"]) if ground_truth is not None else index + 1
            metas.append(ImageMeta(index, path.name, _source_size(path), input_hw, pre.resize))
            ids.append(image_id)
        return metas, ids
    if ground_truth is None:
        count = dataset.num_samples or 0
        return ([ImageMeta(i, None, input_hw, input_hw, "resize") for i in range(count)], list(range(1, count + 1)))
    images = list(ground_truth["images"])
    if dataset.num_samples is not None and dataset.num_samples > len(images):
        raise TrtqError(
            f"Data has {dataset.num_samples} samples but the COCO file lists {len(images)} images.",
            "give one sample per annotated image, in the annotation file's order.",
        )
    for index, im in enumerate(images[: dataset.num_samples]):
        metas.append(ImageMeta(index, im.get("file_name"), (int(im["height"]), int(im["width"])), input_hw, "resize"))
        ids.append(int(im["id"]))
    return metas, ids
