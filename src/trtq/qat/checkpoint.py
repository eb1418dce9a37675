"""Fine-tuning checkpoints: written atomically, read back only into the run that made them.

A checkpoint holds the step, the trained tensors (by ONNX name), the optimizer state, the
progress history and the best state seen so far (by the monitored metric: SNR against the FP32 model, or the
--target metric), plus a fingerprint of what must not change across a resume (model file,
placement, starting ranges, data, batch size, seed). Learning rate and step count may change: a
diverged run is resumed from its last good checkpoint with a lower --lr, a finished one with more
--steps.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from trtq._io import atomic_write_bytes
from trtq.errors import TrtqError

FORMAT = "trtq-qat-checkpoint"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """The state of a fine-tuning run after `step` optimizer steps."""

    step: int
    fingerprint: str
    trained: dict[str, torch.Tensor]
    optimizer: dict
    history: list[dict]
    best_step: int
    best_score: float
    best_trained: dict[str, torch.Tensor]


def fingerprint(parts: Mapping[str, object]) -> str:
    """A stable hash of the run's identity (JSON of `parts`, sorted)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write `checkpoint` to `path` atomically (a crash mid-write keeps the previous one)."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "step": checkpoint.step,
                "fingerprint": checkpoint.fingerprint, "trained": checkpoint.trained,
                "optimizer": checkpoint.optimizer, "history": checkpoint.history,
                "best_step": checkpoint.best_step, "best_score": checkpoint.best_score,
                "best_trained": checkpoint.best_trained}, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def require_checkpoint(path: Path) -> Path:
    """`path`, if it is a checkpoint file; --resume checks it before any work (calibration takes minutes)."""
    if not path.is_file():
        raise TrtqError(f"--resume: there is no checkpoint {path}.",
                        "run without --resume first (or with the --output-dir of the interrupted run).")
    return path


def load_checkpoint(path: Path, expected_fingerprint: str) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint` for the same run identity."""
    path = require_checkpoint(Path(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError,
            AttributeError, TypeError, IndexError) as exc:  # torch.load's ways of meeting a corrupt file
        reason = {EOFError: "it is empty or cut short", pickle.UnpicklingError: "it is not a file torch.save wrote"}.get(
            type(exc), f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        raise TrtqError(f"Checkpoint {path} is not a readable fine-tuning checkpoint ({reason}).",
                        "delete it and run without --resume.") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise TrtqError(f"{path} is not a trtq fine-tuning checkpoint.", "delete it and run without --resume.")
    if payload.get("format_version") != FORMAT_VERSION:
        raise TrtqError(f"Checkpoint {path} has format version {payload.get('format_version')}, expected "
                        f"{FORMAT_VERSION}.", "run without --resume.")
    if payload.get("fingerprint") != expected_fingerprint:
        raise TrtqError(
            f"Checkpoint {path} belongs to another run (different model, placement, ranges, data, batch size or seed).",
            "resume with the same model, data and options, or run without --resume to start over.",
        )
    try:
        checkpoint = Checkpoint(step=int(payload["step"]), fingerprint=payload["fingerprint"],
                                trained=dict(payload["trained"]), optimizer=dict(payload["optimizer"]),
                                history=list(payload["history"]), best_step=int(payload["best_step"]),
                                best_score=float(payload["best_score"]), best_trained=dict(payload["best_trained"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise TrtqError(f"Checkpoint {path} lacks part of a fine-tuning checkpoint ({type(exc).__name__}: {exc}).",
                        "delete it and run without --resume.") from exc
    tensors = [*checkpoint.trained.values(), *checkpoint.best_trained.values()]
    if checkpoint.step < 0 or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TrtqError(f"Checkpoint {path} holds values no fine-tuning run writes (step {checkpoint.step}).",
                        "delete it and run without --resume.")
    return checkpoint
