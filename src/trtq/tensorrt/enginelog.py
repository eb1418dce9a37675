"""The engine's layer list as TensorRT prints it: one line per layer, in its ONELINE layer format.

A build with `ProfilingVerbosity.DETAILED` and a VERBOSE logger ends with a `Layers:` message that
lists every engine layer on one line, the same text the engine inspector returns in its ONELINE
format:

    Name: /conv1/Conv_myl0_1, LayerType: correlation, Inputs: [ { Name: a, Dimensions: [1,4,32,32],
    ..., Datatype: Int8, Format: (NHWC) ... }], Constants: [ {...} ], Outputs: [ {...} ],
    TacticName: ..., StreamId: 0, Metadata: [ONNX Layer: /conv1/Conv]\\x1f[ONNX Layer: x_DequantizeLinear]

Metadata names the ONNX nodes (the parser's layer names) whose work the layer does, joined by the
ASCII unit separator. That is the only way back from engine layers to ONNX nodes once Myelin has
fused a graph into generated kernels, so it is what `trtq verify` reads. Datacenter TensorRT
prints `Format/Datatype: Row major linear INT8 format` instead of separate `Datatype:` fields;
both spellings are read.

Nothing here needs TensorRT: it is text in, typed layers out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

LAYERS_HEADER = "Layers:"
_NODE = re.compile(r"^\[ONNX Layer: (.*)\]$", re.DOTALL)
_MYELIN_SUFFIX = re.compile(r"_myl\d+_\d+$")

DATATYPES = {
    "int8": "Int8", "fp8": "FP8", "half": "Half", "fp16": "Half", "float": "Float", "fp32": "Float",
    "bfloat16": "BFloat16", "bf16": "BFloat16", "int32": "Int32", "int64": "Int64", "bool": "Bool",
    "uint8": "UInt8", "int4": "Int4", "fp4": "FP4", "e8m0": "E8M0",
}
"""Words TensorRT uses for a tensor's type -> the spelling of TensorRT-RTX's `Datatype:` field."""
LOW_PRECISION = ("Int8", "FP8", "Int4", "FP4")
"""Datatypes of quantized tensors."""


@dataclass(frozen=True)
class TensorInfo:
    """One input, constant or output of an engine layer."""

    name: str
    dims: tuple[int, ...]
    datatype: str
    """Int8, FP8, Half, Float, BFloat16, Int32, ... (or the raw format text when no type word is found)."""

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return asdict(self)


@dataclass(frozen=True)
class EngineLayer:
    """One engine layer: its name and type, the tensors it reads and writes, the ONNX nodes it runs."""

    name: str
    type: str
    inputs: tuple[TensorInfo, ...]
    constants: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    metadata: tuple[str, ...]
    """The ONNX nodes (parser layer names) this layer does the work of, in TensorRT's order."""
    tactic: str | None = None

    @property
    def name_parts(self) -> tuple[str, ...]:
        """The node names a fused layer's name joins: 'a+b+c_myl0_3' -> ('a', 'b', 'c')."""
        base = _MYELIN_SUFFIX.sub("", self.name)
        return tuple(part.strip() for part in re.split(r"\s\+\s|\+", base) if part.strip())

    @property
    def input_types(self) -> tuple[str, ...]:
        """Datatypes of the layer's runtime inputs (not its constants)."""
        return tuple(t.datatype for t in self.inputs)

    @property
    def constant_types(self) -> tuple[str, ...]:
        """Datatypes of the layer's constants (weights, scales, biases)."""
        return tuple(t.datatype for t in self.constants)

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return asdict(self)


def find_layer_block(messages: Iterable[str]) -> str | None:
    """The last `Layers:` message of a build log (the engine's layer list), or None."""
    found = None
    for message in messages:
        if message.startswith(LAYERS_HEADER):
            found = message
    return found


def parse_layer_block(text: str) -> tuple[EngineLayer, ...]:
    """Every `Name: ...` line of a `Layers:` block (the block ends at the first blank line)."""
    layers: list[EngineLayer] = []
    for line in text.split("\n"):
        if line.startswith(LAYERS_HEADER):
            continue
        if not line.strip():
            if layers:
                break
            continue
        if line.startswith("Name: "):
            layers.append(parse_layer_line(line))
    return tuple(layers)


def _cut(text: str, key: str, start: int = 0) -> int:
    """Index of `key` in `text` from `start`, or -1."""
    return text.find(key, start)


def parse_layer_line(line: str) -> EngineLayer:
    """One layer line in TensorRT's ONELINE format (see the module docstring)."""
    body = line.removeprefix("Name: ")
    type_at = _cut(body, ", LayerType: ")
    if type_at < 0:  # a names-only listing (ProfilingVerbosity.LAYER_NAMES_ONLY)
        return EngineLayer(body.strip(), "", (), (), (), ())
    name = body[:type_at]
    rest = body[type_at + len(", LayerType: "):]
    metadata: tuple[str, ...] = ()
    meta_at = _cut(rest, ", Metadata: ")
    if meta_at >= 0:
        metadata = parse_metadata(rest[meta_at + len(", Metadata: "):])
        rest = rest[:meta_at]
    sections = {}
    layer_type_end = len(rest)
    for key in ("Inputs", "Constants", "Outputs"):
        at = _cut(rest, f", {key}: [")
        if at >= 0:
            sections[key] = at
            layer_type_end = min(layer_type_end, at)
    if not sections:
        comma = rest.find(", ")
        layer_type_end = comma if comma >= 0 else len(rest)
    layer_type = rest[:layer_type_end].strip()
    ordered = sorted(sections.items(), key=lambda item: item[1])
    tensors: dict[str, tuple[TensorInfo, ...]] = {}
    tail_start = len(rest)
    for index, (key, at) in enumerate(ordered):
        start = at + len(f", {key}: [")
        end = _closing_bracket(rest, start)
        tensors[key] = parse_tensor_list(rest[start:end])
        if index == len(ordered) - 1:
            tail_start = end + 1
    tactic = None
    tail = rest[tail_start:] if ordered else rest[layer_type_end:]
    match = re.search(r"Tactic(?:Name|Value): ([^,]*)", tail)
    if match:
        tactic = match[1].strip()
    return EngineLayer(
        name=name,
        type=layer_type,
        inputs=tensors.get("Inputs", ()),
        constants=tensors.get("Constants", ()),
        outputs=tensors.get("Outputs", ()),
        metadata=metadata,
        tactic=tactic,
    )


def _closing_bracket(text: str, start: int) -> int:
    """Index of the ']' closing a list opened just before `start` (brackets inside nest)."""
    depth = 1
    for index in range(start, len(text)):
        char = text[index]
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return index
    return len(text)


def parse_tensor_list(text: str) -> tuple[TensorInfo, ...]:
    """`{ Name: a, Dimensions: [..], ..., Datatype: Int8, Format: ... }, { ... }` as TensorInfos."""
    entries = []
    depth = 0
    start = -1
    for index, char in enumerate(text):
        if char == "{":
            if depth == 0:
                start = index + 1
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0 and start >= 0:
                entries.append(text[start:index])
                start = -1
    return tuple(_tensor(entry.strip()) for entry in entries)


def _tensor(entry: str) -> TensorInfo:
    name = entry.removeprefix("Name: ")
    for key in (", Dimensions: ", ", Format/Datatype: ", ", Datatype: "):
        at = name.find(key)
        if at >= 0:
            name = name[:at]
    dims_match = re.search(r"Dimensions: \[([^\]]*)\]", entry)
    dims = tuple(int(d) for d in dims_match[1].split(",") if d.strip().lstrip("-").isdigit()) if dims_match else ()
    datatype_match = re.search(r"(?<![/\w])Datatype: (\w+)", entry)
    if datatype_match:
        datatype = normalize_datatype(datatype_match[1])
    else:
        format_match = re.search(r"Format/Datatype: ([^,}]*)", entry)
        datatype = _datatype_from_format(format_match[1]) if format_match else ""
    return TensorInfo(name.strip(), dims, datatype)


def normalize_datatype(word: str) -> str:
    """TensorRT-RTX's spelling of a type word: 'INT8' -> 'Int8', 'FP16' -> 'Half'."""
    return DATATYPES.get(word.lower(), word)


def _datatype_from_format(text: str) -> str:
    """'Row major linear INT8 format' -> 'Int8' (datacenter TensorRT's combined field)."""
    for word in re.findall(r"[A-Za-z0-9]+", text):
        if word.lower() in DATATYPES:
            return DATATYPES[word.lower()]
    return text.strip()


def parse_metadata(text: str) -> tuple[str, ...]:
    """'[ONNX Layer: a]\\x1f[ONNX Layer: b]' -> ('a', 'b') (also without the separator); other entries are skipped."""
    nodes = []
    parts = [p for chunk in text.strip().split("\x1f") for p in re.split(r"(?<=\])(?=\[ONNX Layer: )", chunk.strip())]
    for part in parts:
        match = _NODE.match(part.strip())
        if match:
            nodes.append(match[1])
    return tuple(nodes)
