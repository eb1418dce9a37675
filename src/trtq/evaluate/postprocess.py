"""Detection postprocessing: raw model outputs to boxes in each source image's pixels.

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
- `detr`, `detr-sigmoid`: the query outputs of DETR-style transformers (Hugging Face DETR, YOLOS,
  Conditional/Deformable DETR, RT-DETR): class logits [N, Q, K] and boxes [N, Q, 4] as cx, cy, w, h
  normalised to the input. `detr` scores by softmax with the last class as "no object" (DETR,
  YOLOS); `detr-sigmoid` by a sigmoid per class, every column a class, the best Q*K pairs (models
  trained with focal loss: Conditional/Deformable DETR, RT-DETR). No NMS: queries do not
  duplicate. Without --postprocess, `detr` is picked when the outputs have this layout and the
  last class leads on most queries of the first batch (the no-object class of a softmax-trained
  DETR does, on every query that found nothing); else the error names both.
- `torchvision` (alias `retinanet`): torchvision detection exports (RetinaNet, Faster R-CNN,
  FCOS, SSD) whose outputs are already final: boxes [K, 4] x1y1x2y2 in input pixels, scores
  [K], labels [K] (COCO category ids), optionally with a leading batch dim.
- a Python file defining `postprocess(outputs, images)`: `outputs` maps output names to
  batch arrays, `images` is a list of `ImageMeta`; it returns one (boxes x1y1x2y2 in source
  image pixels, scores, class ids) tuple per image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trtq._usercode import import_script, user_code
from trtq.data import letterbox_geometry
from trtq.data.preprocess import center_crop_geometry
from trtq.errors import TrtqError

PRESETS = ("yolo", "yolov5", "yolov8", "end2end", "rtdetr", "detr", "detr-sigmoid", "torchvision", "retinanet")
CONF_THRESHOLD = 0.001
MAX_DETECTIONS = 300
MAX_NMS_CANDIDATES = 30000
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
    """The postprocess when none was named, decided on the first batch from the arrays: yolo when the
    outputs have its layout, detr when they are DETR-style queries whose last class (no object) leads,
    else a TrtqError that says what to pass."""

    def __init__(self) -> None:
        self.layout: YoloLayout | None = None
        self.chosen: Postprocess | None = None
        self.reason = ""
        """Which preset was taken and why, once decided."""

    def __call__(self, outputs: Mapping[str, np.ndarray], images: Sequence[ImageMeta]) -> list[Detections]:
        if self.chosen is None:
            input_hw = images[0].input_size if images else (0, 0)
            layout = find_yolo_layout(outputs, input_hw)
            detr = find_detr_layout(outputs) if layout is None else None
            if layout is not None:
                self.layout, self.chosen = layout, YoloPostprocess("v5" if layout.objectness else "v8")
                self.reason = f"yolo postprocess, picked by the layout of {layout.describe()}"
            elif detr is not None and detr.no_object_leads(outputs):
                self.chosen = DetrPostprocess("softmax")
                self.reason = (f"detr postprocess, picked because {detr.describe()} and the last class (no object) "
                               f"leads on {detr.no_object_queries(outputs)} of {detr.queries} queries")
            else:
                raise _not_yolo_error(outputs, input_hw)
        return list(self.chosen(outputs, images))


@dataclass(frozen=True)
class DetrLayout:
    """Where a DETR-style model's query outputs are: class logits [N, Q, K] and boxes [N, Q, 4]."""

    logits: str
    boxes: str
    queries: int
    classes: int

    def describe(self) -> str:
        """e.g. the outputs are logits [Nx100x92] and pred_boxes [Nx100x4]."""
        return (f"the outputs are {self.logits} [Nx{self.queries}x{self.classes}] (class logits) and {self.boxes} "
                f"[Nx{self.queries}x4] (boxes)")

    def no_object_queries(self, outputs: Mapping[str, np.ndarray]) -> int:
        """Queries of the first image whose arg-max is the last class."""
        logits = np.asarray(outputs[self.logits])[0]
        return int((logits.argmax(axis=-1) == self.classes - 1).sum())

    def no_object_leads(self, outputs: Mapping[str, np.ndarray]) -> bool:
        """True when the last class is the arg-max on more than half the queries of the first image."""
        return 2 * self.no_object_queries(outputs) > self.queries


def find_detr_layout(outputs: Mapping[str, np.ndarray]) -> DetrLayout | None:
    """The DETR layout of `outputs`: one float output [N, Q, 4] (boxes) and one float [N, Q, K>=2] beside it
    (the one named `logits` when several fit, as Hugging Face names it). None otherwise."""
    arrays = {name: np.asarray(a) for name, a in outputs.items()}
    queries = {name: a for name, a in arrays.items() if a.ndim == 3 and a.dtype.kind == "f"}
    boxes = [name for name, a in queries.items() if a.shape[-1] == 4]
    if len(boxes) != 1:
        return None
    n, q = queries[boxes[0]].shape[:2]
    logits = [name for name, a in queries.items() if name != boxes[0] and a.shape[:2] == (n, q) and a.shape[2] >= 2]
    if len(logits) > 1:
        logits = [name for name in logits if name == "logits"]
    if len(logits) != 1:
        return None
    return DetrLayout(logits[0], boxes[0], int(q), int(queries[logits[0]].shape[2]))


OTHER_POSTPROCESS = "pick another --postprocess, or pass --postprocess FILE.py defining postprocess(outputs, images)."
"""The fix when a preset's postprocess does not fit the model's outputs."""


def _output_shapes(outputs: Mapping[str, np.ndarray]) -> str:
    """"name [AxBxC], ..." of every output: what a preset that does not fit says the model gives."""
    return ", ".join(f"{k} [{'x'.join(map(str, np.asarray(a).shape))}]" for k, a in outputs.items())


class DetrPostprocess:
    """DETR-style query outputs to detections. `scoring` "softmax": softmax over the classes, the last one
    "no object" and dropped, the best class per query (DETR, YOLOS); "sigmoid": a sigmoid per class and the
    best (query, class) pairs over all of them (focal-loss models: Deformable/Conditional DETR, RT-DETR)."""

    def __init__(self, scoring: str) -> None:
        self.scoring = scoring

    def __call__(self, outputs: Mapping[str, np.ndarray], images: Sequence[ImageMeta]) -> list[Detections]:
        layout = find_detr_layout(outputs)
        if layout is None:
            raise TrtqError(
                f"The detr postprocess needs class logits [N, Q, K] and boxes [N, Q, 4] (cx, cy, w, h normalised); "
                f"the model gives {_output_shapes(outputs)}.",
                OTHER_POSTPROCESS,
            )
        results = []
        all_logits = np.asarray(outputs[layout.logits], dtype=np.float64)
        all_boxes = np.asarray(outputs[layout.boxes], dtype=np.float64)
        for logits, boxes, meta in zip(all_logits, all_boxes, images):
            if self.scoring == "softmax":
                shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
                probs = (shifted / shifted.sum(axis=1, keepdims=True))[:, :-1]
                classes = probs.argmax(axis=1)
                scores, rows = probs[np.arange(len(probs)), classes], np.arange(len(probs))
            else:
                probs = (1.0 / (1.0 + np.exp(-logits))).reshape(-1)
                top = np.argsort(-probs, kind="stable")[:MAX_DETECTIONS]
                scores, rows, classes = probs[top], top // layout.classes, top % layout.classes
            keep = scores >= CONF_THRESHOLD
            order = np.argsort(-scores[keep], kind="stable")[:MAX_DETECTIONS]
            h, w = meta.input_size
            xyxy = _xywh_to_xyxy(boxes[rows[keep][order]]) * np.array([w, h, w, h], np.float64)
            results.append(Detections(meta.to_source(xyxy), scores[keep][order],
                                      classes[keep][order].astype(np.int64)))
        return results


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
            raise TrtqError(
                f"The end2end/rtdetr postprocess needs one output [N, K, 6] (box, score, class per row); the model "
                f"gives {_output_shapes(outputs)}.",
                OTHER_POSTPROCESS,
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
    elif (detr := find_detr_layout(outputs)) is not None:
        advice = (f"{detr.describe()}, DETR-style queries, but the last class leads on only "
                  f"{detr.no_object_queries(outputs)} of {detr.queries} queries, so it may not be a no-object class: "
                  "pass --postprocess detr for softmax scores with a no-object last class (DETR, YOLOS) or "
                  "--postprocess detr-sigmoid for a sigmoid per class (Deformable/Conditional DETR, RT-DETR), "
                  "or --postprocess FILE.py defining postprocess(outputs, images)")
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
    if spec in ("detr", "detr-sigmoid"):
        return DetrPostprocess("softmax" if spec == "detr" else "sigmoid"), "index"
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
