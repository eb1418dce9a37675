"""Tiny ONNX models built in code for the tests; each function draws its graph.

Weights come from a seeded generator, so every model is deterministic.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _w(rng: np.random.Generator, name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _model(nodes, inputs, outputs, inits, opset: int = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="trtq-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def residual_conv_net(seed: int = 0, batch: int | str = 1, opset: int = OPSET) -> onnx.ModelProto:
    """Conv net with a residual Add and a sigmoid head.

        input [B,3,16,16]
          |
        conv1 (3->8, 3x3) -> relu1 ---------------+
          |                                       |  (skip)
        conv2 (8->8, 3x3) -> relu2 -> conv3 (8->8)|
                                       |          |
                                      add <-------+
                                       |
                                     relu3 -> maxpool -> conv_head (8->4, 1x1) -> sigmoid -> scores [B,4,8,8]
    """
    rng = np.random.default_rng(seed)
    inits = [
        _w(rng, "w1", 8, 3, 3, 3), _w(rng, "b1", 8, scale=0.1),
        _w(rng, "w2", 8, 8, 3, 3), _w(rng, "b2", 8, scale=0.1),
        _w(rng, "w3", 8, 8, 3, 3), _w(rng, "b3", 8, scale=0.1),
        _w(rng, "wh", 4, 8, 1, 1), _w(rng, "bh", 4, scale=0.1),
    ]
    pads = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", **pads),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", **pads),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", **pads),
        helper.make_node("Add", ["c3", "r1"], ["sum"], name="add"),
        helper.make_node("Relu", ["sum"], ["r3"], name="relu3"),
        helper.make_node("MaxPool", ["r3"], ["pool"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool", "wh", "bh"], ["logits"], name="conv_head"),
        helper.make_node("Sigmoid", ["logits"], ["scores"], name="sigmoid"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 16, 16])]
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 4, 8, 8])]
    return _model(nodes, inputs, outputs, inits, opset)


def gemm_matmul_net(seed: int = 1) -> onnx.ModelProto:
    """Gemm (transB=1) -> Relu -> MatMul (weight [16,10]) -> logits, plus an activation-activation MatMul.

        x [1,32] -> gemm (W [24,32], transB) -> relu -> matmul (W2 [24,10]) -> logits [1,10]
        x [1,32] -> reshape [1,4,8] -> matmul with its own transpose [1,8,4] -> gram [1,4,4]
    """
    rng = np.random.default_rng(seed)
    inits = [
        _w(rng, "gw", 24, 32), _w(rng, "gb", 24, scale=0.1), _w(rng, "mw", 24, 10),
        numpy_helper.from_array(np.array([1, 4, 8], dtype=np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "gw", "gb"], ["g"], name="gemm", transB=1),
        helper.make_node("Relu", ["g"], ["gr"], name="relu"),
        helper.make_node("MatMul", ["gr", "mw"], ["logits"], name="matmul"),
        helper.make_node("Reshape", ["x", "shape"], ["xr"], name="reshape"),
        helper.make_node("Transpose", ["xr"], ["xt"], name="transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["xr", "xt"], ["gram"], name="gram_matmul"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10]),
        helper.make_tensor_value_info("gram", TensorProto.FLOAT, [1, 4, 4]),
    ]
    return _model(nodes, inputs, outputs, inits)


def multi_input_net(seed: int = 2) -> onnx.ModelProto:
    """Two inputs joined by Concat, then a Gemm.

        a [1,8] --+
                  concat -> gemm (W [6,12], transB) -> out [1,6]
        b [1,4] --+
    """
    rng = np.random.default_rng(seed)
    inits = [_w(rng, "w", 6, 12), _w(rng, "bias", 6, scale=0.1)]
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["ab"], name="concat", axis=1),
        helper.make_node("Gemm", ["ab", "w", "bias"], ["out"], name="gemm", transB=1),
    ]
    inputs = [
        helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 8]),
        helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4]),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 6])]
    return _model(nodes, inputs, outputs, inits)


def save(model: onnx.ModelProto, path) -> str:
    """Save a model and return its path as a string."""
    onnx.save(model, str(path))
    return str(path)


def wide_conv_net(seed: int = 5) -> onnx.ModelProto:
    """A conv chain whose widths are multiples of 16 (onnxruntime's largest NCHWc block) but one.

        input [1,3,16,16] -> conv1 (3->16) -> relu1 -> conv2 (16->32) -> relu2 -> conv3 (32->8) -> relu3
                          -> conv_head (8->16, 1x1) -> relu_head = output [1,16,16,16]
    """
    rng = np.random.default_rng(seed)
    inits = [
        _w(rng, "w1", 16, 3, 3, 3), _w(rng, "b1", 16, scale=0.1),
        _w(rng, "w2", 32, 16, 3, 3), _w(rng, "b2", 32, scale=0.1),
        _w(rng, "w3", 8, 32, 3, 3), _w(rng, "b3", 8, scale=0.1),
        _w(rng, "wh", 16, 8, 1, 1), _w(rng, "bh", 16, scale=0.1),
    ]
    pads = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", **pads),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", **pads),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", **pads),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", "wh", "bh"], ["ch"], name="conv_head"),
        helper.make_node("Relu", ["ch"], ["output"], name="relu_head"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 16, 16, 16])]
    return _model(nodes, inputs, outputs, inits)


def attention_block(seed: int = 6, seq: int | str = "S", width: int = 8) -> onnx.ModelProto:
    """One pre-norm transformer block, single head, a dynamic sequence dim:

        x [B,S,W] --> LayerNorm(ln1) --> MatMul(q) ---------------> MatMul(scores) --> Mul(scale)
           |                     +----> MatMul(k) --> Transpose -----^                      |
           |                     +----> MatMul(v) --------+                              Softmax
           |                                              +-----> MatMul(context) <---------+
           |                                                          |
           |                                               MatMul(o) --> Add(o_bias)
           +--------------------------------------------------------> Add(residual1) --> LayerNorm(ln2)
                                                                           |                 |
                                                                           |     MatMul(fc) --> Add(fc_bias)
                                                                           +--> Add(residual2) <----+
                                                                                      |
                                                                           LayerNorm(ln3) --> y [B,S,W]
    """
    rng = np.random.default_rng(seed)
    ones, zeros = np.ones(width, np.float32), np.zeros(width, np.float32)
    inits = [_w(rng, name, width, width) for name in ("wq", "wk", "wv", "wo", "wf")]
    inits += [numpy_helper.from_array(ones, "gamma"), numpy_helper.from_array(zeros, "beta"),
              _w(rng, "bo", width, scale=0.1), _w(rng, "bf", width, scale=0.1),
              numpy_helper.from_array(np.array(width ** -0.5, np.float32), "scale")]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln1", axis=-1),
        helper.make_node("MatMul", ["h", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["h", "wk"], ["k"], name="k"),
        helper.make_node("MatMul", ["h", "wv"], ["v"], name="v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"], name="scores"),
        helper.make_node("Mul", ["qk", "scale"], ["scaled"], name="scale_mul"),
        helper.make_node("Softmax", ["scaled"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"], name="context"),
        helper.make_node("MatMul", ["ctx", "wo"], ["o"], name="o"),
        helper.make_node("Add", ["o", "bo"], ["ob"], name="o_bias"),
        helper.make_node("Add", ["x", "ob"], ["r1"], name="residual1"),
        helper.make_node("LayerNormalization", ["r1", "gamma", "beta"], ["h2"], name="ln2", axis=-1),
        helper.make_node("MatMul", ["h2", "wf"], ["f"], name="fc"),
        helper.make_node("Add", ["bf", "f"], ["fb"], name="fc_bias"),
        helper.make_node("Add", ["r1", "fb"], ["r2"], name="residual2"),
        helper.make_node("LayerNormalization", ["r2", "gamma", "beta"], ["y"], name="ln3", axis=-1),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", seq, width])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", seq, width])]
    return _model(nodes, inputs, outputs, inits)


def depthwise_net(seed: int = 7, batch: int | str = "N") -> onnx.ModelProto:
    """A MobileNet-style block whose depthwise input has channels of very different ranges.

        input [B,3,16,16] -> conv_in (3->4, 1x1; output channels scaled 1, 0.05, 0.3, 0.02) -> relu
          -> dw (depthwise 3x3, group 4) -> relu_dw -> conv_out (4->4, 1x1) -> y [B,4,16,16]
    """
    rng = np.random.default_rng(seed)
    gains = np.array([1.0, 0.05, 0.3, 0.02], np.float32).reshape(4, 1, 1, 1)
    inits = [
        numpy_helper.from_array((rng.standard_normal((4, 3, 1, 1)) * 0.5 * gains).astype(np.float32), "w_in"),
        numpy_helper.from_array((np.full(4, 0.2, np.float32) * gains.reshape(4)).astype(np.float32), "b_in"),
        _w(rng, "w_dw", 4, 1, 3, 3), _w(rng, "w_out", 4, 4, 1, 1), _w(rng, "b_out", 4, scale=0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w_in", "b_in"], ["c_in"], name="conv_in"),
        helper.make_node("Relu", ["c_in"], ["h"], name="relu"),
        helper.make_node("Conv", ["h", "w_dw"], ["d"], name="dw", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["r"], name="relu_dw"),
        helper.make_node("Conv", ["r", "w_out", "b_out"], ["y"], name="conv_out"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 16, 16])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 16, 16])]
    return _model(nodes, inputs, outputs, inits)
