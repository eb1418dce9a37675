"""`trtq run`: inference with a TensorRT engine over sample batches; outputs saved as .npz."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from trtq._io import atomic_write_bytes, check_destinations
from trtq.errors import TrtqError
from trtq.model import file_sha256
from trtq.tensorrt.commands import format_command, trtexec_run_argv
from trtq.tensorrt.device import DeviceBackend, open_backend
from trtq.tensorrt.rtx import open_rtx_device
from trtq.tensorrt.runtime import ExecutionSession, load_engine
from trtq.tensorrt.sidecar import engine_backend, mismatches, read_sidecar
from trtq.tensorrt.version import require_tensorrt, supports, version_string

Batch = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class RunResult:
    """What `run_engine` did: batches run, where the outputs went, their shapes, and setup warnings."""

    engine: str
    output_path: str
    batches: int
    outputs: dict[str, list[int]]
    tensorrt_version: str
    warnings: tuple[str, ...]

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return asdict(self)


def default_output_path(engine_path: str | Path) -> Path:
    """model.int8.engine -> model.int8.outputs.npz."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.stem + ".outputs.npz")


def run_command(engine_path: str | Path, shapes: Mapping[str, tuple[int, ...]] | None) -> str:
    """The trtexec line that runs the engine once and exports its outputs."""
    json_path = Path(engine_path).with_suffix(".outputs.json")
    return format_command(trtexec_run_argv(str(engine_path), shapes, str(json_path)))


def run_engine(
    engine_path: str | Path,
    batches: Iterable[Batch],
    output_path: str | Path | None = None,
    *,
    backend: str = "auto",
    engine_library: str = "auto",
) -> RunResult:
    """Run every batch through the engine and save the outputs, concatenated along axis 0, as .npz.

    `backend` reaches the GPU (torch, cuda-python); `engine_library` is tensorrt or tensorrt-rtx
    ("auto": what the engine's sidecar says it was built with).
    """
    engine_path = Path(engine_path)
    library = engine_backend(engine_path, engine_library)
    trt, caps = require_tensorrt(f"run {engine_path.name}", [run_command(engine_path, None)], backend=library)
    output_path = Path(output_path) if output_path else default_output_path(engine_path)
    check_destinations([output_path], inputs=(engine_path,))  # before running, not after
    device = open_rtx_device(backend, f"run {engine_path.name}") if caps.track == "rtx" else open_backend(backend)
    found = mismatches(read_sidecar(engine_path), version_string(trt), device.device_name(), file_sha256(engine_path))
    outputs, count = _run(trt, engine_path, batches, device)
    if count == 0:
        raise TrtqError("The --data source yielded no batches.", "pass a non-empty --data source.")
    merged: dict[str, Any] = {name: np.concatenate(parts, axis=0) if parts[0].ndim else parts[-1]
                              for name, parts in outputs.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **merged)
    atomic_write_bytes(output_path, buffer.getvalue())
    return RunResult(
        engine=str(engine_path),
        output_path=str(output_path),
        batches=count,
        outputs={name: list(array.shape) for name, array in merged.items()},
        tensorrt_version=caps.label,
        warnings=tuple(found),
    )


@supports("10", "11", "rtx")
def _run(trt: ModuleType, engine_path: Path, batches: Iterable[Batch],
         device: DeviceBackend) -> tuple[dict[str, list[np.ndarray]], int]:
    """Execute batch by batch; a new shape re-binds the buffers."""
    _runtime, engine = load_engine(trt, engine_path)
    session: ExecutionSession | None = None
    outputs: dict[str, list[np.ndarray]] = {}
    count = 0
    try:
        for batch in batches:
            shapes = {name: tuple(np.shape(array)) for name, array in batch.items()}
            if session is None or any(session.shapes.get(n) != s for n, s in shapes.items()):
                if session is not None:
                    session.close()
                session = ExecutionSession(trt, engine, device, shapes)
                nonlinear = [t for t in session.tensors if not t.linear]
                if nonlinear:
                    raise TrtqError(
                        f"Engine tensor {nonlinear[0].name!r} uses format {nonlinear[0].format}; trtq run feeds and "
                        "reads linear (chw) data only.",
                        "run such engines with trtexec --loadInputs, or build without --input/--output-io-formats.",
                    )
            session.copy_inputs(batch)
            session.enqueue()
            for name, value in session.copy_outputs().items():
                outputs.setdefault(name, []).append(value)
            count += 1
    finally:
        if session is not None:
            session.close()
    return outputs, count
