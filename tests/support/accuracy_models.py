"""Tiny models for the accuracy tests (sensitivity, mixed precision, FP16, report), built in code.

Each builder draws its graph; weights come from a seeded generator.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def outlier_net(seed: int = 0) -> onnx.ModelProto:
    """A conv whose input has one channel 1000x larger than the rest (per-tensor INT8 wipes the others).

        x [N,4,8,8] -> conv1 (4->8, 3x3) -> c1 -> Mul (channel 0 x1000) -> big
        big -> conv2 (8->8, 1x1; input channel 0 weighted x0.001) -> c2 -> relu -> r2
        r2 -> conv3 (8->4, 1x1) -> y [N,4,8,8]

    Quantizing `big` (conv2's input) rounds channels 1..7 to almost nothing, so conv2 is by far
    the most sensitive layer; conv1 and conv3 read well-behaved tensors.
    """
    rng = np.random.default_rng(seed)
    w2 = rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.3
    w2[:, 0] *= 1e-3
    scale = np.ones((1, 8, 1, 1), np.float32)
    scale[0, 0] = 1000.0
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(scale, "channel_scale"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3, "w3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c1", "channel_scale"], ["big"], name="outlier"),
        helper.make_node("Conv", ["big", "w2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3"),
    ]
    graph = helper.make_graph(
        nodes,
        "outlier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def graded_chain(layers: int = 12, seed: int = 0, scores: bool = False) -> onnx.ModelProto:
    """A chain of 1x1 convs whose inputs carry outlier channels of growing size: sensitivity grows with depth.

        x [N,8,4,4] -> (Mul: channel 0 x s_i -> m_i -> conv_i (8->8, 1x1; input channel 0 x 1/s_i) -> c_i) x layers -> y

    Without quantization every Mul is undone by the next conv's weights, so the FP32 chain is a
    plain stack of random 1x1 convs (weights scaled to keep the signal level). Per-tensor INT8 of
    m_i rounds its ordinary channels to steps of s_i/127, so conv_i hurts more the larger s_i
    (s_i = 2^(i/2)): a target in between needs the last few layers kept out. With `scores`, y is also
    flattened into a second output scores [N,128], the one vector per sample that top-k targets read.
    """
    rng = np.random.default_rng(seed)
    nodes, inits, previous = [], [], "x"
    for i in range(layers):
        s = float(2.0 ** (i / 2))
        scale = np.ones((1, 8, 1, 1), np.float32)
        scale[0, 0] = s
        w = (rng.standard_normal((8, 8, 1, 1)) / np.sqrt(8)).astype(np.float32)
        w[:, 0] /= s
        inits += [numpy_helper.from_array(scale, f"s{i}"), numpy_helper.from_array(w, f"w{i}")]
        nodes += [
            helper.make_node("Mul", [previous, f"s{i}"], [f"m{i}"], name=f"mul{i}"),
            helper.make_node("Conv", [f"m{i}", f"w{i}"], [f"c{i}"], name=f"conv{i}"),
        ]
        previous = f"c{i}"
    nodes.append(helper.make_node("Identity", [previous], ["y"], name="out"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 4, 4])]
    if scores:
        nodes.append(helper.make_node("Flatten", ["y"], ["scores"], name="flatten"))
        outputs.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 128]))
    graph = helper.make_graph(
        nodes,
        "graded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 4, 4])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def large_bias_net(seed: int = 0) -> onnx.ModelProto:
    """Two convs with small weights and a bias of 0.5: in INT8, bias / (input scale x weight scale) is
    about 80,000, beyond FP16's 65,504.

        x [N,4,8,8] -> conv1 (4->8, 3x3, w ~ 0.01, b = 0.5) -> c1 -> relu -> r1
        r1 -> conv2 (8->4, 1x1, w ~ 0.01, b = 0.5) -> y [N,4,8,8]

    onnxruntime 1.32's WeightBiasQuantization folds each bias to int32 in the scales' dtype, so with
    FP16 Q/DQ scales it overflows and the correct model reads about 38 dB instead of 43.
    """
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 4, 3, 3)) * 0.01).astype(np.float32), "w1"),
        numpy_helper.from_array(np.full(8, 0.5, np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.01).astype(np.float32), "w2"),
        numpy_helper.from_array(np.full(4, 0.5, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "large_bias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
