"""CPU calibration backend: onnxruntime runs the FP32 model and the observed tensors are binned.

Where trtq's custom ops are built (the usual case), they fold each observed float32 tensor into
fixed-size statistics inside the forward pass (`ort_observe`). Otherwise, and for the tensors
they cannot take (graph inputs, other dtypes), each tensor is added as a graph output (in
onnxruntime's blocked layout where that saves a copy, see `trtq.runtime.ort_session`), so one session run
yields the activations of one batch; a worker thread folds them in and drops them. Either way
memory stays bounded by one batch's activations whatever the number of samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import onnx

from trtq.calibrate.collector import StatsCollector, TensorStats
from trtq.calibrate.ort_observe import ObservingSession, make_observing_session
from trtq.devices import usable_cpus
from trtq.runtime.ort_session import (
    _ORT_ERRORS,
    ExposingSession,
    make_exposing_session,
    make_session,
)


def stats_threads(cores: int) -> int:
    """Threads that bin statistics: one per four cores (onnxruntime keeps the rest busy), at least one.

    On a 2-core machine one thread already takes the time onnxruntime leaves; on 16 cores a single
    thread binning ResNet-50's activations took longer than the forward pass it overlaps.
    """
    return max(1, min(8, cores // 4))


class OrtBackend:
    """onnxruntime (CPU) calibration backend.

    With trtq's observer ops, one session run folds the batch's statistics (`ort_observe`).
    Without them, observed tensors are written by onnxruntime straight into two sets of buffers
    this backend owns (IO binding): while the worker thread folds one set into the statistics,
    the next batch runs into the other. Reusing buffers avoids allocating (and page-faulting)
    every observed activation on every batch, which costs as much as the statistics on large
    detectors. Observed graph inputs are folded from the feeds on the worker thread.
    """

    name = "onnxruntime-cpu"

    def __init__(self, model: onnx.ModelProto, tensors: Sequence[str], histogram: bool = True,
                 threads: int | None = None, observer_ops: bool = True) -> None:
        self._tensors = list(dict.fromkeys(tensors))
        input_names = {i.name for i in model.graph.input}
        self._from_feeds = [t for t in self._tensors if t in input_names]
        self._fetch = [t for t in self._tensors if t not in input_names]
        self._model, self._threads = model, threads or usable_cpus()
        self._collector = StatsCollector(self._tensors, histogram=histogram)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trtq-stats")
        binners = stats_threads(usable_cpus())
        self._binners = ThreadPoolExecutor(max_workers=binners, thread_name_prefix="trtq-bin") if binners > 1 else None
        self._pending: Future[None] | None = None
        self._observed_once = False
        self._observing: ObservingSession | None = None
        self._exposing: ExposingSession | None = None
        self._note = ""
        if self._fetch and observer_ops:
            self._observing, self._note = make_observing_session(model, self._fetch, self._threads,
                                                                 histogram=histogram)
        if self._observing is None:
            self._expose()

    def _expose(self) -> None:
        """Switch to exposing the observed tensors as graph outputs (no observer ops)."""
        self._exposing = make_exposing_session(self._model, self._fetch, self._threads, spin=False)
        self._session = self._exposing.session
        self._outputs = [self._exposing.output_name(t) for t in self._fetch]
        self._signature: tuple | None = None
        self._buffers: list[list[np.ndarray]] = []
        self._slot = 0

    def observe(self, batch: Mapping[str, np.ndarray], outputs: bool = False) -> list[np.ndarray] | None:
        """Run one batch; exposed tensors are folded in on the worker thread while the next batch runs.

        At most one batch waits for the worker, so memory stays bounded by two batches' activations.
        With `outputs`, the model's outputs come back where the observer ops ran (they compute them
        anyway); None otherwise.
        """
        feeds = {name: np.ascontiguousarray(value) for name, value in batch.items()}
        values: list[np.ndarray] = []
        found: list[np.ndarray] | None = None
        if self._observing is not None and self._fetch:
            found = self._run_observing(feeds)
        if self._fetch and found is None:
            values = self._run_exposing(feeds)
        observed = list(zip(self._fetch, values)) + [(name, feeds[name]) for name in self._from_feeds]
        self._wait()
        if observed:
            self._pending = self._worker.submit(self._fold, observed)
        return found if outputs else None

    def _run_observing(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray] | None:
        """Run the batch through the observing session; the model's outputs. If that fails on the first
        batch (a blocked tensor with padding lanes, say), drop the ops, note why, and return None: the
        caller then runs the batch with the tensors exposed, as every later batch will be."""
        assert self._observing is not None
        try:
            found = self._observing.run(feeds)
        except _ORT_ERRORS as exc:
            if self._observed_once:
                raise
            self._observing.reset()
            self._observing = None
            self._note = f"statistics folded outside onnxruntime (its run with trtq's observer ops failed: {exc})"
            self._expose()
            return None
        self._observed_once = True
        return found

    def _run_exposing(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the batch with the observed tensors exposed, into the buffer set the worker is not reading."""
        signature = tuple(sorted((name, value.shape, value.dtype.str) for name, value in feeds.items()))
        if signature != self._signature:
            # first batch, or new input shapes (a last partial batch): plain run, then size the buffers
            values = self._session.run(self._outputs, feeds)
            if not self._blocked_layout_ok(values):
                values = self._session.run(self._outputs, feeds)
            self._wait()
            self._signature = signature
            self._buffers = [values, [np.empty_like(v) for v in values]]
            self._slot = 1
            return values
        values = self._buffers[self._slot]
        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name, buffer in zip(self._outputs, values):
            binding.bind_output(name, "cpu", 0, buffer.dtype, list(buffer.shape), buffer.ctypes.data)
        self._session.run_with_iobinding(binding)
        self._wait()
        self._slot ^= 1
        return values

    def _blocked_layout_ok(self, values: list[np.ndarray]) -> bool:
        """Check that every tensor exposed in blocked layout has exactly its channels (no padding).

        If one does not (a block size above MAX_BLOCK), switch to the plain exposing session and
        return False so that the caller runs the batch again.
        """
        channels = self._exposing.channels if self._exposing is not None else {}
        if all(v.ndim > 1 and v.shape[1] == channels[t] for t, v in zip(self._fetch, values) if t in channels):
            return True
        note = "observed tensors exposed in NCHW (a blocked tensor had padding lanes)"
        self._exposing = ExposingSession(make_session(self._model, self._threads, spin=False, outputs=self._fetch), {}, {},
                                         note)
        self._session = self._exposing.session
        self._outputs = list(self._fetch)
        return False

    def _fold(self, observed: list[tuple[str, np.ndarray]]) -> None:
        """Fold one batch into the statistics; with several binning threads, tensors go in parallel,
        largest first (each tensor still sees its batches in order, so results do not change)."""
        if self._binners is None:
            for name, value in observed:
                self._collector.update(name, value)
            return
        largest_first = sorted(observed, key=lambda item: -item[1].size)
        for _ in self._binners.map(lambda item: self._collector.update(*item), largest_first):
            pass

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def stats(self) -> dict[str, TensorStats]:
        """Statistics of every observed tensor (after the last batch is folded in)."""
        self._wait()
        found = self._collector.stats()
        if self._observing is not None:
            found.update(self._observing.stats())
        return {name: found[name] for name in self._tensors}

    def notes(self) -> tuple[str, ...]:
        """Why statistics were folded outside onnxruntime, or tensors exposed in NCHW, where trtq's
        faster routes could not be used."""
        return tuple(note for note in (self._note, self._exposing.note if self._exposing else "") if note)
