"""GPU calibration backend: the ONNX graph runs in PyTorch and statistics stay on the device.

`OnnxModule` runs the graph (only the part the observed tensors need) and calls back as each
observed tensor appears; `DeviceStats` reduces it on the device at once, so activations are
never copied to the host and never outlive their consumers. `observe` only queues work: batches
go through pinned staging buffers with asynchronous copies, so reading and preprocessing the
next batch on the host overlaps with the GPU working on this one. After one eager batch of a
given shape, the whole step (forward pass plus statistics) is captured in a CUDA graph and
replayed, which removes the per-op launch overhead of the Python executor.

Math is true FP32 by default (TF32 off), so ranges match the CPU backend to rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from trtq.calibrate.collector import TensorStats
from trtq.calibrate.gpu_stats import DeviceStats
from trtq.devices import resolve_device
from trtq.torch import OnnxModule

_STAGING_SLOTS = 3
"""Pinned buffers per input; the host waits only when the GPU is this many batches behind."""

CUDNN_BENCHMARK_MIN_BATCHES = 1000
"""Runs of fewer batches skip cuDNN autotuning. Measured on an H200 (FP32): autotuning made the first
batch 0.73 s slower for ResNet-50 at batch 32 (0.1-0.2 s for PP-OCRv6 det at batch 1) and later
batches at most 0.7 ms faster (18.2 vs 17.5-18.0 ms; no difference for the detector), so it
repays itself after about 1,000 batches."""

Signature = tuple[tuple[str, tuple[int, ...], torch.dtype], ...]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]


class _Staging:
    """Host -> device copies through a ring of pinned buffers (asynchronous on CUDA)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._slots: dict[tuple[str, tuple[int, ...], np.dtype], list[tuple[torch.Tensor, torch.cuda.Event]]] = {}
        self._next: dict[tuple[str, tuple[int, ...], np.dtype], int] = {}

    def copy(self, name: str, array: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """`array` on the device (into `out` when given); returns without waiting for the copy."""
        array = np.ascontiguousarray(array)
        if self.device.type != "cuda":
            tensor = torch.from_numpy(array)
            return tensor if out is None else out.copy_(tensor)
        key = (name, array.shape, array.dtype)
        ring = self._slots.setdefault(key, [])
        index = self._next.get(key, 0)
        if index == len(ring) and len(ring) < _STAGING_SLOTS:
            ring.append((torch.empty(array.shape, dtype=_torch_dtype(array.dtype), pin_memory=True),
                         torch.cuda.Event()))
        pinned, done = ring[index]
        self._next[key] = (index + 1) % _STAGING_SLOTS
        done.synchronize()  # the copy that last read this buffer has finished
        np.copyto(pinned.numpy(), array)
        if out is None:
            out = torch.empty(pinned.shape, dtype=pinned.dtype, device=self.device)
        out.copy_(pinned, non_blocking=True)
        done.record()
        return out


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def _on_device(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Make `device` current (CUDA graphs and the statistics kernels work in its context)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def _fp32_math(tf32: bool, benchmark: bool = True) -> Iterator[None]:
    """cuDNN/cuBLAS in true FP32 unless `tf32`; with `benchmark`, cuDNN times its algorithms per shape."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = benchmark
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


class TorchBackend:
    """PyTorch calibration backend (CUDA; also runs on CPU, which the tests use)."""

    def __init__(self, model: onnx.ModelProto, tensors: Sequence[str], histogram: bool = True, device: str = "cuda",
                 *, cuda_graphs: bool = True, tf32: bool = False, engine: str | None = None,
                 expected_batches: int | None = None, cudnn_benchmark: bool | None = None) -> None:
        self.device = resolve_device(device)
        self.name = f"torch-{self.device.type}"
        self._tensors = list(dict.fromkeys(tensors))
        self._index = {name: i for i, name in enumerate(self._tensors)}
        self._module = OnnxModule(model, device=self.device)
        self._stats = DeviceStats(self._tensors, self.device, histogram=histogram, engine=engine)
        self._staging = _Staging(self.device)
        self._graphs: dict[Signature, _Captured] = {}
        self._eager_runs: dict[Signature, int] = {}
        self._use_graphs = cuda_graphs and self.device.type == "cuda"
        self._tf32 = tf32
        self.cudnn_benchmark = cudnn_benchmark if cudnn_benchmark is not None else (
            expected_batches is None or expected_batches >= CUDNN_BENCHMARK_MIN_BATCHES)
        """Whether cuDNN autotunes each convolution shape (default: only for runs of many or an unknown number of batches)."""
        self.graph_note = ""
        """Why CUDA graphs are not used, when they are not."""

    @property
    def fallback_nodes(self) -> tuple[str, ...]:
        """Nodes run by onnxruntime instead of torch, as "name (op_type)"."""
        return self._module.fallback_nodes

    @property
    def stats_engine(self) -> str:
        """What computes the statistics: "nvrtc"/"cupy" kernels or plain "torch" ops."""
        return self._stats.engine

    @property
    def uses_cuda_graphs(self) -> bool:
        """Whether at least one batch shape is replayed from a captured CUDA graph."""
        return bool(self._graphs)

    def observe(self, batch: Mapping[str, np.ndarray], outputs: bool = False) -> None:
        """Queue one batch: forward pass and statistics run on the device; returns before they finish.
        Never returns the model's outputs (copying them back would wait for the device)."""
        with torch.no_grad(), _fp32_math(self._tf32, self.cudnn_benchmark), _on_device(self.device):
            signature = tuple((name, tuple(np.shape(batch[name])), _torch_dtype(np.asarray(batch[name]).dtype))
                              for name in self._module.input_names if name in batch)
            captured = self._graphs.get(signature)
            if captured is not None:
                for name, tensor in captured.inputs.items():
                    self._staging.copy(name, batch[name], out=tensor)
                captured.graph.replay()
                return
            feeds = {name: self._staging.copy(name, batch[name]) for name in self._module.input_names if name in batch}
            runs = self._eager_runs.get(signature, 0)
            if self._use_graphs and runs >= 1 and self._module.last_run_capturable:
                self._capture(signature, feeds)
                return
            self._step(feeds)
            self._eager_runs[signature] = runs + 1
            if self._use_graphs and not self._module.last_run_capturable and not self.graph_note:
                self.graph_note = "the graph needs host data (onnxruntime fallback or data-dependent shapes)"

    def stats(self) -> dict[str, TensorStats]:
        """Statistics of every observed tensor (waits for the queued work)."""
        return self._stats.stats()

    def notes(self) -> tuple[str, ...]:
        """Nodes that fell back to onnxruntime, the statistics engine, and why no CUDA graph, if not."""
        origin = self._stats.kernel_origin
        notes = [f"statistics computed by {self.stats_engine} on {self.device}" + (f" ({origin})" if origin else "")]
        if self.fallback_nodes:
            notes.append(f"{len(self.fallback_nodes)} nodes ran through onnxruntime: {', '.join(self.fallback_nodes)}")
        if self.graph_note:
            notes.append(f"no CUDA graph: {self.graph_note}")
        return tuple(notes)

    def _step(self, feeds: Mapping[str, torch.Tensor]) -> None:
        self._module.run(feeds, outputs=(), watch=self._tensors, hook=self._observe_tensor)
        self._stats.end_batch()

    def _observe_tensor(self, name: str, value: torch.Tensor) -> None:
        self._stats.update(self._index[name], value)

    def _capture(self, signature: Signature, feeds: dict[str, torch.Tensor]) -> None:
        """Capture the step for this input shape and replay it for the current batch."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._step(feeds)
        except RuntimeError as exc:  # a host synchronisation inside the step: stay eager
            self._use_graphs = False
            self.graph_note = f"CUDA graph capture failed ({str(exc).splitlines()[0]})"
            self._step(feeds)
            return
        self._graphs[signature] = _Captured(graph, feeds)
        graph.replay()

