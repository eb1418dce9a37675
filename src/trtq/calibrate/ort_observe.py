"""Statistics folded inside onnxruntime's forward pass, by trtq's custom ops (`_ortobserve.c`).

Exposing an observed tensor as a graph output makes onnxruntime keep it alive, written to
memory, until the run ends, and hands it to Python to bin: on a 16-core CPU that exposure alone
cost half of ResNet-50's forward pass. Here each observed tensor instead passes through an
`Observe` op that reads it right after it is produced, on onnxruntime's own intra-op threads,
and folds it into a state row that Python owns (a numpy array whose address is the op's
`state` attribute). The rule is StatsCollector's, batch by batch, so statistics are identical.

The ops are inserted into onnxruntime's *optimised* graph (the offline-optimisation workflow of
`trtq.runtime.ort_session`): optimising the model with the observed tensors exposed keeps each of them
materialised, the ops then replace that exposure, and the edited graph is loaded with
optimisations off. Where onnxruntime runs a tensor in its blocked NCHWc layout and copies it
back to NCHW only for the exposure, the op reads the blocked tensor and the copy is dropped.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from trtq.calibrate.collector import NUM_BINS, TensorStats
from trtq.model import tensor_types
from trtq.runtime.ort_session import (
    _ROUTE_ERRORS,
    OrtSession,
    make_session,
    session_options,
    whole_block_channels,
)

DOMAIN = "trtq.observe"
HEADER = 8
"""int64 words before the histogram in a state row: count, nan_count, amax, hist_max, scale, 3 spare."""

_MIN_ORT = (1, 18)
"""First onnxruntime whose custom ops can alias an output to an input (and run ParallelFor)."""

_OBSERVER_ERRORS: tuple[type[BaseException], ...] = (*_ROUTE_ERRORS, ValueError)
"""What makes the observer route give way to statistics folded in Python."""


def observer_library() -> str | None:
    """Path of the compiled custom-op library, or None where it cannot be used (not built, or an
    onnxruntime older than 1.18)."""
    version = tuple(int(part) for part in ort.__version__.split(".")[:2] if part.isdigit())
    if version < _MIN_ORT:
        return None
    spec = importlib.util.find_spec("trtq.calibrate._ortobserve")
    return spec.origin if spec is not None and spec.origin else None


@dataclass(frozen=True)
class ObservingSession:
    """A session whose `Observe` ops fold the statistics of `observed` into `state`.

    Row i of `state` belongs to `observed[i]`. `outputs` are the session outputs to fetch each run
    (the sinks' dummies and the model's own outputs); `blocked` names the tensors read in NCHWc.
    """

    session: ort.InferenceSession
    state: np.ndarray
    observed: tuple[str, ...]
    outputs: tuple[str, ...]
    blocked: tuple[str, ...]
    bins: int

    model_outputs: int = 0
    """How many of `outputs` (the last ones) are the model's own outputs."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch: the ops fold its statistics into `state`; the model's outputs come back."""
        found = self.session.run(list(self.outputs), dict(feeds))
        return list(found[len(found) - self.model_outputs:]) if self.model_outputs else []

    def stats(self) -> dict[str, TensorStats]:
        """Every observed tensor's statistics so far (copies)."""
        found = {}
        for name, row in zip(self.observed, self.state):
            header = row[:HEADER].copy()
            amax, hist_max = header[2:4].view(np.float64)
            found[name] = TensorStats(name=name, amax=float(amax), hist=row[HEADER:].copy(),
                                      hist_max=float(hist_max) if self.bins else 0.0,
                                      count=int(header[0]), nan_count=int(header[1]))
        return found

    def reset(self) -> None:
        """Forget all statistics (after a failed run, before the batch is run again elsewhere)."""
        self.state[:] = 0


def insert_observers(graph: onnx.GraphProto, tensors: Sequence[str], addresses: Sequence[int], bins: int,
                     keep_outputs: set[str]) -> tuple[list[str], list[str]]:
    """Edit an optimised graph (whose outputs include `tensors`) so that ops observe them instead.

    Each tensor gets an `Observe` pass-through that all its readers then read, or, where nothing
    else reads it or it must stay a graph output (`keep_outputs`), an `ObserveSink` with a
    1-element dummy output. A `ReorderOutput` that only copies a blocked tensor back to NCHW for the
    exposure is dropped and the blocked tensor observed (channels a multiple of MAX_BLOCK: no
    padding lanes; the op checks dim 1). Returns the sinks' outputs and the tensors read blocked.
    """
    # Nodes are identified by position: id() of a protobuf wrapper is no identity (upb reuses addresses).
    nodes_in = list(graph.node)
    producers = {out: index for index, node in enumerate(nodes_in) for out in node.output}
    readers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes_in):
        for name in node.input:
            readers.setdefault(name, []).append(index)
    dropped: set[int] = set()
    after: dict[int, list[onnx.NodeProto]] = {}
    sinks: list[str] = []
    blocked: list[str] = []
    for tensor, address in zip(tensors, addresses):
        producer = producers.get(tensor)
        if producer is None:
            raise ValueError(f"tensor {tensor!r} has no producer in onnxruntime's optimised graph")
        channels = whole_block_channels(nodes_in[producer])
        target, check = tensor, 0
        if channels and not readers.get(tensor) and tensor not in keep_outputs:
            dropped.add(producer)
            target, check = nodes_in[producer].input[0], channels
            blocked.append(tensor)
            producer = producers[target]
        attributes: dict[str, Any] = {"state": address, "bins": bins, "channels": check}
        live = [reader for reader in readers.get(target, []) if reader not in dropped]
        if live and target not in keep_outputs:
            observed = f"{target}/trtq_observed"
            for reader in live:
                for i, name in enumerate(nodes_in[reader].input):
                    if name == target:
                        nodes_in[reader].input[i] = observed
            node = helper.make_node("Observe", [target], [observed], name=f"trtq_observe/{tensor}", domain=DOMAIN,
                                    **attributes)
        else:
            sink = f"{tensor}/trtq_sink"
            sinks.append(sink)
            node = helper.make_node("ObserveSink", [target], [sink], name=f"trtq_observe/{tensor}", domain=DOMAIN,
                                    **attributes)
        after.setdefault(producer, []).append(node)
    nodes = []
    for index, node in enumerate(nodes_in):
        if index not in dropped:
            nodes.append(node)
        nodes.extend(after.get(index, []))
    del graph.node[:]
    graph.node.extend(nodes)
    observed_set = set(tensors)
    outputs = [o for o in graph.output if o.name not in observed_set or o.name in keep_outputs]
    outputs += [helper.make_tensor_value_info(sink, onnx.TensorProto.FLOAT, [1]) for sink in sinks]
    del graph.output[:]
    graph.output.extend(outputs)
    return sinks, blocked


def make_observing_session(model: onnx.ModelProto, tensors: Sequence[str], threads: int | None = None,
                           histogram: bool = True, num_bins: int = NUM_BINS) -> tuple[ObservingSession | None, str]:
    """A session that folds the statistics of `tensors` (values the model computes, not its
    inputs) in its forward pass, and "", or None and why not, where the ops are missing, cannot
    take every tensor (they read float32 only) or the route fails: the caller then exposes them.

    The optimised files live in a temporary folder removed with the session.
    """
    library = observer_library()
    if library is None:
        return None, (f"statistics folded in Python (trtq's onnxruntime observer ops need onnxruntime >= 1.18 and "
                      f"trtq's C extension; found onnxruntime {ort.__version__}, extension "
                      f"{'built' if importlib.util.find_spec('trtq.calibrate._ortobserve') else 'not built'})")
    types = tensor_types(model)
    other = [t for t in tensors if types.get(t, onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT]
    if other:
        return None, f"statistics folded in Python (observed tensor {other[0]!r} is not float32)"
    bins = num_bins if histogram else 0
    state = np.zeros((len(tensors), HEADER + bins), dtype=np.int64)
    row_bytes = state.strides[0]
    addresses = [state.ctypes.data + i * row_bytes for i in range(len(tensors))]
    folder = tempfile.TemporaryDirectory(prefix="trtq-observe-", ignore_cleanup_errors=True)
    directory = Path(folder.name)
    try:
        make_session(model, threads, outputs=tensors, save_optimized=directory / "optimized.onnx", optimize_only=True)
        optimized = onnx.load(str(directory / "optimized.onnx"), load_external_data=False)
        keep = {o.name for o in model.graph.output}
        sinks, blocked = insert_observers(optimized.graph, tensors, addresses, bins, keep)
        optimized.opset_import.append(helper.make_opsetid(DOMAIN, 1))
        onnx.save(optimized, str(directory / "observing.onnx"))
        options = session_options(threads, spin=False, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)  # optimised above
        options.register_custom_ops_library(library)
        # the folder goes with the session; the ops write into `state` for the session's lifetime
        session = OrtSession(str(directory / "observing.onnx"), options, keep=(folder, state))
    except _OBSERVER_ERRORS as exc:
        folder.cleanup()
        return None, f"statistics folded in Python (trtq's observer route failed: {type(exc).__name__}: {exc})"
    outputs = tuple(sinks) + tuple(o.name for o in model.graph.output)
    return ObservingSession(session, state, tuple(tensors), outputs, tuple(blocked), bins,
                            model_outputs=len(model.graph.output)), ""
