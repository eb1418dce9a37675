"""ResNet-50 (torchvision's architecture, BatchNorm folded, random He-init weights) built with onnx.helper.

There is no CPU build of torchvision on this machine, so the bench builds the graph directly:
conv1 7x7/2 -> maxpool -> 4 stages of bottlenecks (3, 4, 6, 3) -> GlobalAveragePool -> Flatten -> Gemm.
Random weights are fine for speed/memory; activations are kept in a sane range by He init.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_resnet50(seed: int = 0, batch: int | str = "N") -> onnx.ModelProto:
    """The ResNet-50 graph as torchvision exports it after BatchNorm folding."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    counter = [0]

    def conv(x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> str:
        counter[0] += 1
        i = counter[0]
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"conv{i}.weight"), numpy_helper.from_array(b, f"conv{i}.bias")])
        out = f"/conv{i}/Conv_output_0"
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [out], name=f"/conv{i}/Conv",
                                      kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        if not relu:
            return out
        nodes.append(helper.make_node("Relu", [out], [f"/relu{i}/Relu_output_0"], name=f"/relu{i}/Relu"))
        return f"/relu{i}/Relu_output_0"

    x = conv("input", 3, 64, 7, 2)
    nodes.append(helper.make_node("MaxPool", [x], ["/maxpool/MaxPool_output_0"], name="/maxpool/MaxPool",
                                  kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = "/maxpool/MaxPool_output_0", 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for block in range(blocks):
            stride = 2 if (block == 0 and stage > 0) else 1
            y = conv(x, cin, width, 1)
            y = conv(y, width, width, 3, stride)
            y = conv(y, width, width * 4, 1, relu=False)
            skip = conv(x, cin, width * 4, 1, stride, relu=False) if block == 0 else x
            name = f"/layer{stage + 1}.{block}/Add"
            nodes.append(helper.make_node("Add", [y, skip], [f"{name}_output_0"], name=name))
            nodes.append(helper.make_node("Relu", [f"{name}_output_0"], [f"{name}/Relu_output_0"], name=f"{name}/Relu"))
            x, cin = f"{name}/Relu_output_0", width * 4
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["/avgpool/output_0"], name="/avgpool/GlobalAveragePool"))
    nodes.append(helper.make_node("Flatten", ["/avgpool/output_0"], ["/flatten/output_0"], name="/flatten/Flatten"))
    fc = (rng.standard_normal((1000, 2048)) * np.sqrt(1.0 / 2048)).astype(np.float32)
    inits.extend([numpy_helper.from_array(fc, "fc.weight"), numpy_helper.from_array(np.zeros(1000, np.float32), "fc.bias")])
    nodes.append(helper.make_node("Gemm", ["/flatten/output_0", "fc.weight", "fc.bias"], ["output"], name="/fc/Gemm",
                                  transB=1))
    graph = helper.make_graph(
        nodes, "resnet50",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 224, 224])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 1000])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="trtq-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
