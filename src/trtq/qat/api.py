"""`trtq finetune`: quantization-aware fine-tuning of an ONNX model, from its PTQ starting point.

    from trtq.qat import finetune, FinetuneOptions
    result = finetune("model.onnx", "calib/", options=FinetuneOptions(steps=2000, device="cuda"))
    print(result.onnx_path, result.parity.max_steps, result.comparison.rows)

1. prepare the model as `trtq quantize` does (normalise, plan the Q/DQ placement);
2. PTQ ranges: calibrate on `calib`, or read `ranges`;
3. fine-tune the fake-quantized model against the FP32 teacher on `train` (default: `calib`);
   (progress and the choice of the best state are measured on `calib`, never on `eval_data`);
4. export the Q/DQ ONNX, check it against the PyTorch model with onnxruntime (parity);
5. compare FP32, PTQ and QAT on `eval_data` (default: `calib`) with onnxruntime, and write
   `<stem>.qat.int8.onnx`, `.qat.int8.cache`, `.qat.int8.json` together (or nothing).
"""

from __future__ import annotations

import hashlib
import math
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from trtq import api
from trtq._io import check_destinations
from trtq.artifacts import artifact_paths, artifacts, cache_amax, output_directory
from trtq.calibrate.ort_failures import check_model_runs
from trtq.devices import resolve_device
from trtq.errors import TrtqError
from trtq.evaluate.evaluator import Evaluation, Evaluator
from trtq.evaluate.mixed import parse_target
from trtq.evaluate.scoring import MaskRequest, TokenMask, class_score_outputs
from trtq.evaluate.tasks import make_task
from trtq.formats.ranges import RangesTable
from trtq.model import distinct_placeholder_dims, graph_outputs
from trtq.qat.checkpoint import fingerprint, require_checkpoint
from trtq.qat.data import TrainingData
from trtq.qat.exporter import ParityReport, check_parity, export_qdq
from trtq.qat.model import QatModel
from trtq.qat.train import (
    Distillation,
    LabelLoss,
    LossFn,
    Monitor,
    TrainOptions,
    TrainResult,
    train,
)
from trtq.quantize import insert_qdq
from trtq.torch import OnnxModule

DEFAULT_DATA = api.DataOptions()


@dataclass(frozen=True)
class FinetuneOptions(api.CalibrationOptions):
    """Options of `finetune` beyond the data: the calibration options of the PTQ starting point
    (`trtq.api.CalibrationOptions`: method, by default `auto` as for quantize; exclusions; cache header;
    output folder; device), whether depthwise convolution inputs are equalized first as quantize does,
    then the fine-tuning's own."""

    equalize: bool = True
    """Equalize the inputs of depthwise convolutions before calibrating, as `trtq quantize` does by default
    (`QuantizeOptions.equalize`), so fine-tuning starts from the PTQ model quantize writes; False: --no-equalize."""
    steps: int = 2000
    lr: float = 1e-5
    scale_lr: float = 1e-3
    batch_size: int = 32
    target: str | None = None
    resume: bool = False
    seed: int = 0
    eval_every: int = 100
    checkpoint_every: int = 100
    monitor_samples: int = 256
    """Samples of `calib` scored against the FP32 model (in PyTorch) at every evaluation during
    training; the best-scoring state is the one exported."""
    parity_samples: int = 32
    features: Sequence[str] = ()
    """Intermediate tensors to distill beside the outputs (label-free loss)."""
    feature_weight: float = 1.0
    labels: str | bool | None = None
    """None: label-free. True: class sub-folders of the training images. A path: a label file
    (`trtq.evaluate.tasks.load_labels` forms). Labels make the loss cross-entropy."""
    distill_weight: float = 0.0
    """With labels: weight of the label-free distillation term added to the cross-entropy."""
    task: str | None = None
    """Task metric of the final comparison ("classify" or "detect"; labels from the data's folders)."""
    cuda_graph: bool = True
    """On CUDA, replay each training step from a captured CUDA graph (much less launch overhead)."""


@dataclass(frozen=True)
class StageScores:
    """FP32, PTQ or QAT on the comparison data (onnxruntime, CPU)."""

    stage: str
    snr_db: float
    cosine: float
    top1_agreement: float | None
    task: dict[str, float] | None

    def to_dict(self) -> dict:
        """JSON-friendly view (infinities as strings)."""
        return {k: (str(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Comparison:
    """FP32 vs PTQ vs QAT on one data set."""

    data: str
    samples: int
    task: str | None
    rows: tuple[StageScores, ...]
    mask: TokenMask | None = None
    """The attention mask whose marked positions were scored."""

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return {"data": self.data, "samples": self.samples, "task": self.task, "rows": [r.to_dict() for r in self.rows],
                "mask": self.mask.to_dict() if self.mask else None}


@dataclass(frozen=True)
class FinetuneResult:
    """What `finetune` wrote and how the fine-tuning went."""

    model: str
    onnx_path: str
    cache_path: str
    ranges_path: str
    checkpoint_path: str
    device: str
    device_name: str
    ranges_from: str
    training: TrainResult
    parity: ParityReport
    comparison: Comparison
    seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)
    monitor_mask: TokenMask | None = None
    """The attention mask whose marked positions progress (and --target) was measured over."""

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return {"model": self.model, "onnx_path": self.onnx_path, "cache_path": self.cache_path,
                "ranges_path": self.ranges_path, "checkpoint_path": self.checkpoint_path, "device": self.device,
                "device_name": self.device_name, "ranges_from": self.ranges_from,
                "training": self.training.to_dict(), "parity": self.parity.to_dict(),
                "comparison": self.comparison.to_dict(), "seconds": round(self.seconds, 3), "notes": list(self.notes),
                "monitor_mask": self.monitor_mask.to_dict() if self.monitor_mask else None}


QAT_TAG = "qat.int8"
"""Fine-tuning writes `<stem>.qat.int8.onnx`, `.qat.int8.cache` and `.qat.int8.json` (`trtq.artifacts`)."""


def checkpoint_path(model_path: str | Path, output_dir: str | None) -> Path:
    """`<stem>.qat.ckpt` in the output folder: what `--resume` continues from."""
    return output_directory(model_path, output_dir) / f"{Path(model_path).stem}.qat.ckpt"


def device_name(device: torch.device) -> str:
    """A human-readable name of the device that ran the fine-tuning."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _train_options(options: FinetuneOptions) -> TrainOptions:
    target = parse_target(options.target) if options.target else None
    result = TrainOptions(steps=options.steps, lr=options.lr, scale_lr=options.scale_lr,
                          eval_every=options.eval_every, checkpoint_every=options.checkpoint_every, target=target,
                          cuda_graph=options.cuda_graph)
    result.validate()
    if isinstance(options.seed, bool) or not isinstance(options.seed, int) or options.seed < 0:
        raise TrtqError(f"--seed {options.seed!r} is not a whole number >= 0.", "give e.g. --seed 0.")
    return result


def _data_hash(data: TrainingData) -> str:
    digest = hashlib.sha256()
    for name in sorted(data.arrays):
        digest.update(name.encode())
        digest.update(data.arrays[name].numpy().tobytes())
    if data.labels is not None:
        digest.update(data.labels.numpy().tobytes())
    return digest.hexdigest()


def finetune(
    model_path: str | Path,
    calib: str | Path,
    *,
    ranges: str | Path | RangesTable | None = None,
    train_data: str | Path | None = None,
    eval_data: str | Path | None = None,
    data: api.DataOptions = DEFAULT_DATA,
    options: FinetuneOptions = FinetuneOptions(),
    loss: LossFn | None = None,
    loss_tensors: Sequence[str] = (),
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> FinetuneResult:
    """Fine-tune `model_path` with fake quantization at TensorRT's Q/DQ placement and write the
    QAT artifacts (see the module docstring). `loss(LossInputs) -> tensor` replaces the built-in
    loss; it reads `loss_tensors` (default: the graph outputs) of student and teacher.
    """
    began = time.perf_counter()
    train_options = _train_options(options)
    device = resolve_device(options.device)
    if options.batch_size < 1 or isinstance(options.batch_size, bool):
        raise TrtqError(f"--batch-size {options.batch_size!r} is not a positive integer.", "e.g. --batch-size 32.")
    prepared = api.prepare_model(model_path, options.exclude_nodes, options.exclude_ops,
                                 residual_qdq=options.residual_qdq)
    paths = artifact_paths(prepared.path, options.output_dir, QAT_TAG)
    ckpt_path = checkpoint_path(prepared.path, options.output_dir)
    inputs = api.file_sources(prepared.path, calib, train_data, eval_data)
    check_destinations([*paths.destinations(), ckpt_path], inputs)  # before training, not after
    if options.resume:
        require_checkpoint(ckpt_path)
    if not prepared.placement.targets:
        raise TrtqError(f"{prepared.path} has no layer to quantize (no Conv/ConvTranspose/Gemm/MatMul outside the "
                        "exclusions).", "check --exclude-nodes/--exclude-ops, or the model.")

    monitor_ds = api.open_data(prepared.model, calib, data, purpose="fine-tune", progress=progress)
    prepared = prepared.at_shapes(monitor_ds.shapes)
    train_ds = monitor_ds if train_data is None else \
        api.open_data(prepared.model, train_data, data, purpose="fine-tune", progress=progress)
    eval_ds = monitor_ds if eval_data is None else \
        api.open_data(prepared.model, eval_data, data, purpose="evaluate", progress=progress)
    saved = None if ranges is None else ranges if isinstance(ranges, RangesTable) else RangesTable.load(ranges)
    # the PTQ starting point comes from onnxruntime on the CPU (quantize's default); --device is where training runs
    shared = {f.name: getattr(options, f.name) for f in fields(api.CalibrationOptions)}
    ptq_options = api.QuantizeOptions(**{**shared, "device": "cpu"}, equalize=options.equalize)
    # equalized as quantize does, or smoothed as the given table's model was
    prepared, calibration, smoothing = api.smooth_and_calibrate(prepared, monitor_ds, ptq_options, saved,
                                                                progress=progress)
    if calibration is not None:
        table = calibration.ranges
        ranges_from = f"calibrated ({table.method}) on {table.num_samples} samples"
    else:
        table = saved  # type: ignore[assignment]
        ranges_from = f"ranges file {ranges}" if not isinstance(ranges, RangesTable) else "given ranges"

    fixed = api.fixed_batch(prepared.model)
    batch_size = fixed or options.batch_size
    labels = None
    if options.labels is not None and options.labels is not False:
        from trtq.evaluate.tasks import load_labels

        labels = load_labels(None if options.labels is True else options.labels, train_ds).values
    data_train = TrainingData.from_dataset(train_ds, batch_size, labels, seed=options.seed)
    data_digest = _data_hash(data_train)
    eval_batches = _head(monitor_ds, options.monitor_samples, fixed or min(64, options.monitor_samples))
    # PyTorch runs the model from here on, and its errors cannot be told from trtq's: data the model itself
    # fails on (an index out of range, a batch size it cannot take) is found in onnxruntime first
    fix = ""  # fine-tuning trains on batches: there is no batch-1 way round
    check_model_runs(prepared.model, eval_batches, str(prepared.path), str(monitor_ds.source), fix)
    if train_ds is not monitor_ds or ranges is not None:  # else calibration ran the model on these samples already
        check_model_runs(prepared.model, _chunks(data_train.arrays, data_train.batch_size), str(prepared.path),
                         str(train_ds.source), fix)
    data_train.to(device)

    torch.manual_seed(options.seed)
    qmodel = QatModel(prepared.model, prepared.placement, table.amax, device=device, calibration=table)
    teacher = OnnxModule(prepared.model, device=device)
    qmodel.check_supported(eval_batches[0])
    outputs = tuple(qmodel.output_names)
    if loss is not None:
        loss_fn, tensors = loss, tuple(loss_tensors) or outputs
    elif labels is not None:
        scores = next((o.name for o in graph_outputs(prepared.model) if len(o.shape) == 2), outputs[0])
        loss_fn = LabelLoss(scores, outputs, options.distill_weight)
        tensors = loss_fn.tensors
    else:
        loss_fn = Distillation(outputs, tuple(options.features), options.feature_weight)
        tensors = loss_fn.tensors
    identity = fingerprint({
        "model": prepared.sha256, "placement": [(t.tensor, t.axis) for t in prepared.placement.targets],
        "ranges": hashlib.sha256(table.to_json().encode()).hexdigest(), "data": data_digest,
        "batch": data_train.batch_size, "seed": options.seed,
    })
    monitor = Monitor(teacher, eval_batches, outputs, monitor_ds.inputs, data.mask,
                      class_score_outputs(prepared.model))
    training = train(qmodel, teacher, data_train, loss_fn, tensors, monitor, train_options,
                     checkpoint_path=ckpt_path, fingerprint=identity, resume=options.resume,
                     progress=progress, on_step=on_step)

    exported = export_qdq(qmodel)
    onnx.checker.check_model(exported.model)
    parity = check_parity(qmodel, exported.model, eval_batches[: max(1, _batches_for(eval_batches, options.parity_samples))])
    notes = [*prepared.notes, *api.shape_notes(monitor_ds, train_ds, eval_ds)]
    if smoothing is not None and smoothing.equalized:
        notes.append(f"equalized {smoothing.equalized} depthwise convolution inputs, as trtq quantize does (each "
                     "channel scaled to the largest by a Mul, the filters by the inverse; --no-equalize leaves them)")
    if smoothing is not None and smoothing.mul_nodes > smoothing.equalized:
        notes.append(f"smoothed {smoothing.mul_nodes - smoothing.equalized} activations as the ranges table's model was")
    notes += [f"progress: {note}" for note in monitor.mask_notes]
    if parity.local_max_steps > 1:
        notes.append(f"onnxruntime's QuantizeLinear disagrees with PyTorch's quantizer by {parity.local_max_steps} "
                     "steps on the same input: the export does not reproduce the fine-tuned model (please report).")
    elif not parity.ok:
        notes.append(f"onnxruntime and PyTorch codes differ by up to {parity.max_steps} steps end to end (tensor "
                     f"{parity.worst_tensor}, {parity.mismatched} of {parity.elements} codes); each quantizer alone "
                     f"agrees within {parity.local_max_steps} step(s), so these are one-step rounding flips upstream "
                     "that later layers amplify.")
    ptq = insert_qdq(prepared.model, prepared.placement, table.amax)
    comparison = _compare(prepared.model, ptq, exported.model, eval_ds, fixed or min(32, eval_ds.num_samples or 32),
                          options.task, progress, data.mask)

    learned = dict(table.amax)
    learned.update(exported.activation_amax)
    out_table = replace(table, amax=learned, options={**table.options, "qat_steps": training.steps,
                                                      "qat_lr": options.lr, "qat_scale_lr": options.scale_lr})
    cache = cache_amax(learned, prepared.placement.calibrated_tensors)
    renamed_dims = distinct_placeholder_dims(exported.model)
    if renamed_dims:
        notes.append(renamed_dims)
    artifacts(paths, exported.model, out_table, cache, options.trt_version).write(inputs=inputs)
    return FinetuneResult(
        model=str(prepared.path), onnx_path=str(paths.onnx), cache_path=str(paths.cache),
        ranges_path=str(paths.ranges), checkpoint_path=str(ckpt_path), device=str(device),
        device_name=device_name(device), ranges_from=ranges_from, training=training, parity=parity,
        comparison=comparison, seconds=time.perf_counter() - began, notes=tuple(notes), monitor_mask=monitor.mask,
    )


def _chunks(arrays: Mapping[str, torch.Tensor], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive batches of `size` samples of host-held training arrays, as numpy."""
    count = len(next(iter(arrays.values())))
    for start in range(0, count, size):
        yield {name: value[start:start + size].numpy() for name, value in arrays.items()}


def _head(dataset, samples: int, batch_size: int) -> list[dict[str, np.ndarray]]:
    """The first `samples` samples of `dataset` as batches (held in memory for monitoring)."""
    batches, held = [], 0
    for batch in dataset.batches(min(batch_size, dataset.num_samples or batch_size)):
        n = len(next(iter(batch.values())))
        if held + n > samples and held:
            break
        batches.append(batch)
        held += n
    if not batches:
        raise TrtqError(f"Data {dataset.description} yielded no samples.", "pass a non-empty data source.")
    return batches


def _batches_for(batches: Sequence[dict[str, np.ndarray]], samples: int) -> int:
    held = 0
    for i, batch in enumerate(batches):
        held += len(next(iter(batch.values())))
        if held >= samples:
            return i + 1
    return len(batches)


def _compare(fp32: onnx.ModelProto, ptq: onnx.ModelProto, qat: onnx.ModelProto, dataset, batch_size: int,
             task_name: str | None, progress: bool, mask: MaskRequest = True) -> Comparison:
    task = make_task(task_name, dataset, graph_outputs(fp32)) if task_name else None
    evaluator = Evaluator(fp32, dataset, batch_size=batch_size, task=task, progress=progress, mask=mask)
    stages = [_scores(stage, evaluator.evaluate(model, label=stage)) for stage, model in (("ptq", ptq), ("qat", qat))]
    fp32_row = StageScores("fp32", math.inf, 1.0, 1.0 if stages[0].top1_agreement is not None else None,
                           dict(evaluator.reference_scores.values) if evaluator.reference_scores else None)
    return Comparison(data=dataset.description, samples=evaluator.samples,
                      task=task.describe() if task else None, rows=(fp32_row, *stages), mask=evaluator.mask)


def _scores(stage: str, evaluation: Evaluation) -> StageScores:
    top1 = next((o.top1_agreement for o in evaluation.outputs if o.top1_agreement is not None), None)
    return StageScores(stage, evaluation.snr_db, evaluation.cosine, top1,
                       dict(evaluation.task.values) if evaluation.task else None)
