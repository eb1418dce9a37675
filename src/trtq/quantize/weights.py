"""FP8 weight ranges judged by the layer's output error, and bias correction (`--weight-ranges mse`).

FP8 E4M3 rounds each weight to 3 mantissa bits, so its error is relative to the value and the
per-channel amax (scale = amax / 448) matters only through where each weight lands between two
grid points. Which amax is best for a channel depends on the inputs the weights meet: for a
MatMul/Gemm `Y = X W` with a constant weight, the output error of channel n is
`||X (Wq[:, n] - W[:, n])||^2`. For every output channel this module tries amax x f for
f = 2^(-i/32), i = 0..CANDIDATES-1 (from max |w| down by about a quarter; beyond the new amax,
weights saturate) and keeps the one with the smallest error on calibration rows X of the layer's
input, taken at real tokens where the data has an attention mask (padding rows are not what the
layer meets where it counts).

What is left of the weight error has a mean, `E[x] (Wq - W)`, which the layer's bias absorbs
exactly: bias correction (Nagel et al., "Data-Free Quantization", 2019) adds `-mean(X) (Wq - W)`
to the bias of a MatMul followed by an Add of a constant [N] vector, or of a Gemm with a bias.

The result is written into the model itself: each such weight is replaced by its values on the
FP8 grid at the chosen amax (its largest magnitude is then that amax, so the Q/DQ pair trtq
inserts, scale = max |w| / 448, reproduces the same codes), and the biases are corrected. Every
later step (the --target search, the FP16 conversion, the written model) sees that model. The
choices are kept in the ranges table (`weights`), so `--ranges` rebuilds the same model.

Measured on all-MiniLM-L6-v2 (FP8, max activation ranges): INT8 weights gain nothing from it
(activations dominate their error), so it applies to FP8 only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from trtq.calibrate.grids import Grid
from trtq.quantize.placement import Placement
from trtq.quantize.smooth import constant_of, smoothing_groups

CANDIDATES = 24
"""Per-channel amax candidates: max |w| x 2^(-i/32), i = 0..23 (down to 0.61 of the max)."""

WEIGHT_ROWS = 4096
"""Calibration rows (at real tokens where there is a mask) of each layer input the choice is judged on, at most."""

ROW_BYTES = 512 << 20
"""Memory for those rows over all layer inputs together: large models get fewer rows per input."""


def rows_per_input(channels: int) -> int:
    """Rows to keep of each layer input when their channel counts add up to `channels`."""
    return max(256, min(WEIGHT_ROWS, ROW_BYTES // (4 * max(channels, 1))))


@dataclass(frozen=True)
class WeightChoice:
    """The calibrated range of one weight and the bias correction that goes with it."""

    weight: str
    axis: int
    """The weight's output-channel axis (its Q/DQ axis)."""
    amax: np.ndarray
    """Per output channel."""
    bias: str | None = None
    """The bias initializer corrected (None: the layer has no constant bias)."""
    delta: np.ndarray | None = None
    """Added to the bias."""
    gain_db: float = 0.0
    """How much smaller the layer's output error from its weights got on the judging rows (dB)."""

    def to_dict(self) -> dict:
        """The ranges table's entry (`RangesTable.weights`)."""
        return {"axis": self.axis, "amax": [float(a) for a in self.amax], "bias": self.bias,
                "delta": [float(d) for d in self.delta] if self.delta is not None else None,
                "gain_db": round(self.gain_db, 3)}

    @classmethod
    def from_dict(cls, weight: str, data: Mapping) -> WeightChoice:
        """Inverse of `to_dict`."""
        delta = data.get("delta")
        return cls(weight, int(data["axis"]), np.asarray(data["amax"], dtype=np.float32), data.get("bias"),
                   np.asarray(delta, dtype=np.float32) if delta is not None else None,
                   float(data.get("gain_db", 0.0)))


def weight_layers(model: onnx.ModelProto, placement: Placement) -> dict[str, list[tuple[str, str, int]]]:
    """Activation tensor -> [(MatMul/Gemm node, weight, output-channel axis)] for the layers whose
    activation and 2-D constant weight are both quantized and whose weight no other node reads."""
    readers: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        for name in node.input:
            readers[name] += 1
    axes = {t.tensor: t.axis for t in placement.targets if t.kind == "weight"}
    found: dict[str, list[tuple[str, str, int]]] = {}
    for group in smoothing_groups(model, placement):
        layers = [(r.node, r.weight, 1 - r.axis) for r in group.readers
                  if readers[r.weight] == 1 and axes.get(r.weight) == 1 - r.axis]
        if layers:
            found[group.tensor] = layers
    return found


@dataclass(frozen=True)
class WeightRangesSummary:
    """What `--weight-ranges mse` did to a model, in the result and its JSON."""

    layers: int
    """Weights whose per-channel ranges were chosen by output error."""
    mean_gain_db: float
    """Mean over those weights of how much less output error the chosen ranges cause than max |w| (dB)."""
    bias_corrected: int
    """Of those, the weights whose layer bias took the correction."""

    @classmethod
    def of(cls, choices: Mapping[str, WeightChoice]) -> WeightRangesSummary | None:
        """The summary of `choices` (None when there are none)."""
        if not choices:
            return None
        return cls(layers=len(choices), mean_gain_db=float(np.mean([c.gain_db for c in choices.values()])),
                   bias_corrected=sum(c.bias is not None for c in choices.values()))

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return asdict(self)


def choose_weight_ranges(model: onnx.ModelProto, placement: Placement, rows: Mapping[str, np.ndarray],
                         grid: Grid) -> dict[str, WeightChoice]:
    """Weight name -> its choice (module doc), judged on `rows` [n, K] of each layer's input."""
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output if out}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    nodes = {node.name: node for node in model.graph.node}
    chosen = {}
    for tensor, layers in weight_layers(model, placement).items():
        if tensor not in rows or not len(rows[tensor]):
            continue
        x = np.asarray(rows[tensor], dtype=np.float32)
        mean = x.astype(np.float64).mean(axis=0)
        # ||X d||^2 per column, through X itself or its [K, K] Gram matrix, whichever is the smaller product
        gram = (x.T.astype(np.float64) @ x).astype(np.float32) if x.shape[0] > x.shape[1] else None
        for node_name, weight, axis in layers:
            w = numpy_helper.to_array(initializers[weight]).astype(np.float32)
            kn = w if axis == 1 else w.T  # [K, N]
            top = np.abs(kn).max(axis=0)
            best_amax, best_error, first_error = _search(kn, top, grid, x, gram)
            diff = grid.fake_quantize(kn, best_amax, axis=1).astype(np.float64) - kn
            bias = _bias_of(nodes[node_name], producers, consumers, initializers, kn.shape[1])
            delta = (-(mean @ diff)).astype(np.float32) if bias is not None else None
            gain = 10 * np.log10(max(float(first_error.sum()), 1e-30) / max(float(best_error.sum()), 1e-30))
            chosen[weight] = WeightChoice(weight, axis, best_amax.astype(np.float32), bias, delta, gain)
    return chosen


def _output_error(diff: np.ndarray, x: np.ndarray, gram: np.ndarray | None) -> np.ndarray:
    """||X d||^2 of every column d of `diff` [K, N] (float64 sums)."""
    if gram is None:
        y = x @ diff
        return (y * y).sum(axis=0, dtype=np.float64)
    return (diff * (gram @ diff)).sum(axis=0, dtype=np.float64)


def _search(kn: np.ndarray, top: np.ndarray, grid: Grid, x: np.ndarray, gram: np.ndarray | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of `kn` [K, N], the candidate amax with the least output error, trying every candidate:
    FP8 rounding makes the error jagged over them, and a coarse-then-fine search lost 0.24 dB on MiniLM.
    (amax, its error, the error at max |w|)."""
    best_amax = top.copy()
    best_error = first_error = np.zeros(0)
    for i in range(CANDIDATES):
        amax = top * np.float32(2.0 ** (-i / 32))
        error = _output_error(grid.fake_quantize(kn, amax, axis=1) - kn, x, gram)
        if i == 0:
            best_error, first_error = error, error.copy()
            continue
        better = error < best_error
        best_amax[better], best_error[better] = amax[better], error[better]
    return best_amax, best_error, first_error


def _bias_of(node: onnx.NodeProto, producers: Mapping[str, onnx.NodeProto],
             consumers: Mapping[str, list[onnx.NodeProto]], initializers: Mapping[str, onnx.TensorProto],
             channels: int) -> str | None:
    """The initializer of the layer's [N] bias: a Gemm's C, or the constant of the one Add reading a MatMul's output."""
    if node.op_type == "Gemm":
        name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    else:
        readers = consumers.get(node.output[0], [])
        if len(readers) != 1 or readers[0].op_type != "Add":
            return None
        name = next((v for v in readers[0].input if v != node.output[0]), None)
    constant = constant_of(name, producers, initializers) if name else None
    if constant is None or tuple(constant.dims) != (channels,) or constant.data_type != onnx.TensorProto.FLOAT:
        return None
    if len(consumers.get(constant.name, [])) != 1:  # shared with another layer: correcting it would move that one
        return None
    return constant.name


def apply_weight_ranges(model: onnx.ModelProto, choices: Mapping[str, WeightChoice], grid: Grid) -> onnx.ModelProto:
    """A copy of `model` with each chosen weight on `grid` at its amax and its bias corrected (module doc)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    initializers = {init.name: init for init in out.graph.initializer}
    for choice in choices.values():
        init = initializers.get(choice.weight)
        if init is None:
            raise KeyError(f"weight {choice.weight!r} of the ranges table is not in the model")
        w = numpy_helper.to_array(init).astype(np.float32)
        rounded = grid.fake_quantize(w, choice.amax, axis=choice.axis)
        init.CopyFrom(numpy_helper.from_array(rounded.astype(np.float32), choice.weight))
        if choice.bias is not None and choice.delta is not None:
            bias = initializers[choice.bias]
            values = numpy_helper.to_array(bias).astype(np.float32) + choice.delta
            bias.CopyFrom(numpy_helper.from_array(values.astype(np.float32), choice.bias))
    return out
