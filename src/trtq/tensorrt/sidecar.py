"""The JSON sidecar written beside every engine (`<engine>.json`).

An engine only runs on the TensorRT version and GPU it was built for; the sidecar records both
(and what went into the build) so `run`, `bench` and `inspect` can warn before a mismatched run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trtq._io import atomic_write_text
from trtq.errors import TrtqError

FORMAT = "trtq-engine"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class EngineSidecar:
    """What an engine was built from and for."""

    engine_file: str
    engine_sha256: str
    tensorrt_version: str
    gpu_name: str
    precision: str
    mode: str
    onnx_file: str
    onnx_sha256: str
    profile: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    ranges_sha256: str | None = None
    build_options: dict[str, Any] = field(default_factory=dict)
    trtq_version: str = ""

    def to_json(self) -> str:
        """Deterministic JSON text."""
        return json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)},
                          indent=2, sort_keys=True, default=str) + "\n"

    def save(self, path: str | Path) -> None:
        """Write atomically."""
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> EngineSidecar:
        """Read a sidecar written by `save`."""
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TrtqError(f"Engine sidecar {path} cannot be read ({exc}).", "rebuild the engine with `trtq build`.") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise TrtqError(f"{path} is not a trtq engine sidecar (no \"format\": \"{FORMAT}\").",
                            "rebuild the engine with `trtq build`.")
        payload = {k: v for k, v in payload.items() if k not in ("format", "format_version")}
        try:
            return cls(**payload)
        except TypeError as exc:
            raise TrtqError(f"Engine sidecar {path} has unexpected fields ({exc}).",
                            "rebuild the engine with `trtq build`.") from exc


def sidecar_path(engine_path: str | Path) -> Path:
    """model.int8.engine -> model.int8.engine.json."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def read_sidecar(engine_path: str | Path) -> EngineSidecar | None:
    """The engine's sidecar, or None when there is none."""
    path = sidecar_path(engine_path)
    return EngineSidecar.load(path) if path.is_file() else None


def mismatches(sidecar: EngineSidecar | None, tensorrt_version: str, gpu_name: str | None,
               engine_sha256: str | None = None) -> list[str]:
    """Warnings, one sentence each, for running an engine on another setup than it was built on."""
    if sidecar is None:
        return ["The engine has no trtq sidecar (.engine.json), so its TensorRT version and GPU cannot be checked."]
    found: list[str] = []
    if sidecar.tensorrt_version != tensorrt_version:
        found.append(f"The engine was built with TensorRT {sidecar.tensorrt_version}, "
                     f"but TensorRT {tensorrt_version} is installed; engines are not portable across versions.")
    if gpu_name and sidecar.gpu_name and sidecar.gpu_name != gpu_name:
        found.append(f"The engine was built on {sidecar.gpu_name}, but this GPU is {gpu_name}; "
                     "tactics were chosen for the other GPU.")
    if engine_sha256 and sidecar.engine_sha256 != engine_sha256:
        found.append("The engine file differs from the one its sidecar describes (sha256 mismatch).")
    return found


def profile_to_json(profile: Mapping[str, Any]) -> dict[str, dict[str, list[int]]]:
    """{name: ProfileShape} -> {name: {"min": [...], "opt": [...], "max": [...]}}."""
    return {name: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for name, p in profile.items()}


def engine_backend(engine_path: str | Path, requested: str = "auto") -> str:
    """The library an engine runs with: `requested`, or for "auto" the sidecar's (TensorRT-RTX engines
    record mode "tensorrt-rtx"), else datacenter TensorRT."""
    if requested != "auto":
        return requested
    sidecar = read_sidecar(engine_path)
    return "tensorrt-rtx" if sidecar is not None and sidecar.mode == "tensorrt-rtx" else "tensorrt"
