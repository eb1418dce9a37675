"""CPU calibration backend: onnxruntime runs the FP32 model with the observed tensors exposed.

Each observed tensor is added as a graph output, so one session run yields the activations of
one batch; they are folded into fixed-size statistics and dropped, keeping memory bounded by
one batch's activations whatever the number of samples.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from trtq.calibrate.collector import StatsCollector, TensorStats
from trtq.model import split_initializers, tensor_types

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


_EXTERNAL_TYPES = frozenset(
    getattr(onnx.TensorProto, t) for t in (
        "FLOAT", "FLOAT16", "DOUBLE", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BOOL")
)
"""Initializer types that numpy (and so an onnxruntime OrtValue) represents natively."""


def make_session(
    model: onnx.ModelProto, threads: int | None = None, spin: bool = True, outputs: Sequence[str] = ()
) -> ort.InferenceSession:
    """A CPU onnxruntime session for an in-memory model, plus extra graph `outputs` to expose.

    Only the graph travels as protobuf bytes: large weights are handed to onnxruntime as
    external initializers that view the model's own bytes. Serialising the weights (twice the
    model's size in copies) used to cost more than creating the session, and any model size works
    (no 2 GB protobuf limit, no temporary file). `spin=False` stops idle intra-op threads from
    spinning, leaving the CPU to other work in this process (the calibration statistics thread).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    skeleton, large = split_initializers(model)
    names, values, arrays = [], [], []
    for init in large:
        if init.data_type not in _EXTERNAL_TYPES:
            skeleton.graph.initializer.append(init)
            continue
        array = np.frombuffer(init.raw_data, dtype=helper.tensor_dtype_to_np_dtype(init.data_type))
        if sys.byteorder == "big":  # ONNX raw data is little-endian
            array = array.byteswap()
        stub = skeleton.graph.initializer.add()
        stub.name, stub.data_type, stub.data_location = init.name, init.data_type, onnx.TensorProto.EXTERNAL
        stub.dims.extend(init.dims)
        stub.external_data.add(key="location", value="trtq-in-memory")  # never read: the values are passed below
        names.append(init.name)
        arrays.append(array)
        values.append(ort.OrtValue.ortvalue_from_numpy(array.reshape(tuple(init.dims))))
    if names:
        options.add_external_initializers(names, values)
    session = ort.InferenceSession(expose_tensors(skeleton, outputs).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    session._trtq_weights = (arrays, values)  # onnxruntime may read the buffers for the session's lifetime
    return session


class OrtBackend:
    """onnxruntime (CPU) calibration backend.

    Observed tensors are written by onnxruntime straight into two sets of buffers this backend
    owns (IO binding): while the worker thread folds one set into the statistics, the next batch
    runs into the other. Reusing buffers avoids allocating (and page-faulting) every observed
    activation on every batch, which costs as much as the statistics on large detectors.
    """

    name = "onnxruntime-cpu"

    def __init__(self, model: onnx.ModelProto, tensors: Sequence[str], histogram: bool = True,
                 threads: int | None = None) -> None:
        self._tensors = list(dict.fromkeys(tensors))
        input_names = {i.name for i in model.graph.input}
        self._from_feeds = [t for t in self._tensors if t in input_names]
        self._fetch = [t for t in self._tensors if t not in input_names]
        self._session = make_session(model, threads or os.cpu_count(), spin=False, outputs=self._fetch)
        self._collector = StatsCollector(self._tensors, histogram=histogram)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trtq-stats")
        self._pending: Future[None] | None = None
        self._signature: tuple | None = None
        self._buffers: list[list[np.ndarray]] = []
        self._slot = 0

    def observe(self, batch: Mapping[str, np.ndarray]) -> None:
        """Run one batch; its statistics are folded in on the worker thread while the next batch runs.

        At most one batch waits for the worker, so memory stays bounded by two batches' activations.
        """
        feeds = {name: np.ascontiguousarray(value) for name, value in batch.items()}
        signature = tuple(sorted((name, value.shape, value.dtype.str) for name, value in feeds.items()))
        if not self._fetch:
            values: list[np.ndarray] = []
        elif signature != self._signature:
            # first batch, or new input shapes (a last partial batch): plain run, then size the buffers
            values = self._session.run(self._fetch, feeds)
            self._wait()
            self._signature = signature
            self._buffers = [values, [np.empty_like(v) for v in values]]
            self._slot = 1
        else:
            values = self._buffers[self._slot]
            binding = self._session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            for name, buffer in zip(self._fetch, values):
                binding.bind_output(name, "cpu", 0, buffer.dtype, list(buffer.shape), buffer.ctypes.data)
            self._session.run_with_iobinding(binding)
            self._wait()
            self._slot ^= 1
        observed = list(zip(self._fetch, values)) + [(name, feeds[name]) for name in self._from_feeds]
        self._pending = self._worker.submit(self._fold, observed)

    def _fold(self, observed: list[tuple[str, np.ndarray]]) -> None:
        for name, value in observed:
            self._collector.update(name, value)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def stats(self) -> dict[str, TensorStats]:
        """Statistics of every observed tensor (after the last batch is folded in)."""
        self._wait()
        return self._collector.stats()

    def notes(self) -> tuple[str, ...]:
        """Nothing to report: onnxruntime runs every node."""
        return ()
