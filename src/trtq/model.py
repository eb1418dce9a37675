"""Load and inspect ONNX models: inputs, outputs, dynamic dims, opset, op counts.

Everything downstream talks about the model through the small frozen dataclasses here.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

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


@dataclass(frozen=True)
class ModelInfo:
    """What `trtq inspect` reports about an ONNX model."""

    path: str
    sha256: str
    opset: int
    ir_version: int
    producer: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    op_counts: dict[str, int] = field(default_factory=dict)
    quantizable_nodes: tuple[str, ...] = ()
    num_nodes: int = 0
    num_parameters: int = 0
    """Values held by initializers and by Constant nodes (paddle2onnx and torch's legacy exporter put
    weights in Constant nodes)."""
    constant_parameters: int = 0
    """The part of `num_parameters` held by Constant nodes."""

    def to_dict(self) -> dict:
        """A JSON-serialisable view."""
        return asdict(self)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
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


def inspect_model(path: str | Path, model: onnx.ModelProto | None = None) -> ModelInfo:
    """Summarise a model: IO specs, opset, op counts and the nodes trtq would quantize.

    Nodes are named as `quantize --exclude-nodes` and `sensitivity` name them (`normalized_node_names`).
    """
    path = Path(path)
    if model is None:
        model = load_model(path)
    counts = collections.Counter(node.op_type for node in model.graph.node)
    quantizable = tuple(name for name, node in normalized_node_names(model).items() if node.op_type in QUANTIZABLE_OPS)
    constants = sum(_constant_size(node) for node in model.graph.node
                    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"))
    params = sum(int(np.prod(init.dims)) for init in model.graph.initializer) + constants
    return ModelInfo(
        path=str(path),
        sha256=file_sha256(path),
        opset=default_opset(model),
        ir_version=int(model.ir_version),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=graph_inputs(model),
        outputs=graph_outputs(model),
        op_counts=dict(sorted(counts.items())),
        quantizable_nodes=quantizable,
        num_nodes=len(model.graph.node),
        num_parameters=params,
        constant_parameters=constants,
    )


def _constant_size(node: onnx.NodeProto) -> int:
    """Number of values a Constant node holds (whichever of its value attributes it has)."""
    size = 0
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:
            size += int(np.prod(attr.t.dims))
        elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
            size += int(np.prod(attr.sparse_tensor.dims))
        elif attr.type in (onnx.AttributeProto.FLOATS, onnx.AttributeProto.INTS, onnx.AttributeProto.STRINGS):
            size += len(attr.floats) + len(attr.ints) + len(attr.strings)
        elif attr.type in (onnx.AttributeProto.FLOAT, onnx.AttributeProto.INT, onnx.AttributeProto.STRING):
            size += 1
    return size


_SHAPE_ITEM = re.compile(r"^(?P<name>.+):(?P<dims>\d+(?:x\d+)*)$")


def parse_shapes(text: str | Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse trtexec-style shapes, "input:1x3x640x640,mask:1x640", into {name: shape}.

    Names may contain colons; the dims are after the last one.
    """
    if not text:
        return {}
    items = [text] if isinstance(text, str) else list(text)
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            match = _SHAPE_ITEM.match(part)
            if not match:
                raise TrtqError(
                    f"Shape {part!r} is not of the form name:AxBxC.",
                    "write shapes as trtexec does, e.g. --shape images:1x3x640x640.",
                )
            shape = tuple(int(d) for d in match["dims"].split("x"))
            name = match["name"]
            if name in shapes and shapes[name] != shape:
                raise TrtqError(
                    f"Input {name!r} is given two shapes, {'x'.join(map(str, shapes[name]))} and {match['dims']}.",
                    f"give one shape per input (--{'shape'} {name}:...).",
                )
            shapes[name] = shape
    return shapes


PartialShape = tuple[int | None, ...]
"""An input shape before the data is read: None where the data (or --size) must say."""


def requested_shapes(
    inputs: Sequence[TensorSpec],
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    default_batch: int | None = 1,
) -> dict[str, PartialShape]:
    """What is known of every input's shape before the data is read: the model's fixed dims,
    overridden by `shapes` (--shape), with None where a dynamic dim is still open.

    A dynamic leading (batch) dim with no --shape becomes `default_batch`, as in trtexec; when
    --shape gives some inputs one batch size, the other inputs follow it. Raises TrtqError for an
    unknown name, a rank mismatch or a fixed dim contradicted.
    """
    shapes = dict(shapes or {})
    known = {spec.name for spec in inputs}
    unknown = sorted(set(shapes) - known)
    if unknown:
        raise TrtqError(
            f"--shape names input {unknown[0]!r}, but the model's inputs are {sorted(known)}.",
            "use the input names that `trtq inspect` lists.",
        )
    given_batches = {shapes[s.name][0] for s in inputs if s.name in shapes and s.shape and len(shapes[s.name])
                     and not _fixed(s.shape[0])}
    batch = given_batches.pop() if len(given_batches) == 1 else default_batch
    requested: dict[str, PartialShape] = {}
    for spec in inputs:
        if spec.name in shapes:
            given = tuple(int(d) for d in shapes[spec.name])
            if len(given) != len(spec.shape):
                raise TrtqError(
                    f"--shape for input {spec.name!r} has rank {len(given)}, expected rank "
                    f"{len(spec.shape)} ({spec.shape_str()}).",
                    "give one size per dimension.",
                )
            for axis, (want, got) in enumerate(zip(spec.shape, given)):
                if _fixed(want) and want != got:
                    raise TrtqError(
                        f"--shape for input {spec.name!r} sets dim {axis} to {got}, but the model "
                        f"fixes it at {want} ({spec.shape_str()}).",
                        "only dynamic dimensions can be overridden.",
                    )
            requested[spec.name] = given
            continue
        requested[spec.name] = tuple(
            int(d) if _fixed(d) else (batch if axis == 0 else None)  # type: ignore[arg-type]
            for axis, d in enumerate(spec.shape)
        )
    return requested


def _fixed(dim: Dim) -> bool:
    return isinstance(dim, int) and dim > 0


def _placeholders(spec: TensorSpec, shape: PartialShape) -> list[str]:
    """Each dim of `shape` as text, open ones by their symbolic name (or D<axis> when unnamed)."""
    return [
        str(d) if d is not None else (
            str(spec.shape[axis]) if isinstance(spec.shape[axis], str) and spec.shape[axis] else f"D{axis}")
        for axis, d in enumerate(shape)
    ]


def shape_placeholder(spec: TensorSpec, shape: PartialShape) -> str:
    """`shape` in --shape spelling, open dims by their symbolic name: 1x3xHxW, 1xsequence."""
    return "x".join(_placeholders(spec, shape))


def missing_shapes_error(
    missing: Sequence[tuple[TensorSpec, PartialShape]],
    purpose: str = "calibrate",
    reason: str = "no --shape was given",
    alternatives: str = "or give .npy/.npz data whose arrays have that shape",
) -> TrtqError:
    """One error naming every input whose shape is still open, with the --shape options for all of them.

    `purpose` is the verb of the command that needs the shape ("calibrate", "compare", ...).
    """
    described = [f"{spec.name!r} ({spec.shape_str()})" for spec, _ in missing]
    if len(described) == 1:
        subject = f"Input {described[0]} has dynamic dims"
    else:
        subject = f"Inputs {', '.join(described[:-1])} and {described[-1]} have dynamic dims"
    options = " ".join(f"--shape {spec.name}:{shape_placeholder(spec, shape)}" for spec, shape in missing)
    names = sorted({text for spec, shape in missing for d, text in zip(shape, _placeholders(spec, shape))
                    if d is None})
    which = f"{', '.join(names)} replaced by the size" + ("s" if len(names) > 1 else "")
    return TrtqError(
        f"{subject} and {reason}.",
        f"pass {options}, with {which} to {purpose} at" + (f", {alternatives}." if alternatives else "."),
    )


def resolve_input_shapes(
    inputs: Sequence[TensorSpec],
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    default_batch: int | None = 1,
    purpose: str = "calibrate",
) -> dict[str, tuple[int, ...]]:
    """Fixed shapes for every input: the model's own dims, overridden by `shapes`.

    As `requested_shapes`, with every dim resolved; an error names every input left with a
    dynamic dim (see `missing_shapes_error`).
    """
    requested = requested_shapes(inputs, shapes, default_batch)
    missing = [(spec, requested[spec.name]) for spec in inputs if None in requested[spec.name]]
    if missing:
        raise missing_shapes_error(missing, purpose)
    return {name: tuple(int(d) for d in shape) for name, shape in requested.items()}  # type: ignore[arg-type]


MIN_QDQ_OPSET = 13
"""Per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute) needs opset 13."""


def normalize_model(
    model: onnx.ModelProto, source: str = "model", copy: bool = True, min_opset: int = MIN_QDQ_OPSET
) -> onnx.ModelProto:
    """Return a copy (or, with copy=False, `model` itself, changed) ready for analysis and Q/DQ insertion.

    - Constant nodes become initializers (exporters emit weights either way),
    - every node gets a unique name (`<OpType>_<index>` where it had none), so nodes can be
      excluded and reported by name,
    - local functions are inlined (a new model then, even with copy=False),
    - the default-domain opset is raised to >= `min_opset` (13: per-channel Q/DQ; 19: FP8 Q/DQ),
      via onnx's version converter,
    - shapes and types are inferred.
    """
    from onnx import numpy_helper, shape_inference, version_converter

    if copy:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    else:
        out = model
    out = inline_functions(out, source)
    # Name the nodes before the version converter runs: it keeps names but inserts unnamed nodes, which
    # would shift the `<OpType>_<index>` names away from those `normalized_node_names` gives the original.
    folded = _foldable_constants(out.graph)
    kept_nodes = [node for index, node in enumerate(out.graph.node) if index not in folded]
    for node, name in zip(kept_nodes, _node_names(kept_nodes)):
        node.name = name
    if default_opset(out) < min_opset:
        need = "per-channel Q/DQ" if min_opset <= MIN_QDQ_OPSET else "FP8 Q/DQ (float8e4m3fn)"
        try:
            out = _convert_version_weightless(out, min_opset, version_converter.convert_version)
        except Exception as exc:  # the converter raises bare RuntimeError/ValueError subtypes
            raise TrtqError(
                f"{source} uses opset {default_opset(out)}; {need} needs opset >= "
                f"{min_opset} and onnx's version converter failed ({exc}).",
                f"re-export the model with opset {min_opset} or newer.",
            ) from exc
    graph = out.graph
    folded = _foldable_constants(graph)
    if folded:
        for index in folded:
            node = graph.node[index]
            tensor = numpy_helper.to_array(node.attribute[0].t)
            graph.initializer.append(numpy_helper.from_array(tensor, node.output[0]))
        kept = [node for index, node in enumerate(graph.node) if index not in folded]
        del graph.node[:]
        graph.node.extend(kept)
    name_unnamed_nodes(graph)  # the nodes the version converter added
    try:
        inferred = shape_inference.infer_shapes(_weightless(out), data_prop=True)
    except Exception as exc:  # onnx raises InferenceError for inconsistent graphs
        raise TrtqError(
            f"{source} fails ONNX shape inference ({exc}).",
            "run onnx.checker on the model and re-export it.",
        ) from exc
    del out.graph.value_info[:]
    out.graph.value_info.extend(inferred.graph.value_info)
    for mine, theirs in zip(out.graph.output, inferred.graph.output):
        mine.CopyFrom(theirs)
    return out


def _convert_version_weightless(
    model: onnx.ModelProto, opset: int, convert: Callable[[onnx.ModelProto, int], onnx.ModelProto]
) -> onnx.ModelProto:
    """`convert(model, opset)` run on a copy without the large weights, which then go back by name.

    onnx's version converter serialises the whole model into C++ and back; its adapters rewrite
    nodes and add small constants (Split/Squeeze axes as inputs) but never change an existing
    weight, so converting the skeleton gives the same model (a test checks it) at a fraction of
    the cost (PP-OCRv6 det, 9.9 MB: 0.6 s less).
    """
    skeleton, large = split_initializers(model)
    for init in large:
        add_stub(skeleton.graph, init)
    converted = convert(skeleton, opset)
    weights = {init.name: init for init in large}
    inits = list(converted.graph.initializer)
    for init in inits:
        if init.name in weights and not init.raw_data:
            init.CopyFrom(weights.pop(init.name))
    if weights:  # a weight the converter dropped or rewrote: convert the whole model instead
        return convert(model, opset)
    position = {init.name: index for index, init in enumerate(model.graph.initializer)}
    inits.sort(key=lambda init: position.get(init.name, len(position)))  # the original order, new ones last
    ordered = [onnx.TensorProto() for _ in inits]
    for copy, init in zip(ordered, inits):
        copy.CopyFrom(init)
    del converted.graph.initializer[:]
    converted.graph.initializer.extend(ordered)
    return converted


def _foldable_constants(graph: onnx.GraphProto) -> set[int]:
    """Positions in `graph.node` of the Constant nodes holding a tensor value that normalisation
    turns into initializers.

    Positions, not the node messages: protobuf hands out a fresh Python wrapper on each access
    and (upb backend) reuses a freed wrapper's address, so `id()` of a node is no identity.
    """
    existing = {init.name for init in graph.initializer}
    return {
        index for index, node in enumerate(graph.node)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1
        and node.attribute[0].name == "value" and node.output[0] not in existing
    }


def _node_names(nodes: Sequence[onnx.NodeProto]) -> list[str]:
    """Each node's name, or `<OpType>_<index>` (made unique) where it has none."""
    used = {node.name for node in nodes if node.name}
    names = []
    for index, node in enumerate(nodes):
        name = node.name
        if not name:
            name = f"{node.op_type}_{index}"
            while name in used:
                name += "_"
            used.add(name)
        names.append(name)
    return names


def name_unnamed_nodes(graph: onnx.GraphProto) -> None:
    """Give every node of `graph` that has no name `<OpType>_<index>` (made unique), in place.

    Nodes are identified by name downstream; onnx's version converter, for one, adds unnamed ones.
    """
    for node, name in zip(graph.node, _node_names(graph.node)):
        node.name = name


def inline_functions(model: onnx.ModelProto, source: str = "model") -> onnx.ModelProto:
    """`model` with its local functions inlined, or `model` itself when it has none.

    A Conv or MatMul inside a function is a layer like any other (onnx-tensorrt inlines functions
    too), and onnx's version converter drops functions, leaving calls onnxruntime cannot resolve.
    """
    if not model.functions:
        return model
    try:
        from onnx import inliner
    except ImportError as exc:  # onnx < 1.16
        raise TrtqError(f"{source} has local functions, which trtq inlines with onnx >= 1.16 "
                        f"(onnx {onnx.__version__} is installed).", "pip install 'onnx>=1.16'.") from exc
    return inliner.inline_local_functions(model)


def normalized_node_names(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """The names `normalize_model` gives the nodes of `model`, mapped to the original nodes.

    Nodes that normalisation adds (the version converter's, for an opset below 13) are not among them;
    the nodes of a model with local functions are those of its inlined copy.
    """
    model = inline_functions(model)
    folded = _foldable_constants(model.graph)
    nodes = [node for index, node in enumerate(model.graph.node) if index not in folded]
    return dict(zip(_node_names(nodes), nodes))


_SMALL_TENSOR = 4096
"""Initializers up to this many bytes keep their values in the weightless copy (shape constants)."""


def split_initializers(
    model: onnx.ModelProto, min_bytes: int = _SMALL_TENSOR
) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
    """A copy of `model` without its raw-data initializers of more than `min_bytes`, and those initializers.

    The copy is built field by field, so the weights' bytes are never copied: cheap whatever the
    model's size. The returned initializers are `model`'s own messages (not copies); small ones
    (shape constants) and ones not stored as raw bytes stay in the copy.
    """
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip="graph")
    _copy_fields(model.graph, skeleton.graph, skip="initializer")
    large = []
    for init in model.graph.initializer:
        # data_location may be set to DEFAULT explicitly (onnx does so when it loads external data)
        if init.data_location != onnx.TensorProto.EXTERNAL and len(init.raw_data) > min_bytes:
            large.append(init)
        else:
            skeleton.graph.initializer.append(init)
    return skeleton, large


def _copy_fields(src: onnx.ModelProto | onnx.GraphProto, dst: onnx.ModelProto | onnx.GraphProto, skip: str) -> None:
    """Copy every set field of `src` except `skip` into `dst` (same message type)."""
    for descriptor, value in src.ListFields():
        if descriptor.name == skip:
            continue
        repeated = getattr(descriptor, "is_repeated", None)  # protobuf >= 5.28; `label` before (removed in 7)
        if repeated if repeated is not None else descriptor.label == descriptor.LABEL_REPEATED:
            getattr(dst, descriptor.name).extend(value)
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            getattr(dst, descriptor.name).CopyFrom(value)
        else:
            setattr(dst, descriptor.name, value)


def add_stub(graph: onnx.GraphProto, init: onnx.TensorProto, external: Mapping[str, str] | None = None) -> None:
    """Append to `graph` an initializer with `init`'s name, type and dims but no values.

    With `external` (ONNX's external_data entries: location, offset, length), the stub says where
    the values live; without, it is a shape-only placeholder (for shape inference).
    """
    stub = graph.initializer.add()
    stub.name, stub.data_type = init.name, init.data_type
    stub.dims.extend(init.dims)
    if external is not None:
        stub.data_location = onnx.TensorProto.EXTERNAL
        for key, value in external.items():
            stub.external_data.add(key=key, value=value)


def _weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose large initializers keep name, type and dims but no values.

    Shape inference only reads the values of small (shape-like) constants, and serialising a
    model's weights through the C++ inference dominates its cost on large models.
    """
    skeleton, large = split_initializers(model)
    for init in large:
        add_stub(skeleton.graph, init)
    return skeleton


def inferred_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape with the graph inputs at `input_shapes` (ONNX shape inference with data
    propagation, on a weightless copy); unknown dims read 0, tensors it cannot size are left out."""
    from onnx import shape_inference

    fixed = _weightless(model)
    for vi in fixed.graph.input:
        if vi.name in input_shapes:
            for dim, size in zip(vi.type.tensor_type.shape.dim, input_shapes[vi.name], strict=False):
                dim.Clear()
                dim.dim_value = int(size)
    del fixed.graph.value_info[:]
    try:
        inferred = shape_inference.infer_shapes(fixed, data_prop=True)
    except shape_inference.InferenceError:  # inputs at sizes the graph refuses: sizes stay unknown
        return {}
    shapes = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim)
    return shapes


def serialized_chunks(model: onnx.ModelProto) -> Iterator[bytes]:
    """`model`'s protobuf encoding in pieces, large weights one by one, for streaming to a file.

    SerializeToString builds the whole model (for ResNet-50, 100 MB) in fresh memory before a
    byte is written; this writes the graph without its large initializers, then each initializer
    as a repeated-field record of the same graph message. Protobuf parsers read repeated fields
    wherever they appear in a message, so onnx, onnxruntime and TensorRT load the file as usual.
    """
    skeleton, large = split_initializers(model)
    graph = skeleton.graph.SerializeToString()
    records = [(init, init.ByteSize()) for init in large]
    size = len(graph) + sum(len(_INITIALIZER_TAG) + len(_varint(n)) + n for _, n in records)
    head = onnx.ModelProto()
    _copy_fields(skeleton, head, skip="graph")
    yield head.SerializeToString() + _GRAPH_TAG + _varint(size) + graph
    for init, n in records:
        yield _INITIALIZER_TAG + _varint(n) + init.SerializeToString()


PROTOBUF_LIMIT = 2_000_000_000 - 64 * 1024 * 1024
"""Bytes of initializers above which a model cannot be one protobuf file (protobuf's 2 GB limit,
less room for the graph): its weights must go to an external data file."""

EXTERNAL_ALIGNMENT = 4096
"""Offsets of tensors in an external data file are multiples of this (page-aligned, so readers can
memory-map them)."""


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Total size of the initializers' values (raw bytes, or the encoding of the others)."""
    return sum(len(init.raw_data) or init.ByteSize() for init in model.graph.initializer)


def external_data_chunks(model: onnx.ModelProto, location: str) -> tuple[Iterator[bytes], Iterator[bytes]]:
    """`model` as two files: (model chunks, data chunks), the large initializers moved to `location`.

    ONNX's external-data convention: each moved tensor keeps name, type and dims, with
    data_location EXTERNAL and `location`, `offset`, `length` entries; its raw little-endian
    bytes sit at that offset of the data file (beside the model, named `location`). Offsets are
    computed from the tensors' sizes up front, so either file can be written first.
    """
    skeleton, large = split_initializers(model)
    placed: list[tuple[onnx.TensorProto, int, int]] = []
    offset = 0
    for init in large:
        length = _raw_length(init)
        if length is None:  # a packed or unusual type: stays inside the model
            skeleton.graph.initializer.append(init)
            continue
        offset = -(-offset // EXTERNAL_ALIGNMENT) * EXTERNAL_ALIGNMENT
        placed.append((init, offset, length))
        add_stub(skeleton.graph, init, {"location": location, "offset": str(offset), "length": str(length)})
        offset += length

    def data() -> Iterator[bytes]:
        written = 0
        for init, start, length in placed:
            if start > written:
                yield bytes(start - written)
            raw = init.raw_data
            if len(raw) != length:
                raise ValueError(f"initializer {init.name!r} has {len(raw)} raw bytes, expected {length}")
            yield raw
            written = start + length

    return serialized_chunks(skeleton), data()


def _raw_length(init: onnx.TensorProto) -> int | None:
    """Bytes of a raw-data initializer of a byte-aligned numeric type (numel x item size), else None."""
    if init.data_type not in _BYTE_ALIGNED_TYPES:
        return None
    numel = 1
    for dim in init.dims:
        numel *= dim
    return numel * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize


_BYTE_ALIGNED_TYPES = frozenset(
    getattr(onnx.TensorProto, name) for name in (
        "FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
        "UINT64", "BOOL", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ")
    if hasattr(onnx.TensorProto, name)
)


def _field_tag(message: Any, name: str) -> bytes:
    """The wire tag of a length-delimited field (field number << 3 | wire type 2), as a varint."""
    return _varint(message.DESCRIPTOR.fields_by_name[name].number << 3 | 2)


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint encoding of a non-negative integer."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


_GRAPH_TAG = _field_tag(onnx.ModelProto, "graph")
_INITIALIZER_TAG = _field_tag(onnx.GraphProto, "initializer")


def check_structure(model: onnx.ModelProto) -> None:
    """onnx.checker on `model` without copying its weights: large initializers are declared as
    graph inputs of the same type and shape (their bytes come from numpy and need no check)."""
    skeleton, large = split_initializers(model)
    for init in large:
        skeleton.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    onnx.checker.check_model(skeleton)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """ONNX element type of every named value the model declares (inputs, outputs, value_info, initializers)."""
    types: dict[str, int] = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    return types
