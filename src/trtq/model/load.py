"""Load an ONNX model and read what it declares: its inputs and outputs as `TensorSpec`s (dynamic
dims kept), its opset, the element type of every named value."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from trtq._io import special_kind
from trtq.errors import TrtqError

Dim = int | str | None
"""One dimension of a tensor: a fixed size, a symbolic name, or unknown (None)."""
QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""Op types whose inputs get Q/DQ pairs (TensorRT's INT8 compute layers)."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and element type (a numpy dtype name, e.g. "float32") of a graph input or output."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    @property
    def is_dynamic(self) -> bool:
        """True when any dimension is symbolic or unknown."""
        return any(not isinstance(d, int) or d < 0 for d in self.shape)

    def shape_str(self) -> str:
        """The shape in trtexec's spelling, symbolic dims by name: 1x3xHxW."""
        return "x".join(str(d) if d is not None else "?" for d in self.shape)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks (a named pipe or device is refused: it may never end)."""
    kind = special_kind(path)
    if kind:
        raise TrtqError(f"{path} is a {kind}, not a file.", "pass the path of a file.")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_file(path: object) -> Path:
    """`path` as a Path; a model is given by its file (an in-memory ModelProto is not taken)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TrtqError(f"A model is given by its .onnx file's path, not a {type(path).__name__}.",
                        "save it with onnx.save(model, path) and pass the path.")
    return Path(path)


def load_model(path: str | Path, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model, with external data, raising TrtqError with the file name on failure."""
    path = model_file(path)
    if path.is_dir():
        raise TrtqError(f"Model path {path} is a folder, not an .onnx file.", "pass the path of the .onnx file.")
    if not path.is_file():
        kind = special_kind(path)
        if kind:
            raise TrtqError(f"Model file {path} is a {kind}, not an .onnx file.", "pass the path of the .onnx file.")
        raise TrtqError(f"Model file {path} does not exist.", "check the path to the .onnx file.")
    if path.stat().st_size == 0:
        raise TrtqError(f"Model file {path} is empty (0 bytes).",
                        "export the model again or check that the file was copied completely.")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:  # onnx raises DecodeError, ValueError or OSError for bad files
        raise TrtqError(
            f"Model file {path} is not a readable ONNX model ({type(exc).__name__}: {exc}).",
            "export the model again or check that the file was copied completely.",
        ) from exc
    if not model.HasField("graph") or not model.opset_import:
        what = "no graph" if not model.HasField("graph") else "no opset imports"
        raise TrtqError(f"Model file {path} is not an ONNX model: it parses, but has {what}.",
                        "export the model again or check that the file was copied completely.")
    return model


def default_opset(model: onnx.ModelProto) -> int:
    """The opset version of the default ("" or "ai.onnx") domain."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise TrtqError("The model declares no default-domain opset.", "re-export the model with an opset.")


UNNAMED_DIMS = frozenset({"?", "-1", "*"})
"""dim_param values that mean "unknown", not a name (paddle2onnx writes "?" for every dynamic dim):
two dims so marked need not be equal."""


def _dims(value_info: onnx.ValueInfoProto) -> tuple[Dim, ...]:
    dims: list[Dim] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param and d.dim_param not in UNNAMED_DIMS:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def _dtype_name(elem_type: int) -> str:
    if elem_type == 0:
        return "undefined"
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name


def tensor_spec(value_info: onnx.ValueInfoProto) -> TensorSpec:
    """Convert an ONNX ValueInfoProto into a TensorSpec."""
    return TensorSpec(
        name=value_info.name,
        shape=_dims(value_info),
        dtype=_dtype_name(value_info.type.tensor_type.elem_type),
    )


def graph_inputs(model: onnx.ModelProto) -> tuple[TensorSpec, ...]:
    """The real inputs of the graph (initializers listed as inputs by old exporters are skipped)."""
    initializers = {init.name for init in model.graph.initializer}
    return tuple(tensor_spec(vi) for vi in model.graph.input if vi.name not in initializers)


def graph_outputs(model: onnx.ModelProto) -> tuple[TensorSpec, ...]:
    """The outputs of the graph."""
    return tuple(tensor_spec(vi) for vi in model.graph.output)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """ONNX element type of every named value the model declares (inputs, outputs, value_info, initializers)."""
    types: dict[str, int] = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    return types
