"""Per-channel activation maxima: max |x| of each channel (the last axis, or another per tensor) of chosen tensors.

Outlier smoothing (`--smooth`, `trtq.quantize.smooth`) needs them for the inputs of the MatMuls it
rescales (channels last) and of the depthwise convolutions it equalizes (channels on axis 1), plus
a few rows of those inputs to judge its choices on; ranges for Q/DQ need only
per-tensor statistics (`collector`). This is one pass over the data through the FP32 model:
onnxruntime with the tensors exposed as outputs on the CPU, or the ONNX graph in PyTorch with the
maxima reduced on the device (`--device cuda`), where only the kept rows reach the host. Memory
stays one batch's exposed activations plus the kept rows.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from tqdm import tqdm

from trtq.data import Dataset
from trtq.errors import TrtqError


@dataclass
class ChannelStats:
    """Per-channel maxima of some tensors, and up to `rows` rows (vectors along the channel axis) of each."""

    amax: dict[str, np.ndarray] = field(default_factory=dict)
    """max |x| per channel, float32, by tensor."""
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    """[n, channels] float32 rows taken evenly from the batches (a fixed random choice within each)."""


def _batches(dataset: Dataset, batch_size: int, drop_partial: bool,
             only: Collection[int] | None = None) -> Iterator[Mapping[str, np.ndarray]]:
    for batch in dataset.batches(batch_size, only):
        if drop_partial and len(next(iter(batch.values()))) < batch_size:
            return
        yield batch


def _fold(found: dict[str, np.ndarray], name: str, channel_max: np.ndarray) -> None:
    if not np.all(np.isfinite(channel_max)):
        raise TrtqError(
            f"The FP32 model produced NaN/Inf in tensor {name!r} on the calibration data.",
            "check the preprocessing (a wrong mean/std or layout can overflow), or exclude that layer.",
        )
    previous = found.get(name)
    found[name] = channel_max if previous is None else np.maximum(previous, channel_max)


class _Rows:
    """Keeps about `total` rows of each tensor, spread over `batches` batches (from the first ones
    when the count is unknown), a fixed random choice within each batch."""

    def __init__(self, total: int, batches: int | None, real_rows: bool = False) -> None:
        self.total = total
        self.real_rows = real_rows
        self.positions: np.ndarray | None = None
        """The current batch's real positions (set per batch when `real_rows`)."""
        self.per_batch = total if not batches else max(1, -(-total // batches))
        self.rng = np.random.default_rng(0)
        self.taken: dict[str, list[np.ndarray]] = {}
        self.counts: dict[str, int] = {}

    def start(self, batch: Mapping[str, np.ndarray]) -> None:
        """Note the batch's real positions, when rows are taken at real tokens only."""
        if self.real_rows:
            from trtq.evaluate.scoring import batch_positions

            self.positions = batch_positions(batch)

    def pick(self, name: str, count: int, shape: tuple[int, ...] = ()) -> np.ndarray | None:
        """Row indices to keep of a batch of `count` rows of `name` of `shape` (None once enough were kept)."""
        have = self.counts.get(name, 0)
        allowed = np.arange(count)
        marks = self.positions
        if marks is not None and tuple(shape[:marks.ndim]) == marks.shape and len(shape) == marks.ndim + 1:
            allowed = np.flatnonzero(marks.reshape(-1))
        size = min(self.per_batch, len(allowed), self.total - have)
        if size <= 0:
            return None
        self.counts[name] = have + size
        return np.sort(self.rng.choice(allowed, size, replace=False))

    def keep(self, name: str, rows: np.ndarray) -> None:
        self.taken.setdefault(name, []).append(np.asarray(rows, dtype=np.float32))

    def result(self) -> dict[str, np.ndarray]:
        return {name: np.concatenate(parts) for name, parts in self.taken.items()}


def channel_amax(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    dataset: Dataset,
    *,
    batch_size: int = 1,
    device: str = "cpu",
    drop_partial: bool = False,
    rows: int = 0,
    progress: bool = True,
    real_rows: bool = False,
    channel_axes: Mapping[str, int] | None = None,
    only_batches: Collection[int] | None = None,
) -> ChannelStats:
    """Max |x| per channel (last axis, or the tensor's axis in `channel_axes`) of every tensor in `tensors` of the
    FP32 `model` over `dataset` (float32), and up to `rows` rows of each, taken evenly over the batches; with
    `real_rows`, rows of [batch, sequence, ...] tensors only at the positions the batch's attention mask marks
    (`trtq.evaluate.scoring.batch_positions`). `only_batches`: the indices of the batches to run, the rest skipped."""
    names = list(dict.fromkeys(tensors))
    found: dict[str, np.ndarray] = {}
    if not names:
        return ChannelStats()
    batches = -(-dataset.num_samples // batch_size) if dataset.num_samples else None
    if only_batches is not None:
        batches = len(only_batches)
    kept = _Rows(rows, batches, real_rows)
    axes = {name: (channel_axes or {}).get(name, -1) for name in names}
    total = dataset.num_samples if only_batches is None or not dataset.num_samples else \
        min(dataset.num_samples, len(only_batches) * batch_size)
    bar = tqdm(total=total, desc="channel ranges", unit="sample", disable=not progress,
               dynamic_ncols=True, leave=False)
    with bar:
        if device == "cpu":
            _on_cpu(model, names, _batches(dataset, batch_size, drop_partial, only_batches), found, kept, bar, axes)
        else:
            _on_torch(model, names, _batches(dataset, batch_size, drop_partial, only_batches), found, kept, bar, device,
                      axes)
    if not found:
        raise TrtqError(f"Calibration data {dataset.description} yielded no samples.", "pass a non-empty --calib source.")
    return ChannelStats(found, kept.result())


def _on_cpu(model: onnx.ModelProto, names: list[str], batches: Iterator[Mapping[str, np.ndarray]],
            found: dict[str, np.ndarray], kept: _Rows, bar: tqdm, axes: Mapping[str, int] | None = None) -> None:
    from trtq.runtime.ort_session import make_session

    inputs = {vi.name for vi in model.graph.input}
    fetch = [name for name in names if name not in inputs]
    session = make_session(model, outputs=fetch)
    for batch in batches:
        values = dict(zip(fetch, session.run(fetch, dict(batch)))) if fetch else {}
        values.update({name: batch[name] for name in names if name in inputs})
        kept.start(batch)
        for name in names:
            value = np.moveaxis(np.asarray(values[name], dtype=np.float32), (axes or {}).get(name, -1), -1)
            shape = value.shape
            value = value.reshape(-1, value.shape[-1])
            _fold(found, name, np.abs(value).max(axis=0))
            pick = kept.pick(name, len(value), shape)
            if pick is not None:
                kept.keep(name, value[pick])
        bar.update(len(next(iter(batch.values()))))


def _on_torch(model: onnx.ModelProto, names: list[str], batches: Iterator[Mapping[str, np.ndarray]],
              found: dict[str, np.ndarray], kept: _Rows, bar: tqdm, device: str,
              axes: Mapping[str, int] | None = None) -> None:
    try:
        import torch

        from trtq.calibrate.backend_torch import resolve_device
        from trtq.torch import OnnxModule
    except ImportError as exc:
        raise TrtqError(f"--device {device} needs PyTorch with CUDA, which is not installed ({exc}).",
                        "pip install 'trtq[gpu]' on a machine with an NVIDIA GPU, or use --device cpu.") from exc
    target = resolve_device(device)
    module = OnnxModule(model, device=target)
    running: dict[str, torch.Tensor] = {}

    def hook(name: str, value: torch.Tensor) -> None:
        value = value.detach().float().movedim((axes or {}).get(name, -1), -1)
        flat = value.reshape(-1, value.shape[-1])
        channel_max = flat.abs().amax(dim=0)
        running[name] = channel_max if name not in running else torch.maximum(running[name], channel_max)
        pick = kept.pick(name, flat.shape[0], tuple(value.shape))
        if pick is not None:
            kept.keep(name, flat[torch.from_numpy(pick).to(flat.device)].cpu().numpy())

    with torch.no_grad():
        for batch in batches:
            feeds = {name: torch.from_numpy(np.ascontiguousarray(batch[name])).to(target) for name in module.input_names
                     if name in batch}
            kept.start(batch)
            module.run(feeds, outputs=(), watch=names, hook=hook)
            bar.update(len(next(iter(batch.values()))))
    for name, value in running.items():
        _fold(found, name, value.cpu().numpy())
