"""The Runner protocol (onnxruntime's `InferenceSession.run` shape) and the factory per device."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import onnx

from trtq.devices import check_device, resolve_device


@runtime_checkable
class Runner(Protocol):
    """Runs one model: `run(output_names, feeds)` returns those outputs as numpy arrays, in order."""

    @property
    def output_names(self) -> tuple[str, ...]:
        """The model's graph outputs."""
        ...

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The named outputs (all when None) for one batch of inputs."""
        ...


RunnerFactory = Callable[[onnx.ModelProto], Runner]
"""Makes a runner for an in-memory model."""


def runner_factory(device: str = "cpu") -> RunnerFactory:
    """onnxruntime on the CPU for `cpu`, else the PyTorch executor on that device (`cuda`, `cuda:N`)."""
    if check_device(device) == "cpu":
        from trtq.runtime.ort_runner import OrtRunner

        return OrtRunner.from_model
    resolved = resolve_device(device)
    from trtq.runtime.torch_runner import TorchRunner

    return lambda model: TorchRunner(model, resolved)
