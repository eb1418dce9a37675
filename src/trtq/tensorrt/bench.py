"""`trtq bench`: timings reported as trtexec's performance summary reports them.

Each query records CUDA events around its H2D copies, the enqueue (execute_async_v3, or the
launch of a CUDA graph captured from it) and its D2H copies, and host time around the enqueue
call. Queries run back to back on one stream after a 200 ms warm-up until at least the
requested duration (>= 3 s by default) and 10 queries have passed; statistics come from
`trtq.tensorrt.stats`. Unlike trtexec, a query waits for the previous one to finish, so
throughput is that of one stream without overlap.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from trtq.model import file_sha256
from trtq.tensorrt.commands import format_command, trtexec_bench_argv
from trtq.tensorrt.device import DeviceBackend, open_backend
from trtq.tensorrt.rtx import open_rtx_device
from trtq.tensorrt.runtime import ExecutionSession, io_tensors, load_engine, opt_shapes
from trtq.tensorrt.sidecar import engine_backend, mismatches, read_sidecar
from trtq.tensorrt.stats import BenchReport, QueryTiming, bench_report
from trtq.tensorrt.version import require_tensorrt, supports, version_string

MIN_QUERIES = 10
"""trtexec's default --iterations: the fewest timed queries even when the duration has passed."""


def bench_command(engine_path: str | Path, shapes: Mapping[str, Sequence[int]] | None, duration_s: float,
                  warmup_ms: float, cuda_graph: bool) -> str:
    """The trtexec line measuring the same thing."""
    return format_command(trtexec_bench_argv(str(engine_path), shapes, duration_s=duration_s,
                                             warmup_ms=warmup_ms, cuda_graph=cuda_graph))


def bench_engine(
    engine_path: str | Path,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    duration_s: float = 3.0,
    warmup_ms: float = 200.0,
    cuda_graph: bool = False,
    backend: str = "auto",
    seed: int = 0,
    engine_library: str = "auto",
) -> BenchReport:
    """Benchmark an engine on random inputs of `shapes` (default: profile 0's OPT shapes).

    `backend` reaches the GPU (torch, cuda-python); `engine_library` is tensorrt or tensorrt-rtx
    ("auto": what the engine's sidecar says it was built with).
    """
    engine_path = Path(engine_path)
    command = bench_command(engine_path, shapes, duration_s, warmup_ms, cuda_graph)
    library = engine_backend(engine_path, engine_library)
    trt, caps = require_tensorrt(f"benchmark {engine_path.name}", [command], backend=library)
    device = open_rtx_device(backend, f"benchmark {engine_path.name}") if caps.track == "rtx" \
        else open_backend(backend)
    sidecar = read_sidecar(engine_path)
    found = mismatches(sidecar, version_string(trt), device.device_name(), file_sha256(engine_path))
    if cuda_graph and sidecar is not None and sidecar.build_options.get("dla"):
        cuda_graph = False
        found.append("CUDA graphs and DLA engines do not mix (as in trtexec), so --cuda-graph was turned off.")
    return _bench(trt, engine_path, device, shapes, duration_s, warmup_ms, cuda_graph, seed, found)


def _random_inputs(session: ExecutionSession, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for tensor in session.tensors:
        if tensor.is_input:
            shape = session.shapes[tensor.name]
            dtype = np.dtype(tensor.dtype)
            if dtype.kind == "f":
                arrays[tensor.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                arrays[tensor.name] = rng.integers(0, 2, shape).astype(dtype)
            else:
                arrays[tensor.name] = rng.integers(0, 8, shape).astype(dtype)
    return arrays


@supports("10", "11", "rtx")
def _bench(
    trt: ModuleType, engine_path: Path, device: DeviceBackend, shapes: Mapping[str, Sequence[int]] | None,
    duration_s: float, warmup_ms: float, cuda_graph: bool, seed: int, notes: list[str],
) -> BenchReport:
    _runtime, engine = load_engine(trt, engine_path)
    tensors = io_tensors(trt, engine)
    session = ExecutionSession(trt, engine, device, dict(shapes) if shapes else opt_shapes(engine, tensors))
    try:
        inputs = _random_inputs(session, seed)
        if any(not t.linear for t in session.tensors if t.is_input):
            inputs = {}
            notes.append("Some inputs use vectorized formats; their buffers are left as allocated (no H2D copy).")
        outputs = {t.name: np.empty(session.shapes[t.name], dtype=np.dtype(t.dtype))
                   for t in session.tensors if not t.is_input and t.linear}
        session.enqueue()
        device.synchronize(session.stream)
        graph = device.capture(session.stream, session.enqueue) if cuda_graph else None
        events = [device.new_event() for _ in range(4)]

        def query() -> QueryTiming:
            device.record(events[0], session.stream)
            for name, array in inputs.items():
                device.to_device(session.pointers[name], array, session.stream)
            device.record(events[1], session.stream)
            start = time.perf_counter()
            if graph is not None:
                device.launch(graph, session.stream)
            else:
                session.enqueue()
            enqueue_ms = (time.perf_counter() - start) * 1000.0
            device.record(events[2], session.stream)
            for name, out in outputs.items():
                device.to_host(session.pointers[name], out, session.stream)
            device.record(events[3], session.stream)
            device.synchronize(session.stream)
            return QueryTiming(
                enqueue=enqueue_ms,
                h2d=device.elapsed_ms(events[0], events[1]),
                gpu_compute=device.elapsed_ms(events[1], events[2]),
                d2h=device.elapsed_ms(events[2], events[3]),
            )

        warmup_queries = 0
        warmup_end = time.perf_counter() + warmup_ms / 1000.0
        while time.perf_counter() < warmup_end:
            query()
            warmup_queries += 1
        timings: list[QueryTiming] = []
        start = time.perf_counter()
        deadline = start + duration_s
        while time.perf_counter() < deadline or len(timings) < MIN_QUERIES:
            timings.append(query())
        walltime = time.perf_counter() - start
    finally:
        session.close()
    return bench_report(
        str(engine_path), timings, walltime,
        warmup_queries=warmup_queries, warmup_ms=warmup_ms, cuda_graph=cuda_graph,
        shapes={n: s for n, s in session.shapes.items() if n in {t.name for t in session.tensors if t.is_input}},
        warnings=notes,
    )
