"""A model's weights apart from its graph: weightless copies for checks and shape inference, and
serialisation streamed weight by weight (protobuf or external data) for models of any size."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import onnx
from onnx import helper

_SMALL_TENSOR = 4096

_T = onnx.TensorProto
_ITEMSIZE: dict[int, int] = {_T.FLOAT: 4, _T.FLOAT16: 2, _T.BFLOAT16: 2, _T.DOUBLE: 8, _T.INT8: 1, _T.UINT8: 1, _T.INT16: 2,
             _T.UINT16: 2, _T.INT32: 4, _T.UINT32: 4, _T.INT64: 8, _T.UINT64: 8, _T.BOOL: 1}
"""Bytes per element of the types whose raw data is one element after another (not packed 4-bit types)."""
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
        if init.data_location != onnx.TensorProto.EXTERNAL and raw_bytes(init) > min_bytes:
            large.append(init)
        else:
            skeleton.graph.initializer.append(init)
    return skeleton, large


def raw_bytes(init: onnx.TensorProto) -> int:
    """Size of `init`'s raw data, without reading it (each read of `raw_data` copies the bytes)."""
    if not init.HasField("raw_data"):
        return 0
    itemsize = _ITEMSIZE.get(init.data_type, 0)
    count = 1
    for d in init.dims:
        count *= d
    return count * itemsize if itemsize else len(init.raw_data)


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


def weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose large initializers keep name, type and dims but no values.

    Shape inference only reads the values of small (shape-like) constants, and serialising a
    model's weights through the C++ inference dominates its cost on large models.
    """
    skeleton, large = split_initializers(model)
    for init in large:
        add_stub(skeleton.graph, init)
    return skeleton


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
