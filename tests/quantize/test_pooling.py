"""Q/DQ pairs on both sides of a MaxPool share one range (trtq.quantize.pooling, trtq.calibrate.shared)."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_models import residual_conv_net, save

from trtq import api
from trtq.calibrate.shared import RangeGroup
from trtq.model import normalize_model
from trtq.quantize import plan_placement
from trtq.quantize.pooling import pooled_groups


def _groups(model: onnx.ModelProto) -> tuple[RangeGroup, ...]:
    model = normalize_model(model)
    return pooled_groups(model, plan_placement(model))


def _pool_net(pool: str = "MaxPool", side_conv: bool = False, identity: bool = False) -> onnx.ModelProto:
    """input [1,4,8,8] -> conv1 (3x3) -> relu = r -> {pool} = p -> [Identity = i ->] conv2 -> y [1,4,4,4]
                                           \\-> conv3 -> z [1,4,8,8]      (side_conv: r is also read by conv3)"""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), f"w{k}") for k in (1, 2, 3)]
    pooled = "i" if identity else "p"
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node(pool, ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        *([helper.make_node("Identity", ["p"], ["i"], name="identity")] if identity else []),
        helper.make_node("Conv", [pooled, "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
        *([helper.make_node("Conv", ["r", "w3"], ["z"], name="conv3", pads=[1, 1, 1, 1])] if side_conv else []),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])]
    if side_conv:
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8, 8]))
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8, 8])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_pool_input_read_only_by_the_pool_takes_the_pooled_range():
    assert _groups(_pool_net()) == (RangeGroup(members=("r", "p"), sinks=("p",)),)


def test_pool_input_also_read_by_a_conv_is_a_sink_too():
    assert _groups(_pool_net(side_conv=True)) == (RangeGroup(members=("r", "p"), sinks=("r", "p")),)


def test_pooled_value_reaches_its_conv_through_an_identity():
    # paddle2onnx puts an Identity after most layers: the conv's pair is on i, which holds p's values
    assert _groups(_pool_net(identity=True)) == (RangeGroup(members=("r", "i"), sinks=("i",)),)


def test_pooled_value_reaches_its_conv_through_a_relu():
    # conv -> pool -> relu -> conv (Caffe order): relu's values are the pooled ones or 0, on the same grid
    model = _pool_net(identity=True)
    next(node for node in model.graph.node if node.op_type == "Identity").op_type = "Relu"
    assert _groups(model) == (RangeGroup(members=("r", "i"), sinks=("i",)),)


def test_average_pool_rounds_anyway_and_shares_nothing():
    assert _groups(_pool_net(pool="AveragePool")) == ()


@pytest.mark.parametrize("method", ["entropy", "percentile", "auto"])
def test_written_pairs_around_the_pool_have_one_scale(tmp_path, method):
    # residual_conv_net: ... relu3 = r3 -> maxpool = pool -> conv_head; r3 is read by the pool alone
    model = save(residual_conv_net(batch="N"), tmp_path / "net.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32))
    result = api.quantize(model, tmp_path / "calib.npy", progress=False,
                          options=api.QuantizeOptions(method=method, output_dir=str(tmp_path / method)))
    table = json.loads(Path(result.ranges_path).read_text())
    amax = table["amax"]
    assert amax["r3"] == amax["pool"] and amax["r1"] != amax["r3"]
    if method == "auto":  # the explanation says where r3's range comes from
        assert table["choices"]["r3"]["shared_with"] == "pool" and table["choices"]["pool"]["shared_with"] is None
    written = onnx.load(result.onnx_path)
    scales = {init.name: numpy_helper.to_array(init) for init in written.graph.initializer}
    quantizers = {node.input[0]: float(scales[node.input[1]]) for node in written.graph.node
                  if node.op_type == "QuantizeLinear" and node.input[0] in ("r3", "pool")}
    assert len(quantizers) == 2 and quantizers["r3"] == quantizers["pool"] == pytest.approx(amax["pool"] / 127)


def _sppf() -> onnx.ModelProto:
    """YOLO's SPPF: input [1,8,8,8] -> conv1 -> x -> pool1 = y1 -> pool2 = y2 -> pool3 = y3 (5x5, stride 1)
                                                 \\-----------+-----------+-----------+-> Concat -> conv2 -> out"""
    rng = np.random.default_rng(1)
    pool = {"kernel_shape": [5, 5], "strides": [1, 1], "pads": [2, 2, 2, 2]}
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["x"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["x"], ["y1"], name="pool1", **pool),
        helper.make_node("MaxPool", ["y1"], ["y2"], name="pool2", **pool),
        helper.make_node("MaxPool", ["y2"], ["y3"], name="pool3", **pool),
        helper.make_node("Concat", ["x", "y1", "y2", "y3"], ["cat"], name="concat", axis=1),
        helper.make_node("Conv", ["cat", "w2"], ["out"], name="conv2"),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((8, 32, 1, 1)).astype(np.float32), "w2")]
    graph = helper.make_graph(nodes, "sppf", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_sppf_pools_run_in_float_beside_the_concat_and_link_nothing():
    # x and y1 also reach the Concat in float, so pairs on them for pool1 and pool2 alone would be ones TensorRT
    # cannot fuse (TensorRT-RTX left exactly those two of YOLOv8's 125 unfused): the pools read float, only conv2's
    # input (cat) is quantized, and no pool has pairs on both sides
    placement = plan_placement(normalize_model(_sppf()))
    assert sorted(t.tensor for t in placement.targets if t.kind == "activation") == ["cat", "input"]
    assert _groups(_sppf()) == ()
