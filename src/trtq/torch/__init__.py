"""Run ONNX graphs with PyTorch (needs the optional `torch` dependency: pip install 'trtq[gpu]').

`OnnxModule` executes an ONNX model node by node with torch ops on CPU or CUDA; calibration uses
it to observe activations on the GPU, and fine-tuning can train its parameters. This package is
the executor only: it imports nothing of the stages above it (calibration, quantization, QAT),
which hand it what they need (e.g. extra ops: `OnnxModule(model, ops={...})`). PyTorch users'
QAT entry points are `trtq.qat.prepare` and `trtq.qat.export`.
"""

from __future__ import annotations

from trtq.torch.module import OnnxModule
from trtq.torch.ops import OPS, OpContext, OpDef, Unsupported

__all__ = ["OPS", "OnnxModule", "OpContext", "OpDef", "Unsupported"]

MOVED = {"prepare": "trtq.qat.prepare", "export": "trtq.qat.export"}
"""Names this package once re-exported, and where they live now (said by the AttributeError)."""


def __getattr__(name: str) -> object:
    if name in MOVED:
        raise AttributeError(f"trtq.torch.{name} moved to {MOVED[name]} (import trtq.qat as tq; tq.{name}(...)): "
                             "trtq.torch is the ONNX executor alone, below the QAT stage")
    raise AttributeError(f"module 'trtq.torch' has no attribute {name!r}")
