"""The options of trtq's API calls: data and preprocessing, task metric, calibration (shared by
quantize, sensitivity and finetune) and quantization; each checks itself when made."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import onnx

from trtq.calibrate.algorithms import METHODS
from trtq.calibrate.grids import GRIDS, Grid
from trtq.data import Dataset, PreprocessOverrides
from trtq.devices import check_device
from trtq.errors import TrtqError
from trtq.evaluate.scoring import MaskRequest
from trtq.evaluate.tasks import Task, check_task_options, make_task
from trtq.formats.cache import DEFAULT_TRT_VERSION, trt_version_code
from trtq.model import graph_outputs
from trtq.quantize.smooth import check_alpha

if TYPE_CHECKING:
    from trtq.formats.ranges import RangesTable


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
    judge_layers: bool = False
    """`--method auto` also judges every candidate range per tensor on the layers that read it (EasyQuant/AIMET's
    local search) and checks that per-tensor table end to end with the others. Off by default: on every model
    measured the table lost to mse end to end (ResNet-50 by 1.0 dB), and it costs a forward pass per candidate."""
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
    equalize: bool = True
    """INT8: equalize the inputs of depthwise convolutions (a Mul by 1/s before, filters times s; exact after
    per-channel weight quantization, `trtq.quantize.smooth`); False: `--no-equalize`."""
    weight_ranges: str | None = None
    """Per-channel weight ranges: "max" (max |w|), or "mse" (FP8 only: chosen by the layer's output
    error on calibration rows, with bias correction; `trtq.quantize.weights`). None: mse for FP8, max for INT8."""

    def __post_init__(self) -> None:
        precision_grid(self.precision)
        super().__post_init__()
        if self.weight_ranges not in (None, "max", "mse"):
            raise TrtqError(f"--weight-ranges {self.weight_ranges!r} is not max or mse.", "pick one of those.")
        if self.weight_ranges == "mse" and self.precision != "fp8":
            raise TrtqError("--weight-ranges mse applies to --precision fp8 only; INT8 weights use max |w| per "
                            "channel (on INT8 the activations dominate the error).",
                            "drop --weight-ranges, or add --precision fp8.")
        if self.cache_scope not in ("qdq", "all"):
            raise TrtqError(f"--cache-scope {self.cache_scope!r} is not qdq or all.", "pick one of those.")
        if self.smooth is not None and self.smooth != "auto":
            if isinstance(self.smooth, str):
                raise TrtqError(f"--smooth {self.smooth!r} is not a number.", "pass e.g. --smooth 0.5, or --smooth alone.")
            check_alpha(float(self.smooth))

    @property
    def weight_method(self) -> str:
        """The weight range method this run uses ("mse" or "max")."""
        return self.weight_ranges or ("mse" if self.precision == "fp8" else "max")

    @property
    def smooth_alpha(self) -> float | None:
        """The fixed alpha of --smooth ALPHA; None for the per-layer choice (or no smoothing)."""
        return None if self.smooth in (None, "auto") else float(self.smooth)

    @property
    def equalizes(self) -> bool:
        """Whether depthwise convolution inputs are equalized: INT8 unless --no-equalize (FP8's error is relative
        to each value, so a per-tensor scale does not starve small channels)."""
        return self.equalize and self.precision == "int8"

    def smooths(self, table: RangesTable | None = None) -> bool:
        """Whether the model is smoothed or equalized before calibration: as `table` was when ranges are reused
        (its tensors are those of that model), else with --smooth or the default equalization."""
        if table is not None:
            return bool(table.smoothing) or self.smooth is not None
        return self.smooth is not None or self.equalizes

    def default_method(self) -> str:
        """The precision's range algorithm (DEFAULT_METHODS)."""
        return DEFAULT_METHODS[self.precision]

    @property
    def grid(self) -> Grid:
        """The grid the quantized layers run on (INT8 or FP8 E4M3)."""
        return precision_grid(self.precision)
