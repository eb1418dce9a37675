"""Detection mAP: the detect task, scored by a maintained COCO evaluator.

The boxes come from `trtq.evaluate.postprocess` (presets, class-aware NMS, user hooks).

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
from pathlib import Path

import numpy as np
from PIL import Image

from trtq.data import Dataset
from trtq.errors import TrtqError
from trtq.evaluate.metrics import OutputAccumulator
from trtq.evaluate.postprocess import (
    AutoPostprocess,
    Detections,
    ImageMeta,
    Postprocess,
    YoloLayout,
    YoloPostprocess,
    load_postprocess,
)
from trtq.evaluate.task_contract import AGAINST_FP32, AGAINST_LABELS, ScoredAgainst, TaskScores

PSEUDO_GT_SCORE = 0.25
"""FP32 detections at or above this score are the ground truth when no annotation file is given."""
MIN_REFERENCE_BOXES = 100
"""Below this many reference boxes each box moves mAP by over a point (COCO averages precision over
101 recall steps, per class), so two quantized models cannot be ranked by it."""
MIN_IMAGE_SHARE = 0.5
"""Reference boxes in fewer than this share of the images leave most images unscored."""
REF_CONF_STEPS = (0.2, 0.15, 0.1, 0.05, 0.025, 0.01)
"""FP32 confidence thresholds tried when suggesting a lower --ref-conf."""


def coco_map(ground_truth: Mapping, detections: Sequence[Mapping], image_ids: Sequence[int]) -> dict[str, float]:
    """{"map": mAP@0.5:0.95, "map50": mAP@0.5} in percent, from COCO-format dicts."""
    if not detections:
        return {"map": 0.0, "map50": 0.0}
    try:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    except ImportError:
        try:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
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
    annotations: list[dict] = []
    categories: set[int] = set()
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
            return self.postprocess.reason or "postprocess"
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
        resize = pre.resize if pre is not None else "resize"  # image folders always carry their preprocessing
        for index, path in enumerate(paths):
            image_id = int(by_file[path.name]["id"]) if ground_truth is not None else index + 1
            metas.append(ImageMeta(index, path.name, _source_size(path), input_hw, resize))
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
