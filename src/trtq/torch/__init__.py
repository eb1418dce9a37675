"""Run ONNX graphs with PyTorch (needs the optional `torch` dependency: pip install 'trtq[gpu]').

`OnnxModule` executes an ONNX model node by node with torch ops on CPU or CUDA; calibration uses
it to observe activations on the GPU, and fine-tuning can train its parameters.
"""

from trtq.torch.module import OnnxModule
from trtq.torch.ops import OPS, Unsupported

__all__ = ["OPS", "OnnxModule", "Unsupported"]

from trtq.torch_api import export, prepare  # noqa: E402  (QAT entry points, built on OnnxModule)

__all__ += ["export", "prepare"]
