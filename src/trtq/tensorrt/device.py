"""CUDA device memory without TensorRT: buffers, copies, streams and events via torch or cuda-python.

The INT8 calibrator must hand TensorRT one *device* pointer per input; a host pointer is read
as device memory (the "illegal memory access" users hit). `DeviceFeeder` owns one device
buffer per input, sized for the calibration shape, copies each host batch into it and returns
the buffers' device pointers. It needs a GPU but not TensorRT, so it is tested on its own.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from trtq.errors import TrtqError


class DeviceBackend(Protocol):
    """The few CUDA runtime operations trtq needs."""

    name: str

    def alloc(self, nbytes: int) -> int: ...
    def free(self, pointer: int) -> None: ...
    def to_device(self, pointer: int, array: np.ndarray, stream: int = 0) -> None: ...
    def to_host(self, pointer: int, out: np.ndarray, stream: int = 0) -> None: ...
    def new_stream(self) -> int: ...
    def synchronize(self, stream: int) -> None: ...
    def new_event(self) -> Any: ...
    def record(self, event: Any, stream: int) -> None: ...
    def elapsed_ms(self, start: Any, end: Any) -> float: ...
    def capture(self, stream: int, work: Callable[[], None]) -> Any: ...
    def launch(self, graph: Any, stream: int) -> None: ...
    def device_name(self) -> str: ...
    def compute_capability(self) -> tuple[int, int]: ...


class TorchBackend:
    """CUDA through PyTorch (device buffers are uint8 tensors kept alive here)."""

    name = "torch"

    def __init__(self, torch: ModuleType) -> None:
        self._torch = torch
        self._tensors: dict[int, Any] = {}
        self._streams: dict[int, Any] = {}

    def alloc(self, nbytes: int) -> int:
        tensor = self._torch.empty(max(int(nbytes), 1), dtype=self._torch.uint8, device="cuda")
        self._tensors[tensor.data_ptr()] = tensor
        return int(tensor.data_ptr())

    def free(self, pointer: int) -> None:
        self._tensors.pop(pointer, None)

    def _view(self, pointer: int, nbytes: int) -> Any:
        return self._tensors[pointer][:nbytes]

    def _stream(self, stream: int) -> Any:
        return self._streams.get(stream) or self._torch.cuda.current_stream()

    def to_device(self, pointer: int, array: np.ndarray, stream: int = 0) -> None:
        host = np.ascontiguousarray(array)
        source = self._torch.from_numpy(host.reshape(-1).view(np.uint8))
        with self._torch.cuda.stream(self._stream(stream)):
            self._view(pointer, host.nbytes).copy_(source, non_blocking=False)

    def to_host(self, pointer: int, out: np.ndarray, stream: int = 0) -> None:
        with self._torch.cuda.stream(self._stream(stream)):
            data = self._view(pointer, out.nbytes).cpu().numpy()
        out.reshape(-1).view(np.uint8)[:] = data

    def new_stream(self) -> int:
        stream = self._torch.cuda.Stream()
        self._streams[int(stream.cuda_stream)] = stream
        return int(stream.cuda_stream)

    def synchronize(self, stream: int) -> None:
        self._stream(stream).synchronize()

    def new_event(self) -> Any:
        return self._torch.cuda.Event(enable_timing=True)

    def record(self, event: Any, stream: int) -> None:
        event.record(self._stream(stream))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(start.elapsed_time(end))

    def capture(self, stream: int, work: Callable[[], None]) -> Any:
        graph = self._torch.cuda.CUDAGraph()
        with self._torch.cuda.graph(graph, stream=self._stream(stream), capture_error_mode="thread_local"):
            work()
        return graph

    def launch(self, graph: Any, stream: int) -> None:
        with self._torch.cuda.stream(self._stream(stream)):
            graph.replay()

    def device_name(self) -> str:
        return str(self._torch.cuda.get_device_name())

    def compute_capability(self) -> tuple[int, int]:
        major, minor = self._torch.cuda.get_device_capability()
        return int(major), int(minor)


class CudaPythonBackend:
    """CUDA through NVIDIA's cuda-python runtime bindings (cudart)."""

    name = "cuda-python"

    def __init__(self, cudart: ModuleType) -> None:
        self._rt = cudart

    def _check(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self._rt.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA {what} failed: {err}")
        return rest[0] if len(rest) == 1 else rest

    def alloc(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))

    def free(self, pointer: int) -> None:
        self._check(self._rt.cudaFree(pointer), "cudaFree")

    def to_device(self, pointer: int, array: np.ndarray, stream: int = 0) -> None:
        host = np.ascontiguousarray(array)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._rt.cudaMemcpyAsync(pointer, host.ctypes.data, host.nbytes, kind, stream), "cudaMemcpyAsync")
        self.synchronize(stream)

    def to_host(self, pointer: int, out: np.ndarray, stream: int = 0) -> None:
        if not out.flags.c_contiguous:
            raise ValueError("to_host needs a C-contiguous output array")
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._rt.cudaMemcpyAsync(out.ctypes.data, pointer, out.nbytes, kind, stream), "cudaMemcpyAsync")
        self.synchronize(stream)

    def new_stream(self) -> int:
        return int(self._check(self._rt.cudaStreamCreate(), "cudaStreamCreate"))

    def synchronize(self, stream: int) -> None:
        self._check(self._rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def new_event(self) -> Any:
        return self._check(self._rt.cudaEventCreate(), "cudaEventCreate")

    def record(self, event: Any, stream: int) -> None:
        self._check(self._rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self._check(self._rt.cudaEventSynchronize(end), "cudaEventSynchronize")
        return float(self._check(self._rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def capture(self, stream: int, work: Callable[[], None]) -> Any:
        mode = self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self._rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        try:
            work()
        finally:
            graph = self._check(self._rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        return self._check(self._rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def launch(self, graph: Any, stream: int) -> None:
        self._check(self._rt.cudaGraphLaunch(graph, stream), "cudaGraphLaunch")

    def device_name(self) -> str:
        device = self._check(self._rt.cudaGetDevice(), "cudaGetDevice")
        props = self._check(self._rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        name = props.name
        return name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)

    def compute_capability(self) -> tuple[int, int]:
        device = self._check(self._rt.cudaGetDevice(), "cudaGetDevice")
        props = self._check(self._rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        return int(props.major), int(props.minor)


BACKENDS = ("torch", "cuda-python")


def _import_cudart() -> ModuleType | None:
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            if importlib.util.find_spec(module.rsplit(".", 1)[0]) is not None:
                return importlib.import_module(module)
        except ImportError:
            continue
    return None


def available_backends() -> list[str]:
    """The backends that can reach a CUDA device here, preferred first."""
    found = []
    if importlib.util.find_spec("torch") is not None:
        torch = importlib.import_module("torch")
        if torch.cuda.is_available():
            found.append("torch")
    cudart = _import_cudart()
    if cudart is not None:
        err, count = cudart.cudaGetDeviceCount()
        if err == cudart.cudaError_t.cudaSuccess and count > 0:
            found.append("cuda-python")
    return found


def open_backend(name: str = "auto") -> DeviceBackend:
    """A device backend: "torch", "cuda-python", or "auto" (the first available)."""
    if name not in ("auto", *BACKENDS):
        raise TrtqError(f"Device backend {name!r} is not one of auto, {', '.join(BACKENDS)}.", "pick one of those.")
    found = available_backends()
    chosen = found[0] if name == "auto" and found else name
    if chosen not in found:
        raise TrtqError(
            "No CUDA device is reachable from Python here (neither torch.cuda nor cuda-python found a GPU)"
            if name == "auto" else f"Device backend {name!r} cannot reach a CUDA device here.",
            "install torch with CUDA or cuda-python (pip install cuda-python) on a machine with an NVIDIA GPU.",
        )
    if chosen == "torch":
        return TorchBackend(importlib.import_module("torch"))
    cudart = _import_cudart()
    assert cudart is not None
    return CudaPythonBackend(cudart)


def gpu_name() -> str | None:
    """The current GPU's name, or None when no backend reaches one."""
    try:
        return open_backend().device_name()
    except TrtqError:
        return None


@dataclass(frozen=True)
class BufferSpec:
    """The shape and dtype one input buffer holds (the calibration profile's OPT shape)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        """Size in bytes."""
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class DeviceFeeder:
    """Owns one device buffer per input; copies host batches in and returns their device pointers."""

    def __init__(self, specs: Mapping[str, BufferSpec], backend: DeviceBackend | None = None) -> None:
        self.specs = dict(specs)
        self.backend = backend if backend is not None else open_backend()
        self._pointers: dict[str, int] = {}
        for name, spec in self.specs.items():
            self._pointers[name] = self.backend.alloc(spec.nbytes)

    def _checked(self, name: str, array: np.ndarray) -> np.ndarray:
        spec = self.specs[name]
        array = np.asarray(array)
        if tuple(array.shape) != spec.shape:
            raise TrtqError(
                f"Calibration batch for input {name!r} has shape {tuple(array.shape)}, but the calibration "
                f"profile's OPT shape is {spec.shape}.",
                "make the calibration batches match the OPT shape (--shape/--opt-shape), batch dim included.",
            )
        want = np.dtype(spec.dtype)
        if array.dtype != want:
            if not np.can_cast(array.dtype, want, casting="same_kind"):
                raise TrtqError(
                    f"Calibration batch for input {name!r} is {array.dtype}, and the engine input is {want}.",
                    f"provide {want} data for {name!r}.",
                )
            array = array.astype(want)
        return np.ascontiguousarray(array)

    def pointers(self, names: Sequence[str]) -> list[int]:
        """Exactly one device pointer per requested name, in `names` order."""
        unknown = [n for n in names if n not in self._pointers]
        if unknown:
            raise TrtqError(
                f"TensorRT asked for calibration input {unknown[0]!r}, but the feeder holds {sorted(self._pointers)}.",
                "calibrate the same ONNX model the engine is built from.",
            )
        return [self._pointers[n] for n in names]

    def feed(self, batch: Mapping[str, np.ndarray], names: Sequence[str] | None = None) -> list[int]:
        """Copy `batch` into the device buffers; return the pointers for `names` (default: all, in spec order)."""
        names = list(names) if names is not None else list(self.specs)
        missing = [n for n in names if n not in batch]
        if missing:
            raise TrtqError(
                f"Calibration batch has no array for input {missing[0]!r} (it has {sorted(batch)}).",
                "give every network input a calibration array.",
            )
        pointers = self.pointers(names)
        for name in names:
            self.backend.to_device(self._pointers[name], self._checked(name, batch[name]))
        return pointers

    def read_back(self, name: str) -> np.ndarray:
        """Copy an input buffer back to the host (to verify what TensorRT reads)."""
        spec = self.specs[name]
        out = np.empty(spec.shape, dtype=spec.dtype)
        self.backend.to_host(self._pointers[name], out)
        return out

    def close(self) -> None:
        """Free the device buffers."""
        for pointer in self._pointers.values():
            self.backend.free(pointer)
        self._pointers.clear()

    def __enter__(self) -> DeviceFeeder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
