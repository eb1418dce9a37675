"""Input shapes: --shape parsing, the shapes a run asks for checked against the model's dims, and
shape inference at given input shapes, and the inferred types written into a model."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import onnx
from onnx import helper, shape_inference

from trtq.errors import TrtqError
from trtq.model.load import UNNAMED_DIMS, Dim, TensorSpec
from trtq.model.weights import split_initializers, weightless

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


def inferred_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape with the graph inputs at `input_shapes` (ONNX shape inference with data
    propagation, on a weightless copy); unknown dims read 0, tensors it cannot size are left out."""
    from onnx import shape_inference

    fixed = weightless(model)
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


def distinct_placeholder_dims(model: onnx.ModelProto) -> str | None:
    """Give each graph-input dim named by a placeholder ('?') that several dims share a name of its own
    (`<input>_dim<axis>`), in place; a sentence saying what was renamed, or None when nothing was.

    TensorRT takes input dims of one name to be one dim, so an export whose batch, height and width are all
    '?' only builds at batch = H = W. The names carried no meaning, so distinct ones lose nothing.
    """
    counts: dict[str, int] = {}
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                counts[dim.dim_param] = counts.get(dim.dim_param, 0) + 1
    shared = {name for name, count in counts.items() if name in UNNAMED_DIMS and count > 1}
    if not shared:
        return None
    taken = set(counts)
    renamed = []
    for value in model.graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_param") and dim.dim_param in shared:
                name = re.sub(r"\W", "_", f"{value.name}_dim{axis}")
                while name in taken:
                    name += "_"
                taken.add(name)
                dim.dim_param = name
                renamed.append(name)
    placeholders = ", ".join(repr(name) for name in sorted(shared))
    return (f"{len(renamed)} dynamic input dims shared the placeholder name {placeholders}, which TensorRT reads as "
            f"one dim; renamed {', '.join(renamed)}")


def infer_types_in_place(model: onnx.ModelProto, strict: bool = False) -> None:
    """Set `model`'s value_info and output types to what shape inference gives.

    Inferred on the graph with its large weights declared as typed inputs instead of carried: the
    same types, without handing the weights' bytes to onnx's C++ and back (0.7 s a pass on
    ResNet-50, which the --target search would pay for every candidate).
    """
    skeleton, large = split_initializers(model)
    for init in large:
        skeleton.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    inferred = shape_inference.infer_shapes(skeleton, strict_mode=strict)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)


def infer_types_checked(model: onnx.ModelProto) -> None:
    """`infer_types_in_place`, strict: an inconsistency a rewrite made fails. Graph outputs declared with a
    shape the graph does not compute (an exporter's mistake: a torch export with a wrong `dynamic_axes`
    declares [1, seqlen] for a [T, 1, C] output; onnxruntime only warns) stay as declared, as in the input:
    the check is repeated without their declared shapes, and fails only if something else is wrong."""
    try:
        infer_types_in_place(model, strict=True)
    except shape_inference.InferenceError:
        relaxed = onnx.ModelProto()
        relaxed.CopyFrom(model)
        for output in relaxed.graph.output:
            output.type.tensor_type.ClearField("shape")
        infer_types_in_place(relaxed, strict=True)
        infer_types_in_place(model)
