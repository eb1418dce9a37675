"""The contract every calibration backend meets, and how one is chosen from `--device`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import onnx

from trtq.calibrate.collector import TensorStats
from trtq.devices import check_device, resolve_device


class CalibrationBackend(Protocol):
    """Runs the FP32 model batch by batch and keeps streaming statistics of chosen tensors."""

    name: str

    def observe(self, batch: Mapping[str, np.ndarray], outputs: bool = False) -> list[np.ndarray] | None:
        """Run one batch and fold the observed tensors into the statistics. With `outputs`, also return
        the model's outputs (graph order) where the run computed them anyway; None where it did not."""

    def stats(self) -> dict[str, TensorStats]:
        """Statistics of every observed tensor so far."""

    def notes(self) -> tuple[str, ...]:
        """How the run went, for the user: e.g. nodes that fell back to onnxruntime."""


def make_backend(
    device: str, model: onnx.ModelProto, tensors: Sequence[str], histogram: bool, batches: int | None = None
) -> CalibrationBackend:
    """A backend for `device` ("cpu" or "cuda[:N]") observing `tensors` of `model`.

    `batches` (how many the run will observe, when known) lets the GPU backend skip set-up work
    that only long runs repay (cuDNN autotuning).
    """
    if check_device(device) == "cpu":
        from trtq.calibrate.backend_ort import OrtBackend

        return OrtBackend(model, tensors, histogram=histogram)
    resolve_device(device)  # PyTorch and the GPU are there, or one sentence says which is missing
    from trtq.calibrate.backend_torch import TorchBackend

    return TorchBackend(model, tensors, histogram=histogram, device=device, expected_batches=batches)
