"""Quantization-aware fine-tuning (needs PyTorch: pip install 'trtq[gpu]').

From an ONNX model (`finetune`, the `trtq finetune` command) or a PyTorch module (`prepare` /
`export`, in `trtq.qat.torch_api`): fake quantization with
learned step sizes at exactly the Q/DQ placement of `trtq quantize`, distillation from the FP32
model (labels optional), and an export whose onnxruntime outputs match the fine-tuned model.
"""

from __future__ import annotations

from trtq.qat.api import (
    Comparison,
    FinetuneOptions,
    FinetuneResult,
    StageScores,
    finetune,
)
from trtq.qat.exporter import ParityReport, QdqExport, check_parity, export_qdq
from trtq.qat.fakequant import fake_quantize
from trtq.qat.model import QatModel
from trtq.qat.torch_api import ExportResult, export, prepare
from trtq.qat.train import (
    Distillation,
    LabelLoss,
    LossInputs,
    TrainingDiverged,
    TrainOptions,
    TrainResult,
)

__all__ = [
    "Comparison",
    "Distillation",
    "ExportResult",
    "FinetuneOptions",
    "FinetuneResult",
    "LabelLoss",
    "LossInputs",
    "ParityReport",
    "QatModel",
    "QdqExport",
    "StageScores",
    "TrainOptions",
    "TrainResult",
    "TrainingDiverged",
    "check_parity",
    "export",
    "export_qdq",
    "fake_quantize",
    "finetune",
    "prepare",
]

