"""CPU calibration backend: onnxruntime runs the FP32 model with the observed tensors exposed.

Each observed tensor is added as a graph output, so one session run yields the activations of
one batch; they are folded into fixed-size statistics and dropped, keeping memory bounded by
one batch's activations whatever the number of samples.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from trtq.calibrate.collector import StatsCollector, TensorStats
from trtq.model import tensor_types

_PROTOBUF_LIMIT = 1_800_000_000  # bytes; above this a model must travel with external data


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


def make_session(model: onnx.ModelProto, threads: int | None = None, spin: bool = True) -> ort.InferenceSession:
    """A CPU onnxruntime session for an in-memory model (large models go through a temp file).

    `spin=False` stops idle intra-op threads from spinning, leaving the CPU to other work in this
    process (the calibration backend's statistics thread).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    weights = sum(len(init.raw_data) for init in model.graph.initializer)
    if weights < _PROTOBUF_LIMIT:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory(prefix="trtq-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path), save_as_external_data=True, location="model.data")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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
        self._session = make_session(expose_tensors(model, self._fetch), threads or os.cpu_count(), spin=False)
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
