"""Load an engine and execute it with every I/O tensor bound by name (execute_async_v3).

Shared by `run` and `bench`: input shapes are set with `set_input_shape`, every I/O tensor
gets a device buffer through `set_tensor_address`, and the engine is enqueued on a stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from trtq.errors import TrtqError
from trtq.tensorrt.device import DeviceBackend
from trtq.tensorrt.rtx import engine_logger
from trtq.tensorrt.version import supports

if TYPE_CHECKING:
    import tensorrt as trt


@dataclass(frozen=True)
class IOTensor:
    """One engine I/O tensor: engine dims (-1 dynamic), numpy dtype name, and memory format."""

    name: str
    is_input: bool
    dtype: str
    shape: tuple[int, ...]
    format: str
    linear: bool
    vectorized_dim: int
    components: int

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return asdict(self)


@supports("10", "11", "rtx")
def load_engine(trt: ModuleType, path: str | Path) -> tuple[Any, Any]:
    """(runtime, engine) for a serialized engine file; the runtime must outlive the engine."""
    path = Path(path)
    if not path.is_file():
        raise TrtqError(f"Engine file {path} does not exist.", "build it with `trtq build`.")
    runtime: trt.Runtime = trt.Runtime(engine_logger(trt))
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise TrtqError(
            f"TensorRT {trt.__version__} could not deserialize {path} (its log above says why; engines only load "
            "on the TensorRT version and GPU they were built with).",
            "rebuild the engine here with `trtq build`.",
        )
    return runtime, engine


@supports("10", "11", "rtx")
def io_tensors(trt: ModuleType, engine: trt.ICudaEngine) -> list[IOTensor]:
    """The engine's I/O tensors in engine order."""
    tensors = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        try:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
        except TypeError:
            dtype = str(engine.get_tensor_dtype(name))
        tensors.append(IOTensor(
            name=name,
            is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
            dtype=dtype,
            shape=tuple(int(d) for d in engine.get_tensor_shape(name)),
            format=str(engine.get_tensor_format_desc(name)),
            linear=engine.get_tensor_format(name) == trt.TensorFormat.LINEAR,
            vectorized_dim=int(engine.get_tensor_vectorized_dim(name)),
            components=int(engine.get_tensor_components_per_element(name)),
        ))
    return tensors


@supports("10", "11", "rtx")
def opt_shapes(engine: trt.ICudaEngine, tensors: Sequence[IOTensor]) -> dict[str, tuple[int, ...]]:
    """The OPT shape of profile 0 for every dynamic input (fixed inputs keep their dims)."""
    shapes = {}
    for tensor in tensors:
        if tensor.is_input:
            if any(d < 0 for d in tensor.shape):
                _, opt, _ = engine.get_tensor_profile_shape(tensor.name, 0)
                shapes[tensor.name] = tuple(int(d) for d in opt)
            else:
                shapes[tensor.name] = tensor.shape
    return shapes


def buffer_bytes(tensor: IOTensor, shape: Sequence[int]) -> int:
    """Bytes a tensor of `shape` needs in its engine format (vectorized dims padded to whole vectors)."""
    dims = list(shape)
    if tensor.vectorized_dim >= 0 and tensor.components > 1 and tensor.vectorized_dim < len(dims):
        d = dims[tensor.vectorized_dim]
        dims[tensor.vectorized_dim] = -(-d // tensor.components) * tensor.components
    try:
        itemsize = np.dtype(tensor.dtype).itemsize
    except TypeError as exc:
        raise TrtqError(f"Engine tensor {tensor.name!r} has type {tensor.dtype}, which numpy cannot hold.",
                        "use trtexec for engines with such I/O types.") from exc
    return int(np.prod(dims, dtype=np.int64)) * itemsize


@supports("10", "11", "rtx")
class ExecutionSession:
    """An execution context with one device buffer per I/O tensor, all bound by name."""

    def __init__(self, trt: ModuleType, engine: trt.ICudaEngine, backend: DeviceBackend,
                 input_shapes: Mapping[str, Sequence[int]]) -> None:
        self.engine = engine
        self.backend = backend
        self.tensors = io_tensors(trt, engine)
        self.stream = backend.new_stream()
        context: trt.IExecutionContext = engine.create_execution_context()
        if context is None:
            raise TrtqError("TensorRT could not create an execution context (out of device memory?).",
                            "free GPU memory or use a smaller workspace.")
        self.context = context
        names = {t.name for t in self.tensors if t.is_input}
        unknown = sorted(set(input_shapes) - names)
        if unknown:
            raise TrtqError(f"Shape given for {unknown[0]!r}, which is not an engine input ({sorted(names)}).",
                            "use the engine's input names (`trtq inspect ENGINE`).")
        self.shapes: dict[str, tuple[int, ...]] = {}
        for tensor in self.tensors:
            if tensor.is_input:
                shape = tuple(int(d) for d in input_shapes.get(tensor.name, tensor.shape))
                if any(d < 0 for d in shape):
                    raise TrtqError(f"Engine input {tensor.name!r} is dynamic ({tensor.shape}) and no shape was given.",
                                    f"pass --shape {tensor.name}:AxBxC.")
                if not context.set_input_shape(tensor.name, shape):
                    raise TrtqError(f"Shape {shape} for input {tensor.name!r} is outside the engine's profile.",
                                    "use a shape between the profile's min and max (`trtq inspect ENGINE`).")
                self.shapes[tensor.name] = shape
        for tensor in self.tensors:
            if not tensor.is_input:
                shape = tuple(int(d) for d in context.get_tensor_shape(tensor.name))
                if any(d < 0 for d in shape):
                    raise TrtqError(f"Output {tensor.name!r} has a data-dependent shape {shape}.",
                                    "run such engines with trtexec, which allocates outputs on demand.")
                self.shapes[tensor.name] = shape
        self.pointers: dict[str, int] = {}
        for tensor in self.tensors:
            pointer = backend.alloc(buffer_bytes(tensor, self.shapes[tensor.name]))
            self.pointers[tensor.name] = pointer
            context.set_tensor_address(tensor.name, pointer)

    def copy_inputs(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Copy host arrays (linear layout, exact shapes) into the input buffers on the session's stream."""
        for tensor in self.tensors:
            if not tensor.is_input:
                continue
            if tensor.name not in arrays:
                raise TrtqError(f"No data for engine input {tensor.name!r} (got {sorted(arrays)}).",
                                "provide one array per engine input.")
            array = np.ascontiguousarray(arrays[tensor.name], dtype=np.dtype(tensor.dtype))
            if array.shape != self.shapes[tensor.name]:
                raise TrtqError(f"Data for input {tensor.name!r} has shape {array.shape}, the engine was set to "
                                f"{self.shapes[tensor.name]}.", "pass --shape to match the data.")
            self.backend.to_device(self.pointers[tensor.name], array, self.stream)

    def enqueue(self) -> None:
        """Enqueue one inference on the session's stream."""
        context: trt.IExecutionContext = self.context
        if not context.execute_async_v3(self.stream):
            raise TrtqError("TensorRT failed to enqueue the inference (its log above says why).",
                            "check the input shapes and the engine's log messages.")

    def copy_outputs(self) -> dict[str, np.ndarray]:
        """Copy every output back to the host (linear formats)."""
        outputs = {}
        for tensor in self.tensors:
            if not tensor.is_input:
                out = np.empty(self.shapes[tensor.name], dtype=np.dtype(tensor.dtype))
                self.backend.to_host(self.pointers[tensor.name], out, self.stream)
                outputs[tensor.name] = out
        return outputs

    def close(self) -> None:
        """Free the device buffers."""
        self.backend.synchronize(self.stream)
        for pointer in self.pointers.values():
            self.backend.free(pointer)
        self.pointers.clear()
