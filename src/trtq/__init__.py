"""trtq: prepare ONNX models for NVIDIA TensorRT at INT8 and FP16.

The public API lives in :mod:`trtq.api`; the CLI (``trtq``) is a thin layer over it.
"""

__version__ = "0.1.0"

from trtq.errors import TrtqError

__all__ = ["TrtqError", "__version__"]
