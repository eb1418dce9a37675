"""The ONNX-to-PyTorch executor (`trtq.torch.OnnxModule`) as a Runner, for evaluations on a GPU.

Math is true FP32 (TF32 off), as in GPU calibration, so scores match onnxruntime's to rounding.
Nodes the executor has no torch op for run through onnxruntime (`fallback_nodes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx

if TYPE_CHECKING:
    import torch


class TorchRunner:
    """Runs a model with `OnnxModule` on a torch device; inputs and outputs are numpy arrays."""

    def __init__(self, model: onnx.ModelProto, device: str | torch.device) -> None:
        import torch

        from trtq.torch import OnnxModule

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.module = OnnxModule(model, device=device).eval()
        self._torch = torch

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.module.output_names

    @property
    def fallback_nodes(self) -> tuple[str, ...]:
        """Nodes run by onnxruntime instead of torch, as "name (op_type)"."""
        return self.module.fallback_nodes

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        names = tuple(output_names) if output_names is not None else self.output_names
        with self._torch.inference_mode():
            values = self.module.run(feeds, names)
            return [values[name].detach().cpu().numpy() for name in names]
