"""PyTorch users' QAT flow, in place of pytorch-quantization's:

    import trtq.qat as tq
    qmodel = tq.prepare(module, example_inputs, calib=loader)  # PTQ as trtq quantize does it, TensorRT placement
    train(qmodel)                           # optional: the user's own loop and loss (QAT)
    tq.export(qmodel, "model.qat.int8.onnx", example_inputs, dynamic_axes={"input": {0: "batch"}})

`prepare` exports the module to ONNX (batch dim dynamic), normalises it and plans the Q/DQ
placement exactly as `trtq quantize` does, equalizes depthwise convolution inputs and calibrates
(`auto` by default) as it does, on `calib` (an iterable of batches: a
tensor, a tuple/list whose first items are the inputs, e.g. a DataLoader's (x, y), or a dict by
input name), and returns a `QatModel`: an nn.Module whose forward gives the INT8 model's outputs
and whose parameters (weights, biases, log step sizes) train with any optimizer. `export` writes
the Q/DQ ONNX with the trained values and checks it against the module with onnxruntime.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from trtq._io import atomic_write_bytes
from trtq.calibrate.algorithms import METHODS
from trtq.data import Dataset
from trtq.errors import TrtqError
from trtq.model import TensorSpec, graph_inputs, normalize_model
from trtq.options import QuantizeOptions
from trtq.prepare import PreparedModel, smooth_and_calibrate
from trtq.qat.exporter import ParityReport, check_parity, export_qdq
from trtq.qat.model import QatModel
from trtq.quantize import plan_placement
from trtq.quantize.smooth import smoothing_groups

__all__ = ["ExportResult", "export", "prepare"]

DEFAULT_OPSET = 17


@dataclass(frozen=True)
class ExportResult:
    """Where `export` wrote the Q/DQ ONNX and how onnxruntime's run of it matched the module."""

    path: str
    parity: ParityReport


def _as_tuple(example_inputs: object) -> tuple[torch.Tensor, ...]:
    values = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not values or not all(isinstance(v, torch.Tensor) for v in values):
        raise TrtqError("example_inputs must be a tensor or a tuple of tensors (one per forward argument).",
                        "pass e.g. torch.zeros(1, 3, 224, 224), or (ids, mask).")
    return tuple(values)


class _LoaderDataset(Dataset):
    """A user's iterable of batches as a `trtq.data.Dataset` (batches used as they come; `shapes`, the example
    inputs', give its nominal batch size)."""

    def __init__(self, loader: Iterable[object], inputs: Sequence[TensorSpec],
                 shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
        super().__init__(Path(type(loader).__name__), inputs, dict(shapes or {}), None,
                         f"batches from {type(loader).__name__}")
        self.loader = loader

    def _feed(self, batch: object) -> dict[str, np.ndarray]:
        names = self.input_names
        if isinstance(batch, Mapping):
            missing = [n for n in names if n not in batch]
            if missing:
                raise TrtqError(f"A calibration batch (dict) has no input {missing[0]!r}; keys: {list(batch)}.",
                                f"key batches by the input names {list(names)}.")
            values = [batch[n] for n in names]
        elif isinstance(batch, (tuple, list)):
            if len(batch) < len(names):
                raise TrtqError(f"A calibration batch holds {len(batch)} tensors; the module takes {len(names)} "
                                "inputs.", "yield one tensor per forward argument (extra items, e.g. labels, are ignored).")
            values = list(batch[: len(names)])
        else:
            values = [batch]
        feed = {}
        for name, value in zip(names, values):
            if not isinstance(value, (torch.Tensor, np.ndarray)):
                raise TrtqError(f"Calibration input {name!r} is a {type(value).__name__}, not a tensor.",
                                "yield tensors (or numpy arrays) from the calibration loader.")
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise TrtqError(f"Calibration input {name!r} holds NaN or Inf values.", "clean the calibration data.")
            feed[name] = array.astype(np.float32) if array.dtype.kind == "f" else array
        return feed

    def _batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for batch in self.loader:
            yield self._feed(batch)


def _export_module(module: torch.nn.Module, args: tuple[torch.Tensor, ...], input_names: Sequence[str],
                   output_names: Sequence[str] | None, opset: int) -> onnx.ModelProto:
    """The module as ONNX (eval mode: BatchNorm folded, dropout off), every batch dim dynamic."""
    buffer = io.BytesIO()
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            outputs = module(*args)
        count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
        out_names = list(output_names) if output_names else (["output"] if count == 1 else [f"output_{i}" for i in range(count)])
        axes = {name: {0: "batch"} for name in [*input_names, *out_names]}
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated, yet the one that folds BN
            warnings.simplefilter("ignore", DeprecationWarning)
            # torch annotates `f` as a path; the TorchScript exporter writes to a file object as well
            torch.onnx.export(module, args, buffer, dynamo=False, opset_version=opset,  # type: ignore[arg-type]
                              input_names=list(input_names), output_names=out_names, dynamic_axes=axes,
                              do_constant_folding=True)
    except TrtqError:
        raise
    except Exception as exc:  # the exporter raises many unrelated types for untraceable modules
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TrtqError(f"PyTorch module {type(module).__name__} cannot be exported to ONNX "
                        f"({type(exc).__name__}: {first[:200]}).",
                        "make forward exportable by torch.onnx.export (ONNX-expressible ops, no data-dependent Python "
                        "control flow), or export the model yourself and "
                        "run `trtq finetune model.onnx`.") from exc
    finally:
        module.train(was_training)
    return onnx.load_from_string(buffer.getvalue())


def prepare(
    module: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    calib: Iterable[object],
    method: str = "auto",
    *,
    percentile: float = 99.99,
    equalize: bool = True,
    exclude_nodes: Sequence[str] = (),
    exclude_ops: Sequence[str] = (),
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int = DEFAULT_OPSET,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> QatModel:
    """PTQ of `module` at TensorRT's Q/DQ placement, returned as a trainable `QatModel`.

    The PTQ is `trtq quantize`'s with its defaults: depthwise convolution inputs equalized (`equalize=False`
    leaves them), `method` ranges (`auto` checks its candidate tables end to end on the first batches). The
    QatModel runs on `device` (default: the module's). `qmodel.calibration` is the ranges table the step
    sizes started from (with the equalization factors, as `trtq quantize` writes them).
    """
    if method not in METHODS:
        raise TrtqError(f"method {method!r} is not one of {', '.join(METHODS)}.", "pick one of those.")
    args = _as_tuple(example_inputs)
    names = list(input_names) if input_names else (["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))])
    if len(names) != len(args):
        raise TrtqError(f"{len(names)} input names for {len(args)} example inputs.", "give one name per input.")
    exported = _export_module(module, args, names, output_names, opset)
    model = normalize_model(exported, source=type(module).__name__)
    prepared = PreparedModel(path=Path(type(module).__name__), sha256=hashlib.sha256(exported.SerializeToString()).hexdigest(),
                             model=model, placement=plan_placement(model, exclude_nodes=exclude_nodes, exclude_ops=exclude_ops),
                             exclude_nodes=tuple(exclude_nodes), exclude_ops=tuple(exclude_ops))
    options = QuantizeOptions(method=method, percentile=percentile, exclude_nodes=tuple(exclude_nodes),
                              exclude_ops=tuple(exclude_ops), equalize=equalize)
    equalizing = options.equalizes and bool(smoothing_groups(model, prepared.placement, matmuls=False, depthwise=True))
    if equalizing and iter(calib) is calib:  # a generator: equalizing reads the batches before calibration does
        calib = list(calib)
    dataset = _LoaderDataset(calib, graph_inputs(model), {name: tuple(a.shape) for name, a in zip(names, args)})
    prepared, calibration, _ = smooth_and_calibrate(prepared, dataset, options, progress=progress)
    assert calibration is not None  # no saved table: it calibrates
    table = calibration.ranges
    if device is None:
        param = next(module.parameters(), None)
        device = param.device if param is not None else "cpu"
    qmodel = QatModel(prepared.model, prepared.placement, table.amax, device=device, calibration=table)
    qmodel.check_supported({name: a.detach() for name, a in zip(qmodel.input_names, args)})
    return qmodel


DynamicAxes = Mapping[str, Mapping[int, str] | Sequence[int]]
"""torch.onnx's dynamic_axes: {name: {axis: "dim"}} or {name: [axes]}."""


def _dim_names(dynamic_axes: DynamicAxes | None, known: Sequence[str]) -> dict[str, dict[int, str]]:
    """torch.onnx-style dynamic_axes ({name: {axis: "dim"}} or {name: [axes]}) as {name: {axis: dim}}."""
    result: dict[str, dict[int, str]] = {}
    for name, axes in (dynamic_axes or {}).items():
        if name not in known:
            raise TrtqError(f"dynamic_axes names {name!r}, which is not an input or output ({list(known)}).",
                            "use the names given to prepare (input_names / output_names).")
        if isinstance(axes, Mapping):
            result[name] = {int(a): str(d) for a, d in axes.items()}
        else:
            result[name] = {int(a): f"{name}_dim{int(a)}" for a in axes}
    return result


def _set_shape(value_info: onnx.ValueInfoProto, shape: Sequence[int], dynamic: Mapping[int, str]) -> None:
    dims = value_info.type.tensor_type.shape.dim
    del dims[:]
    for axis, size in enumerate(shape):
        dim = dims.add()
        if axis in dynamic:
            dim.dim_param = dynamic[axis]
        else:
            dim.dim_value = int(size)


def export(
    qmodel: QatModel,
    path: str | Path,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    dynamic_axes: DynamicAxes | None = None,
) -> ExportResult:
    """Write `qmodel` as a Q/DQ ONNX to `path` (atomically): I/O shapes from `example_inputs`,
    with `dynamic_axes` symbolic; onnxruntime's run on `example_inputs` is checked against the
    PyTorch model (`ExportResult.parity`: at most one quantization step apart expected)."""
    args = _as_tuple(example_inputs)
    if len(args) != len(qmodel.input_names):
        raise TrtqError(f"{len(args)} example inputs for a model with inputs {list(qmodel.input_names)}.",
                        "pass one example tensor per input.")
    feeds = {name: a.detach().cpu().numpy() for name, a in zip(qmodel.input_names, args)}
    with torch.no_grad():
        outputs = qmodel.run(feeds)
    dims = _dim_names(dynamic_axes, [*qmodel.input_names, *qmodel.output_names])
    model = export_qdq(qmodel).model
    for vi in model.graph.input:
        if vi.name in feeds:
            _set_shape(vi, feeds[vi.name].shape, dims.get(vi.name, {}))
    for vi in model.graph.output:
        _set_shape(vi, tuple(outputs[vi.name].shape), dims.get(vi.name, {}))
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    parity = check_parity(qmodel, model, [feeds])
    atomic_write_bytes(Path(path), model.SerializeToString())
    return ExportResult(path=str(path), parity=parity)
