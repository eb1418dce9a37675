"""Engine names: <stem>.<precision>.engine, <stem>_qat..., I/O formats appended."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq.tensorrt.ioformats import parse_io_formats
from trtq.tensorrt.naming import default_engine_path, engine_name, model_precision, split_model_name

FP16 = parse_io_formats("fp16:chw16")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({}, "yolo.int8.engine"),
        ({"qat": True}, "yolo_qat.int8.engine"),
        ({"input_formats": FP16}, "yolo.int8.fp16chw16in.engine"),
        ({"output_formats": FP16}, "yolo.int8.fp16chw16out.engine"),
        ({"input_formats": FP16, "output_formats": FP16}, "yolo.int8.fp16chw16in.fp16chw16out.engine"),
        ({"qat": True, "input_formats": parse_io_formats("int8:dla_hwc4,fp16:chw16")},
         "yolo_qat.int8.int8dla_hwc4-fp16chw16in.engine"),
    ],
)
def test_engine_names(kwargs, name):
    assert engine_name("yolo", "int8", **kwargs) == name


def test_qat_suffix_is_not_doubled_and_precision_is_checked():
    assert engine_name("yolo_qat", "fp16", qat=True) == "yolo_qat.fp16.engine"
    with pytest.raises(ValueError):
        engine_name("yolo", "int4")


@pytest.mark.parametrize(
    ("path", "split"),
    [("m.onnx", ("m", None)), ("m.int8.onnx", ("m", "int8")), ("dir/res.net.fp16.onnx", ("res.net", "fp16")),
     ("yolo_qat.onnx", ("yolo_qat", None)), ("v1.2.onnx", ("v1.2", None))],
)
def test_split_model_name(path, split):
    assert split_model_name(path) == split


def test_default_engine_path_beside_the_model():
    assert default_engine_path("out/m.int8.onnx", "int8") == Path("out/m.int8.engine")
    assert default_engine_path("m.onnx", "fp32", qat=True, output_formats=FP16) == Path("m_qat.fp32.fp16chw16out.engine")


def _relu(elem_type: int, nodes=(), inits=()) -> onnx.ModelProto:
    """x -> [nodes] -> Relu -> y."""
    last = nodes[-1].output[0] if nodes else "x"
    graph = helper.make_graph(
        [*nodes, helper.make_node("Relu", [last], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", elem_type, [1, 4])],
        initializer=list(inits),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_model_precision_from_the_graph():
    assert model_precision(_relu(TensorProto.FLOAT)) == "fp32"
    cast = helper.make_node("Cast", ["x"], ["h"], name="cast", to=TensorProto.FLOAT16)
    assert model_precision(_relu(TensorProto.FLOAT16, [cast])) == "fp16"
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "z")
    qdq = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
           helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq")]
    assert model_precision(_relu(TensorProto.FLOAT, qdq, [scale, zero])) == "int8"
