"""`trtq inspect X.engine`: I/O tensors, layers, precisions and tactics via the engine inspector.

Per-layer precisions and tactics are only in engines built with ProfilingVerbosity.DETAILED
(`trtq build` always sets it); other engines list layer names only. TensorRT 11 renamed the
inspector JSON's "Bindings" to "I/O Tensors"; both are read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from trtq.errors import TrtqError
from trtq.model import file_sha256
from trtq.tensorrt.commands import format_command, trtexec_inspect_argv
from trtq.tensorrt.rtx import open_rtx_device
from trtq.tensorrt.runtime import IOTensor, io_tensors, load_engine
from trtq.tensorrt.sidecar import engine_backend, mismatches, read_sidecar
from trtq.tensorrt.version import require_tensorrt, supports, version_string

_PRECISION_WORDS = (("int8", "int8"), ("fp8", "fp8"), ("half", "fp16"), ("fp16", "fp16"), ("bf16", "bf16"),
                    ("float", "fp32"), ("fp32", "fp32"), ("int32", "int32"), ("int64", "int64"), ("bool", "bool"))


@dataclass(frozen=True)
class LayerInfo:
    """One engine layer as the inspector reports it."""

    name: str
    type: str | None = None
    precision: str | None = None
    tactic: str | None = None
    output_formats: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineInfo:
    """What `trtq inspect` reports about an engine."""

    path: str
    tensorrt_version: str
    io_tensors: tuple[IOTensor, ...]
    layers: tuple[LayerInfo, ...]
    detailed: bool
    sidecar: dict[str, Any] | None = None
    warnings: tuple[str, ...] = ()
    precision_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return asdict(self)

    def to_text(self) -> str:
        """A readable summary."""
        lines = [f"{self.path}  (TensorRT {self.tensorrt_version}, {len(self.layers)} layers)"]
        if self.sidecar:
            lines.append(f"  built for {self.sidecar.get('gpu_name')} as {self.sidecar.get('precision')} "
                         f"({self.sidecar.get('mode')}) from {self.sidecar.get('onnx_file')}")
        lines.append("  I/O tensors:")
        lines += [f"    {'in ' if t.is_input else 'out'} {t.name}: {t.dtype} {list(t.shape)} {t.format}"
                  for t in self.io_tensors]
        if self.precision_counts:
            lines.append("  layer precisions: " + ", ".join(f"{p} x{n}" for p, n in self.precision_counts.items()))
        if not self.detailed:
            lines.append("  (layer precisions and tactics need an engine built with detailed profiling verbosity)")
        lines.append("  layers:")
        lines += [f"    {layer.name}  [{layer.type or '?'}] {layer.precision or ''} {layer.tactic or ''}".rstrip()
                  for layer in self.layers]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def layer_precision(formats: tuple[str, ...]) -> str | None:
    """The precision named by a layer's output "Format/Datatype" strings (first output that names one)."""
    for text in formats:
        lowered = text.lower()
        for word, precision in _PRECISION_WORDS:
            if word in lowered:
                return precision
    return None


def parse_layers(information: Mapping[str, Any]) -> tuple[tuple[LayerInfo, ...], bool]:
    """Layers from the inspector's JSON and whether it was detailed (layer dicts) or names only."""
    layers = []
    detailed = False
    for item in information.get("Layers", []):
        if isinstance(item, str):
            layers.append(LayerInfo(name=item))
            continue
        detailed = True
        formats = tuple(str(o.get("Format/Datatype", "")) for o in item.get("Outputs", []) if isinstance(o, dict))
        tactic = item.get("TacticName") or item.get("TacticValue")
        layers.append(LayerInfo(
            name=str(item.get("Name", "")),
            type=item.get("LayerType"),
            precision=layer_precision(formats),
            tactic=str(tactic) if tactic is not None else None,
            output_formats=formats,
        ))
    return tuple(layers), detailed


def inspect_command(engine_path: str | Path) -> str:
    """The trtexec line that prints and exports the same layer information."""
    path = Path(engine_path)
    return format_command(trtexec_inspect_argv(str(path), str(path.with_suffix(".layers.json"))))


def inspect_engine(path: str | Path, engine_library: str = "auto", device_backend: str = "auto") -> EngineInfo:
    """Describe an engine: I/O tensors, layers with precisions and tactics, sidecar and setup warnings.

    `engine_library` is tensorrt or tensorrt-rtx ("auto": what the sidecar says); a TensorRT-RTX engine
    needs a GPU TensorRT-RTX runs on to be deserialized.
    """
    path = Path(path)
    library = engine_backend(path, engine_library)
    trt, caps = require_tensorrt(f"inspect {path.name}", [inspect_command(path)], backend=library)
    if not path.is_file():
        raise TrtqError(f"Engine file {path} does not exist.", "check the path.")
    if caps.track == "rtx":
        open_rtx_device(device_backend, f"inspect {path.name}")
    sidecar = read_sidecar(path)
    found = mismatches(sidecar, version_string(trt), None, file_sha256(path))
    tensors, information = _inspect(trt, path)
    layers, detailed = parse_layers(information)
    counts: dict[str, int] = {}
    for layer in layers:
        if layer.precision:
            counts[layer.precision] = counts.get(layer.precision, 0) + 1
    return EngineInfo(
        path=str(path),
        tensorrt_version=caps.label,
        io_tensors=tuple(tensors),
        layers=layers,
        detailed=detailed,
        sidecar=asdict(sidecar) if sidecar else None,
        warnings=tuple(found),
        precision_counts=dict(sorted(counts.items())),
    )


@supports("10", "11", "rtx")
def _inspect(trt: ModuleType, path: Path) -> tuple[list[IOTensor], dict[str, Any]]:
    _runtime, engine = load_engine(trt, path)
    tensors = io_tensors(trt, engine)
    cuda_engine: trt.ICudaEngine = engine
    inspector: trt.EngineInspector = cuda_engine.create_engine_inspector()
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    try:
        information = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrtqError(f"TensorRT's engine inspector returned no valid JSON for {path} ({exc.msg}).",
                        "inspect it with trtexec --dumpLayerInfo instead.") from exc
    return tensors, information if isinstance(information, dict) else {}
