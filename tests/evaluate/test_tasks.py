"""Task metrics: labels from folders/files, top-1/top-5, NMS, box geometry, COCO mAP end to end."""

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from trtq.data import PreprocessOverrides, open_dataset, resolve_preprocess
from trtq.errors import TrtqError
from trtq.evaluate.compare import compare_models
from trtq.evaluate.detection import DetectionTask, coco_map
from trtq.evaluate.evaluator import Evaluator
from trtq.evaluate.postprocess import Detections, ImageMeta, nms, yolo_postprocess
from trtq.evaluate.tasks import (
    ClassificationTask,
    Labels,
    load_labels,
    make_task,
    pick_scores_output,
)
from trtq.model import TensorSpec, graph_inputs, graph_outputs


def _image_folder(root, counts, size=(8, 8)):
    """root/<class>/<class>_<i>.png, a flat grey image per file."""
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("L", size, 20 * i).save(root / cls / f"{cls}_{i}.png")
    return root


def _linear_classifier(classes=3, batch="N"):
    """image [N,1,8,8] -> Flatten -> Gemm (W [classes, 64]) -> logits [N, classes]."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((classes, 64)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w"], ["logits"], name="gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cls",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _open(model, source, preset="none"):
    inputs = graph_inputs(model)
    return open_dataset(
        source, inputs, {inputs[0].name: (1, 1, 8, 8)}, preprocess=resolve_preprocess(preset), workers=0
    )


# ---- labels ----------------------------------------------------------------------------------


def test_labels_come_from_class_folders_and_files(tmp_path):
    root = _image_folder(tmp_path / "val", {"cat": 2, "dog": 3})
    dataset = _open(_linear_classifier(), root)
    assert load_labels(None, dataset).values == (0, 0, 1, 1, 1)
    assert load_labels(None, dataset).class_names == ("cat", "dog")
    # a text file of file,label lines (class names), matched by file name, with a header
    (tmp_path / "labels.csv").write_text(
        "file,label\ndog_0.png,dog\ncat_1.png,cat\ncat_0.png,1\ndog_1.png,0\ndog_2.png,dog\n"
    )
    assert load_labels(tmp_path / "labels.csv", dataset).values == (1, 0, 1, 0, 1)  # data order: cat_0, cat_1, dog_0..2
    # one index per line, in data order
    (tmp_path / "labels.txt").write_text("4\n3\n2\n1\n0\n")
    assert load_labels(tmp_path / "labels.txt", dataset).values == (4, 3, 2, 1, 0)
    np.save(tmp_path / "labels.npy", np.array([1, 1, 0, 0, 0]))
    assert load_labels(tmp_path / "labels.npy", dataset).values == (1, 1, 0, 0, 0)
    # another folder of class sub-folders, matched by file name (the classes are swapped there)
    other = _image_folder(tmp_path / "other", {"a": 0, "b": 0})
    for name in ("cat_0.png", "cat_1.png"):
        Image.new("L", (8, 8)).save(other / "b" / name)
    for name in ("dog_0.png", "dog_1.png", "dog_2.png"):
        Image.new("L", (8, 8)).save(other / "a" / name)
    assert load_labels(other, dataset).values == (1, 1, 0, 0, 0)


def test_bad_label_sources_name_the_problem(tmp_path):
    root = _image_folder(tmp_path / "val", {"cat": 1, "dog": 1})
    dataset = _open(_linear_classifier(), root)
    (tmp_path / "short.txt").write_text("0\n")
    with pytest.raises(TrtqError, match=r"1 labels, but data .* 2 samples"):
        load_labels(tmp_path / "short.txt", dataset)
    (tmp_path / "names.txt").write_text("cat\nbird\n")
    with pytest.raises(TrtqError, match="'bird' on line 2"):
        load_labels(tmp_path / "names.txt", dataset)
    (tmp_path / "pairs.csv").write_text("cat_0.png,0\n")
    with pytest.raises(TrtqError, match=r"no label for image 'dog_0.png'"):
        load_labels(tmp_path / "pairs.csv", dataset)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("L", (8, 8)).save(flat / "x.png")
    with pytest.raises(TrtqError, match="has no labels"):
        load_labels(None, _open(_linear_classifier(), flat))


# ---- classification --------------------------------------------------------------------------


def test_topk_counts_against_labels_and_against_fp32():
    scores = np.array(
        [
            [0.1, 0.5, 0.2, 0.0, 0.0, 0.9],  # order 5,1,2,0,...
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # order 0,1,...
            [0.0, 0.0, 0.0, 0.0, 0.6, 0.1],
        ]
    )  # order 4,5,...
    task = ClassificationTask("y", Labels((1, 0, 3), None, "test"))
    scorer = task.scorer()
    scorer.update({"y": scores[:2]}, {"y": scores[:2]}, 0)
    scorer.update({"y": scores[2:]}, {"y": scores[2:]}, 2)
    result = scorer.result()
    assert result.against == "labels" and result.samples == 3
    assert math.isclose(result.values["top1"], 100 / 3)  # only sample 1
    assert math.isclose(result.values["top5"], 200 / 3)  # sample 2: label 3 ranks 6th (ties broken by index)
    agreement = ClassificationTask("y").scorer()
    flipped = scores.copy()
    flipped[0, 1] = 2.0  # sample 0 now predicts class 1, FP32 predicted 5
    agreement.update({"y": flipped}, {"y": scores}, 0)
    assert agreement.result().against == "fp32"
    assert math.isclose(agreement.result().values["top1"], 200 / 3)


def test_label_out_of_range_is_an_error():
    scorer = ClassificationTask("y", Labels((7,), None, "labels.txt")).scorer()
    with pytest.raises(TrtqError, match=r"Label 7 from labels.txt is out of range .* 3 classes"):
        scorer.update({"y": np.zeros((1, 3))}, {"y": np.zeros((1, 3))}, 0)


def test_scores_output_is_picked_or_named():
    outputs = [TensorSpec("boxes", ("N", 4, 4), "float32"), TensorSpec("logits", ("N", 10), "float32")]
    assert pick_scores_output(outputs) == "logits"
    with pytest.raises(TrtqError, match="no output 'x'"):
        pick_scores_output(outputs, "x")
    with pytest.raises(TrtqError, match="Cannot tell"):
        pick_scores_output([*outputs, TensorSpec("aux", ("N", 5), "float32")])


def test_compare_with_labels_reports_fp32_and_candidate_accuracy(tmp_path):
    model = _linear_classifier()
    root = _image_folder(tmp_path / "val", {"a": 2, "b": 2, "c": 2})
    dataset = _open(model, root)
    task = make_task("classify", dataset, graph_outputs(model))
    assert task.against == "labels"
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros((3, 64), np.float32), "w"))
    report = compare_models(model, broken, dataset, task=task, batch_size=2, progress=False)
    comparison = report.task
    assert report.samples == 6 and report.notes == (task.describe(),)
    # the zeroed model predicts class 0 for everything: 2 of 6 right
    assert math.isclose(comparison.candidate.values["top1"], 100 * 2 / 6)
    assert math.isclose(comparison.drops["top1"], comparison.reference.values["top1"] - 100 * 2 / 6)


def test_evaluator_caches_or_streams_with_equal_results(tmp_path):
    model = _linear_classifier()
    dataset = _open(model, _image_folder(tmp_path / "val", {"a": 3, "b": 3}))
    cached = Evaluator(model, dataset, batch_size=4)
    on_disk = Evaluator(model, dataset, batch_size=4, cache_bytes=0)
    streamed = Evaluator(model, dataset, batch_size=4, cache_bytes=0, disk_bytes=0)
    assert cached.cached and on_disk.cached and not streamed.cached
    a, b, c = cached.evaluate(model), on_disk.evaluate(model), streamed.evaluate(model)
    assert all(math.isinf(e.snr_db) and e.cosine == 1.0 and e.samples == 6 for e in (a, b, c))


# ---- detection -------------------------------------------------------------------------------


def test_nms_keeps_best_box_per_cluster_and_class():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    classes = np.array([0, 0, 1, 0])
    # box 1 overlaps box 0 (IoU 0.68) in the same class; box 2 is the same place but another class
    assert nms(boxes, scores, classes, iou=0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, classes, iou=0.7).tolist() == [0, 1, 2, 3]


def test_letterbox_boxes_map_back_to_source_pixels():
    # a 100x50 (HxW) image letterboxed into 64x64: scale 0.64, resized 64x32, left pad 16
    meta = ImageMeta(0, "a.png", (100, 50), (64, 64), "letterbox")
    src = meta.to_source(np.array([[16, 0, 48, 64], [0, 0, 10, 10]]))
    assert np.allclose(src[0], [0, 0, 50, 100])
    assert np.allclose(src[1], [0, 0, 0, 10 / 0.64])  # clipped at the left edge
    resized = ImageMeta(0, "a.png", (100, 50), (64, 64), "resize").to_source(np.array([[32, 32, 64, 64]]))
    assert np.allclose(resized, [[25, 50, 50, 100]])


def test_yolo_layouts_decode_to_the_same_detections():
    meta = ImageMeta(0, None, (32, 32), (32, 32), "resize")
    anchors = np.zeros((10, 4 + 2), dtype=np.float32)  # cx, cy, w, h, class0, class1; more anchors than values
    anchors[0] = [8, 8, 4, 4, 0.9, 0.1]
    anchors[1] = [8.2, 8.2, 4, 4, 0.8, 0.1]  # duplicate of 0, suppressed
    anchors[2] = [20, 20, 8, 8, 0.0, 0.7]
    v8 = yolo_postprocess("auto")({"out": anchors.T[None]}, [meta])[0]  # [1, 6, 10] channels-first
    assert v8.classes.tolist() == [0, 1] and np.allclose(v8.boxes[0], [6, 6, 10, 10])
    with_obj = np.concatenate([anchors[:, :4], np.full((10, 1), 0.5, np.float32), anchors[:, 4:]], axis=1)
    v5 = yolo_postprocess("auto")({"out": with_obj[None]}, [meta])[0]  # [1, 10, 7] channels-last, objectness
    assert v5.classes.tolist() == [0, 1] and np.allclose(v5.scores, [0.45, 0.35])


def _coco(images, boxes):
    return {
        "images": [{"id": i + 1, "file_name": name, "height": h, "width": w} for i, (name, h, w) in enumerate(images)],
        "annotations": [
            {"id": k + 1, "image_id": img, "category_id": cat, "bbox": list(b), "area": b[2] * b[3], "iscrowd": 0}
            for k, (img, cat, b) in enumerate(boxes)
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}],
    }


def test_coco_map_is_100_for_perfect_and_50_for_half():
    pytest.importorskip("faster_coco_eval")
    gt = _coco([("a.png", 100, 100), ("b.png", 100, 100)], [(1, 1, (10, 10, 20, 20)), (2, 3, (50, 50, 30, 30))])
    perfect = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
        {"image_id": 2, "category_id": 3, "bbox": [50, 50, 30, 30], "score": 0.8},
    ]
    assert coco_map(gt, perfect, [1, 2]) == {"map": 100.0, "map50": 100.0}
    miss = [perfect[0], {"image_id": 2, "category_id": 1, "bbox": [50, 50, 30, 30], "score": 0.8}]
    assert coco_map(gt, miss, [1, 2])["map50"] == pytest.approx(50.0)  # category 3 has AP 0
    assert coco_map(gt, [], [1, 2]) == {"map": 0.0, "map50": 0.0}


def _constant_yolo_model(prediction):
    """image [1,3,32,32] -> ReduceMean -> *0 -> Reshape [1,1,1] -> + prediction [1,6,A] -> out.

    The output is the constant `prediction` whatever the image: a YOLOv8-layout head.
    """
    inits = [
        numpy_helper.from_array(prediction.astype(np.float32), "pred"),
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        numpy_helper.from_array(np.array([1, 1, 1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=1),
        helper.make_node("Mul", ["mean", "zero"], ["z"]),
        helper.make_node("Reshape", ["z", "shape"], ["z3"]),
        helper.make_node("Add", ["z3", "pred"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "det",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, *prediction.shape[1:]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_detection_end_to_end_through_letterbox_and_coco(tmp_path):
    pytest.importorskip("faster_coco_eval")
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (64, 32), (0, 0, 0)).save(root / "wide.png")  # W=64, H=32 -> letterbox scale 0.5, top pad 8
    # one box in input pixels: centre (16, 16), 8x8 -> source pixels x 24..40, y (12-8)/0.5=8 .. 24
    prediction = np.zeros((1, 6, 8), np.float32)  # 8 anchors, the first one set
    prediction[0, :, 0] = [16, 16, 8, 8, 0.0, 0.9]  # class index 1 -> category id 3
    model = _constant_yolo_model(prediction)
    inputs = graph_inputs(model)
    pre = resolve_preprocess(None, PreprocessOverrides(resize="letterbox"))
    dataset = open_dataset(root, inputs, {"image": (1, 3, 32, 32)}, preprocess=pre, workers=0)
    (tmp_path / "ann.json").write_text(json.dumps(_coco([("wide.png", 32, 64)], [(1, 3, (24, 8, 16, 16))])))
    task = make_task("detect", dataset, graph_outputs(model), coco=tmp_path / "ann.json", postprocess="yolov8")
    assert isinstance(task, DetectionTask) and task.against == "labels"
    evaluator = Evaluator(model, dataset, task=task)
    assert evaluator.reference_scores.values == {"map": 100.0, "map50": 100.0}
    shifted = prediction.copy()
    shifted[0, 0, 0] += 6  # x moved by 12 source px: IoU 4/28, below 0.5
    result = evaluator.evaluate(_constant_yolo_model(shifted))
    assert result.task.values["map50"] == 0.0
    # without annotations the FP32 detections are the ground truth
    agreement = make_task("detect", dataset, graph_outputs(model), postprocess="yolov8")
    assert agreement.against == "fp32"
    assert Evaluator(model, dataset, task=agreement).evaluate(model).task.values["map"] == 100.0


def test_postprocess_hook_file(tmp_path):
    hook = tmp_path / "post.py"
    hook.write_text(
        "import numpy as np\n"
        "def postprocess(outputs, images):\n"
        "    return [(np.array([[0, 0, 4, 4]]), np.array([0.5]), np.array([2])) for _ in images]\n"
    )
    from trtq.evaluate.postprocess import load_postprocess

    run, convention = load_postprocess(str(hook))
    assert convention == "index"
    (dets,) = run({"x": np.zeros((1, 2))}, [ImageMeta(0, None, (8, 8), (8, 8), "resize")])
    assert isinstance(dets, Detections) and dets.classes.tolist() == [2]
    with pytest.raises(TrtqError, match="neither a preset"):
        load_postprocess("ssd")
