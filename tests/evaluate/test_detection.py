"""Detection compare: the postprocess is picked by YOLO's or DETR's layout or asked for, every result says how
many reference boxes in how many images it was scored against (and warns when they are too few),
and a YOLO head's box values and class scores are measured apart. Models are built in code with
planted boxes: their outputs are constants added to a zero derived from the image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from trtq.cli import main
from trtq.data import open_dataset, resolve_preprocess
from trtq.errors import TrtqError
from trtq.evaluate.compare import compare_models
from trtq.evaluate.detection import DetectionTask
from trtq.evaluate.postprocess import (
    ImageMeta,
    find_detr_layout,
    find_yolo_layout,
    load_postprocess,
    yolo_anchor_counts,
)
from trtq.evaluate.tasks import make_task
from trtq.model import graph_inputs, graph_outputs

pytest.importorskip("faster_coco_eval", reason="detection mAP needs faster-coco-eval (pip install 'trtq[detect]')")

SIZE = 32
"""Model input 32x32: a YOLO head there has 4*4 + 2*2 + 1*1 = 21 anchors (strides 8, 16, 32)."""


def constant_model(outputs: dict[str, np.ndarray]) -> onnx.ModelProto:
    """image [1,3,32,32] -> ReduceMean -> *0 -> z [1] ; for each output k: Reshape(z) + constant_k -> k.

    Every output is its planted constant whatever the image (the zero keeps the image an input).
    """
    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["z"])]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    infos = []
    for name, value in outputs.items():
        inits += [numpy_helper.from_array(value, f"{name}_value"),
                  numpy_helper.from_array(np.ones(value.ndim, np.int64), f"{name}_shape")]
        z = f"{name}_z"
        nodes.append(helper.make_node("Reshape", ["z", f"{name}_shape"], [z]))
        if value.dtype.kind == "f":
            nodes.append(helper.make_node("Add", [z, f"{name}_value"], [name]))
        else:  # integer outputs (labels): cast the zero, then add
            nodes += [helper.make_node("Cast", [z], [f"{z}_int"], to=TensorProto.INT64),
                      helper.make_node("Add", [f"{z}_int", f"{name}_value"], [name])]
        infos.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                   list(value.shape)))
    graph = helper.make_graph(nodes, "planted", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                [1, 3, SIZE, SIZE])], infos, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def planted_head(strong: float = 0.9, weak: float = 0.12) -> np.ndarray:
    """A YOLOv8 head [1, 4+2, 21]: 16 non-overlapping 4x4 boxes on a 4x4 grid (centres 4, 12, 20, 28),
    eight of class 0 at score `strong`, eight of class 1 at score `weak`; the other anchors empty."""
    head = np.zeros((1, 6, 21), np.float32)
    for k in range(16):
        cx, cy = 4 + 8 * (k % 4), 4 + 8 * (k // 4)
        cls = k % 2
        head[0, :4, k] = [cx, cy, 4, 4]
        head[0, 4 + cls, k] = strong if cls == 0 else weak
    return head


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    for i in range(8):
        Image.new("RGB", (SIZE, SIZE), (30 * i, 0, 0)).save(root / f"{i}.png")
    return root


def open_images(model: onnx.ModelProto, root: Path):
    return open_dataset(root, graph_inputs(model), {"image": (1, 3, SIZE, SIZE)}, preprocess=resolve_preprocess(None),
                        workers=0)


def test_yolo_is_picked_only_by_its_layout():
    assert yolo_anchor_counts((SIZE, SIZE)) == {21, 22, 63, 66}
    assert yolo_anchor_counts((640, 640)) >= {8400, 25200}
    v8 = find_yolo_layout({"out": planted_head()}, (SIZE, SIZE))
    assert v8 is not None and v8.channels_first and not v8.objectness and (v8.classes, v8.anchors) == (2, 21)
    v5 = find_yolo_layout({"out": np.zeros((1, 63, 7), np.float32)}, (SIZE, SIZE))
    assert v5 is not None and v5.objectness and v5.classes == 2
    # a DETR's 300 queries, raw RetinaNet heads (two rank-3 outputs), final boxes: not YOLO
    assert find_yolo_layout({"out": np.zeros((1, 300, 84), np.float32)}, (SIZE, SIZE)) is None
    assert find_yolo_layout({"boxes": np.zeros((1, 21, 4), np.float32), "logits": np.zeros((1, 21, 80), np.float32)},
                            (SIZE, SIZE)) is None
    assert find_yolo_layout({"out": planted_head()}, (64, 64)) is None  # 21 anchors do not fit a 64x64 input


def test_a_detector_without_yolo_layout_gets_an_error_saying_what_to_pass(images):
    detr = constant_model({"pred_boxes": np.zeros((1, 300, 84), np.float32)})
    task = make_task("detect", open_images(detr, images), graph_outputs(detr))
    with pytest.raises(TrtqError) as info:
        compare_models(detr, detr, open_images(detr, images), task=task, progress=False)
    assert "do not have YOLO's layout" in info.value.message and "pred_boxes [1x300x84]" in info.value.message
    assert "--postprocess torchvision" in info.value.hint and "--postprocess yolo" in info.value.hint
    assert "--postprocess FILE.py" in info.value.hint


def torchvision_like() -> onnx.ModelProto:
    """Final outputs, as torchvision detection exports give them: boxes [3,4] x1y1x2y2, scores [3], labels [3]."""
    return constant_model({
        "boxes": np.array([[2, 2, 10, 10], [16, 16, 28, 28], [2, 20, 8, 30]], np.float32),
        "scores": np.array([0.9, 0.8, 0.1], np.float32),
        "labels": np.array([1, 3, 1], np.int64),
    })


def test_torchvision_outputs_are_named_in_the_error_and_work_when_asked_for(images):
    model = torchvision_like()
    task = make_task("detect", open_images(model, images), graph_outputs(model))
    with pytest.raises(TrtqError, match="they look like final boxes/scores/labels, so pass --postprocess torchvision"):
        compare_models(model, model, open_images(model, images), task=task, progress=False)
    task = make_task("detect", open_images(model, images), graph_outputs(model), postprocess="torchvision")
    report = compare_models(model, model, open_images(model, images), task=task, progress=False)
    scored = report.task.scored_against
    assert (scored.objects, scored.samples_with_objects, scored.samples) == (16, 8, 8)  # 2 boxes >= 0.25 per image
    assert report.task.candidate.parts == ()  # box/score parts are a YOLO head's


FINAL = np.array([[2, 2, 10, 10, 0.9, 1], [16, 16, 28, 28, 0.8, 3], [2, 20, 8, 30, 0.1, 1],
                  [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], np.float32)
"""In-graph NMS rows (x1, y1, x2, y2 in input pixels, score, class), two zero rows of padding, as Ultralytics
writes them with nms=True (and YOLOv10/YOLO26 end-to-end heads) in one output [1, K, 6]."""


def test_in_graph_nms_output_is_named_in_the_error_and_scored_as_end2end(images):
    """Such an output got the advice to pass torchvision or yolo, neither of which decodes it."""
    model = constant_model({"output0": FINAL[None]})
    task = make_task("detect", open_images(model, images), graph_outputs(model))
    with pytest.raises(TrtqError) as info:
        compare_models(model, model, open_images(model, images), task=task, progress=False)
    assert "they look like final detections" in info.value.hint and "--postprocess end2end" in info.value.hint
    assert "--postprocess rtdetr" in info.value.hint
    task = make_task("detect", open_images(model, images), graph_outputs(model), postprocess="end2end")
    report = compare_models(model, model, open_images(model, images), task=task, progress=False)
    scored = report.task.scored_against
    assert (scored.objects, scored.samples_with_objects, scored.samples) == (16, 8, 8)  # 2 boxes >= 0.25 per image
    assert report.task.reference.values["map50"] == pytest.approx(100.0)


def test_rtdetr_rows_are_normalised_centre_boxes():
    """Ultralytics' RT-DETR writes the same [N, K, 6] rows with cx, cy, w, h over the input size."""
    xyxy = FINAL[:, :4].astype(np.float64)
    normalised = FINAL.copy()
    normalised[:, :4] = np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2,
                                  xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], 1) / SIZE
    meta = ImageMeta(0, None, (2 * SIZE, 2 * SIZE), (SIZE, SIZE), "resize")  # source twice the input size
    for preset, rows in (("end2end", FINAL), ("rtdetr", normalised)):
        postprocess, convention = load_postprocess(preset)
        (found,) = postprocess({"output0": rows[None]}, [meta])
        assert convention == "index"
        np.testing.assert_allclose(found.boxes, 2 * xyxy[:3], atol=1e-4)  # padding rows dropped, mapped to source
        np.testing.assert_allclose(found.scores, [0.9, 0.8, 0.1], rtol=1e-6)
        assert found.classes.tolist() == [1, 3, 1]


def test_few_reference_boxes_warn_and_name_the_ref_conf_that_gives_enough(images):
    model = constant_model({"out": planted_head()})
    dataset = open_images(model, images)
    report = compare_models(model, model, dataset, task=make_task("detect", dataset, graph_outputs(model)),
                            progress=False)
    assert report.notes[0].startswith("detection mAP against the FP32 model's detections with score >= 0.25 (no "
                                      "annotations; yolo postprocess, picked by the layout of output 'out' [1x6x21]")
    scored = report.task.scored_against
    assert scored.sentence() == "scored against 64 boxes (FP32 detections with score >= 0.25) in 8 of 8 images"
    assert scored.warning.startswith("mAP rests on 64 reference boxes in 8 of 8 images, too few to rank")
    assert scored.warning.endswith("--ref-conf 0.1 gives 128 FP32 boxes in 8 images; or give labels with --coco FILE.")
    enough = make_task("detect", dataset, graph_outputs(model), ref_conf=0.1)
    scored = compare_models(model, model, dataset, task=enough, progress=False).task.scored_against
    assert (scored.objects, scored.warning) == (128, None)


def test_boxes_in_under_half_the_images_warn_too(images):
    model = constant_model({"out": planted_head()})
    task = DetectionTask.create(open_images(model, images), None, None)
    crowded = {"annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1]} for _ in range(300)]}
    scored = task.scored_against(crowded, list(range(1, 9)), ())
    assert scored.samples_with_objects == 1 and "300 reference boxes in 1 of 8 images" in scored.warning


def test_ref_conf_is_checked(images):
    model = constant_model({"out": planted_head()})
    dataset = open_images(model, images)
    with pytest.raises(TrtqError, match="--ref-conf sets the confidence of FP32 pseudo-boxes, but --coco"):
        make_task("detect", dataset, graph_outputs(model), coco="ann.json", ref_conf=0.1)
    with pytest.raises(TrtqError, match=r"--ref-conf 1.5 is not a confidence in \(0, 1\]"):
        make_task("detect", dataset, graph_outputs(model), ref_conf=1.5)
    with pytest.raises(TrtqError, match="--ref-conf applies to --task detect"):
        make_task("classify", dataset, graph_outputs(model), ref_conf=0.1)


def test_cli_reports_boxes_and_scores_apart_and_records_it_for_the_report(images, tmp_path, capsys):
    head = planted_head()
    reference = tmp_path / "yolo.onnx"
    onnx.save(constant_model({"out": head}), reference)
    worse = head.copy()
    worse[0, 4:] *= 0.5  # class scores halved: the score part's SNR is 20*log10(2) = 6.02 dB, boxes untouched
    candidate = tmp_path / "yolo_q.onnx"
    onnx.save(constant_model({"out": worse}), candidate)
    args = ["compare", str(reference), str(candidate), "--data", str(images), "--task", "detect"]
    assert main([*args, "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "  scored against 64 boxes (FP32 detections with score >= 0.25) in 8 of 8 images\n" in text
    assert "\nwarning: mAP rests on 64 reference boxes" in text
    rows = {line.split()[1]: line.split()[2] for line in text.splitlines() if line.startswith("out ")}
    assert rows["boxes"] == "inf" and rows["scores"] == "6.02"
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    parts = {p["name"]: p for p in out["task"]["candidate"]["parts"]}
    assert parts["out boxes"]["snr_db"] == "inf"
    assert parts["out scores"]["snr_db"] == pytest.approx(20 * np.log10(2), abs=1e-4)
    assert out["task"]["candidate"]["scored_against"]["objects"] == 64
    record = json.loads(Path(out["record"]).read_text())
    assert record["result"]["task"]["reference"]["scored_against"]["warning"].startswith("mAP rests on 64")
    assert main(["report", str(tmp_path), "--quiet"]) == 0
    capsys.readouterr()
    markdown = (tmp_path / "trtq-report.md").read_text()
    assert "- compare: detect metrics scored against 64 boxes" in markdown
    assert "**warning (compare): mAP rests on 64 reference boxes" in markdown
    assert "out boxes inf dB, out scores 6.02 dB" in markdown


# DETR-style query outputs (Hugging Face DETR, YOLOS, Conditional/Deformable DETR, RT-DETR): class logits
# [N, Q, K] beside boxes [N, Q, 4] as cx, cy, w, h normalised to the input. `detr` scores by softmax with a
# no-object last class, `detr-sigmoid` by a sigmoid per class; detr is picked unasked only when the last class
# leads on most queries, and the result says so.

QUERIES = 5
BOXES = np.array([[[0.25, 0.25, 0.25, 0.25], [0.75, 0.75, 0.25, 0.5], [0.5, 0.5, 0.1, 0.1],
                   [0.5, 0.5, 1.0, 1.0], [0.1, 0.9, 0.2, 0.2]]], np.float32)
"""Five query boxes (cx, cy, w, h over the input)."""


def logits(no_object: float = 6.0) -> np.ndarray:
    """[1, 5, 3]: two classes and a no-object column, -6 where nothing is. Query 0 is class 0 and query 1
    class 1, both sure; queries 2-4 find nothing (no-object logit `no_object`)."""
    out = np.full((1, QUERIES, 3), -6.0, np.float32)
    out[0, 0, 0] = out[0, 1, 1] = 6.0
    out[0, 2:, 2] = no_object
    return out


def test_layout_needs_boxes_beside_same_query_logits():
    layout = find_detr_layout({"logits": logits(), "pred_boxes": BOXES})
    assert layout is not None and (layout.logits, layout.boxes, layout.queries, layout.classes) == (
        "logits", "pred_boxes", 5, 3)
    assert find_detr_layout({"logits": logits(), "pred_boxes": BOXES[:, :4]}) is None  # query counts differ
    assert find_detr_layout({"out": np.zeros((1, 300, 84), np.float32)}) is None
    hidden = {"last_hidden_state": np.zeros((1, 5, 32), np.float32), "logits": logits(), "pred_boxes": BOXES}
    assert find_detr_layout(hidden).logits == "logits"  # several fit: Hugging Face's name decides


def test_softmax_drops_the_no_object_class_and_maps_boxes_to_the_source():
    postprocess, convention = load_postprocess("detr")
    meta = ImageMeta(0, None, (2 * SIZE, 4 * SIZE), (SIZE, SIZE), "resize")  # source 64 high, 128 wide
    (found,) = postprocess({"logits": logits(), "pred_boxes": BOXES}, [meta])
    assert convention == "index"
    assert found.classes[:2].tolist() == [0, 1] and found.scores[0] == pytest.approx(np.exp(6) / (np.exp(6) + 2 * np.exp(-6)))
    np.testing.assert_allclose(found.boxes[:2], [[16, 8, 48, 24], [80, 32, 112, 64]], atol=1e-4)
    assert (found.scores[2:] < 0.01).all()  # the no-object queries score their best real class, near zero


def test_sigmoid_scores_every_query_and_class_pair():
    postprocess, _ = load_postprocess("detr-sigmoid")
    meta = ImageMeta(0, None, (SIZE, SIZE), (SIZE, SIZE), "resize")
    (found,) = postprocess({"logits": logits(), "pred_boxes": BOXES}, [meta])
    assert len(found.scores) == QUERIES * 3 and found.scores[0] == pytest.approx(1 / (1 + np.exp(-6.0)))
    assert {(int(c), tuple(np.round(b).astype(int))) for c, b in zip(found.classes[:2], found.boxes[:2])} == {
        (0, (4, 4, 12, 12)), (1, (20, 16, 28, 32))}
    assert found.classes[2] == 2  # every column is a class: the third one too


def test_detr_is_picked_when_the_no_object_class_leads_and_said(images):
    model = constant_model({"logits": logits(), "pred_boxes": BOXES})
    dataset = open_images(model, images)
    report = compare_models(model, model, dataset, task=make_task("detect", dataset, graph_outputs(model)),
                            progress=False)
    assert ("detr postprocess, picked because the outputs are logits [Nx5x3] (class logits) and pred_boxes [Nx5x4] "
            "(boxes) and the last class (no object) leads on 3 of 5 queries") in report.notes[0]
    scored = report.task.scored_against
    assert (scored.objects, scored.samples_with_objects) == (16, 8)  # queries 0 and 1 in each of 8 images
    assert report.task.reference.values["map50"] == pytest.approx(100.0)


def test_without_a_leading_no_object_class_the_error_names_both_presets(images):
    model = constant_model({"logits": logits(no_object=-6.0), "pred_boxes": BOXES})
    dataset = open_images(model, images)
    with pytest.raises(TrtqError) as info:
        compare_models(model, model, dataset, task=make_task("detect", dataset, graph_outputs(model)), progress=False)
    assert "leads on only 0 of 5 queries" in info.value.hint
    assert "--postprocess detr " in info.value.hint and "--postprocess detr-sigmoid" in info.value.hint
    task = make_task("detect", dataset, graph_outputs(model), postprocess="detr-sigmoid")
    report = compare_models(model, model, dataset, task=task, progress=False)
    assert "detr-sigmoid postprocess" in report.notes[0] and report.task.scored_against.objects == 16


def test_detr_preset_on_other_outputs_says_what_it_needs():
    postprocess, _ = load_postprocess("detr")
    meta = ImageMeta(0, None, (SIZE, SIZE), (SIZE, SIZE), "resize")
    with pytest.raises(TrtqError, match=r"needs class logits \[N, Q, K\] and boxes \[N, Q, 4\]"):
        postprocess({"output0": np.zeros((1, 6, 21), np.float32)}, [meta])
