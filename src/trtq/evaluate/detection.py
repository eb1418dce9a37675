"""Detection mAP: postprocess presets, class-aware NMS, and a maintained COCO evaluator.

Postprocess turns a batch of raw model outputs into boxes in each source image's pixels:
- `yolo` (by layout), `yolov5`, `yolov8`: one output of rank 3, anchors x (4 box + [objectness] +
  classes). Ultralytics v8+ export it channels-first [N, 4+C, A] without objectness, v5/v7
  channels-last [N, A, 5+C] with it; `yolo` tells them apart by that layout. Boxes are cx, cy,
  w, h in input pixels; confidence >= 0.001, class-aware NMS (IoU 0.7 for v8, 0.6 for v5), at
  most 300 per image, the best class per anchor. Without --postprocess, yolo is picked only when
  the outputs have YOLO's layout (one such output whose anchor count is that of a YOLO head at
  the input size); anything else is an error that says what to pass.
- `end2end`: detections decoded and suppressed inside the graph, one output [N, K, 6] of rows
  x1, y1, x2, y2 (input pixels), score, class index, zero rows as padding: Ultralytics exports with
  `nms=True` and the end-to-end heads of YOLOv10 and YOLO26.
- `rtdetr`: the same [N, K, 6] layout with boxes as cx, cy, w, h normalised to the input size
  (Ultralytics' RT-DETR export). Neither is picked without being named: the two share a shape.
- `torchvision` (alias `retinanet`): torchvision detection exports (RetinaNet, Faster R-CNN,
  FCOS, SSD) whose outputs are already final: boxes [K, 4] x1y1x2y2 in input pixels, scores
  [K], labels [K] (COCO category ids), optionally with a leading batch dim.
- a Python file defining `postprocess(outputs, images)`: `outputs` maps output names to
  batch arrays, `images` is a list of `ImageMeta`; it returns one (boxes x1y1x2y2 in source
  image pixels, scores, class ids) tuple per image.

Input-frame boxes are mapped back through the preprocessing (letterbox, resize or centre
crop) of the image folder. mAP is computed by faster-coco-eval when installed, else
pycocotools (`pip install 'trtq[detect]'`). Without a COCO annotation file, the FP32 model's
detections with score >= 0.25 (`--ref-conf`) are the ground truth (agreement, not accuracy).
Every result says how many reference boxes in how many images it was scored against, and warns
when they are too few for mAP to rank models.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trtq._usercode import import_script, user_code
from trtq.data import Dataset, letterbox_geometry
from trtq.data.preprocess import center_crop_geometry
from trtq.errors import TrtqError
from trtq.evaluate.metrics import OutputAccumulator
from trtq.evaluate.task_contract import AGAINST_FP32, AGAINST_LABELS, ScoredAgainst, TaskScores

PRESETS = ("yolo", "yolov5", "yolov8", "end2end", "rtdetr", "torchvision", "retinanet")
CONF_THRESHOLD = 0.001
MAX_DETECTIONS = 300
MAX_NMS_CANDIDATES = 30000
PSEUDO_GT_SCORE = 0.25
"""FP32 detections at or above this score are the ground truth when no annotation file is given."""
MIN_REFERENCE_BOXES = 100
"""Below this many reference boxes each box moves mAP by over a point (COCO averages precision over
101 recall steps, per class), so two quantized models cannot be ranked by it."""
MIN_IMAGE_SHARE = 0.5
"""Reference boxes in fewer than this share of the images leave most images unscored."""
REF_CONF_STEPS = (0.2, 0.15, 0.1, 0.05, 0.025, 0.01)
"""FP32 confidence thresholds tried when suggesting a lower --ref-conf."""
YOLO_STRIDES = ((8, 16, 32), (8, 16, 32, 64))
"""Strides of YOLO detection heads: P3-P5, and the P6 models'."""


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


@dataclass(frozen=True)
class YoloLayout:
    """Where a YOLO head's values sit in its output."""

    output: str
    shape: tuple[int, ...]
    channels_first: bool  # [N, values, anchors] (v8) rather than [N, anchors, values] (v5)
    objectness: bool

    @property
    def anchors(self) -> int:
        """Anchor (prediction) count."""
        return self.shape[2] if self.channels_first else self.shape[1]

    @property
    def classes(self) -> int:
        """Class scores per anchor."""
        return (self.shape[1] if self.channels_first else self.shape[2]) - (5 if self.objectness else 4)

    def describe(self) -> str:
        """e.g. output 'out' [1x84x8400]: 4 box + 80 class scores x 8400 anchors."""
        dims = "x".join(map(str, self.shape))
        extra = " + objectness" if self.objectness else ""
        return f"output {self.output!r} [{dims}]: 4 box{extra} + {self.classes} class scores x {self.anchors} anchors"

    def split(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The box values [N, A, 4] and the score values (objectness and classes) [N, A, S] of the output."""
        raw = np.asarray(output)
        if self.channels_first:
            raw = raw.transpose(0, 2, 1)
        return raw[:, :, :4], raw[:, :, 4:]


def yolo_anchor_counts(input_hw: tuple[int, int]) -> set[int]:
    """Prediction counts a YOLO head gives at this input size: one per grid cell of strides 8-32
    (or 8-64; v8/v11/YOLOX), or three per cell (v5/v7)."""
    h, w = input_hw
    cells = [sum(-(-h // s) * -(-w // s) for s in strides) for strides in YOLO_STRIDES]
    return {*cells, *(3 * c for c in cells)}


def _rank3(outputs: Mapping[str, np.ndarray]) -> list[str]:
    return [name for name, a in outputs.items() if np.asarray(a).ndim == 3]


def find_yolo_layout(outputs: Mapping[str, np.ndarray], input_hw: tuple[int, int]) -> YoloLayout | None:
    """The YOLO layout of `outputs`, when they have one: a single rank-3 float output, channels-first
    [N, 4+C, A] without objectness or channels-last [N, A, 5+C] with it, whose anchor count A is that
    of a YOLO head at the input size. None otherwise (a DETR's 300 queries, final boxes, ...)."""
    names = _rank3(outputs)
    if len(names) != 1:
        return None
    array = np.asarray(outputs[names[0]])
    if array.dtype.kind != "f":
        return None
    shape = tuple(int(d) for d in array.shape)
    channels_first = shape[1] < shape[2]
    layout = YoloLayout(names[0], shape, channels_first, objectness=not channels_first)
    if layout.classes < 1 or layout.anchors not in yolo_anchor_counts(input_hw):
        return None
    return layout


class YoloPostprocess:
    """YOLO head decoding + NMS; `variant` "v5" (objectness), "v8" (none) or "auto" (by layout)."""

    def __init__(self, variant: str = "auto") -> None:
        self.variant = variant

    def layout(self, outputs: Mapping[str, np.ndarray]) -> YoloLayout:
        """The head's layout in `outputs` as this variant reads it; TrtqError when there is no single rank-3 output."""
        names = _rank3(outputs)
        if len(names) != 1:
            raise TrtqError(
                f"The yolo postprocess needs exactly one output of rank 3; the model gives shapes "
                f"{[np.asarray(a).shape for a in outputs.values()]}.",
                "write a postprocess(outputs, images) hook in a .py file and pass --postprocess FILE.",
            )
        shape = tuple(int(d) for d in np.asarray(outputs[names[0]]).shape)
        channels_first = shape[1] < shape[2]
        objectness = self.variant == "v5" or (self.variant == "auto" and not channels_first)
        layout = YoloLayout(names[0], shape, channels_first, objectness)
        if layout.classes < 1:
            raise TrtqError(
                f"YOLO output has {layout.classes + (5 if objectness else 4)} values per anchor; expected more than "
                f"{5 if objectness else 4}.",
                "check --postprocess (yolov5 has objectness, yolov8 has none).",
            )
        return layout

    def __call__(self, outputs: Mapping[str, np.ndarray], images: Sequence[ImageMeta]) -> list[Detections]:
        layout = self.layout(outputs)
        boxes_all, scores_all = layout.split(np.asarray(outputs[layout.output], dtype=np.float32))
        iou = 0.6 if layout.objectness else 0.7
        results = []
        for box_values, score_values, meta in zip(boxes_all, scores_all, images):
            cls = score_values[:, 1:] * score_values[:, :1] if layout.objectness else score_values
            classes = cls.argmax(axis=1)
            scores = cls[np.arange(len(cls)), classes]
            mask = scores >= CONF_THRESHOLD
            boxes, scores, classes = _xywh_to_xyxy(box_values[mask]), scores[mask], classes[mask]
            if len(scores) > MAX_NMS_CANDIDATES:
                top = np.argsort(-scores, kind="stable")[:MAX_NMS_CANDIDATES]
                boxes, scores, classes = boxes[top], scores[top], classes[top]
            keep = nms(boxes, scores, classes, iou)
            results.append(Detections(meta.to_source(boxes[keep]), scores[keep].astype(np.float64), classes[keep]))
        return results


def yolo_postprocess(variant: str = "auto") -> YoloPostprocess:
    """YOLO head decoding + NMS; `variant` "v5" (objectness), "v8" (none) or "auto" (by layout)."""
    return YoloPostprocess(variant)


class AutoPostprocess:
    """The postprocess when none was named: yolo when the outputs have its layout (decided on the
    first batch, from the arrays), else a TrtqError that says what to pass."""

    def __init__(self) -> None:
        self.layout: YoloLayout | None = None
        self.chosen: YoloPostprocess | None = None

    def __call__(self, outputs: Mapping[str, np.ndarray], images: Sequence[ImageMeta]) -> list[Detections]:
        if self.chosen is None:
            input_hw = images[0].input_size if images else (0, 0)
            layout = find_yolo_layout(outputs, input_hw)
            if layout is None:
                raise _not_yolo_error(outputs, input_hw)
            self.layout, self.chosen = layout, YoloPostprocess("v5" if layout.objectness else "v8")
        return self.chosen(outputs, images)


FINAL_ROW = 6
"""Values per detection in an in-graph-NMS output: 4 box values, score, class index."""


def _final_detections_output(outputs: Mapping[str, np.ndarray]) -> str | None:
    """The one output holding final detections [N, K, 6] (a single float rank-3 output whose rows have 6 values)."""
    names = [name for name in _rank3(outputs) if np.asarray(outputs[name]).shape[-1] == FINAL_ROW
             and np.asarray(outputs[name]).dtype.kind == "f"]
    return names[0] if len(outputs) == 1 and len(names) == 1 else None


class FinalDetections:
    """Detections the graph already decoded and suppressed: one output [N, K, 6], rows of 4 box values,
    score and class index (score-0 rows pad K). `boxes` is "xyxy" (input pixels; Ultralytics nms=True,
    YOLOv10/YOLO26 end-to-end) or "cxcywh-normalized" (Ultralytics RT-DETR)."""

    def __init__(self, boxes: str) -> None:
        self.boxes = boxes

    def __call__(self, outputs: Mapping[str, np.ndarray], images: Sequence[ImageMeta]) -> list[Detections]:
        name = _final_detections_output(outputs)
        if name is None:
            shapes = ", ".join(f"{k} [{'x'.join(map(str, np.asarray(a).shape))}]" for k, a in outputs.items())
            raise TrtqError(
                f"The end2end/rtdetr postprocess needs one output [N, K, 6] (box, score, class per row); the model "
                f"gives {shapes}.",
                "pick another --postprocess, or pass --postprocess FILE.py defining postprocess(outputs, images).",
            )
        results = []
        for rows, meta in zip(np.asarray(outputs[name], dtype=np.float64), images):
            rows = rows[rows[:, 4] >= CONF_THRESHOLD]
            boxes = rows[:, :4]
            if self.boxes == "cxcywh-normalized":
                h, w = meta.input_size
                boxes = _xywh_to_xyxy(boxes) * np.array([w, h, w, h], np.float64)
            results.append(Detections(meta.to_source(boxes), rows[:, 4], rows[:, 5].round().astype(np.int64)))
        return results


def _looks_like_torchvision(outputs: Mapping[str, np.ndarray]) -> bool:
    arrays = [np.asarray(a) for a in outputs.values()]
    return (len(arrays) == 3 and sum(a.shape[-1:] == (4,) and a.dtype.kind == "f" for a in arrays) == 1
            and sum(a.dtype.kind in "iu" for a in arrays) == 1)


def _not_yolo_error(outputs: Mapping[str, np.ndarray], input_hw: tuple[int, int]) -> TrtqError:
    shapes = ", ".join(f"{name} [{'x'.join(map(str, np.asarray(a).shape))}] {np.asarray(a).dtype}"
                       for name, a in outputs.items())
    counts = sorted(yolo_anchor_counts(input_hw))
    if _final_detections_output(outputs) is not None:
        advice = ("they look like final detections (rows of box, score, class), so pass --postprocess end2end for "
                  "x1,y1,x2,y2 in input pixels (Ultralytics nms=True, YOLOv10/YOLO26 end-to-end exports) or "
                  "--postprocess rtdetr for cx,cy,w,h normalised to the input (Ultralytics RT-DETR); or "
                  "--postprocess FILE.py defining postprocess(outputs, images)")
    elif _looks_like_torchvision(outputs):
        advice = ("they look like final boxes/scores/labels, so pass --postprocess torchvision (or --postprocess "
                  "FILE.py defining postprocess(outputs, images))")
    else:
        advice = ("pass --postprocess torchvision for final boxes/scores/labels outputs, --postprocess yolo to "
                  "decode the rank-3 output as a YOLO head anyway, or --postprocess FILE.py defining "
                  "postprocess(outputs, images)")
    return TrtqError(
        f"--task detect needs to know how to decode this detector's outputs ({shapes}), and they do not have "
        f"YOLO's layout (one output [N, 4+classes, anchors] or [N, anchors, 5+classes] with "
        f"{' or '.join(map(str, counts))} anchors at the {input_hw[0]}x{input_hw[1]} input).",
        advice + ".",
    )


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


def load_postprocess(spec: str | None) -> tuple[Postprocess, str]:
    """A postprocess function and its class-id convention ("index" or "id") from a preset or .py file
    (None: yolo when the outputs have its layout, see AutoPostprocess)."""
    if spec is None:
        return AutoPostprocess(), "index"
    if spec in ("yolo", "yolov5", "yolov8"):
        return yolo_postprocess({"yolo": "auto", "yolov5": "v5", "yolov8": "v8"}[spec]), "index"
    if spec in ("end2end", "rtdetr"):
        return FinalDetections("xyxy" if spec == "end2end" else "cxcywh-normalized"), "index"
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
    module = import_script(path, "Postprocess file", f"trtq_postprocess_{abs(hash(str(path.resolve())))}")
    hook = getattr(module, "postprocess", None)
    if not callable(hook):
        raise TrtqError(
            f"Postprocess file {path} defines no function postprocess(outputs, images).",
            "define it; it returns one (boxes, scores, class_ids) tuple per image.",
        )
    convention = str(getattr(module, "CLASS_IDS", "index"))

    def run(outputs: Mapping[str, np.ndarray], images: Sequence[ImageMeta]) -> list[Detections]:
        with user_code(f"postprocess() in {path}", "fix the hook; it returns one (boxes, scores, class_ids) per image.",
                       "return the detections instead of calling sys.exit()."):
            produced = list(hook(dict(outputs), list(images)))
        if len(produced) != len(images):
            raise TrtqError(
                f"postprocess() in {path} returned {len(produced)} results for {len(images)} images.",
                "return one (boxes, scores, class_ids) tuple per image.",
            )
        detections = []
        for index, item in enumerate(produced):
            if isinstance(item, Detections):
                detections.append(item)
                continue
            try:
                boxes, scores, classes = item
                found = Detections(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64).reshape(-1),
                                   np.asarray(classes).astype(np.int64).reshape(-1))
                if not len(found.boxes) == len(found.scores) == len(found.classes):
                    raise ValueError(f"{len(found.boxes)} boxes, {len(found.scores)} scores and "
                                     f"{len(found.classes)} class ids")
                detections.append(found)
            except (TypeError, ValueError) as exc:
                raise TrtqError(
                    f"postprocess() in {path} returned {type(item).__name__} for image {index}, which is not "
                    f"(boxes [K,4], scores [K], class_ids [K]) ({' '.join(str(exc).split())}).",
                    "return one (boxes, scores, class_ids) tuple of arrays per image.",
                ) from exc
        return detections

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
        min_score: float = PSEUDO_GT_SCORE,
        postprocess_name: str | None = None,
    ) -> None:
        self.postprocess = postprocess
        self.metas = tuple(metas)
        self.image_ids = tuple(image_ids)
        self.ground_truth = ground_truth
        self.against = AGAINST_LABELS if ground_truth is not None else AGAINST_FP32
        self.source = source
        self.min_score = float(min_score)
        self.postprocess_name = postprocess_name
        self.reference: list[Detections] | None = None
        """FP32 detections, kept once a scorer has seen every sample (pseudo ground truth)."""
        if ground_truth is not None and class_ids == "index":
            ids = sorted(int(c["id"]) for c in ground_truth.get("categories", []))
            self.category: Callable[[int], int] = lambda c: ids[c] if 0 <= c < len(ids) else -1
        else:
            self.category = int

    @classmethod
    def create(
        cls, dataset: Dataset, postprocess: str | None, coco: str | Path | None, ref_conf: float | None = None
    ) -> DetectionTask:
        """Bind to an image-folder data set (or array data in annotation order) and a preset or hook
        (None: yolo when the outputs have its layout). `ref_conf` is the FP32 confidence from which
        detections serve as ground truth when there is no annotation file."""
        if ref_conf is not None:
            if coco is not None:
                raise TrtqError(
                    f"--ref-conf sets the confidence of FP32 pseudo-boxes, but --coco {coco} gives labels to score "
                    "against.",
                    "drop --ref-conf (or drop --coco to score against the FP32 detections).",
                )
            if not 0.0 < float(ref_conf) <= 1.0:
                raise TrtqError(f"--ref-conf {ref_conf} is not a confidence in (0, 1].", "e.g. --ref-conf 0.1.")
        run, convention = load_postprocess(postprocess)
        ground_truth = _load_coco(Path(coco)) if coco is not None else None
        metas, ids = image_metas(dataset, ground_truth)
        return cls(run, metas, ids, ground_truth, convention, str(coco) if coco else "",
                   PSEUDO_GT_SCORE if ref_conf is None else float(ref_conf), postprocess)

    def yolo_layout(self, outputs: Mapping[str, np.ndarray]) -> YoloLayout | None:
        """The YOLO head the postprocess decodes in `outputs` (None for other postprocesses)."""
        if isinstance(self.postprocess, AutoPostprocess):
            return self.postprocess.layout
        if isinstance(self.postprocess, YoloPostprocess):
            return self.postprocess.layout(outputs)
        return None

    def _postprocess_text(self) -> str:
        if isinstance(self.postprocess, AutoPostprocess):
            layout = self.postprocess.layout
            return f"yolo postprocess, picked by the layout of {layout.describe()}" if layout else "postprocess"
        return f"{self.postprocess_name} postprocess" if self.postprocess_name else "postprocess"

    def describe(self) -> str:
        """What is measured against what."""
        if self.ground_truth is None:
            return (f"detection mAP against the FP32 model's detections with score >= {self.min_score:g} (no "
                    f"annotations; {self._postprocess_text()})")
        return f"detection mAP against COCO annotations {self.source} ({self._postprocess_text()})"

    def scorer(self) -> DetectionScorer:
        """A fresh scorer."""
        return DetectionScorer(self)

    def scored_against(self, truth: Mapping, image_ids: Sequence[int], reference: Sequence[Detections]) -> ScoredAgainst:
        """How many reference boxes in how many of the images, and a warning when mAP rests on too few.

        `reference` (the FP32 detections, pseudo ground truth only) lets the warning say which lower
        --ref-conf would give enough boxes.
        """
        wanted = set(image_ids)
        annotations: list[Mapping] = [a for a in truth.get("annotations", [])
                                      if a.get("image_id") in wanted and not a.get("iscrowd")]
        boxes, images = len(annotations), len(image_ids)
        with_boxes = len({a["image_id"] for a in annotations})
        if self.ground_truth is None:
            source = f"FP32 detections with score >= {self.min_score:g}"
        else:
            source = f"COCO annotations {self.source}"
        warning = None
        if images and (boxes < MIN_REFERENCE_BOXES or with_boxes < MIN_IMAGE_SHARE * images):
            warning = (
                f"mAP rests on {boxes} reference boxes in {with_boxes} of {images} images, too few to rank quantized "
                f"models by it (trtq asks for at least {MIN_REFERENCE_BOXES} boxes, in at least "
                f"{MIN_IMAGE_SHARE:.0%} of the images): {self._more_boxes(reference, images)}"
            )
        return ScoredAgainst(self.against, source, boxes, images, with_boxes, "boxes", warning)

    def _more_boxes(self, reference: Sequence[Detections], images: int) -> str:
        """How to get more reference boxes: a lower --ref-conf that gives enough (counted), labels, or more images."""
        if self.ground_truth is not None:
            return "compare on more annotated images."
        lowest = None
        for conf in (c for c in REF_CONF_STEPS if c < self.min_score):
            counts = [int((d.scores >= conf).sum()) for d in reference]
            boxes, with_boxes = sum(counts), sum(1 for c in counts if c)
            lowest = (conf, boxes, with_boxes)
            if boxes >= MIN_REFERENCE_BOXES and with_boxes >= MIN_IMAGE_SHARE * images:
                return (f"--ref-conf {conf:g} gives {boxes} FP32 boxes in {with_boxes} images; or give labels with "
                        "--coco FILE.")
        if lowest is None:
            return "give labels with --coco FILE, or compare on more images."
        conf, boxes, with_boxes = lowest
        return (f"even --ref-conf {conf:g} gives only {boxes} FP32 boxes in {with_boxes} images, so give labels with "
                "--coco FILE, or compare on more images.")


class DetectionScorer:
    """Collects one model's detections (and FP32's, for pseudo ground truth) and runs COCO eval; for
    a YOLO head it also measures the agreement of the box values and of the class scores apart."""

    def __init__(self, task: DetectionTask) -> None:
        self.task = task
        self.detections: list[Detections] = []
        self.reference: list[Detections] = []
        self.parts: dict[str, OutputAccumulator] = {}

    def update(
        self, outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], start: int, count: int | None = None
    ) -> None:
        """Postprocess one batch of `count` samples (default: the first output's leading dim)."""
        n = count if count is not None else (len(next(iter(outputs.values()))) if outputs else 0)
        metas = self.task.metas[start : start + max(n, 1)]
        collect_reference = self.task.ground_truth is None and self.task.reference is None
        reference_dets: Sequence[Detections] = ()
        if collect_reference or outputs is reference:
            reference_dets = self.task.postprocess(reference, metas)
        if collect_reference:
            self.reference.extend(reference_dets)
        self.detections.extend(reference_dets if outputs is reference else self.task.postprocess(outputs, metas))
        layout = self.task.yolo_layout(outputs) if outputs is not reference else None
        if layout is not None:
            ref_parts = layout.split(reference[layout.output])
            out_parts = layout.split(outputs[layout.output])
            for label, ref_part, out_part in zip(("boxes", "scores"), ref_parts, out_parts):
                name = f"{layout.output} {label}"
                self.parts.setdefault(name, OutputAccumulator(name)).update(ref_part, out_part)

    def result(self) -> TaskScores:
        """mAP@0.5:0.95 and mAP@0.5 in percent, with what they were scored against."""
        ids = self.task.image_ids[: len(self.detections)]
        reference: Sequence[Detections] = ()
        if self.task.ground_truth is None:
            if self.task.reference is None and len(self.reference) == len(self.task.metas):
                self.task.reference = self.reference
            reference = self.task.reference or self.reference
            truth = pseudo_ground_truth(reference, ids, self.task.metas, self.task.min_score)
            category: Callable[[int], int] = int
        else:
            truth, category = self.task.ground_truth, self.task.category  # type: ignore[assignment]
        dets = [d for dets, image_id in zip(self.detections, ids) for d in _to_coco(dets, image_id, category)]
        values = coco_map(truth, dets, ids) if truth.get("annotations") else {"map": 0.0, "map50": 0.0}
        return TaskScores(self.task.name, self.task.against, values, len(self.detections),
                          self.task.scored_against(truth, ids, reference),
                          tuple(acc.result() for acc in self.parts.values()))


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
    pre = dataset.preprocess
    layout = (pre.layout if pre is not None else None) or "NCHW"
    input_hw = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    by_file = {Path(im["file_name"]).name: im for im in (ground_truth or {}).get("images", []) if "file_name" in im}
    paths = dataset.image_paths
    metas, ids = [], []
    if paths is not None and pre is not None:
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
