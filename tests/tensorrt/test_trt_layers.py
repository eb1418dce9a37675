"""ONNX node -> TensorRT layer names (the ONNX parser's naming rule) and per-layer precision specs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq.errors import TrtqError
from trtq.tensorrt.layers import (
    load_layer_precisions,
    match_network_layers,
    node_layer_names,
    onnx_layer_name,
    parse_layer_precisions,
    trtexec_layer_precisions,
)


def detector_head() -> onnx.ModelProto:
    """A head where the exporter named some nodes and not others.

        images [1,3,8,8]
          |
        /model.24/m.0/Conv (named)  -> c0
          |
        (unnamed) Sigmoid            -> scores
          |
        /model.24/Mul (named)        -> out      (scores * 2)
    """
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [
        helper.make_node("Conv", ["images", "w"], ["c0"], name="/model.24/m.0/Conv"),
        helper.make_node("Sigmoid", ["c0"], ["scores"]),
        helper.make_node("Mul", ["scores", "two"], ["out"], name="/model.24/Mul"),
    ]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])], [w, two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def parser_layer_names(model: onnx.ModelProto, layers_per_node: dict[str, int]) -> list[str]:
    """Layer names as onnx-tensorrt assigns them (getNodeName + generateUniqueName with one shared counter):
    a node importer registering k layers yields `base`, then `base_<counter>` for the repeats."""
    taken: set[str] = set()
    counter = 0
    names = []
    for node in model.graph.node:
        base = onnx_layer_name(node)
        for _ in range(layers_per_node.get(base, 1)):
            candidate = base
            while candidate in taken:
                candidate = f"{base}_{counter}"
                counter += 1
            taken.add(candidate)
            names.append(candidate)
    return names


def test_parser_names_layers_after_nodes_or_their_first_output():
    model = detector_head()
    assert [onnx_layer_name(n) for n in model.graph.node] == ["/model.24/m.0/Conv", "node_of_scores", "/model.24/Mul"]


def test_nodes_are_found_by_node_name_or_parser_name():
    model = detector_head()
    assert node_layer_names(model, ["/model.24/m.0/Conv", "node_of_scores"]) == {
        "/model.24/m.0/Conv": "/model.24/m.0/Conv", "node_of_scores": "node_of_scores"}


def test_unknown_node_suggests_close_names():
    with pytest.raises(TrtqError, match=r"'/model.24/m.0/conv'.*close: /model.24/m.0/Conv"):
        node_layer_names(detector_head(), ["/model.24/m.0/conv"])


def test_match_collects_deduplicated_layers_of_a_node():
    model = detector_head()
    layers = parser_layer_names(model, {"/model.24/Mul": 2})  # e.g. an importer that adds a second layer
    assert layers == ["/model.24/m.0/Conv", "node_of_scores", "/model.24/Mul", "/model.24/Mul_0"]
    wanted = node_layer_names(model, ["/model.24/Mul", "node_of_scores"])
    assert match_network_layers(wanted, layers) == {"/model.24/Mul": ("/model.24/Mul", "/model.24/Mul_0"),
                                                    "node_of_scores": ("node_of_scores",)}


def test_match_does_not_take_another_nodes_layer():
    layers = ["conv", "conv_1", "conv_2"]  # nodes "conv" and "conv_1" both exist; conv_2 is conv's repeat
    assert match_network_layers({"conv": "conv", "conv_1": "conv_1"}, layers) == {
        "conv": ("conv", "conv_2"), "conv_1": ("conv_1",)}


def test_node_without_layer_is_reported():
    with pytest.raises(TrtqError, match="has no TensorRT layer named 'gone'"):
        match_network_layers({"gone": "gone"}, ["conv"])


def test_parse_layer_precisions():
    assert parse_layer_precisions('/model.24/m.0/Conv:fp16, head:fp32,bare') == {
        "/model.24/m.0/Conv": "fp16", "head": "fp32", "bare": "fp16"}
    assert parse_layer_precisions("a:b:int8") == {"a:b": "int8"}  # the last colon separates, as in trtexec
    with pytest.raises(TrtqError, match="precision one of fp32, fp16"):
        parse_layer_precisions("conv:fp8")


def test_load_layer_precisions_forms(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"layer_precisions": {"a": "fp32"}}))
    assert load_layer_precisions(path) == {"a": "fp32"}
    path.write_text(json.dumps({"excluded_nodes": ["a", "b"]}))
    assert load_layer_precisions(path) == {"a": "fp16", "b": "fp16"}
    path.write_text(json.dumps({"result": {"excluded": [{"node": "conv_head", "op_type": "Conv"}], "holds": True}}))
    assert load_layer_precisions(path) == {"conv_head": "fp16"}
    path.write_text(json.dumps({"a": "fp16"}))
    assert load_layer_precisions(path) == {"a": "fp16"}
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(TrtqError, match="neither"):
        load_layer_precisions(path)
    with pytest.raises(TrtqError, match="does not exist"):
        load_layer_precisions(tmp_path / "missing.json")


def test_trtexec_spec_and_unexpressible_names():
    assert trtexec_layer_precisions({"/a/Conv": "fp16", "x:0": "fp32"}) == "/a/Conv:fp16,x:0:fp32"
    for bad in ("a,b", "it's", "conv*"):
        with pytest.raises(TrtqError, match="cannot express"):
            trtexec_layer_precisions({bad: "fp16"})


def test_quantize_record_with_unnamed_excluded_node_maps_to_parser_names(tmp_path):
    """`trtq quantize` names an unnamed node `<Op>_<index>`; `build --layer-precisions-from` its record
    must still reach the parser's `node_of_<output>` layer."""
    from tiny_models import residual_conv_net, save

    from trtq.cli import main

    model = residual_conv_net(batch="N")
    model.graph.node[3].name = ""  # relu2 -> "Relu_3" in trtq's outputs, "node_of_r2" in TensorRT
    path = save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", np.ones((2, 3, 16, 16), np.float32))
    assert main(["quantize", path, "--calib", str(tmp_path / "c.npy"), "--exclude-nodes", "^Relu_3$", "--quiet"]) == 0
    precisions = load_layer_precisions(tmp_path / "trtq-quantize.json")
    assert precisions == {"Relu_3": "fp16"}
    assert node_layer_names(model, precisions) == {"Relu_3": "node_of_r2"}


def test_sensitivity_record_feeds_layer_precisions(tmp_path, capsys):
    """`trtq sensitivity` records the layers below 30 dB and prints the TensorRT 10 line pinning them."""
    from tiny_models import residual_conv_net, save

    from trtq.cli import main

    path = save(residual_conv_net(batch="N"), tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    x[0, 0, 0, 0] = 1000.0  # one outlier: with max ranges every normal input value rounds to 0 in INT8
    np.save(tmp_path / "c.npy", x)
    assert main(["sensitivity", path, "--calib", str(tmp_path / "c.npy"), "--calib-method", "max", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sensitive_layers"] and out["sensitive_layers"][0] == out["layers"][0]["node"]
    line = out["commands"]["tensorrt-10-implicit"]
    assert "--precisionConstraints=obey" in line and f"{out['sensitive_layers'][0]}:fp16" in line
    assert set(load_layer_precisions(tmp_path / "trtq-sensitivity.json")) == set(out["sensitive_layers"])
