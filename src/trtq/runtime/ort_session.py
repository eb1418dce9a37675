"""onnxruntime CPU sessions for in-memory models and files, and sessions that expose inner tensors.

Calibration, evaluation (through `trtq.runtime.ort_runner.OrtRunner`) and the checks that run a
model once (smoothing's equivalence, --ranges tables) all make their sessions here. A session owns
what onnxruntime reads while it lives (`OrtSession.keep`: weight buffers, a folder of optimised
files), so nothing is attached to onnxruntime's objects from outside.

Weights reach onnxruntime as external initializers (numpy arrays over each weight's raw bytes),
so no session serialises the model. For calibration, observed tensors become graph outputs; on x86 CPUs onnxruntime
runs convolutions in a blocked layout (NCHWc: channels in blocks of 8 or 16) and copies every
exposed tensor back to NCHW with a `ReorderOutput` node, which costs about 15% of ResNet-50's
forward pass. Calibration statistics (amax, histogram of |x|) do not depend on the order of the
elements, so `make_exposing_session` exposes the blocked tensor itself wherever it holds exactly
the NCHW tensor's elements, permuted (channel count a multiple of the block size: no padding).

That route is onnxruntime's documented offline-optimisation workflow, done on the machine that
runs it: onnxruntime optimises the exposing model once and saves the optimised graph; the
reorders that only feed graph outputs are removed and their inputs exposed; the edited graph is
loaded with optimisations off (they are already applied).
"""

from __future__ import annotations

import platform
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import helper

from trtq.errors import TrtqError
from trtq.model import add_stub, load_model, split_initializers, tensor_types

_ORT_ERRORS: tuple[type[BaseException], ...] = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, name) for name in
    ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NotImplemented", "RuntimeException")
    if hasattr(ort.capi.onnxruntime_pybind11_state, name))
"""onnxruntime's exception types (they derive from Exception directly)."""

_LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, *_ORT_ERRORS)

_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_SOURCE = re.compile(r"/\S+\.(?:h|cc|cpp):\d+ [^(]*\([^)]*\) ")  # onnxruntime's file:line and C++ signature
_ASSERT = re.compile(r"[^.:']* was false\.")  # the failed C++ condition, before its explanation
_NODE = re.compile(r"(\w+) node\. Name:'([^']*)' Status Message: ")

MAX_REASON = 300


def ort_reason(exc: BaseException) -> str:
    """onnxruntime's message without its error code, C++ source location and function signature, on
    one line: "Gather node 'gather': indices element out of data bounds, idx=50 must be within ..."."""
    text = _PREFIX.sub("", str(exc).strip())
    text = text.replace("Non-zero status code returned while running ", "")
    text = _NODE.sub(lambda m: f"{m[1]} node '{m[2]}': ", text)
    text = _ASSERT.sub(" ", _SOURCE.sub("", text))
    text = " ".join(text.split()).rstrip(".")
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 3] + "..."


_EXTERNAL_TYPES = frozenset(
    getattr(onnx.TensorProto, t) for t in (
        "FLOAT", "FLOAT16", "DOUBLE", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL")
)
"""Initializer types that numpy (and so an onnxruntime OrtValue) represents natively."""


BIAS_OVERFLOW_OPTIMIZERS = ("WeightBiasQuantization",)
"""onnxruntime graph transformers that must not run on models with FP16 (or BF16) Q/DQ scales.

onnxruntime 1.32's WeightBiasQuantization rewrites each Conv/Gemm whose input and weight are
dequantized so that its float bias becomes int32 (bias / (input scale x weight scale)), computed
in the scales' dtype: with FP16 scales that quotient overflows FP16 (a bias of 0.5 over scales of
0.03 and 0.0002 is 80,000), so the bias turns into garbage and a correct model reads 9 dB instead
of 41 (issue 15). The graph as ONNX defines it adds the float bias; TensorRT does the same.
Disabling the transformer for FP32-scale models would change their results slightly (it rounds the
bias to int32), so it is disabled only where the scales are not float32.
"""

_FLOAT = onnx.TensorProto.FLOAT


def _scale_types(model: onnx.ModelProto) -> list[int | None]:
    """The element type of every QuantizeLinear/DequantizeLinear scale (None where the graph does not say)."""
    types: dict[str, int] = tensor_types(model)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                types[node.output[0]] = value.data_type
    return [types.get(node.input[1]) for node in model.graph.node
            if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 1]


def disabled_optimizers(model: onnx.ModelProto) -> list[str]:
    """onnxruntime optimizers to disable for `model`: BIAS_OVERFLOW_OPTIMIZERS when any Q/DQ scale is not
    float32 (or of a type the graph does not declare), else none."""
    if any(t != _FLOAT for t in _scale_types(model)):
        return list(BIAS_OVERFLOW_OPTIMIZERS)
    return []


def expose_tensors(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs also include `tensors` (graph inputs excluded)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    types = tensor_types(out)
    present = {o.name for o in out.graph.output} | {i.name for i in out.graph.input}
    for name in tensors:
        if name not in present:
            out.graph.output.append(helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None))
            present.add(name)
    return out


class OrtSession(ort.InferenceSession):
    """An onnxruntime CPU session that keeps alive what it reads for its lifetime: the numpy buffers
    behind weights handed over as external initializers, or the temporary folder of the files it
    was loaded from (removed when the session is garbage-collected)."""

    def __init__(self, model: str | bytes, options: ort.SessionOptions, keep: tuple[object, ...] = (),
                 disabled_optimizers: Sequence[str] | None = None) -> None:
        self.keep = keep
        """Objects that must live as long as the session."""
        super().__init__(model, options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled_optimizers)


def session_options(threads: int | None = None, spin: bool = True,
                    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> ort.SessionOptions:
    """CPU session options: `threads` intra-op threads; `spin=False` stops idle intra-op threads
    from spinning, leaving the CPU to other work in this process (the calibration statistics thread)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 4  # fatal only: a failed run raises, and trtq says why in one sentence
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def make_session(
    model: onnx.ModelProto, threads: int | None = None, spin: bool = True, outputs: Sequence[str] = (),
    save_optimized: Path | None = None, optimize_only: bool = False, exact: bool = False,
    weights: Mapping[str, np.ndarray] | None = None, fuse_qdq: bool = True,
) -> OrtSession:
    """A CPU onnxruntime session for an in-memory model, plus extra graph `outputs` to expose.

    Only the graph travels as protobuf bytes: large weights are handed to onnxruntime as
    external initializers, numpy arrays over each weight's raw bytes. Serialising the weights (twice the
    model's size in copies) used to cost more than creating the session, and any model size works
    (no 2 GB protobuf limit, no temporary file). `save_optimized` writes onnxruntime's optimised
    graph there (weights beside it), as SessionOptions.optimized_model_filepath does; with
    `optimize_only` that is all the session is for (one thread, no weight prepacking: faster to make).
    `exact` keeps onnxruntime to its basic, arithmetic-preserving graph optimizations: its extended ones (fused
    kernels, NCHWc layouts) round differently, by 2e-3 of PP-OCRv6 det's output range on blank inputs, where the
    sigmoid's tail turns rounding in the logits into relative error.
    `weights`: initializers the model leaves out, as arrays (a model built around weights computed in numpy
    need not copy them into protobuf and back). `fuse_qdq=False` runs Q/DQ pairs as ONNX defines them
    (session.disable_quant_qdq): where the scales are graph inputs onnxruntime cannot fuse them into integer
    kernels anyway, and its QDQ rewrites then cost a fifth of ResNet-50's run.
    """
    options = session_options(1 if optimize_only else threads, spin, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if exact
                              else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if not fuse_qdq:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    if optimize_only:  # made only to write `save_optimized`: skip packing weights for kernels never run
        options.add_session_config_entry("session.disable_prepacking", "1")
    if save_optimized is not None:
        options.optimized_model_filepath = str(save_optimized)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         save_optimized.name + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "4096")
    skeleton, large = split_initializers(model)
    names, values, arrays = [], [], []
    for init in large:
        if init.data_type not in _EXTERNAL_TYPES:
            skeleton.graph.initializer.append(init)
            continue
        array = np.frombuffer(init.raw_data, dtype=helper.tensor_dtype_to_np_dtype(init.data_type))
        if sys.byteorder == "big":  # ONNX raw data is little-endian
            array = array.byteswap()
        add_stub(skeleton.graph, init, {"location": "trtq-in-memory"})  # never read: the values are passed below
        names.append(init.name)
        arrays.append(array)
        values.append(ort.OrtValue.ortvalue_from_numpy(array.reshape(tuple(init.dims))))
    for name, array in (weights or {}).items():
        array = np.ascontiguousarray(array)
        stub = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
        add_stub(skeleton.graph, stub, {"location": "trtq-in-memory"})
        names.append(name)
        arrays.append(array)
        values.append(ort.OrtValue.ortvalue_from_numpy(array))
    if names:
        options.add_external_initializers(names, values)
    try:
        # onnxruntime may read the weight buffers for the session's lifetime
        return OrtSession(expose_tensors(skeleton, outputs).SerializeToString(), options, keep=(arrays, values),
                          disabled_optimizers=disabled_optimizers(model))
    except _ORT_ERRORS as exc:
        if "IR version" not in str(exc) and "opset" not in str(exc).lower():
            raise
        raise TrtqError(
            f"onnxruntime {ort.__version__} cannot run this model (IR version {model.ir_version}): {ort_reason(exc)}.",
            "upgrade onnxruntime, or re-export the model for an older IR version/opset "
            "(newer onnx packages write IR versions that older onnxruntime releases refuse).",
        ) from exc


def session_from_file(path: str | Path, threads: int | None = None, graph: onnx.ModelProto | None = None
                      ) -> OrtSession:
    """A CPU session that onnxruntime loads from the file itself (external data included), so the
    model is never held as a Python protobuf as well: half the memory for comparing large models.

    `graph` is the file's graph without its weights (loaded here when not given): it tells which
    optimizers to disable (`disabled_optimizers`).
    """
    if graph is None:
        graph = load_model(path, load_external_data=False)
    try:
        return OrtSession(str(path), session_options(threads), disabled_optimizers=disabled_optimizers(graph))
    except _LOAD_ERRORS as exc:
        raise TrtqError(
            f"onnxruntime cannot load {path} ({ort_reason(exc)}).",
            "check that the model (and its .data file, if it has external weights) was copied completely.",
        ) from exc


NCHWC_DOMAIN = "com.microsoft.nchwc"

MAX_BLOCK = 16
"""Largest NCHWc channel block onnxruntime uses (AVX-512); channel counts that are multiples of it
have no padding lanes for any block size."""


@dataclass(frozen=True)
class ExposingSession:
    """A session that exposes the observed tensors, and the output name each one has in it.

    `renamed` maps an observed tensor to the blocked tensor exposed in its place; `channels` gives
    that tensor's channel count, which its output's dim 1 must equal (checked on the first run).
    """

    session: ort.InferenceSession
    renamed: dict[str, str]
    channels: dict[str, int]
    note: str = ""
    """Why the blocked layout is not used, where it could have been (empty otherwise)."""

    def output_name(self, tensor: str) -> str:
        """The session output that carries `tensor`'s values."""
        return self.renamed.get(tensor, tensor)


def has_nchwc(model: onnx.ModelProto) -> bool:
    """Whether onnxruntime may run `model` in the NCHWc layout: an x86-64 CPU and at least one Conv."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return any(node.op_type == "Conv" and node.domain in ("", "ai.onnx") for node in model.graph.node)


def whole_block_channels(node: onnx.NodeProto) -> int:
    """The channel count of an NCHWc `ReorderOutput` whose channels fill whole blocks of every
    block size (a multiple of MAX_BLOCK: its blocked input holds no padding lanes), else 0."""
    if node.op_type != "ReorderOutput" or node.domain != NCHWC_DOMAIN:
        return 0
    channels = next((int(a.i) for a in node.attribute if a.name == "channels"), 0)
    return channels if channels > 0 and channels % MAX_BLOCK == 0 else 0


def bypass_reorders(optimized: onnx.ModelProto, tensors: Sequence[str]) -> tuple[dict[str, str], dict[str, int]]:
    """Edit onnxruntime's optimised graph in place so that `tensors` are exposed in blocked layout.

    A `ReorderOutput` whose output is one of `tensors`, a graph output and consumed by no node
    is removed, and its input (the blocked tensor) becomes the graph output instead. Tensors whose
    channel count is not a multiple of MAX_BLOCK keep their reorder (padding lanes would add
    values). Returns the renaming and the channel count of each renamed tensor.
    """
    graph = optimized.graph
    wanted = set(tensors)
    outputs = {o.name for o in graph.output}
    consumed = {name for node in graph.node for name in node.input}
    renamed: dict[str, str] = {}
    channels: dict[str, int] = {}
    kept = []
    for node in graph.node:
        out = node.output[0] if node.output else ""
        whole = whole_block_channels(node)
        if whole and out in wanted and out in outputs and out not in consumed:
            renamed[out] = node.input[0]
            channels[out] = whole
        else:
            kept.append(node)
    if not renamed:
        return {}, {}
    del graph.node[:]
    graph.node.extend(kept)
    exposed = []
    for output in graph.output:
        if output.name in renamed:
            output = onnx.helper.make_tensor_value_info(renamed[output.name], output.type.tensor_type.elem_type, None)
        exposed.append(output)
    del graph.output[:]
    graph.output.extend(exposed)
    return renamed, channels


def make_exposing_session(
    model: onnx.ModelProto, tensors: Sequence[str], threads: int | None = None, spin: bool = True
) -> ExposingSession:
    """A session exposing `tensors` (which must not be graph inputs), in blocked layout where possible.

    Falls back to the plain exposing session where the model never runs in NCHWc, no reorder can
    be skipped, or the blocked-layout route fails (its files cannot be written, say); the reason
    is kept in `note`. The optimised files live in a temporary folder removed with the session.
    """
    if not tensors or not has_nchwc(model):
        return ExposingSession(make_session(model, threads, spin, outputs=tensors), {}, {})
    folder = tempfile.TemporaryDirectory(prefix="trtq-nchwc-", ignore_cleanup_errors=True)
    directory = Path(folder.name)
    try:
        plain = make_session(model, threads, spin, outputs=tensors, save_optimized=directory / "optimized.onnx")
    except _ROUTE_ERRORS as exc:  # a model onnxruntime rejects fails again below, with its own message
        folder.cleanup()
        return ExposingSession(make_session(model, threads, spin, outputs=tensors), {}, {}, _fallback_note(exc))
    try:
        optimized = onnx.load(str(directory / "optimized.onnx"), load_external_data=False)
        renamed, channels = bypass_reorders(optimized, tensors)
        if not renamed:
            folder.cleanup()
            return ExposingSession(plain, {}, {})
        onnx.save(optimized, str(directory / "exposing.onnx"))
        options = session_options(threads, spin, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)  # already optimised
        session = OrtSession(str(directory / "exposing.onnx"), options, keep=(folder,))  # removed with the session
    except _ROUTE_ERRORS as exc:
        folder.cleanup()
        return ExposingSession(plain, {}, {}, _fallback_note(exc))
    return ExposingSession(session, renamed, channels)


_ROUTE_ERRORS: tuple[type[BaseException], ...] = (OSError, DecodeError, *_ORT_ERRORS)
"""What the blocked-layout route can raise without the model being at fault (disk full, an
onnxruntime that cannot reload its own optimised graph): calibration then exposes plain NCHW."""


def _fallback_note(exc: BaseException) -> str:
    return f"observed tensors exposed in NCHW (onnxruntime's blocked-layout route failed: {type(exc).__name__}: {exc})"
