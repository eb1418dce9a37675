"""Write a fine-tuned model back as a Q/DQ ONNX, and check that onnxruntime agrees with it.

Export = the normalised FP32 model with its fine-tuned weights, through the quantize path's own
`insert_qdq` (same placement, same node layout), with every scale initializer then set to the
exact float32 step size the PyTorch model trained with (learned per-channel weight scales
included, which `insert_qdq` alone would recompute from max|w|).

Parity: onnxruntime runs the export node by node (no graph optimisation) with every
QuantizeLinear's input and int8 output exposed. Two differences are reported, in quantization
steps: end to end (the fake-quantizers' codes in PyTorch on the same model inputs), and local
(PyTorch's quantizer applied to onnxruntime's own input of each QuantizeLinear). Local parity
checks the rounding and saturation semantics alone and is 0 in a correct export. End to end,
the two runtimes sum convolutions in different orders, so a value on a rounding boundary can land
one step apart; in layers after it the difference can grow where a network amplifies it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from trtq.qat.fakequant import quantized_codes
from trtq.qat.model import QatModel
from trtq.quantize import insert_qdq


@dataclass(frozen=True)
class QdqExport:
    """The exported Q/DQ model and the ranges it holds."""

    model: onnx.ModelProto
    activation_amax: dict[str, float]
    """Learned activation ranges (scale * 127), for the ranges JSON and the TensorRT cache."""
    weight_scales: dict[str, np.ndarray]
    """Learned per-channel weight step sizes, as written into the model."""


@dataclass(frozen=True)
class ParityReport:
    """How closely onnxruntime's run of the export matches the PyTorch fake-quant model."""

    samples: int
    tensors: int
    elements: int
    max_steps: int
    """Largest |code_onnxruntime - code_torch| over every quantized tensor and element."""
    mismatched: int
    """Elements whose codes differ at all."""
    worst_tensor: str
    output_max_abs_diff: float
    steps_by_tensor: dict[str, int] = field(default_factory=dict)
    """End-to-end max difference per quantized tensor (graph order)."""
    local_max_steps: int = 0
    """The same comparison with PyTorch's quantizer applied to onnxruntime's own input of each
    activation QuantizeLinear: the rounding and saturation semantics alone, without differences
    carried from upstream layers (0 expected)."""

    @property
    def ok(self) -> bool:
        """At most one quantization step apart anywhere, end to end."""
        return self.max_steps <= 1

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return {**asdict(self), "ok": self.ok}


def _scale_array(scale: torch.Tensor) -> np.ndarray:
    return scale.detach().cpu().numpy().astype(np.float32, copy=False)


def export_qdq(qmodel: QatModel) -> QdqExport:
    """The Q/DQ ONNX of `qmodel`'s current weights and step sizes (no files written)."""
    fp32 = onnx.ModelProto()
    fp32.CopyFrom(qmodel.source)
    trained = {name: qmodel.net.parameter(name).detach().cpu().numpy() for name in qmodel.weight_names}
    for init in fp32.graph.initializer:
        if init.name in trained:
            value = trained[init.name].astype(numpy_helper.to_array(init).dtype, copy=False)
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    scales = qmodel.scales()
    amax = qmodel.activation_amax()
    model = insert_qdq(fp32, qmodel.placement, amax)
    quantize_nodes = {node.input[0]: node for node in model.graph.node if node.op_type == "QuantizeLinear"}
    scale_inits = {init.name: init for init in model.graph.initializer}
    for q in qmodel.quantizers:
        init = scale_inits[quantize_nodes[q.tensor].input[1]]
        init.CopyFrom(numpy_helper.from_array(_scale_array(scales[q.tensor]).reshape(tuple(init.dims)), init.name))
    weight_scales = {q.tensor: _scale_array(scales[q.tensor]) for q in qmodel.quantizers if q.kind == "weight"}
    return QdqExport(model=model, activation_amax=amax, weight_scales=weight_scales)


def _parity_session(model: onnx.ModelProto) -> tuple[ort.InferenceSession, dict[str, str]]:
    """A session that also outputs every QuantizeLinear's int8 codes and float input; tensor -> code output."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    codes = {}
    present = {o.name for o in exposed.graph.output} | {i.name for i in exposed.graph.input}
    present |= {i.name for i in exposed.graph.initializer}
    for node in list(exposed.graph.node):
        if node.op_type == "QuantizeLinear" and node.output[0] not in present:
            codes[node.input[0]] = node.output[0]
            exposed.graph.output.append(helper.make_tensor_value_info(node.output[0], TensorProto.INT8, None))
            if node.input[0] not in present:
                exposed.graph.output.append(helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, None))
                present.add(node.input[0])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every node as ONNX defines it
    options.log_severity_level = 3
    return ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"]), codes


def check_parity(qmodel: QatModel, exported: onnx.ModelProto,
                 batches: Iterable[Mapping[str, np.ndarray]]) -> ParityReport:
    """Run `exported` (onnxruntime, CPU) and `qmodel` (PyTorch) on `batches`; compare codes and outputs."""
    session, code_names = _parity_session(exported)
    tensors = [q.tensor for q in qmodel.quantizers]
    activations = [q for q in qmodel.quantizers if q.kind == "activation"]
    inputs = [q.tensor for q in activations if q.tensor not in qmodel.input_names]
    outputs = list(qmodel.output_names)
    scales = {t: s.cpu() for t, s in qmodel.scales().items()}
    samples = elements = mismatched = local = 0
    steps = dict.fromkeys(tensors, 0)
    out_diff = 0.0
    for batch in batches:
        feeds = {name: np.ascontiguousarray(value) for name, value in batch.items()}
        fetched = session.run([*outputs, *(code_names[t] for t in tensors), *inputs], feeds)
        ort_outputs = dict(zip(outputs, fetched[: len(outputs)]))
        ort_codes = dict(zip(tensors, fetched[len(outputs):len(outputs) + len(tensors)]))
        ort_inputs = {**feeds, **dict(zip(inputs, fetched[len(outputs) + len(tensors):]))}
        for q in activations:
            mine = quantized_codes(torch.from_numpy(np.ascontiguousarray(ort_inputs[q.tensor])), scales[q.tensor], q.axis)
            local = max(local, int(np.abs(mine.numpy() - ort_codes[q.tensor].astype(np.int32)).max(initial=0)))
        torch_codes = qmodel.codes(feeds, tensors)
        with torch.no_grad():
            torch_outputs = qmodel.run(feeds)
        for tensor in tensors:
            diff = np.abs(ort_codes[tensor].astype(np.int32) - torch_codes[tensor].cpu().numpy())
            elements += diff.size
            mismatched += int(np.count_nonzero(diff))
            steps[tensor] = max(steps[tensor], int(diff.max(initial=0)))
        for name in outputs:
            delta = np.abs(ort_outputs[name].astype(np.float64) - torch_outputs[name].detach().cpu().numpy())
            out_diff = max(out_diff, float(delta.max(initial=0.0)))
        samples += len(next(iter(feeds.values())))
    worst = max(tensors, key=lambda t: steps[t], default="")
    return ParityReport(samples=samples, tensors=len(tensors), elements=elements, max_steps=steps.get(worst, 0),
                        mismatched=mismatched, worst_tensor=worst, output_max_abs_diff=out_diff,
                        steps_by_tensor=steps, local_max_steps=local)
