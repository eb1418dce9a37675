"""The local judge of `--method auto`: the error each candidate range causes in the layers that read a tensor.

As in EasyQuant and AIMET's range search, every layer that reads a quantized tensor runs with its
weights on the target grid (per channel) and the tensor fake-quantized at each candidate, on the
FP32 activations of a few calibration samples, against the same layer in FP32. The work is two
onnxruntime sessions:
1. the model itself, with the judged tensors and the layers' outputs exposed (one FP32 pass per batch:
   the layers' inputs, and their outputs as the reference);
2. a "bag" model holding a copy of every consuming node per judged input (weights on the grid, the
   judged input as a graph input), run once per candidate slot, all layers at once.
A layer reading two quantized activations (attention's Q.K^T and P.V) judges each with the other at
its current choice (`fixed/<tensor>` inputs).

Memory is what this costs most on large models (a fresh page costs far more than the arithmetic on
it), so weights reach onnxruntime as arrays, never copied through protobuf, and each candidate is
fake-quantized into one buffer per tensor, reused across candidates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper
from tqdm import tqdm

from trtq.calibrate.grids import Grid
from trtq.model import tensor_types


@dataclass(frozen=True)
class JudgedLayer:
    """A node that reads quantized activations, as the range search needs to run it.

    Built from the Q/DQ placement (`trtq.api`), so that calibration need not know placement rules.
    """

    node: str
    activations: tuple[tuple[int, str], ...]
    """(input index, tensor) of each input quantized per tensor."""
    weights: tuple[tuple[int, str, int], ...] = ()
    """(input index, initializer, per-channel axis) of each quantized weight."""


@dataclass(frozen=True)
class _Copy:
    """One judged input of one layer: a copy of the node in the bag model."""

    node: str
    tensor: str
    feed: str
    """The bag input that receives the judged tensor, fake-quantized at a candidate."""
    outputs: tuple[tuple[str, str], ...]
    """(output in the bag, the original node's output) pairs."""


Key = tuple[str, str]
"""(node, judged tensor): one copy's identity."""


class Bag:
    """Per judged input of each of `layers`' nodes, a copy with its quantized weights on the grid, the
    judged input as graph input `judge<i>/x`, and its other quantized activations as graph inputs
    `fixed/<tensor>` (fed at their current choice); fed from the FP32 model's exposed tensors.

    `model`: the bag, its quantized weights left out (`weights` holds them, for `make_session`).
    `exposed`: what a batch's FP32 pass must expose: what the bag reads (`sources`: the nodes' other
    inputs, fed as they are) and the original nodes' outputs (the reference).
    """

    def __init__(self, model: onnx.ModelProto, layers: Sequence[JudgedLayer], grid: Grid) -> None:
        nodes = {node.name: node for node in model.graph.node}
        initializers = {init.name: init for init in model.graph.initializer}
        types = tensor_types(model)

        def info(name: str, like: str) -> onnx.ValueInfoProto:
            return helper.make_tensor_value_info(name, types.get(like, onnx.TensorProto.FLOAT), None)

        bag_nodes: list[onnx.NodeProto] = []
        inputs: dict[str, onnx.ValueInfoProto] = {}
        inits: dict[str, onnx.TensorProto] = {}
        outputs: list[onnx.ValueInfoProto] = []
        self.weights: dict[str, np.ndarray] = {}
        self.copies: list[_Copy] = []
        self.fixed: dict[str, str] = {}
        sources: dict[str, None] = {}  # other inputs of the nodes, fed as they are
        for layer in layers:
            node = nodes[layer.node]
            weights = {index: (name, axis) for index, name, axis in layer.weights}
            quantized = dict(layer.activations)
            for tensor in dict.fromkeys(quantized.values()):
                index_in_bag = len(self.copies)
                copy = onnx.NodeProto()
                copy.CopyFrom(node)
                copy.name = f"judge{index_in_bag}"
                feed = f"judge{index_in_bag}/x"
                inputs[feed] = info(feed, tensor)
                for index, name in enumerate(node.input):
                    if not name:
                        continue
                    if quantized.get(index) == tensor:
                        copy.input[index] = feed
                    elif index in quantized:
                        fixed = f"fixed/{quantized[index]}"
                        self.fixed[fixed] = quantized[index]
                        inputs.setdefault(fixed, info(fixed, quantized[index]))
                        copy.input[index] = fixed
                    elif index in weights:
                        weight, axis = weights[index]
                        qname = f"weight/{axis}/{weight}"
                        if qname not in self.weights:
                            values = numpy_helper.to_array(initializers[weight])
                            self.weights[qname] = grid.fake_quantize_weight(values, axis, out=values)
                        copy.input[index] = qname
                    elif name in initializers:
                        inits[name] = initializers[name]
                    else:
                        inputs.setdefault(name, info(name, name))
                        sources[name] = None
                pairs = tuple((f"judge{index_in_bag}/y{i}", out) for i, out in enumerate(node.output) if out)
                for i, out in enumerate(node.output):
                    copy.output[i] = f"judge{index_in_bag}/y{i}" if out else ""
                outputs.extend(info(new, old) for new, old in pairs)
                bag_nodes.append(copy)
                self.copies.append(_Copy(layer.node, tensor, feed, pairs))
        self.sources = list(sources)
        self.outputs = [new for c in self.copies for new, _ in c.outputs]
        self.references = list(dict.fromkeys(old for c in self.copies for _, old in c.outputs))
        graph_inputs = {vi.name for vi in model.graph.input}
        read = (*self.sources, *(c.tensor for c in self.copies), *self.fixed.values())
        self.exposed = list(dict.fromkeys([t for t in read if t not in graph_inputs] + self.references))
        self.model = _model(model, "trtq_judge_bag", bag_nodes, list(inputs.values()), outputs, list(inits.values()))


def _model(like: onnx.ModelProto, name: str, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
           outputs: list[onnx.ValueInfoProto], initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    """A model built in place (helper.make_model copies the whole graph once more)."""
    out = onnx.ModelProto()
    out.ir_version = like.ir_version
    out.opset_import.extend(like.opset_import)
    graph = out.graph
    graph.name = name
    graph.node.extend(nodes)
    graph.input.extend(inputs)
    graph.output.extend(outputs)
    graph.initializer.extend(initializers)
    return out


class Judge:
    """Accumulates, batch by batch, the relative output error of every copy in `bag` per candidate
    (noise power over signal power), so that no batch's activations need to be kept."""

    def __init__(self, bag: Bag, candidates: Mapping[str, Mapping[str, float]], current: Mapping[str, float],
                 grid: Grid, threads: int | None) -> None:
        from trtq.runtime.ort_session import make_session

        self.bag, self.grid, self.current = bag, grid, current
        self.session = make_session(bag.model, threads=threads, spin=False, weights=bag.weights)
        self.ordered = {c.tensor: list(candidates[c.tensor].items()) for c in bag.copies}
        self.slots = slots(bag, candidates)
        self.noise = {(c.node, c.tensor): np.zeros(self.slots) for c in bag.copies}
        self.signal = {(c.node, c.tensor): 0.0 for c in bag.copies}

    def add(self, values: Mapping[str, np.ndarray], bar: tqdm) -> None:
        """Judge every candidate on one batch's FP32 values (`values`: every tensor in `bag.exposed`, and
        the model inputs the bag reads)."""
        bag, grid = self.bag, self.grid
        for c in bag.copies:
            self.signal[(c.node, c.tensor)] += sum(_power(values[old]) for _, old in c.outputs)
        feeds = {name: values[name] for name in bag.sources}
        feeds.update({fixed: grid.fake_quantize(values[t], self.current[t]) for fixed, t in bag.fixed.items()})
        buffers: dict[str, np.ndarray] = {}  # per tensor, reused by every slot
        for slot in range(self.slots):
            done: set[str] = set()
            for c in bag.copies:
                choices = self.ordered[c.tensor]
                if c.tensor not in done and (c.tensor not in buffers or slot < len(choices)):
                    amax = choices[min(slot, len(choices) - 1)][1]
                    buffers[c.tensor] = grid.fake_quantize(values[c.tensor], amax, out=buffers.get(c.tensor))
                    done.add(c.tensor)
                feeds[c.feed] = buffers[c.tensor]
            outs = dict(zip(bag.outputs, self.session.run(bag.outputs, feeds)))
            for c in bag.copies:
                if slot < len(self.ordered[c.tensor]):
                    self.noise[(c.node, c.tensor)][slot] += sum(_power(np.subtract(outs[new], values[old], out=outs[new]))
                                                                for new, old in c.outputs)
            bar.update(1)

    def errors(self) -> dict[Key, dict[str, float]]:
        """Relative error of every copy per candidate name."""
        return {key: {name: float(self.noise[key][i]) / (self.signal[key] or 1.0)
                      for i, (name, _) in enumerate(self.ordered[key[1]])} for key in self.noise}


def slots(bag: Bag, candidates: Mapping[str, Mapping[str, float]]) -> int:
    """Runs of the bag per batch: the most candidates any of its judged tensors has."""
    return max((len(candidates[c.tensor]) for c in bag.copies), default=0)


def _power(x: np.ndarray) -> float:
    flat = np.asarray(x, dtype=np.float32).reshape(-1)
    return float(np.dot(flat, flat))


def tensor_errors(copy_errors: Mapping[Key, Mapping[str, float]], tensor: str) -> dict[str, float]:
    """A tensor's error per candidate: its copies' relative errors summed over its consumers."""
    total: dict[str, float] = {}
    for (_, t), errors in copy_errors.items():
        if t == tensor:
            for name, value in errors.items():
                total[name] = total.get(name, 0.0) + value
    return total
