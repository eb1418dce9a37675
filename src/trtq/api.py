"""trtq's public Python API: what the CLI calls, and what users import.

    import trtq.api as trtq
    result = trtq.quantize("model.onnx", calib="images/", preset="imagenet")
    print(result.onnx_path, result.cache_path)
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path

import onnx

from trtq._io import Content, check_destinations
from trtq.artifacts import artifact_paths, artifacts, cache_amax, model_files
from trtq.calibrate import CalibrationResult, run_calibration
from trtq.calibrate.algorithms import METHODS
from trtq.calibrate.auto import JudgedLayer
from trtq.calibrate.grids import GRIDS, Grid
from trtq.runtime.ort_session import session_from_file
from trtq.data import Dataset, DataSource, PreprocessOverrides, open_dataset, resolve_preprocess
from trtq.devices import check_device
from trtq.errors import TrtqError
from trtq.evaluate import ComparisonReport, compare_models
from trtq.evaluate.mixed import MixedPrecisionResult, node_pattern, search_mixed_precision
from trtq.evaluate.scoring import MaskRequest
from trtq.evaluate.sensitivity import SensitivityResult, analyze_sensitivity
from trtq.evaluate.tables import TableRunner
from trtq.evaluate.tasks import Task, check_task_options, make_task
from trtq.formats.cache import DEFAULT_TRT_VERSION, trt_version_code
from trtq.formats.ranges import RangeChoice, RangesTable, TableCheck
from trtq.model import (
    ModelInfo,
    check_structure,
    file_sha256,
    graph_inputs,
    graph_outputs,
    inspect_model,
    load_model,
    model_file,
    normalize_model,
    normalized_node_names,
    requested_shapes,
    tensor_types,
)
from trtq.quantize import Placement, insert_qdq, plan_placement
from trtq.quantize.placement import MHA_INT8_MAX_SEQ, long_attention
from trtq.quantize.precision import PrecisionResult, high_precision
from trtq.quantize.qdq import MIN_OPSETS
from trtq.quantize.smooth import SmoothResult, check_alpha, record_smoothing, smooth
from trtq.report.records import RunRecord, clipped_histograms, record_bytes, record_path, sensitivity_histograms
from trtq.runtime import Runner, runner_factory
from trtq.runtime.ort_runner import OrtRunner
from trtq.tensorrt.layers import onnx_layer_name
from trtq.verify import VerifyOptions, VerifyResult, verify_model

__all__ = [
    "CalibrationOptions",
    "DataOptions",
    "PreprocessOverrides",
    "QuantizeOptions",
    "QuantizeResult",
    "TaskOptions",
    "calibrate",
    "calibrate_prepared",
    "compare",
    "inspect",
    "open_data",
    "prepare_model",
    "quantize",
    "sensitivity",
    "verify",
    "VerifyOptions",
    "VerifyResult",
]


@dataclass(frozen=True)
class DataOptions:
    """How sample data is read: source, preprocessing preset and overrides, input shapes, limit, and
    which input marks the real positions that accuracy is scored over."""

    preset: str | None = None
    preprocess: PreprocessOverrides = PreprocessOverrides()
    """Options on top of the preset (`trtq.data.PreprocessOverrides`: size, mean, std, ...)."""
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    limit: int | None = None
    mask: MaskRequest = True
    """The attention mask for scoring (compare, sensitivity, --target, fine-tuning): True detects it,
    False scores every position (`--no-mask`), a name picks that input (`--mask-input`)."""


@dataclass(frozen=True)
class TaskOptions:
    """A task metric to report and to target: classification top-1/top-5 or detection mAP."""

    task: str  # "classify" or "detect"
    labels: str | None = None
    coco: str | None = None
    postprocess: str | None = None
    """Detection postprocess: a preset or a .py file; None picks yolo when the outputs have its layout."""
    output: str | None = None
    ref_conf: float | None = None
    """Detection without --coco: FP32 detections at or above this confidence are the reference (default 0.25)."""

    def __post_init__(self) -> None:
        check_task_options(self.task, labels=self.labels, output=self.output, coco=self.coco,
                           postprocess=self.postprocess, ref_conf=self.ref_conf)

    def bind(self, dataset: Dataset, model: onnx.ModelProto) -> Task:
        """The task for `dataset` and `model`'s outputs."""
        return make_task(self.task, dataset, graph_outputs(model), labels=self.labels, output=self.output,
                         coco=self.coco, postprocess=self.postprocess, ref_conf=self.ref_conf)


PRECISIONS = ("int8", "fp8")
"""What the quantized layers run in: INT8, or FP8 E4M3 (Hopper, Ada, Blackwell; TensorRT 10 strongly typed and 11)."""

DEFAULT_METHODS = {"int8": "auto", "fp8": "max"}
"""Range algorithm per precision when none is given. INT8: auto (per tensor, the candidate range that
does least harm, checked end to end; trtq.calibrate.auto), `entropy` being TensorRT's own. FP8: max, as
NVIDIA ModelOpt's FP8 recipe (FP8's error is relative, so clipping buys little and costs the clipped values:
on all-MiniLM-L6-v2, FP8 with max ranges reads 21.0 dB over real tokens, with entropy 10.8 dB)."""

FP8_CLIPPING_NOTE = ("{method} clips ranges for INT8's uniform grid; FP8's error is relative, so clipping costs "
                     "more than it saves there: consider --method max (the FP8 default) or mse (on the FP8 grid)")

NO_FP8_LAYER_NOTE = ("no layer runs in FP8: FP8 Q/DQ goes on Conv, Gemm and MatMul only, and not on convolutions with "
                     "16 or fewer input or output channels or more than 32 filter taps (no FP8 kernel pays off there)")

NO_INT8_LAYER_NOTE = ("no layer runs in INT8: the exclusions (--exclude-nodes/--exclude-ops, or --target) keep every "
                      "Conv, Gemm and MatMul in high precision, so the written model computes as the FP32 one")

NO_QUANTIZABLE_LAYER_NOTE = ("no layer runs in INT8: the model has no Conv, ConvTranspose, Gemm or MatMul, so the "
                             "written model computes as the FP32 one")

NO_CACHE_NOTE = ("no calibration cache: TensorRT's implicit calibration (the cache) is INT8 only; build the FP8 "
                 "Q/DQ model strongly typed (TensorRT 10 --stronglyTyped, or TensorRT 11)")
"""Why `--precision fp8` writes no `.cache` file."""


def precision_grid(precision: str) -> Grid:
    """The quantization grid of a `--precision` value."""
    if precision not in PRECISIONS:
        raise TrtqError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}.", "use int8 or fp8.")
    return GRIDS[precision]


@dataclass(frozen=True)
class CalibrationOptions:
    """What PTQ (`QuantizeOptions`) and QAT (`trtq.qat.FinetuneOptions`) share: how ranges are
    computed, which layers stay out, the cache header, where outputs go and where models run.

    A new calibration option goes here, with its flag in `trtq.cli.options.add_calibration_options`;
    `calibrate_prepared` reads it, for `trtq quantize`, `sensitivity` and `finetune` alike.
    """

    method: str | None = None
    """Range algorithm; None: `default_method()` (for quantize, the precision's default: DEFAULT_METHODS)."""
    percentile: float = 99.99
    exclude_nodes: Sequence[str] = ()
    exclude_ops: Sequence[str] = ()
    residual_qdq: bool = False
    """Q/DQ on both inputs of transformer residual Adds too, as NVIDIA ModelOpt places them (TensorRT can
    then carry the residual stream in INT8; it costs accuracy: see the README)."""
    trt_version: str = DEFAULT_TRT_VERSION
    output_dir: str | None = None
    device: str = "cpu"
    """Where calibration (and evaluation) runs: cpu (onnxruntime) or cuda[:N] (PyTorch); see trtq.devices."""

    def __post_init__(self) -> None:
        if self.method is None:
            object.__setattr__(self, "method", self.default_method())
        if self.method not in METHODS:
            raise TrtqError(f"--method {self.method!r} is not one of {', '.join(METHODS)}.", "pick one of those.")
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) \
                or not 0 < self.percentile <= 100:
            raise TrtqError(f"--percentile {self.percentile!r} is not a percentile in (0, 100].",
                            "give e.g. --percentile 99.99.")
        trt_version_code(self.trt_version)  # a bad --trt-version fails before calibration, not after
        check_device(self.device)

    def default_method(self) -> str:
        """The range algorithm when none is given."""
        return DEFAULT_METHODS["int8"]

    @property
    def grid(self) -> Grid:
        """The grid the quantized layers run on."""
        return GRIDS["int8"]


@dataclass(frozen=True)
class QuantizeOptions(CalibrationOptions):
    """Options of `quantize` beyond the data: the calibration options, then targets, precision, outputs."""

    cache_scope: str = "qdq"
    target: str | None = None
    """e.g. "top1-drop<=0.5" or "snr>=30": keep the most sensitive layers out of INT8 until it holds."""
    target_data: str | None = None
    """Held-out data the target is checked on (default: the calibration data)."""
    ranking: str = "local"
    high_precision: str = "fp32"
    """"fp16": convert what is not INT8 to FP16 inside the ONNX (TensorRT 11 has no FP16 flag)."""
    task: TaskOptions | None = None
    external_data: bool | None = None
    """Write the weights to `<stem>.int8.onnx.data` beside the model: True, False, or None (only when
    they exceed protobuf's 2 GB limit, where one file is impossible)."""
    precision: str = "int8"
    """"fp8": FP8 E4M3 Q/DQ (scale = amax / 448, opset >= 19) instead of INT8; no calibration cache."""
    smooth: float | str | None = None
    """SmoothQuant-style outlier migration before quantizing (`trtq.quantize.smooth`): an alpha in
    [0, 1] for all activations, "auto" to choose alpha per activation, None for none."""

    def __post_init__(self) -> None:
        precision_grid(self.precision)
        super().__post_init__()
        if self.cache_scope not in ("qdq", "all"):
            raise TrtqError(f"--cache-scope {self.cache_scope!r} is not qdq or all.", "pick one of those.")
        if self.smooth is not None and self.smooth != "auto":
            if isinstance(self.smooth, str):
                raise TrtqError(f"--smooth {self.smooth!r} is not a number.", "pass e.g. --smooth 0.5, or --smooth alone.")
            check_alpha(float(self.smooth))

    @property
    def smooth_alpha(self) -> float | None:
        """The fixed alpha of --smooth ALPHA; None for the per-layer choice (or no smoothing)."""
        return None if self.smooth in (None, "auto") else float(self.smooth)  # type: ignore[arg-type]

    def default_method(self) -> str:
        """The precision's range algorithm (DEFAULT_METHODS)."""
        return DEFAULT_METHODS[self.precision]

    @property
    def grid(self) -> Grid:
        """The grid the quantized layers run on (INT8 or FP8 E4M3)."""
        return precision_grid(self.precision)


@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize` wrote and how it got there."""

    model: str
    onnx_path: str
    cache_path: str | None
    """The TensorRT calibration cache; None for FP8, which has none (see `notes`)."""
    ranges_path: str
    method: str
    samples: int
    qdq_pairs: int
    quantized_activations: int
    quantized_weights: int
    cache_entries: int
    excluded_nodes: tuple[str, ...]
    calibration_seconds: float | None
    commands: dict[str, str]
    mixed: MixedPrecisionResult | None = field(default=None, repr=False)
    """What the --target search found (None without --target)."""
    precision: PrecisionResult | None = field(default=None, repr=False)
    """What --high-precision fp16 converted (None for fp32)."""
    smoothing: SmoothResult | None = field(default=None, repr=False)
    """What --smooth did (None without it)."""
    notes: tuple[str, ...] = ()
    data_path: str | None = None
    """The external weights file beside `onnx_path`, when the weights are stored apart."""
    choices: dict[str, RangeChoice] = field(default_factory=dict)
    """Per quantized tensor, why it got its range (`--method auto`; also from a saved table)."""
    range_table: str | None = None
    """`--method auto`: the candidate table kept ("mse", "per-tensor", or another candidate method's name)."""
    table_scores: dict[str, float] = field(default_factory=dict)
    """`--method auto`: each candidate table's output SNR (dB) on the judging samples it ran on."""
    table_checks: dict[str, TableCheck] = field(default_factory=dict)
    """`--method auto`: each candidate table's end-to-end check (samples, SNR, gain over mse with bounds)."""
    range_samples: int = 0
    """`--method auto`: the calibration samples the tables were scored on."""
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Input shapes the build commands give trtexec: --shape, and those taken from the data."""
    shape_notes: tuple[str, ...] = ()
    """Which input shapes were taken from the data (one line per data source that gave some)."""
    quant_type: str = "int8"
    """What the Q/DQ pairs quantize to: "int8" or "fp8" (E4M3)."""
    record_path: str | None = None
    """The run record for `trtq report` written with the outputs (when `quantize` was given `record`)."""
    smoothed_path: str | None = None
    """With --smooth and a cache: the smoothed FP32 model, which the implicit TensorRT 10 build reads with the cache."""
    calibration: CalibrationResult | None = field(default=None, repr=False, compare=False)
    """The statistics behind the ranges (None with --ranges); not part of the JSON view."""

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        skip = ("calibration", "choices", "table_checks")
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        out["choices"] = {name: choice.to_dict() for name, choice in self.choices.items()}
        out["table_checks"] = {name: check.to_dict() for name, check in self.table_checks.items()}
        for name in ("mixed", "precision", "smoothing"):
            value = getattr(self, name)
            out[name] = value.to_dict() if value is not None else None
        return out


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


def inspect(model_path: str | Path) -> ModelInfo:
    """Inputs/outputs, dynamic dims, opset, op counts and quantizable layers of a model.

    A model that onnx.checker rejects is still described, with a warning saying why it fails."""
    model = load_model(model_path, load_external_data=False)
    try:
        check_structure(model)
    except onnx.checker.ValidationError as exc:
        reason = " ".join(str(exc).split("==>")[0].split())
        warnings.warn(f"{model_path} fails onnx.checker ({reason}); other trtq commands may not run it.", stacklevel=2)
    return inspect_model(model_path, model)


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
    return tuple(dict.fromkeys(notes))  # type: ignore[arg-type]


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
        grid=options.grid,
    )


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
) -> tuple[PreparedModel, SmoothResult]:
    """`prepared` with outliers migrated into the weights (`trtq.quantize.smooth.smooth`), re-planned,
    and what was done: factors from `dataset`, or from `table`, a ranges table written by a --smooth run."""
    result = smooth(prepared.model, prepared.placement, dataset, alpha=options.smooth_alpha, grid=options.grid,
                    table=table, device=options.device, drop_partial=fixed_batch(prepared.model) is not None,
                    source=str(prepared.path), progress=progress)
    placement = plan_placement(result.model, exclude_nodes=prepared.exclude_nodes, exclude_ops=prepared.exclude_ops,
                               cache_scope=prepared.cache_scope, grid=precision_grid(prepared.precision),
                               residual=prepared.residual_qdq)
    return replace(prepared, model=result.model, placement=placement), result


def quantize(
    model_path: str | Path,
    calib: DataSource | None = None,
    *,
    ranges: str | Path | RangesTable | None = None,
    data: DataOptions = DataOptions(),
    options: QuantizeOptions = QuantizeOptions(),
    progress: bool = True,
    record: RunRecord | None = None,
) -> QuantizeResult:
    """Calibrate (or reuse saved ranges) and write the Q/DQ ONNX, the TensorRT cache and the ranges JSON.

    The files (and, with `record`, the run record `trtq-quantize.json` for `trtq report`) are one
    set: they appear together or the previous ones stay as they were. With --high-precision fp16,
    the --target search measures every candidate after the FP16 conversion, so its numbers
    describe the model as written.
    """
    if (calib is None) == (ranges is None):
        raise TrtqError("quantize needs exactly one of --calib DATA or --ranges FILE.", "pass one of them.")
    prepared = prepare_model(model_path, options.exclude_nodes, options.exclude_ops, options.cache_scope,
                             options.precision, options.residual_qdq)
    paths = artifact_paths(prepared.path, options.output_dir, options.grid.name)
    fp8 = options.precision == "fp8"
    destinations = paths.destinations(cache=not fp8, external=options.external_data)
    # with --smooth, the cache's tensors are the smoothed model's: the implicit build reads that model
    smoothed_path = paths.beside(f"{prepared.path.stem}.smoothed.onnx") if options.smooth is not None else None
    if smoothed_path is not None:
        destinations.append(smoothed_path)
    if record is not None:
        destinations.append(record_path(paths.directory, "quantize"))
    inputs = file_sources(prepared.path, calib)  # not --ranges: rewriting the table it was read from is a use
    check_destinations(destinations, inputs)  # before calibration: a bad output path costs seconds, not minutes
    seconds: float | None = None
    calibration: CalibrationResult | None = None
    original = prepared
    calib_data = open_data(prepared.model, calib, data, progress=progress) if calib is not None else None
    prepared = prepared.at_shapes(calib_data.shapes if calib_data is not None else
                                  requested_shapes(graph_inputs(prepared.model), data.shapes))
    saved = None if calib_data is not None else (
        ranges if isinstance(ranges, RangesTable) else RangesTable.load(ranges))  # type: ignore[arg-type]
    smoothing = None
    if options.smooth is not None or (saved is not None and saved.smoothing):
        prepared, smoothing = smooth_prepared(prepared, calib_data, options, table=saved, progress=progress)
    if calib_data is not None:
        calibration = calibrate_prepared(prepared, calib_data, options=options, progress=progress)
        table, seconds = calibration.ranges, calibration.seconds
        if smoothing is not None:
            table = record_smoothing(table, smoothing)
    else:
        table = saved  # type: ignore[assignment]
    if smoothing is None or fp8:
        smoothed_path = None
    elif smoothed_path is None:  # smoothing from a --ranges table
        smoothed_path = paths.beside(f"{prepared.path.stem}.smoothed.onnx")
        check_destinations([smoothed_path], inputs)
    converter = high_precision(
        options.high_precision, amax=table.amax, fp32_model=prepared.model, dataset=calib_data,
        batch_size=eval_batch_size(prepared.model, calib_data) if calib_data else 1,
    )
    placement, mixed, precision, dataset = prepared.placement, None, None, None
    if options.target:
        dataset = open_data(prepared.model, options.target_data, data, purpose="check the target",
                            progress=progress) \
            if options.target_data else calib_data
        if dataset is None:
            raise TrtqError("--target with --ranges needs --target-data DATA to check the target on.",
                            "pass --target-data DATA.")
        mixed = search_mixed_precision(
            prepared.model, table.amax, dataset, options.target,
            exclude_nodes=prepared.exclude_nodes, exclude_ops=options.exclude_ops, residual=options.residual_qdq,
            task=options.task.bind(dataset, prepared.model) if options.task else None,
            ranking=options.ranking, batch_size=eval_batch_size(prepared.model, dataset),
            runner=runner_factory(options.device), progress=progress,
            finish=converter.finish if converter.mode != "fp32" else None, grid=options.grid, mask=data.mask,
        ).require()
        placement = mixed.placement
    quantized_model = insert_qdq(prepared.model, placement, table.amax)
    if converter.mode != "fp32":
        precision = converter.apply(quantized_model)  # the same conversion the search measured
        quantized_model = precision.model
    if table.model_sha256 != original.sha256:
        warnings.warn(
            f"Ranges table {ranges} was computed for another model file (sha256 {table.model_sha256[:12]}…, "
            f"this one is {original.sha256[:12]}…); using it because every tensor name matches.",
            stacklevel=2,
        )
    table_precision = table.options.get("precision", "int8")
    if table_precision != options.precision:
        warnings.warn(
            f"Ranges table {ranges} was calibrated for --precision {table_precision}, this run quantizes to "
            f"{options.precision}; its ranges are used as they are (re-calibrate for ranges chosen for {options.precision}).",
            stacklevel=2,
        )
    check_structure(quantized_model)
    shapes = data_shapes(prepared.model, data.shapes, calib_data)
    cache = None if fp8 else cache_amax(table.amax, placement.calibrated_tensors)
    outputs = artifacts(paths, quantized_model, table, cache, options.trt_version, options.external_data)
    smoothed_files = model_files(smoothing.model, smoothed_path, outputs.external) \
        if smoothed_path is not None and smoothing is not None else {}
    layer_names = {} if smoothed_path else prepared.layer_names  # the smoothed file names its layers after its nodes
    result = QuantizeResult(
        model=str(prepared.path),
        onnx_path=str(paths.onnx),
        data_path=str(outputs.data_path) if outputs.data_path else None,
        cache_path=None if fp8 else str(paths.cache),
        ranges_path=str(paths.ranges),
        method=table.method,
        samples=table.num_samples,
        qdq_pairs=len(placement.targets),
        quantized_activations=len(placement.activation_tensors),
        quantized_weights=len(placement.weight_tensors),
        cache_entries=len(cache or {}),
        excluded_nodes=placement.excluded_nodes,
        calibration_seconds=seconds,
        mixed=mixed,
        precision=precision,
        shapes=shapes,
        shape_notes=shape_notes(calib_data, dataset),
        commands=build_commands(
            paths.onnx, None if fp8 else paths.cache, smoothed_path or prepared.path, shapes,
            fp16=options.high_precision == "fp16",
            layer_precisions={layer_names.get(n, n): ("fp16" if options.high_precision == "fp16" else "fp32")
                              for n in placement.excluded_nodes},
        ),
        notes=(*prepared.notes, *(calibration.notes if calibration else ()),
               *_precision_notes(options, table.method, placement)),
        quant_type=options.precision,
        record_path=str(record_path(paths.directory, "quantize")) if record is not None else None,
        smoothing=smoothing,
        smoothed_path=str(smoothed_path) if smoothed_path else None,
        choices={name: table.choices[name] for name in placement.activation_tensors if name in table.choices},
        range_table=str(table.options["table"]) if "table" in table.options else None,
        table_scores=dict(table.table_scores),
        table_checks=dict(table.table_checks),
        range_samples=int(table.options.get("judged_samples", 0)),
        calibration=calibration,
    )
    extra: dict[Path, Content] = dict(smoothed_files)
    if record is not None:
        histograms = clipped_histograms(calibration.stats, table.amax, table.method, REPORT_HISTOGRAMS) \
            if calibration is not None else {}
        extra[Path(result.record_path)] = record_bytes(  # type: ignore[arg-type]
            "quantize", settings=record.settings, result=result.to_dict(), histograms=histograms,
            command=record.command)
    outputs.write(extra, inputs=inputs)
    return result


REPORT_HISTOGRAMS = 6
"""Tensors whose calibration histograms go into the run record: those the chosen ranges clip most."""


def _precision_notes(options: QuantizeOptions, method: str, placement: Placement) -> tuple[str, ...]:
    """What the output says about FP8 (no cache, ranges from an INT8-minded algorithm, no FP8 layer at all),
    and about an INT8 placement that quantizes nothing (the exclusions cover every layer)."""
    if options.precision != "fp8":
        if placement.targets:
            return ()
        return (NO_INT8_LAYER_NOTE if placement.excluded_nodes else NO_QUANTIZABLE_LAYER_NOTE,)
    clipping = (FP8_CLIPPING_NOTE.format(method=method),) if method in ("entropy", "percentile") else ()
    empty = (NO_FP8_LAYER_NOTE,) if not placement.targets else ()
    return (NO_CACHE_NOTE, *clipping, *empty)


def build_commands(onnx_path: Path, cache_path: Path | None, model_path: Path, shapes: Mapping[str, tuple[int, ...]],
                   fp16: bool = False, layer_precisions: Mapping[str, str] | None = None) -> dict[str, str]:
    """The trtexec command lines that build an engine from what `quantize` wrote, per TensorRT version.

    The implicit TensorRT 10 line builds the original FP32 file with the cache; layers kept out of
    INT8 are pinned there with obeyed layer precisions (parser layer names of the original file).
    Without a cache (FP8) there is no implicit line: only strongly typed builds read FP8 Q/DQ.
    """
    from trtq.tensorrt.commands import trtexec_build_commands

    engine_path = onnx_path.with_suffix(".engine")
    return trtexec_build_commands(str(onnx_path), str(cache_path or ""), str(engine_path), dict(shapes) or None,
                                  original_onnx=str(model_path) if cache_path else None, implicit_fp16=fp16,
                                  layer_precisions=layer_precisions)


def compare(
    reference_path: str | Path,
    candidate_path: str | Path,
    data_source: DataSource,
    *,
    data: DataOptions = DataOptions(),
    task: TaskOptions | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    record: RunRecord | None = None,
) -> ComparisonReport:
    """Run FP32 and quantized models on the same samples and report agreement, plus task metrics
    (FP32 vs quantized top-1/top-5 or mAP) when `task` is given. Outputs an attention mask covers
    are scored over real tokens (`data.mask`; see `trtq.evaluate.scoring`).

    `device` "cpu" runs both under onnxruntime; "cuda"/"cuda:N" with the PyTorch executor on that GPU.
    A candidate that is a TensorRT engine (.engine/.plan/.trt) runs in TensorRT where it is installed,
    against the FP32 ONNX model on `device`, as Polygraphy's Comparator compares them. With `record`,
    the run record for `trtq report` (`trtq-compare.json`; default beside the candidate) is saved too.
    """
    from trtq.tensorrt.runner import ENGINE_SUFFIXES

    if record is not None:  # before the work: a bad output path costs seconds, not minutes
        check_destinations([record.path("compare", candidate_path)],
                           file_sources(reference_path, candidate_path, data_source))

    engine = Path(candidate_path).suffix.lower() in ENGINE_SUFFIXES
    reference = load_model(reference_path, load_external_data=False)  # the graph; onnxruntime reads the weights
    check_runnable(reference, reference_path)
    candidate = None if engine else load_model(candidate_path, load_external_data=False)  # fails here, by name
    dataset = open_data(reference, data_source, data, purpose="compare", progress=progress)
    make = runner_factory(device)
    first: Runner = OrtRunner(session_from_file(reference_path, graph=reference)) if device == "cpu" \
        else make(load_model(reference_path))
    if engine:
        from trtq.tensorrt.runner import EngineRunner

        second: Runner = EngineRunner(candidate_path)
    elif device == "cpu":
        second = OrtRunner(session_from_file(candidate_path, graph=candidate))
    else:
        second = make(load_model(candidate_path))
    runners = (first, second)
    report = compare_models(
        *runners,
        dataset,
        task=task.bind(dataset, reference) if task else None,
        reference_name=str(reference_path),
        candidate_name=str(candidate_path),
        batch_size=eval_batch_size(reference, dataset, batch_size),
        progress=progress,
        mask=data.mask,
        graph=reference,
    )
    if record is not None:
        record.write("compare", candidate_path, report.to_dict())
    return report


SENSITIVE_DB = 30.0
"""Layers whose alone-in-INT8 output SNR is below this are suggested for FP16 in TensorRT 10 lines."""


@dataclass(frozen=True)
class SensitivityRun:
    """A sensitivity analysis, the ranges it used, and the TensorRT 10 line that keeps the sensitive
    layers (below SENSITIVE_DB) out of INT8 (none for FP8, which no implicit build reads)."""

    result: SensitivityResult
    ranges: RangesTable
    calibration: CalibrationResult | None
    sensitive_layers: tuple[str, ...]
    commands: dict[str, str]
    shape_notes: tuple[str, ...] = ()
    """Which input shapes were taken from the data."""
    notes: tuple[str, ...] = ()
    """What the placement left out on its own (`PreparedModel.notes`)."""
    record_path: str | None = None
    """The run record for `trtq report` (when `sensitivity` was given `record`)."""

    def record_result(self) -> dict:
        """What the run record keeps: the analysis, the sensitive layers and the notes."""
        return {**self.result.to_dict(), "sensitive_layers": list(self.sensitive_layers),
                "shape_notes": list(self.shape_notes), "notes": list(self.notes)}


def sensitivity(
    model_path: str | Path,
    *,
    calib: DataSource | None = None,
    ranges: str | Path | None = None,
    data_source: DataSource | None = None,
    data: DataOptions = DataOptions(),
    options: QuantizeOptions = QuantizeOptions(),
    method: str = "local",
    task: TaskOptions | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    record: RunRecord | None = None,
) -> SensitivityRun:
    """Per-layer sensitivity: how much the output degrades when only that layer is INT8.

    Ranges come from calibrating on `calib` or from a saved table; evaluation runs on
    `data_source` (default: the calibration data). With `record`, the run record for `trtq report`
    (`trtq-sensitivity.json`, with the histograms of the most sensitive tensors) is saved too.
    """
    if (calib is None) == (ranges is None):
        raise TrtqError("sensitivity needs exactly one of --calib DATA or --ranges FILE.", "pass one of them.")
    if record is not None:  # before the work: a bad output path costs seconds, not minutes
        check_destinations([record.path("sensitivity", model_path)], file_sources(model_path, calib, ranges, data_source))
    prepared = prepare_model(model_path, options.exclude_nodes, options.exclude_ops, options.cache_scope,
                             options.precision, options.residual_qdq)
    calib_data = open_data(prepared.model, calib, data, progress=progress) if calib is not None else None
    dataset = open_data(prepared.model, data_source, data, purpose="evaluate", progress=progress) \
        if data_source is not None else calib_data
    prepared = prepared.at_shapes(calib_data.shapes if calib_data is not None else dataset.shapes if dataset else None)
    saved = None if calib_data is not None else RangesTable.load(ranges)  # type: ignore[arg-type]
    smoothing = None
    if options.smooth is not None or (saved is not None and saved.smoothing):
        prepared, smoothing = smooth_prepared(prepared, calib_data, options, table=saved, progress=progress)
    calibration = calibrate_prepared(prepared, calib_data, options=options, progress=progress) if calib_data else None
    table = calibration.ranges if calibration else saved
    if calibration is not None and smoothing is not None:
        table = record_smoothing(calibration.ranges, smoothing)
    assert table is not None  # exactly one of calib and ranges was given
    if dataset is None:
        raise TrtqError("sensitivity with --ranges needs --data DATA to evaluate on.", "pass --data DATA.")
    result = analyze_sensitivity(
        prepared.model,
        prepared.placement,
        table.amax,
        dataset,
        method=method,
        task=task.bind(dataset, prepared.model) if task else None,
        batch_size=eval_batch_size(prepared.model, dataset, batch_size),
        runner=runner_factory(options.device),
        progress=progress,
        mask=data.mask,
    )
    sensitive = tuple(layer.node for layer in result.layers if layer.snr_db < SENSITIVE_DB)
    commands = {}
    if options.precision == "int8" and smoothing is None:  # else no implicit build of this model: --exclude-nodes
        paths = artifact_paths(prepared.path, options.output_dir, "int8")
        commands = build_commands(paths.onnx, paths.cache, prepared.path,
                                  data_shapes(prepared.model, data.shapes, dataset),
                                  layer_precisions={prepared.layer_names[n]: "fp16" for n in sensitive
                                                    if n in prepared.layer_names})
        commands = {"tensorrt-10-implicit": commands["tensorrt-10-implicit"]}
    run = SensitivityRun(result, table, calibration, sensitive, commands, shape_notes(calib_data, dataset),
                         prepared.notes)
    if record is None:
        return run
    histograms = sensitivity_histograms((layer.tensors for layer in result.layers),
                                        calibration.stats if calibration else {}, table.amax, table.method,
                                        REPORT_HISTOGRAMS)
    return replace(run, record_path=str(record.write("sensitivity", model_path, run.record_result(), histograms)))


def verify(
    model_path: str | Path,
    options: VerifyOptions = VerifyOptions(),
    *,
    progress: bool = True,
) -> VerifyResult:
    """Build a Q/DQ model with TensorRT-RTX (ahead of time: no GPU needed) and report, per quantized
    Conv/ConvTranspose/Gemm/MatMul, whether the engine runs it in INT8/FP8, and which Q/DQ pairs did not fuse.

    Progress lines go to stderr unless `progress` is False.
    """
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    return verify_model(model_path, options, progress=say if progress else None)
