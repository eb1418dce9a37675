"""`--device`: where models run. One spelling check and one PyTorch resolution for every stage.

"cpu" runs models with onnxruntime; "cuda" and "cuda:N" with PyTorch (the ONNX executor
`trtq.torch.OnnxModule`) on that GPU. Calibration, the evaluations (compare, sensitivity, the
--target search) and fine-tuning all resolve `--device` here, so a bad value reads the same
everywhere. Importing this module does not import PyTorch.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from trtq.errors import TrtqError

if TYPE_CHECKING:
    import torch

DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")
"""What --device accepts."""


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, a container's cpuset), not the
    host's count that os.cpu_count() gives. Sizing a thread pool by the host's count oversubscribes
    a restricted process: 16 spinning onnxruntime threads on 2 allowed cores made a calibration 36x
    slower than plain inference (measured on a 16-core host under `taskset -c 0,1`)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def check_device(device: str) -> str:
    """`device` when it is cpu, cuda or cuda:N; else a TrtqError naming it."""
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise TrtqError(f"--device {device!r} is not a device name trtq understands: neither cpu nor cuda[:N].",
                        "use --device cpu or --device cuda (or cuda:N).")
    return device


def resolve_device(device: str) -> torch.device:
    """The torch device for `--device`, or a TrtqError when PyTorch or the GPU is not there."""
    check_device(device)
    try:
        import torch
    except ImportError as exc:
        raise TrtqError(f"--device {device} runs models with PyTorch, which is not installed ({exc}).",
                        "pip install 'trtq[gpu]' (a CUDA build of torch for your driver), or use --device cpu."
                        ) from exc
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise TrtqError(
            f"--device {device} needs a CUDA GPU, but PyTorch {torch.__version__} ({build}) sees none.",
            "install a CUDA build of PyTorch on a machine with an NVIDIA GPU and driver (check nvidia-smi), "
            "or use --device cpu.",
        )
    count = torch.cuda.device_count()
    index = 0 if dev.index is None else dev.index
    if index >= count:
        raise TrtqError(f"--device {device} names GPU {index}, but this machine has {count} "
                        f"(cuda:0..cuda:{count - 1}).", "pick an existing GPU index.")
    return torch.device("cuda", index)
