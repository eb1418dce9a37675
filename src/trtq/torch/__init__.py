"""Run ONNX graphs with PyTorch (needs the optional `torch` dependency: pip install 'trtq[gpu]').

`OnnxModule` executes an ONNX model node by node with torch ops on CPU or CUDA; calibration uses
it to observe activations on the GPU, and fine-tuning can train its parameters. The QAT entry
points `prepare` and `export` (trtq.torch_api) are imported on first use: they pull in
`torch.export`, which `--device cuda` calibration does not need and which costs its start-up time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trtq.torch.module import OnnxModule
from trtq.torch.ops import OPS, Unsupported

if TYPE_CHECKING:
    from trtq.torch_api import export, prepare

__all__ = ["OPS", "OnnxModule", "Unsupported", "export", "prepare"]


def __getattr__(name: str) -> object:
    if name in ("export", "prepare"):
        import trtq.torch_api

        return getattr(trtq.torch_api, name)
    raise AttributeError(f"module 'trtq.torch' has no attribute {name!r}")
