"""End-to-end runs of whole ranges tables on a few batches: how `--method auto` checks its choice.

Every table becomes the Q/DQ model `trtq quantize` would write (same placement, same insertion,
same scales), run under onnxruntime against FP32 on the judging batches. One model serves every
table: its activation scales are graph inputs, so a table is run by feeding its scales (bit for
bit the scales `insert_qdq` writes), and the model is built and its session made once, run as ONNX defines
Q/DQ (no onnxruntime QDQ fusions: with scales as inputs it cannot make integer kernels of them anyway). A run
gives, per sample and output, the power of the FP32 output (signal) and of the difference
(noise), from which `trtq.calibrate.auto` computes its statistic. Outputs shaped like an attention
mask input ([batch, sequence, ...] with a 0/1 integer input of shape [batch, sequence]) count only
the positions the mask keeps, so padding does not decide a transformer's ranges. Integer and boolean
outputs (class labels, detection counts, indices) are left out where the model has a floating-point one:
a label that flips between two near-equal scores is a step, not a measure of how far the ranges moved
the output, and it would decide the worst-output statistic on the samples where it flips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trtq.model import split_initializers
from trtq.quantize import Placement, insert_qdq
from trtq.quantize.qdq import scale_and_zero_point, unique_name
from trtq.runtime.ort_session import make_session


def attention_mask(batch: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The batch's attention mask: the one 2-D integer/bool input named like a mask, holding only 0 and 1."""
    found = [v for name, v in batch.items() if "mask" in name.lower() and v.ndim == 2
             and (v.dtype == bool or np.issubdtype(v.dtype, np.integer)) and np.isin(v, (0, 1)).all()]
    return found[0].astype(bool) if len(found) == 1 else None


FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                         onnx.TensorProto.DOUBLE})


def scored_outputs(model: onnx.ModelProto) -> list[int]:
    """Indices of the graph outputs the checks score: the floating-point ones, or all where there are none."""
    outputs = model.graph.output
    floating = [k for k, o in enumerate(outputs) if o.type.tensor_type.elem_type in FLOAT_TYPES]
    return floating or list(range(len(outputs)))


def sample_powers(references: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                  mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Signal and noise power, [samples, outputs] (float64), of one batch's outputs against FP32;
    masked positions only where an output's leading dims are the mask's."""
    samples = next((r.shape[0] for r in references if np.ndim(r)), 1)
    signal = np.zeros((samples, len(references)))
    noise = np.zeros((samples, len(references)))
    for k, (ref, out) in enumerate(zip(references, outputs)):
        ref, out = np.asarray(ref), np.asarray(out)
        if ref.ndim == 0:
            ref, out = ref.reshape(1, 1), out.reshape(1, 1)
        for j in range(min(samples, ref.shape[0])):
            r, q = ref[j], out[j]
            if mask is not None and r.ndim >= 1 and ref.shape[:2] == mask.shape:
                r, q = r[mask[j]], q[mask[j]]
            r = r.reshape(-1).astype(np.float64)
            e = q.reshape(-1).astype(np.float64) - r
            signal[j, k], noise[j, k] = float(r @ r), float(e @ e)
    return signal, noise


class TableRunner:
    """Runs `model` quantized with any ranges table on `batches` against FP32, one batch at a time.

    `references`: the FP32 outputs of each batch (all graph outputs, in order), when the caller
    already has them (the calibration pass); otherwise they are computed here, once.
    """

    def __init__(self, model: onnx.ModelProto, placement: Placement, batches: Sequence[Mapping[str, np.ndarray]],
                 references: Sequence[Sequence[np.ndarray]] | None = None, threads: int | None = None) -> None:
        self.batches = [dict(batch) for batch in batches]
        scored = scored_outputs(model)
        self.outputs = [model.graph.output[k].name for k in scored]
        if references is None:
            fp32 = make_session(model, threads=threads, spin=False)
            self.references = [list(fp32.run(self.outputs, batch)) for batch in self.batches]
            del fp32
        else:
            self.references = [[refs[k] for k in scored] for refs in references]
        self.masks = [attention_mask(batch) for batch in self.batches]
        self.placement = placement
        self.targets = [t for t in placement.targets if t.kind == "activation"]
        qdq, weights = _checked_model(model, placement)
        self.scale_inputs = _scales_as_inputs(qdq, {t.tensor for t in self.targets})
        self.session = make_session(qdq, threads=threads, spin=False, fuse_qdq=False, weights=weights)

    def __len__(self) -> int:
        return len(self.batches)

    def samples(self, index: int) -> int:
        """Samples in batch `index`."""
        return len(next(iter(self.batches[index].values())))

    def scales(self, amax: Mapping[str, float]) -> dict[str, np.ndarray]:
        """The scale inputs that quantize with `amax` (every activation target must have a range)."""
        feeds = {}
        for target in self.targets:
            name, dtype = self.scale_inputs[target.tensor]
            feeds[name] = scale_and_zero_point(target, {}, amax, dtype, self.placement.grid)[0]
        return feeds

    def run(self, scales: Mapping[str, np.ndarray], index: int) -> tuple[np.ndarray, np.ndarray]:
        """Signal and noise power, [samples, outputs], of batch `index` quantized with `scales`."""
        outs = self.session.run(self.outputs, {**self.batches[index], **scales})
        return sample_powers(self.references[index], outs, self.masks[index])


def _checked_model(model: onnx.ModelProto, placement: Placement) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model `insert_qdq` writes, as the checks run it, and the large weights it reads, as arrays.

    Float32 weights come already on the grid (per channel, as their Q/DQ pair computes them: equal to the value
    onnxruntime folds that pair into) and reach onnxruntime as arrays, so that neither the model nor its weights
    are copied through protobuf: on ResNet-50 that was 690 MB of fresh memory for a 100 MB model. Weights of
    other types keep their Q/DQ pairs.
    """
    weight_targets = [t for t in placement.targets if t.kind == "weight"]
    initializers = {init.name: init for init in model.graph.initializer}
    if any(initializers[t.tensor].data_type != onnx.TensorProto.FLOAT for t in weight_targets):
        return insert_qdq(model, placement, {t.tensor: 1.0 for t in placement.targets if t.kind == "activation"}), {}
    skeleton, large = split_initializers(model)
    activations = replace(placement, targets=tuple(t for t in placement.targets if t.kind == "activation"))
    qdq = insert_qdq(skeleton, activations, {t.tensor: 1.0 for t in activations.targets})
    nodes = {node.name: node for node in qdq.graph.node}
    used = {name for node in qdq.graph.node for name in (*node.input, *node.output)} | set(initializers)
    weights: dict[str, np.ndarray] = {}
    for target in weight_targets:
        name = unique_name(f"{target.tensor}_on_grid", used)
        values = numpy_helper.to_array(initializers[target.tensor])
        axis = target.axis if target.axis is not None else 0
        weights[name] = placement.grid.fake_quantize_weight(values, axis, out=values)
        for node_name, index in target.consumers:
            nodes[node_name].input[index] = name
    read = {name for node in qdq.graph.node for name in node.input}
    weights.update({init.name: numpy_helper.to_array(init) for init in large if init.name in read})
    return qdq, weights


def _scales_as_inputs(model: onnx.ModelProto, tensors: set[str]) -> dict[str, tuple[str, type]]:
    """Turn the scale initializer of each activation Q/DQ pair of `tensors` into a graph input (in place).

    Returns tensor -> (scale input name, numpy dtype).
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    found: dict[str, tuple[str, type]] = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in tensors and node.input[1] in initializers:
            init = initializers[node.input[1]]
            found[node.input[0]] = (init.name, helper.tensor_dtype_to_np_dtype(init.data_type).type)
    names = {name for name, _ in found.values()}
    for index in reversed([i for i, init in enumerate(graph.initializer) if init.name in names]):
        del graph.initializer[index]  # one by one: rebuilding the list would copy every weight
    for name, dtype in found.values():
        graph.input.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), []))
    missing = tensors - set(found)
    if missing:
        raise AssertionError(f"no Q/DQ scale found for activation {min(missing)!r}")
    return found
