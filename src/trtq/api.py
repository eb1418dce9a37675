"""trtq's public Python API: what the CLI calls, and what users import.

    import trtq.api as trtq
    result = trtq.quantize("model.onnx", calib="images/", preset="imagenet")
    print(result.onnx_path, result.cache_path)
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import onnx

from trtq._io import Content, check_destinations
from trtq.artifacts import artifact_paths, artifacts, cache_amax, model_files
from trtq.calibrate import CalibrationResult
from trtq.data import DataSource, PreprocessOverrides
from trtq.errors import TrtqError
from trtq.evaluate import ComparisonReport, compare_models
from trtq.evaluate.mixed import MixedPrecisionResult, search_mixed_precision
from trtq.evaluate.sensitivity import SensitivityResult, analyze_sensitivity
from trtq.formats.ranges import RangeChoice, RangesTable, TableCheck
from trtq.model import (
    ModelInfo,
    check_structure,
    distinct_placeholder_dims,
    graph_inputs,
    inspect_model,
    load_model,
    requested_shapes,
)
from trtq.options import PRECISIONS, CalibrationOptions, DataOptions, QuantizeOptions, TaskOptions
from trtq.prepare import (
    DEFAULT_EVAL_BATCH,
    PreparedModel,
    apply_saved_weights,
    calibrate,
    calibrate_prepared,
    check_runnable,
    data_shapes,
    eval_batch_size,
    file_sources,
    fixed_batch,
    judged_layers,
    open_data,
    prepare_model,
    shape_notes,
    smooth_and_calibrate,
    smooth_prepared,
    weight_prepared,
)
from trtq.quantize import Placement, insert_qdq
from trtq.quantize.precision import PrecisionResult, high_precision
from trtq.quantize.smooth import SmoothResult
from trtq.quantize.weights import WeightChoice, WeightRangesSummary
from trtq.report.records import RunRecord, clipped_histograms, record_bytes, record_path, sensitivity_histograms
from trtq.runtime import Runner, runner_factory
from trtq.runtime.ort_runner import OrtRunner
from trtq.runtime.ort_session import session_from_file
from trtq.verify import VerifyOptions, VerifyResult, verify_model

# the API; the options live in trtq.options and the shared first steps in trtq.prepare
__all__ = [
    "DEFAULT_EVAL_BATCH",
    "PRECISIONS",
    "REPORT_HISTOGRAMS",
    "SENSITIVE_DB",
    "CalibrationOptions",
    "DataOptions",
    "PreparedModel",
    "PreprocessOverrides",
    "QuantizeOptions",
    "QuantizeResult",
    "SensitivityRun",
    "TaskOptions",
    "VerifyOptions",
    "VerifyResult",
    "calibrate",
    "calibrate_prepared",
    "check_runnable",
    "compare",
    "data_shapes",
    "eval_batch_size",
    "file_sources",
    "fixed_batch",
    "inspect",
    "judged_layers",
    "open_data",
    "prepare_model",
    "quantize",
    "sensitivity",
    "shape_notes",
    "smooth_and_calibrate",
    "smooth_prepared",
    "verify",
]
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
    range_checked_on: str | None = None
    """`--method auto`: "every sample" (small models: every table ran on the whole calibration set and the best
    aggregate SNR won) or "judging samples" (raced; mse kept unless another table proved better)."""
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Input shapes the build commands give trtexec: --shape, and those taken from the data."""
    shape_notes: tuple[str, ...] = ()
    """Which input shapes were taken from the data (one line per data source that gave some)."""
    quant_type: str = "int8"
    """What the Q/DQ pairs quantize to: "int8" or "fp8" (E4M3)."""
    record_path: str | None = None
    """The run record for `trtq report` written with the outputs (when `quantize` was given `record`)."""
    weight_ranges: WeightRangesSummary | None = None
    """What --weight-ranges mse (the FP8 default) did: layers, mean gain on the output error, biases corrected."""
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
        for name in ("mixed", "precision", "smoothing", "weight_ranges"):
            value = getattr(self, name)
            out[name] = value.to_dict() if value is not None else None
        return out


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


def _typed(**given: tuple[object, type | tuple[type, ...]]) -> None:
    """Each keyword's value is of its type(s): an options object passed as a dict (say) is the caller's
    mistake, said in one sentence, not an AttributeError deep inside."""
    for name, (value, kinds) in given.items():
        if not isinstance(value, kinds):
            wanted = " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
            raise TrtqError(f"{name}= takes a trtq.api.{wanted}, not a {type(value).__name__}.",
                            f"build one, e.g. {name}=trtq.api.{wanted.split(' or ')[0]}(...).")


def _check_table_precision(table: RangesTable, source: object, placement: Placement, precision: str) -> None:
    """A ranges table of the other precision lacks tensors this run quantizes: say so, not "another model"."""
    calibrated = table.options.get("precision", "int8")
    missing = [t.tensor for t in placement.targets if t.kind == "activation" and t.tensor not in table.amax]
    if calibrated != precision and missing:
        raise TrtqError(
            f"Ranges table {source} was calibrated for --precision {calibrated}, and this run quantizes to {precision}, "
            f"which needs ranges it lacks ({missing[0]!r}, {len(missing)} in all): {calibrated} puts Q/DQ on other tensors.",
            f"pass --precision {calibrated} to use this table, or calibrate again with --calib DATA --precision {precision}.",
        )


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
    _typed(data=(data, DataOptions), options=(options, QuantizeOptions))
    if (calib is None) == (ranges is None):
        raise TrtqError("quantize needs exactly one of --calib DATA or --ranges FILE.", "pass one of them.")
    prepared = prepare_model(model_path, options.exclude_nodes, options.exclude_ops, options.cache_scope,
                             options.precision, options.residual_qdq)
    paths = artifact_paths(prepared.path, options.output_dir, options.grid.name)
    fp8 = options.precision == "fp8"
    destinations = paths.destinations(cache=not fp8, external=options.external_data)
    # when smoothed or equalized, the cache's tensors are the smoothed model's: the implicit build reads that model
    smoothed_path = paths.beside(f"{prepared.path.stem}.smoothed.onnx") if options.smooth is not None else None
    if smoothed_path is not None:
        destinations.append(smoothed_path)
    if record is not None:
        destinations.append(record_path(paths.directory, "quantize"))
    inputs = file_sources(prepared.path, calib)  # not --ranges: rewriting the table it was read from is a use
    check_destinations(destinations, inputs)  # before calibration: a bad output path costs seconds, not minutes
    seconds: float | None = None
    original = prepared
    calib_data = open_data(prepared.model, calib, data, progress=progress) if calib is not None else None
    prepared = prepared.at_shapes(calib_data.shapes if calib_data is not None else
                                  requested_shapes(graph_inputs(prepared.model), data.shapes))
    saved = None if calib_data is not None else (
        ranges if isinstance(ranges, RangesTable) else RangesTable.load(ranges))  # type: ignore[arg-type]
    prepared, calibration, smoothing = smooth_and_calibrate(prepared, calib_data, options, saved, progress=progress)
    if calibration is not None:
        table, seconds = calibration.ranges, calibration.seconds
    else:
        table = saved  # type: ignore[assignment]
        _check_table_precision(table, ranges, prepared.placement, options.precision)
    weight_choices: dict[str, WeightChoice] = {}
    unrounded = prepared.model  # what the --target search measures against when the weights get rounded
    if calib_data is not None and options.weight_method == "mse":
        prepared, weight_choices = weight_prepared(prepared, calib_data, options, progress=progress)
        table = replace(table, weights={name: c.to_dict() for name, c in weight_choices.items()})
    elif saved is not None and saved.weights:
        weight_choices = {name: WeightChoice.from_dict(name, entry) for name, entry in saved.weights.items()}
        prepared = replace(prepared, model=apply_saved_weights(prepared, weight_choices, options.grid, str(ranges)))
    if smoothing is None or fp8:
        smoothed_path = None
    elif smoothed_path is None:  # depthwise convolutions equalized, or smoothing from a --ranges table
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
            reference=unrounded if weight_choices else None,
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
    renamed_dims = distinct_placeholder_dims(quantized_model)
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
               *_precision_notes(options, table.method, placement), *((renamed_dims,) if renamed_dims else ())),
        quant_type=options.precision,
        record_path=str(record_path(paths.directory, "quantize")) if record is not None else None,
        smoothing=smoothing,
        weight_ranges=WeightRangesSummary.of(weight_choices),
        smoothed_path=str(smoothed_path) if smoothed_path else None,
        choices={name: table.choices[name] for name in placement.activation_tensors if name in table.choices},
        range_table=str(table.options["table"]) if "table" in table.options else None,
        table_scores=dict(table.table_scores),
        table_checks=dict(table.table_checks),
        range_samples=int(table.options.get("judged_samples", 0)),
        range_checked_on=str(table.options["tables_checked_on"]) if "tables_checked_on" in table.options else None,
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

    _typed(data=(data, DataOptions), task=(task, (TaskOptions, type(None))))
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
    _typed(data=(data, DataOptions), options=(options, QuantizeOptions), task=(task, (TaskOptions, type(None))))
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
    prepared, calibration, smoothing = smooth_and_calibrate(prepared, calib_data, options, saved, progress=progress)
    table = calibration.ranges if calibration else saved
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
    record: RunRecord | None = None,
) -> VerifyResult:
    """Build a Q/DQ model with TensorRT-RTX (ahead of time: no GPU needed) and report, per quantized
    Conv/ConvTranspose/Gemm/MatMul, whether the engine runs it in INT8/FP8, and which Q/DQ pairs did not fuse.

    Progress lines go to stderr unless `progress` is False. With `record`, the run record for `trtq report`
    (`trtq-verify.json`; default beside the model) is saved too.
    """
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if record is not None:  # before the build: a bad output path costs seconds, not a build
        check_destinations([record.path("verify", model_path)], file_sources(model_path))
    result = verify_model(model_path, options, progress=say if progress else None)
    if record is not None:
        record.write("verify", model_path, result.to_dict())
    return result
