"""A TensorRT engine as a Runner (`trtq.runtime`), so that `trtq compare MODEL.onnx MODEL.engine`
scores the engine against the FP32 ONNX model as Polygraphy's Comparator does: the same data, the
same metrics as for a Q/DQ ONNX candidate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtq.errors import TrtqError
from trtq.tensorrt.device import open_backend
from trtq.tensorrt.rtx import open_rtx_device
from trtq.tensorrt.runtime import ExecutionSession, io_tensors, load_engine
from trtq.tensorrt.sidecar import engine_backend
from trtq.tensorrt.version import require_tensorrt, supports

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
"""File suffixes taken for serialized TensorRT engines."""


@supports("10", "11", "rtx")
class EngineRunner:
    """Runs batches through a serialized engine; a batch of a new shape re-binds the buffers."""

    def __init__(self, engine_path: str | Path, backend: str = "auto", engine_library: str = "auto") -> None:
        path = Path(engine_path)
        library = engine_backend(path, engine_library)
        from trtq.tensorrt.run import run_command

        trt, caps = require_tensorrt(f"compare with {path.name}", [run_command(path, None)], backend=library)
        self._device = open_rtx_device(backend, f"compare with {path.name}") if caps.track == "rtx" \
            else open_backend(backend)
        self._trt = trt
        self._runtime, self._engine = load_engine(trt, path)
        tensors = io_tensors(trt, self._engine)
        self._outputs = tuple(t.name for t in tensors if not t.is_input)
        nonlinear = [t for t in tensors if not t.linear]
        if nonlinear:
            raise TrtqError(
                f"Engine tensor {nonlinear[0].name!r} uses format {nonlinear[0].format}; trtq feeds and reads linear "
                "(chw) data only.",
                "compare an engine built without --input/--output-io-formats.",
            )
        self._session: Any = None

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        shapes = {name: tuple(np.shape(array)) for name, array in feeds.items()}
        session: ExecutionSession | None = self._session
        if session is None or any(session.shapes.get(n) != s for n, s in shapes.items()):
            if session is not None:
                session.close()
            session = self._session = ExecutionSession(self._trt, self._engine, self._device, shapes)
        session.copy_inputs(feeds)
        session.enqueue()
        outputs = session.copy_outputs()
        return [outputs[name] for name in (output_names if output_names is not None else self._outputs)]

    def close(self) -> None:
        """Free the device buffers."""
        if self._session is not None:
            self._session.close()
            self._session = None
