"""`trtq verify`: build a Q/DQ model with a real NVIDIA builder and say which quantized layers run in INT8/FP8.

TensorRT-RTX builds engines ahead of time on a machine without a GPU and, with detailed
profiling, logs the engine's layers with their input types. trtq builds the model, finds every
quantized Conv/ConvTranspose/Gemm/MatMul of the ONNX graph among the engine's layers, and reports
which run at low precision, which were left in float (with the reason where the log gives one),
and which Q/DQ pairs did not fuse. A model the parser or builder rejects is a TrtqError whose
sentence is the builder's own error: a finding about the model, not about trtq.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trtq.errors import TrtqError
from trtq.model import distinct_placeholder_dims, graph_inputs, load_model
from trtq.report.records import record_path
from trtq.tensorrt.enginelog import EngineLayer, find_layer_block, parse_layer_block
from trtq.tensorrt.profiles import ProfileShape, resolve_profile
from trtq.tensorrt.rtx import build_capturing_log
from trtq.tensorrt.version import require_tensorrt, version_string
from trtq.verify.check import (
    LayerVerdict,
    PairVerdict,
    check_layers,
    is_compute,
    runs_in,
)
from trtq.verify.graph import QdqGraph, analyze

__all__ = ["LayerVerdict", "PairVerdict", "VerifyOptions", "VerifyResult", "verify_model"]

PRECISION_WORDS = {"int8": "INT8", "fp8": "FP8", "int4": "INT4", "mixed": "INT8/FP8"}


@dataclass(frozen=True)
class VerifyOptions:
    """Shapes to build at (trtexec's --shapes / --minShapes / --optShapes / --maxShapes) and targets."""

    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    min_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    opt_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    max_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    compute_capabilities: tuple[str, ...] = ()
    """TensorRT-RTX targets ("8.9", "12.0"); () is its portable default (8.0, 8.6, 8.9, 12.x)."""


@dataclass(frozen=True)
class VerifyResult:
    """What `trtq verify` found; `summary` is the one-sentence answer."""

    model: str
    builder: str
    """e.g. "TensorRT-RTX 1.7.1.116"."""
    compute_capabilities: tuple[str, ...]
    profile: dict[str, dict[str, list[int]]]
    shape_notes: tuple[str, ...]
    parse_seconds: float
    build_seconds: float
    engine_bytes: int
    layers: tuple[LayerVerdict, ...]
    pairs: tuple[PairVerdict, ...]
    engine_layers: int
    engine_compute_layers: int
    engine_low_precision_compute_layers: int
    """Engine layers doing convolution/GEMM arithmetic, and those of them whose runtime inputs are all Int8/FP8."""
    warnings: tuple[str, ...]
    """The builder's WARNING/ERROR messages, without repeats."""

    @property
    def quantized(self) -> int:
        """Quantized layers of the ONNX model."""
        return len(self.layers)

    @property
    def low_precision(self) -> int:
        """Quantized layers the engine runs at their quantized precision."""
        return sum(v.ok for v in self.layers)

    @property
    def float_layers(self) -> tuple[LayerVerdict, ...]:
        """Quantized layers left in float (or absent from the engine)."""
        return tuple(v for v in self.layers if not v.ok)

    @property
    def unfused_pairs(self) -> tuple[PairVerdict, ...]:
        """Q/DQ pairs whose readers do not all run on the quantized data."""
        return tuple(p for p in self.pairs if not p.fused)

    @property
    def precision_word(self) -> str:
        """INT8, FP8 or INT8/FP8: what the model's quantized layers ask for."""
        kinds = {v.expected for v in self.layers}
        if len(kinds) == 1:
            return PRECISION_WORDS.get(next(iter(kinds)), next(iter(kinds)).upper())
        return "INT8/FP8" if kinds else "INT8"

    @property
    def summary(self) -> str:
        """The one-sentence answer: "64 of 64 quantized layers run in INT8"."""
        if not self.layers:
            return f"{Path(self.model).name} has no quantized layer (no Conv/ConvTranspose/Gemm/MatMul reads a " \
                   f"DequantizeLinear), so {self.builder} builds it in float"
        sentence = f"{self.low_precision} of {self.quantized} quantized layers run in {self.precision_word}"
        extra = []
        if self.unfused_pairs:
            extra.append(f"{len(self.unfused_pairs)} of {len(self.pairs)} Q/DQ pairs did not fuse")
        return sentence + (f"; {', '.join(extra)}" if extra else "")

    def to_dict(self) -> dict:
        """JSON-friendly view, with the counts and the summary sentence."""
        data = asdict(self)
        data.update(summary=self.summary, quantized_layers=self.quantized, low_precision_layers=self.low_precision,
                    float_layers=[v.node for v in self.float_layers],
                    unfused_pairs=[p.tensor for p in self.unfused_pairs], precision=self.precision_word)
        return data

    def to_text(self, all_layers: bool = False) -> str:
        """A readable report: the sentence, the layers left in float, the pairs that did not fuse."""
        headline = (f"{self.model}: {self.summary} ({self.builder}, {self.engine_low_precision_compute_layers} of "
                    f"{self.engine_compute_layers} convolution/GEMM engine layers read {self.precision_word} inputs).")
        lines = [headline, *self.shape_notes]
        if self.float_layers:
            lines.append(f"quantized layers not run in {self.precision_word} ({len(self.float_layers)}):")
            for v in self.float_layers:
                where = f" in {v.engine_layer} ({v.engine_layer_type}, inputs {', '.join(v.input_types) or '-'})" \
                    if v.engine_layer else ""
                lines.append(f"  {v.node} ({v.op_type}): {v.runs_in}{where}")
                if v.reason:
                    lines.append(f"    why: {v.reason}" + (" [build log]" if v.reason_source == "log" else ""))
        if self.unfused_pairs:
            lines.append(f"Q/DQ pairs that did not fuse ({len(self.unfused_pairs)}):")
            for p in self.unfused_pairs:
                lines.append(f"  {p.tensor} ({p.kind}): {p.reason}")
        if all_layers:
            lines.append("quantized layers:")
            for v in self.layers:
                fused = f" (with {', '.join(v.fused_with)})" if v.fused_with else ""
                lines.append(f"  {'ok ' if v.ok else 'NO '} {v.node} ({v.op_type}) -> {v.engine_layer} "
                             f"[{v.engine_layer_type}] {v.runs_in}{fused}")
        if self.warnings:
            lines.append(f"builder warnings ({len(self.warnings)}):")
            lines += [f"  {w}" for w in self.warnings[:10]]
            if len(self.warnings) > 10:
                lines.append(f"  ... {len(self.warnings) - 10} more in --json")
        return "\n".join(lines)


def recorded_shapes(model_path: Path) -> dict[str, tuple[int, ...]]:
    """The input shapes of the `trtq quantize` run that wrote `model_path` (its trtq-quantize.json, beside
    the model, names this file), or {} when there is no such record."""
    path = record_path(model_path.parent, "quantize")
    try:
        result = json.loads(path.read_text(encoding="utf-8")).get("result", {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return {}
    if not isinstance(result, dict) or Path(str(result.get("onnx_path", ""))).name != model_path.name:
        return {}
    shapes = result.get("shapes") or {}
    return {str(name): tuple(int(d) for d in shape) for name, shape in shapes.items()
            if isinstance(shape, list) and all(isinstance(d, int) and d > 0 for d in shape)}


def default_shapes(model_path: str | Path, options: VerifyOptions) -> tuple[dict[str, ProfileShape], tuple[str, ...]]:
    """The build profile: the options' shapes; else the shapes the `trtq quantize` run that wrote the model
    used (from the data or --shape, in its trtq-quantize.json); else batch 1 for inputs whose only dynamic
    dim is the first (as trtexec does). Each default is said in a note; other dynamic dims need --shape
    (one TrtqError naming them all)."""
    model_path = Path(model_path)
    model = load_model(model_path, load_external_data=False)
    dims = {spec.name: tuple(d if isinstance(d, int) and d > 0 else -1 for d in spec.shape)
            for spec in graph_inputs(model)}
    given = set(options.shapes) | set(options.min_shapes) | set(options.opt_shapes) | set(options.max_shapes)
    shapes = dict(options.shapes)
    notes = []
    recorded = recorded_shapes(model_path)
    for name, shape in dims.items():
        fits = name in recorded and len(recorded[name]) == len(shape) and all(
            d < 0 or d == r for d, r in zip(shape, recorded[name]))
        if name not in given and any(d < 0 for d in shape) and fits:
            shapes[name] = recorded[name]
            notes.append(f"shape of {name!r} taken from the quantize run that wrote the model "
                         f"({record_path(model_path.parent, 'quantize').name}): {'x'.join(map(str, shapes[name]))}")
        elif name not in given and shape and shape[0] < 0 and all(d > 0 for d in shape[1:]):
            shapes[name] = (1, *shape[1:])
            notes.append(f"shape of {name!r} defaulted to {'x'.join(map(str, shapes[name]))} (dynamic batch 1, "
                         "as trtexec); pass --shape to build at another")
    profile = resolve_profile(dims, shapes, options.min_shapes, options.opt_shapes, options.max_shapes)
    return profile, tuple(notes)


def engine_counts(layers: tuple[EngineLayer, ...]) -> tuple[int, int]:
    """(compute layers, compute layers whose runtime inputs are all Int8/FP8)."""
    compute = [layer for layer in layers if is_compute(layer.type)]
    low = [layer for layer in compute if runs_in(layer.input_types) in ("int8", "fp8", "fp8+int8", "int4", "fp4")]
    return len(compute), len(low)


def verify_model(
    model_path: str | Path,
    options: VerifyOptions = VerifyOptions(),
    progress: Callable[[str], None] | None = None,
) -> VerifyResult:
    """Build `model_path` with TensorRT-RTX (no GPU needed) and check each quantized layer's precision."""
    path = Path(model_path)
    model = load_model(path, load_external_data=False)  # missing, a folder, empty: one sentence
    graph: QdqGraph = analyze(model)
    profile, notes = default_shapes(path, options)
    renamed = distinct_placeholder_dims(model)
    if renamed:  # the builder gets a copy with distinct names; the file stays as it is
        notes = (*notes, f"{renamed} in the copy handed to the builder (the file is unchanged)")
    trt, caps = require_tensorrt(f"verify {path.name}", [], backend="tensorrt-rtx")
    builder = f"TensorRT-RTX {version_string(trt)}"
    if progress:
        progress(f"building {path.name} with {builder} (ahead of time, no GPU needed) ...")
    build = build_capturing_log(trt, path, profile, options.compute_capabilities, progress,
                                model.SerializeToString() if renamed else None)
    block = find_layer_block(m.text for m in build.messages)
    if block is None:
        raise TrtqError(
            f"{builder} built {path} but logged no layer list, so trtq cannot read the layers' precisions.",
            f"report this with the TensorRT-RTX version ({builder}); trtq reads the 'Layers:' message of a "
            "DETAILED build.",
        )
    layers = parse_layer_block(block)
    problems = build.problems()
    verdicts, pairs = check_layers(graph, layers, [m.text for m in problems], caps.track, build.compute_capabilities)
    compute, low = engine_counts(layers)
    if progress:
        progress(f"built in {build.build_seconds:.1f} s: {len(layers)} engine layers")
    return VerifyResult(
        model=str(path),
        builder=builder,
        compute_capabilities=build.compute_capabilities,
        profile={name: {"min": list(s.min), "opt": list(s.opt), "max": list(s.max)} for name, s in profile.items()},
        shape_notes=notes,
        parse_seconds=build.parse_seconds,
        build_seconds=build.build_seconds,
        engine_bytes=len(build.serialized),
        layers=verdicts,
        pairs=pairs,
        engine_layers=len(layers),
        engine_compute_layers=compute,
        engine_low_precision_compute_layers=low,
        warnings=tuple(f"{m.severity}: {' '.join(m.text.split())}" for m in problems),
    )
