"""What every API call does first: the model loaded, normalised and its Q/DQ placement planned, the
data opened, batch sizes chosen, and the model calibrated (or its ranges table read)."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import onnx

from trtq.calibrate import CalibrationResult, run_calibration
from trtq.calibrate.channels import channel_amax
from trtq.calibrate.grids import Grid
from trtq.calibrate.judge import JudgedLayer
from trtq.data import Dataset, DataSource, open_dataset, resolve_preprocess
from trtq.errors import TrtqError
from trtq.evaluate.mixed import node_pattern
from trtq.evaluate.tables import TableRunner
from trtq.formats.ranges import RangesTable
from trtq.model import (
    file_sha256,
    graph_inputs,
    load_model,
    model_file,
    normalize_model,
    normalized_node_names,
    requested_shapes,
    tensor_types,
)
from trtq.options import CalibrationOptions, DataOptions, QuantizeOptions, precision_grid
from trtq.quantize import Placement, plan_placement
from trtq.quantize.placement import MHA_INT8_MAX_SEQ, long_attention
from trtq.quantize.pooling import pooled_groups
from trtq.quantize.qdq import MIN_OPSETS
from trtq.quantize.smooth import SmoothResult, record_smoothing, smooth
from trtq.quantize.weights import WeightChoice, apply_weight_ranges, choose_weight_ranges, rows_per_input, weight_layers
from trtq.tensorrt.layers import onnx_layer_name


@dataclass(frozen=True)
class PreparedModel:
    """A normalised model with its source file's identity and its Q/DQ placement."""

    path: Path
    sha256: str
    model: onnx.ModelProto
    placement: Placement
    layer_names: dict[str, str] = field(default_factory=dict)
    """Normalised node name -> the TensorRT layer name the ONNX parser gives it in the original file
    (nodes that normalisation added, which that file lacks, have none)."""
    exclude_nodes: tuple[str, ...] = ()
    """The --exclude-nodes patterns the placement was planned with (plus those `at_shapes` added)."""
    exclude_ops: tuple[str, ...] = ()
    cache_scope: str = "qdq"
    precision: str = "int8"
    residual_qdq: bool = False
    notes: tuple[str, ...] = ()
    """What the placement left out on its own (attention longer than TensorRT's INT8 fused kernels take)."""

    def at_shapes(self, shapes: Mapping[str, Sequence[int | None]] | None) -> PreparedModel:
        """The model planned for inputs of `shapes` (the data's): in INT8, attention MatMuls whose key
        sequence is longer than TensorRT's INT8 fused attention takes (MHA_INT8_MAX_SEQ tokens) stay in
        high precision, as NVIDIA ModelOpt leaves them. Unchanged when no attention is that long."""
        if self.precision != "int8" or not shapes:
            return self
        known = {name: tuple(shape) for name, shape in shapes.items()
                 if all(isinstance(d, int) and d > 0 for d in shape)}
        long = {node: keys for node, keys in long_attention(self.model, known).items()  # type: ignore[arg-type]
                if node not in self.placement.excluded_nodes}
        if not long:
            return self
        patterns = (*self.exclude_nodes, *(node_pattern(node) for node in long))
        note = (f"{len(long)} attention MatMuls (Q.K^T and softmax.V) stay out of INT8: their key sequence is "
                f"{max(long.values())} tokens, longer than the {MHA_INT8_MAX_SEQ} TensorRT's INT8 fused attention "
                "kernels take (NVIDIA ModelOpt leaves them out too); FP16 fused attention runs them faster")
        placement = plan_placement(self.model, exclude_nodes=patterns, exclude_ops=self.exclude_ops,
                                   cache_scope=self.cache_scope, grid=precision_grid(self.precision),
                                   residual=self.residual_qdq)
        return replace(self, placement=placement, exclude_nodes=patterns, notes=(*self.notes, note))


def prepare_model(
    model_path: str | Path,
    exclude_nodes: Sequence[str] = (),
    exclude_ops: Sequence[str] = (),
    cache_scope: str = "qdq",
    precision: str = "int8",
    residual_qdq: bool = False,
) -> PreparedModel:
    """Load, normalise (opset >= 13, or 19 for FP8; named nodes, Constant -> initializer) and plan placement
    (`residual_qdq`: on transformer residual Adds too). `PreparedModel.at_shapes` re-plans for the data."""
    grid = precision_grid(precision)
    path = model_file(model_path)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="trtq-sha256") as pool:
        sha256 = pool.submit(file_sha256, path)  # hashing releases the GIL: it overlaps loading
        original = load_model(path)
        check_runnable(original, path)
        layer_names = {name: onnx_layer_name(node) for name, node in normalized_node_names(original).items()}
        model = normalize_model(original, source=str(path), copy=False, min_opset=MIN_OPSETS[grid.name])
    placement = plan_placement(model, exclude_nodes=exclude_nodes, exclude_ops=exclude_ops, cache_scope=cache_scope,
                               grid=grid, residual=residual_qdq)
    _refuse_half_precision(model, placement, path)
    _warn_unmatched(model, path, exclude_nodes, exclude_ops)
    return PreparedModel(path=path, sha256=sha256.result(), model=model, placement=placement, layer_names=layer_names,
                         exclude_nodes=tuple(exclude_nodes), exclude_ops=tuple(exclude_ops), cache_scope=cache_scope,
                         precision=precision, residual_qdq=residual_qdq)


def check_runnable(model: onnx.ModelProto, path: str | Path) -> None:
    """What every command that runs a model needs of it: graph inputs to feed samples through, and
    outputs to read (a model without either cannot be calibrated, compared or evaluated)."""
    if not graph_inputs(model):
        raise TrtqError(f"Model {path} has no graph inputs, so no samples can be fed to it.",
                        "export the model with its inputs as graph inputs (not constants or initializers).")
    if not model.graph.output:
        raise TrtqError(f"Model {path} has no graph outputs, so nothing it computes can be read.",
                        "export the model with its outputs as graph outputs.")


def _refuse_half_precision(model: onnx.ModelProto, placement: Placement, path: Path) -> None:
    """trtq quantizes FP32 models: Q/DQ on a float16/bfloat16 tensor is not what TensorRT builds from
    an FP32 export, and QuantizeLinear below opset 19 takes float32 only."""
    types = tensor_types(model)
    low = [t.tensor for t in placement.targets if types.get(t.tensor, onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT]
    if low:
        kind = onnx.TensorProto.DataType.Name(types[low[0]]).lower()
        raise TrtqError(
            f"Model {path} computes in {kind} (tensor {low[0]!r} and {len(low) - 1} more that would be quantized); "
            "trtq quantizes FP32 models.",
            "export the model in FP32 (no .half()), then quantize it, with --high-precision fp16 for the rest.",
        )


def _warn_unmatched(model: onnx.ModelProto, path: Path, exclude_nodes: Sequence[str], exclude_ops: Sequence[str]) -> None:
    """Warn about --exclude-nodes patterns and --exclude-ops types that match no node of the model (a typo
    would otherwise keep nothing out of INT8 without a word)."""
    names = [node.name for node in model.graph.node]
    ops = {node.op_type for node in model.graph.node}
    for pattern in exclude_nodes:
        if not any(re.search(pattern, name) for name in names):
            warnings.warn(f"--exclude-nodes {pattern!r} matches no node of {path}; `trtq inspect {path} --json` "
                          "lists the node names.", stacklevel=3)
    for op in (op.strip() for op in exclude_ops):
        if op and op not in ops:
            warnings.warn(f"--exclude-ops {op} matches no node of {path} (its op types are {', '.join(sorted(ops))}).",
                          stacklevel=3)


def open_data(
    model: onnx.ModelProto, source: DataSource, options: DataOptions = DataOptions(), purpose: str = "calibrate",
    progress: bool = False,
) -> Dataset:
    """Open a data source (image folder, .npy/.npz, load_data() script) for `model`'s inputs.

    Dynamic dims take their size from --shape (`options.shapes`), else from the data when it has
    one (`Dataset.inferred`, `Dataset.shape_note`); a dynamic batch dim defaults to 1, as in
    trtexec. `purpose` ("calibrate", "compare", ...) words the error for a shape nothing gives.
    """
    inputs = graph_inputs(model)
    shapes = requested_shapes(inputs, options.shapes)
    preprocess = resolve_preprocess(options.preset, options.preprocess)
    return open_dataset(source, inputs, shapes, preprocess=preprocess, limit=options.limit,
                        given=tuple(options.shapes), purpose=purpose, progress=progress)


def file_sources(*sources: object) -> tuple[Path, ...]:
    """The sources given as files or folders (not in-memory arrays): what outputs must not overwrite."""
    return tuple(Path(s) for s in sources if isinstance(s, (str, os.PathLike)))


def shape_notes(*datasets: Dataset | None) -> tuple[str, ...]:
    """The distinct `shape_note`s of `datasets`, in order: what each took from its data."""
    notes = [d.shape_note for d in datasets if d is not None and d.shape_note]
    return tuple(dict.fromkeys(notes))


def data_shapes(model: onnx.ModelProto, given: Mapping[str, tuple[int, ...]], *datasets: Dataset | None
                ) -> dict[str, tuple[int, ...]]:
    """The shapes to build the engine at: --shape, plus those the data gave the model's dynamic dims."""
    shapes = dict(given)
    for dataset in datasets:
        if dataset is not None:
            for name, shape in dataset.inferred.items():
                shapes.setdefault(name, shape)
    order = [spec.name for spec in graph_inputs(model)]
    return {name: shapes[name] for name in order if name in shapes}


DEFAULT_EVAL_BATCH = 32
"""Evaluation batch for models with a dynamic batch dim (results do not depend on it)."""


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The leading dim of the first input that fixes it to a number (every batch must have exactly that
    many samples: calibration drops a partial last batch, training and evaluation use that size), else None.

    Any input counts, not only the first: a recurrent model exported with a dynamic `input [N, 576]` but
    a fixed state `h [1, 1, 128]` (silero-vad's sequence model) takes one sample at a time.
    """
    for spec in graph_inputs(model):
        first = spec.shape[0] if spec.shape else None
        if isinstance(first, int) and first > 0:
            return first
    return None


def eval_batch_size(model: onnx.ModelProto, dataset: Dataset | None, requested: int | None = None) -> int:
    """The model's fixed batch, else `requested` or DEFAULT_EVAL_BATCH, at most the number of samples
    (1 for a model whose first input has no dims to batch along)."""
    inputs = graph_inputs(model)
    fixed = fixed_batch(model) if inputs and inputs[0].shape else 1
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int) or requested < 1):
        raise TrtqError(f"Batch size {requested!r} is not a whole number >= 1.", "give e.g. --batch-size 32.")
    if fixed is not None:
        if requested is not None and requested != fixed:
            warnings.warn(f"--batch-size {requested} is not used: the model fixes its batch dim at {fixed}, so it is "
                          f"evaluated {fixed} samples at a time.", stacklevel=2)
        return fixed
    size = requested or DEFAULT_EVAL_BATCH
    available = dataset.num_samples if dataset is not None else None
    return max(1, min(size, available or size))


def calibrate(
    model_path: str | Path,
    calib: DataSource,
    *,
    data: DataOptions = DataOptions(),
    options: QuantizeOptions = QuantizeOptions(),
    progress: bool = True,
) -> CalibrationResult:
    """Calibrate a model: ranges for every tensor its Q/DQ placement and cache need."""
    prepared = prepare_model(model_path, options.exclude_nodes, options.exclude_ops, options.cache_scope,
                             options.precision, options.residual_qdq)
    dataset = open_data(prepared.model, calib, data, progress=progress)
    return calibrate_prepared(prepared.at_shapes(dataset.shapes), dataset, options=options, progress=progress)


def calibrate_prepared(
    prepared: PreparedModel, dataset: Dataset, *, options: CalibrationOptions = QuantizeOptions(), progress: bool = True
) -> CalibrationResult:
    """Calibrate an already prepared model on already opened (and checked) data.

    For callers that use the model and the data again afterwards (quantize with --target,
    sensitivity, fine-tuning), so neither is loaded or checked twice. A table calibrated for
    FP8 says so in its options ("precision": "fp8").
    """
    return run_calibration(
        prepared.model,
        prepared.placement.calibrated_tensors,
        dataset,
        model_sha256=prepared.sha256,
        model_name=prepared.path.name,
        method=str(options.method),
        percentile=options.percentile,
        batch_size=dataset.batch_size,
        device=options.device,
        drop_partial=fixed_batch(prepared.model) is not None,
        progress=progress,
        layers=judged_layers(prepared.placement) if options.method == "auto" else (),
        check_tables=partial(TableRunner, prepared.model, prepared.placement),
        judge_layers=options.judge_layers,
        grid=options.grid,
        shared=pooled_groups(prepared.model, prepared.placement),
    )


def smooth_and_calibrate(
    prepared: PreparedModel, dataset: Dataset | None, options: QuantizeOptions, saved: RangesTable | None = None,
    progress: bool = True,
) -> tuple[PreparedModel, CalibrationResult | None, SmoothResult | None]:
    """What every PTQ entry point does before quantizing: smooth or equalize the model as `options` say (or as the
    model of the `saved` table was), then calibrate it on `dataset` unless a `saved` table replaces calibration.
    The calibration's table records the smoothing, so `--ranges` rebuilds the same model."""
    smoothing = None
    if options.smooths(saved):
        prepared, smoothing = smooth_prepared(prepared, dataset, options, table=saved, progress=progress)
    if saved is not None or dataset is None:
        return prepared, None, smoothing
    calibration = calibrate_prepared(prepared, dataset, options=options, progress=progress)
    if smoothing is not None:
        calibration = replace(calibration, ranges=record_smoothing(calibration.ranges, smoothing))
    return prepared, calibration, smoothing


def judged_layers(placement: Placement) -> tuple[JudgedLayer, ...]:
    """The nodes that read quantized activations, with their quantized inputs: what `--method auto` judges."""
    activations: dict[str, list[tuple[int, str]]] = {}
    weights: dict[str, list[tuple[int, str, int]]] = {}
    for target in placement.targets:
        for node, index in target.consumers:
            if target.kind == "activation":
                activations.setdefault(node, []).append((index, target.tensor))
            else:
                weights.setdefault(node, []).append((index, target.tensor, target.axis or 0))
    return tuple(JudgedLayer(node, tuple(sorted(acts)), tuple(sorted(weights.get(node, ()))))
                 for node, acts in activations.items())


def smooth_prepared(
    prepared: PreparedModel,
    dataset: Dataset | None,
    options: QuantizeOptions,
    table: RangesTable | None = None,
    progress: bool = True,
) -> tuple[PreparedModel, SmoothResult | None]:
    """`prepared` with outliers migrated into the weights (`trtq.quantize.smooth.smooth`), re-planned,
    and what was done: factors from `dataset`, or from `table`, a ranges table written by a --smooth run.
    `prepared` as it was and None when there is nothing to smooth (said in a warning)."""
    result = smooth(prepared.model, prepared.placement, dataset, alpha=options.smooth_alpha, grid=options.grid,
                    table=table, device=options.device, drop_partial=fixed_batch(prepared.model) is not None,
                    source=str(prepared.path), progress=progress, matmuls=options.smooth is not None,
                    depthwise=options.equalizes and table is None)
    if result is None:
        return prepared, None
    placement = plan_placement(result.model, exclude_nodes=prepared.exclude_nodes, exclude_ops=prepared.exclude_ops,
                               cache_scope=prepared.cache_scope, grid=precision_grid(prepared.precision),
                               residual=prepared.residual_qdq)
    return replace(prepared, model=result.model, placement=placement), result


def weight_prepared(prepared: PreparedModel, dataset: Dataset, options: QuantizeOptions,
                    progress: bool = True) -> tuple[PreparedModel, dict[str, WeightChoice]]:
    """`prepared` with its quantized MatMul/Gemm weights on the FP8 grid at ranges chosen by the
    layers' output error, and their biases corrected (`trtq.quantize.weights`); the choices."""
    layers = weight_layers(prepared.model, prepared.placement)
    if not layers:
        return prepared, {}
    channels = sum(_channels(prepared.model, layer[0][1], layer[0][2]) for layer in layers.values())
    stats = channel_amax(prepared.model, list(layers), dataset, batch_size=dataset.batch_size, device=options.device,
                         drop_partial=fixed_batch(prepared.model) is not None, rows=rows_per_input(channels),
                         progress=progress, real_rows=True)
    choices = choose_weight_ranges(prepared.model, prepared.placement, stats.rows, options.grid)
    return replace(prepared, model=apply_weight_ranges(prepared.model, choices, options.grid)), choices


def _channels(model: onnx.ModelProto, weight: str, axis: int) -> int:
    """The input channels of a 2-D weight whose output-channel axis is `axis`."""
    init = next(i for i in model.graph.initializer if i.name == weight)
    return int(init.dims[1 - axis])


def apply_saved_weights(prepared: PreparedModel, choices: Mapping[str, WeightChoice], grid: Grid, source: str
                        ) -> onnx.ModelProto:
    """`prepared`'s model with the weight ranges of a --ranges table applied (refused when the table names
    weights this model does not have)."""
    known = {init.name for init in prepared.model.graph.initializer}
    unknown = sorted(name for name, c in choices.items() if name not in known or (c.bias and c.bias not in known))
    if unknown:
        raise TrtqError(f"The ranges table {source} sets the range of weight {unknown[0]!r}, which "
                        f"{prepared.path} does not have.",
                        "use the model, --smooth and --exclude options of the run that wrote the table.")
    return apply_weight_ranges(prepared.model, choices, grid)
