"""The model being fine-tuned: the normalised ONNX graph, run by `OnnxModule`, with a learned
fake-quantizer exactly where the quantize path puts its Q/DQ pairs.

The training graph is the FP32 graph plus one `TrtqFakeQuantize(tensor, log_ratio, ptq_scale)`
node per target of the `Placement` (the same plan `trtq quantize` uses), rewired to the same
consumers; `OnnxModule` runs it, so the ONNX semantics of every other node stay in one place. Its
float initializers are module parameters: the weights and biases of the compute layers and every
step size (as a log-ratio to its PTQ value) are trained; everything else (shape constants,
BatchNorm statistics...) stays fixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from trtq.errors import TrtqError
from trtq.formats.ranges import RangesTable
from trtq.model import tensor_types
from trtq.qat.fakequant import EXECUTOR_OPS, OP_TYPE, quantized_codes, step_size
from trtq.quantize.placement import Placement
from trtq.quantize.pooling import pooled_groups
from trtq.quantize.qdq import insert_after_producers, scale_and_zero_point, unique_name
from trtq.torch import OnnxModule

TRAINABLE_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "BatchNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "GroupNormalization": (1, 2),
    "PRelu": (1,),
}
"""Op type -> input positions whose float initializers are fine-tuned (weights, biases, affine
norm parameters; never BatchNorm statistics or shape-like constants)."""

BIAS_PRODUCERS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
"""An Add of an initializer to these ops' output is a bias (transformer exports) and is trained."""


@dataclass(frozen=True)
class Quantizer:
    """One fake-quantizer of the training graph: which tensor, the initializers of its learned
    log-ratio and fixed PTQ scale, the tensor its consumers read instead, and the per-channel axis
    (None = per tensor)."""

    tensor: str
    kind: str
    log_ratio: str
    base_scale: str
    output: str
    axis: int | None


def trainable_initializers(model: onnx.ModelProto) -> tuple[str, ...]:
    """Float initializers every reader of which takes them as a weight/bias (`TRAINABLE_INPUTS`,
    bias Adds); an initializer also read elsewhere (e.g. as a shape) stays fixed."""
    producers = {out: node for node in model.graph.node for out in node.output}
    float_inits = {i.name for i in model.graph.initializer
                   if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)}
    verdict: dict[str, bool] = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name not in float_inits:
                continue
            ok = index in TRAINABLE_INPUTS.get(node.op_type, ())
            if node.op_type == "Add" and len(node.input) == 2:
                other = producers.get(node.input[1 - index])
                ok = other is not None and other.op_type in BIAS_PRODUCERS
            verdict[name] = verdict.get(name, True) and ok
    return tuple(name for name in (i.name for i in model.graph.initializer) if verdict.get(name))



def training_graph(model: onnx.ModelProto, placement: Placement,
                   activation_amax: Mapping[str, float]) -> tuple[onnx.ModelProto, tuple[Quantizer, ...]]:
    """`model` with a fake-quantizer on every placement target (for the executor only).

    Each quantizer's fixed base scale is exactly the quantize path's (amax / 127 for activations,
    per-channel max|w| / 127 for weights, computed by `trtq.quantize.qdq` itself); the learned
    log-ratio starts at 0. A MaxPool's input whose range is its pooled output's (`trtq.quantize.pooling`,
    one sink; equal in `activation_amax`, as calibration ties them) reads that quantizer's base and log-ratio,
    so the two keep one scale while they train.
    """
    missing = [t.tensor for t in placement.targets if t.kind == "activation" and t.tensor not in activation_amax]
    if missing:
        raise TrtqError(
            f"The ranges table has no range for tensor {missing[0]!r} ({len(missing)} missing in all).",
            "the ranges file belongs to another model or other --exclude options; re-run calibration.",
        )
    types = tensor_types(model)
    for target in placement.targets:
        if types.get(target.tensor, TensorProto.FLOAT) != TensorProto.FLOAT:
            raise TrtqError(
                f"Tensor {target.tensor!r} is {TensorProto.DataType.Name(types[target.tensor])}; fine-tuning "
                "quantizes float32 tensors only.",
                f"fine-tune the float32 model, or exclude its consumer with --exclude-nodes '{target.consumers[0][0]}'.",
            )
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    used = {v for node in graph.node for v in (*node.input, *node.output, node.name)}
    used |= set(inits) | {vi.name for vi in graph.input} | {vi.name for vi in graph.output}
    nodes_by_name = {node.name: node for node in graph.node}
    producer_of = {name: node.name for node in graph.node for name in node.output}
    after: dict[str, list[onnx.NodeProto]] = {}
    quantizers = []
    shares = {member: group.sinks[0] for group in pooled_groups(model, placement) if len(group.sinks) == 1
              for member in group.members if member != group.sinks[0]
              and activation_amax.get(member) == activation_amax.get(group.sinks[0])}
    parameters = {target.tensor: (unique_name(f"{target.tensor}::log_scale_ratio", used),
                                  unique_name(f"{target.tensor}::ptq_scale", used))
                  for target in placement.targets if target.tensor not in shares}
    for target in placement.targets:
        ratio_name, base_name = parameters[shares.get(target.tensor, target.tensor)]
        out_name = unique_name(f"{target.tensor}::fake_quantized", used)
        if target.tensor not in shares:
            base, _ = scale_and_zero_point(target, inits, activation_amax, np.float32)
            graph.initializer.extend([numpy_helper.from_array(np.zeros_like(base), ratio_name),
                                      numpy_helper.from_array(base, base_name)])
        attrs: dict[str, Any] = {"axis": target.axis} if target.axis is not None else {}
        node = helper.make_node(OP_TYPE, [target.tensor, ratio_name, base_name], [out_name],
                                name=unique_name(f"{target.tensor}::{OP_TYPE}", used), **attrs)
        after.setdefault(producer_of.get(target.tensor, ""), []).append(node)
        for node_name, index in target.consumers:
            nodes_by_name[node_name].input[index] = out_name
        quantizers.append(Quantizer(target.tensor, target.kind, ratio_name, base_name, out_name, target.axis))
    insert_after_producers(graph, after)
    return out, tuple(quantizers)


class QatModel(torch.nn.Module):
    """A quantization-aware copy of an ONNX model: `forward(*inputs)` gives the outputs the
    exported Q/DQ model gives; weights, biases and step sizes are trainable parameters.

    `source` is the normalised FP32 model and `placement` its Q/DQ plan (`trtq.api.prepare_model`);
    `activation_amax` are the PTQ ranges the activation step sizes start from, and `calibration`
    the ranges table they came from, where known.
    """

    def __init__(self, source: onnx.ModelProto, placement: Placement, activation_amax: Mapping[str, float],
                 device: str | torch.device = "cpu", calibration: RangesTable | None = None) -> None:
        super().__init__()
        self.source = source
        self.placement = placement
        self.initial_amax = {t: float(activation_amax[t]) for t in placement.activation_tensors}
        self.calibration = calibration
        """The PTQ ranges table the step sizes started from, where known."""
        graph, self.quantizers = training_graph(source, placement, activation_amax)
        self.net = OnnxModule(graph, device=device, ops=EXECUTOR_OPS)
        self.input_names: tuple[str, ...] = self.net.input_names
        self.output_names: tuple[str, ...] = self.net.output_names
        self.weight_names: tuple[str, ...] = trainable_initializers(source)
        for name in self.weight_names:
            self.net.parameter(name).requires_grad_(True)
        for name in self.log_ratio_names:
            self.net.parameter(name).requires_grad_(True)

    @property
    def device(self) -> torch.device:
        """Where parameters and computation live."""
        return self.net.device

    def forward(self, *args: torch.Tensor | np.ndarray, **kwargs: torch.Tensor | np.ndarray
                ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.net(*args, **kwargs)

    def run(self, feeds: Mapping[str, torch.Tensor | np.ndarray], outputs: Sequence[str] | None = None
            ) -> dict[str, torch.Tensor]:
        """Values of `outputs` (default: the graph outputs; any tensor of the training graph works)."""
        return self.net.run(feeds, outputs)

    def weight_parameters(self) -> list[torch.nn.Parameter]:
        """The fine-tuned weights and biases."""
        return [self.net.parameter(name) for name in self.weight_names]

    @property
    def log_ratio_names(self) -> tuple[str, ...]:
        """The learned log-ratios, each once (quantizers around a MaxPool share one)."""
        return tuple(dict.fromkeys(q.log_ratio for q in self.quantizers))

    def scale_parameters(self) -> list[torch.nn.Parameter]:
        """The learned log(step size / PTQ step size), one per quantizer (per channel for weights)."""
        return [self.net.parameter(name) for name in self.log_ratio_names]

    def param_groups(self, lr: float, scale_lr: float) -> list[dict[str, object]]:
        """Optimizer parameter groups: weights at `lr`, step-size log-ratios at `scale_lr`."""
        return [{"params": self.weight_parameters(), "lr": lr, "name": "weights"},
                {"params": self.scale_parameters(), "lr": scale_lr, "name": "scales"}]

    def scales(self) -> dict[str, torch.Tensor]:
        """Current step size per quantized tensor (scalar, or one per channel), detached."""
        with torch.no_grad():
            return {q.tensor: step_size(self.net.parameter(q.log_ratio), self.net.parameter(q.base_scale)).detach()
                    for q in self.quantizers}

    def activation_amax(self) -> dict[str, float]:
        """Current range of every quantized activation: scale * 127, as the ranges table holds it."""
        scales = self.scales()
        return {q.tensor: float(scales[q.tensor].cpu()) * 127.0 for q in self.quantizers if q.kind == "activation"}

    def trained_state(self) -> dict[str, torch.Tensor]:
        """Every trained tensor by ONNX name (weights, biases, scale log-ratios), detached, on the CPU."""
        names = [*self.weight_names, *self.log_ratio_names]
        return {name: self.net.parameter(name).detach().cpu().clone() for name in names}

    def load_trained_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore tensors saved by `trained_state` (same model and placement)."""
        expected = [*self.weight_names, *self.log_ratio_names]
        missing = [name for name in expected if name not in state]
        if missing:
            raise TrtqError(f"The saved state has no tensor {missing[0]!r}; it belongs to another model or placement.",
                            "start without --resume, or resume with the options of the run that saved it.")
        with torch.no_grad():
            for name in expected:
                param = self.net.parameter(name)
                value = state[name]
                if tuple(value.shape) != tuple(param.shape):
                    raise TrtqError(f"Saved tensor {name!r} has shape {tuple(value.shape)}, the model's is "
                                    f"{tuple(param.shape)}.", "resume with the model that saved the checkpoint.")
                param.copy_(value.to(param.device, param.dtype))

    def all_finite(self) -> bool:
        """Whether every trained tensor is finite (checked before a checkpoint is kept)."""
        with torch.no_grad():
            return all(bool(torch.isfinite(p).all()) for p in (*self.weight_parameters(), *self.scale_parameters()))

    def codes(self, feeds: Mapping[str, torch.Tensor | np.ndarray], tensors: Sequence[str]) -> dict[str, torch.Tensor]:
        """The int8 codes (as int32) the quantizers of `tensors` produce for `feeds`."""
        by_tensor = {q.tensor: q for q in self.quantizers}
        wanted = [by_tensor[t] for t in tensors]
        scales = self.scales()
        with torch.no_grad():
            activations = [q.tensor for q in wanted if q.kind == "activation"]
            values = self.net.run(feeds, activations) if activations else {}
            for q in wanted:
                if q.kind == "weight":
                    values[q.tensor] = self.net.parameter(q.tensor).detach()
            return {q.tensor: quantized_codes(values[q.tensor], scales[q.tensor], q.axis) for q in wanted}

    def check_supported(self, feeds: Mapping[str, torch.Tensor | np.ndarray] | None = None) -> None:
        """Fail, naming them, when nodes run through onnxruntime (no gradients flow there); with
        `feeds`, after one forward pass (some nodes fall back only for some attribute values)."""
        if feeds is not None:
            with torch.no_grad():
                self.run(feeds)
        fallback = self.net.fallback_nodes
        if fallback:
            raise TrtqError(
                f"Node {fallback[0]} has no PyTorch implementation ({len(fallback)} such nodes), so it cannot "
                "be fine-tuned through.",
                "quantize without fine-tuning (trtq quantize, with --target to keep sensitive layers out of INT8), "
                "or fine-tune a copy exported without that op (e.g. with NonMaxSuppression left to the application).",
            )
