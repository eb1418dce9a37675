"""Engine file names as deployment users already write them.

`<stem>.<precision>.engine`, `<stem>_qat.<precision>.engine` for fine-tuned (QAT) models, and
the I/O formats appended: `<stem>.int8.fp16chw16in.fp16chw16out.engine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx

from trtq.tensorrt.ioformats import IOFormat

PRECISIONS = ("int8", "fp16", "bf16", "fp32")
"""Precision tokens an engine or model name may carry (strongest first)."""

QAT_SUFFIX = "_qat"
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
_FP16_TYPES = {onnx.TensorProto.FLOAT16}
_BF16_TYPES = {onnx.TensorProto.BFLOAT16}


def split_model_name(path: str | Path) -> tuple[str, str | None]:
    """(stem, precision token or None) of a model file: model.int8.onnx -> ("model", "int8")."""
    name = Path(path).name
    stem = name[: -len(".onnx")] if name.lower().endswith(".onnx") else Path(name).stem
    head, dot, tail = stem.rpartition(".")
    if dot and head and tail.lower() in PRECISIONS:
        return head, tail.lower()
    return stem, None


def engine_name(
    stem: str,
    precision: str,
    *,
    qat: bool = False,
    input_formats: Sequence[IOFormat] = (),
    output_formats: Sequence[IOFormat] = (),
) -> str:
    """`<stem>[_qat].<precision>[.<fmt>in][.<fmt>out].engine`; several tensors' formats joined by -."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    base = stem if not qat or stem.endswith(QAT_SUFFIX) else stem + QAT_SUFFIX
    parts = [base, precision]
    if input_formats:
        parts.append("-".join(f.slug() for f in input_formats) + "in")
    if output_formats:
        parts.append("-".join(f.slug() for f in output_formats) + "out")
    return ".".join(parts) + ".engine"


def default_engine_path(
    onnx_path: str | Path,
    precision: str,
    *,
    qat: bool = False,
    input_formats: Sequence[IOFormat] = (),
    output_formats: Sequence[IOFormat] = (),
) -> Path:
    """The engine path beside `onnx_path`: model.int8.onnx -> model.int8.engine."""
    stem, _ = split_model_name(onnx_path)
    name = engine_name(stem, precision, qat=qat, input_formats=input_formats, output_formats=output_formats)
    return Path(onnx_path).with_name(name)


def model_precision(model: onnx.ModelProto) -> str:
    """The precision a strongly typed build of `model` runs at: int8 with Q/DQ, else fp16/bf16 typed, else fp32."""
    graph = model.graph
    if any(node.op_type in _QDQ_OPS for node in graph.node):
        return "int8"
    elem_types = {vi.type.tensor_type.elem_type for vi in [*graph.input, *graph.output, *graph.value_info]}
    elem_types |= {init.data_type for init in graph.initializer}
    elem_types |= {
        attr.i for node in graph.node if node.op_type == "Cast" for attr in node.attribute if attr.name == "to"
    }
    if elem_types & _FP16_TYPES:
        return "fp16"
    if elem_types & _BF16_TYPES:
        return "bf16"
    return "fp32"
