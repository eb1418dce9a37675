"""The calibration loop: batches -> backend statistics -> per-tensor amax (a RangesTable)."""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import onnx
from tqdm import tqdm

from trtq import __version__
from trtq.calibrate.algorithms import compute_amax, needs_histogram
from trtq.calibrate.aliases import value_roots
from trtq.calibrate.auto import (
    FALLBACK,
    JUDGE_MAX_SAMPLES,
    JUDGE_SAMPLES,
    JUDGE_SHARE,
    SETTLE_BYTES,
    JudgedLayer,
    RunnerFactory,
    all_candidates,
    choose_ranges,
    explain,
)
from trtq.calibrate.backend import make_backend
from trtq.calibrate.collector import TensorStats
from trtq.calibrate.grids import INT8, Grid
from trtq.calibrate.ort_failures import (
    ORT_ERRORS,
    explain_run_failure,
    explain_session_failure,
)
from trtq.calibrate.shared import RangeGroup, tie_candidates, tie_ranges
from trtq.data import Dataset
from trtq.data.prefetch import prefetch
from trtq.devices import usable_cpus
from trtq.errors import TrtqError
from trtq.formats.ranges import RangeChoice, RangesTable, TableCheck

AMAX_THREADS = min(4, usable_cpus())
"""Threads computing per-tensor amax. numpy releases the GIL in the algorithms' array passes, but the
passes are short: on a 16-core machine 4 threads took 231 ms for 132 tensors, 16 threads 568 ms."""


CALIBRATION_BATCH_FIX = "calibrate at batch size 1 (drop --shape, or give it a first dim of 1)"
"""How to calibrate a model that fails at the batch size --shape asked for."""


@dataclass(frozen=True)
class CalibrationResult:
    """Ranges plus the statistics they came from (kept for reports) and the time taken."""

    ranges: RangesTable
    stats: dict[str, TensorStats]
    seconds: float
    backend: str
    notes: tuple[str, ...] = ()
    """What the backend reports about how it ran (e.g. nodes that fell back to onnxruntime)."""


def _feed(dataset: Dataset, batch_size: int, drop_partial: bool, digest: hashlib._Hash,
          dropped: list[int]) -> Iterator[Mapping[str, np.ndarray]]:
    """The batches to calibrate on, hashed as they pass (runs on the prefetch thread)."""
    for batch in dataset.batches(batch_size):
        n = len(next(iter(batch.values())))
        if drop_partial and n < batch_size:
            dropped.append(n)
            return
        for name in sorted(batch):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(batch[name]).data)
        yield batch


def judging_batches(num_samples: int | None, batch_size: int, samples: int | None = None) -> list[int]:
    """Indices of the batches `--method auto` judges on, spread over the data set (its first ones when
    the count is unknown), so that sorted folders do not judge on one class.

    By default one sample in JUDGE_SHARE, at least JUDGE_SAMPLES and at most JUDGE_MAX_SAMPLES: the
    judging costs a fixed share of the calibration pass.
    """
    return judging_plan(num_samples, batch_size, samples)[0]


def judging_plan(num_samples: int | None, batch_size: int, samples: int | None = None, sliceable: bool = False
                 ) -> tuple[list[int], int | None]:
    """The batches `--method auto` judges on and how many samples of each (None: the whole batch).

    Where the model's batch dim is dynamic (`sliceable`), the judged samples are taken a few from each
    of more batches rather than whole batches: at --shape x:32x... a whole batch would be judged once
    per candidate range and per candidate table, about 15 forward passes of 32 samples against a
    calibration pass that may hold only 32 in all. A fixed batch dim runs whole batches only.
    """
    if samples is None:
        samples = max(JUDGE_SAMPLES, min(JUDGE_MAX_SAMPLES, (num_samples or 0) // JUDGE_SHARE))
    count = max(1, num_samples // batch_size) if num_samples else None
    wanted = max(1, -(-samples // batch_size))
    if sliceable and batch_size > 1:
        wanted = min(samples, count) if count is not None else wanted
    if count is None:
        indices = list(range(wanted))
    else:
        indices = sorted({min(count - 1, int((j + 0.5) * count / wanted)) for j in range(wanted)})
    take = -(-samples // len(indices)) if sliceable and batch_size > 1 else None
    return indices, take if take is not None and take < batch_size else None


def run_calibration(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    dataset: Dataset,
    *,
    model_sha256: str,
    model_name: str = "",
    method: str = "entropy",
    percentile: float = 99.99,
    batch_size: int = 1,
    device: str = "cpu",
    drop_partial: bool = False,
    progress: bool = True,
    grid: Grid = INT8,
    layers: Sequence[JudgedLayer] = (),
    check_tables: RunnerFactory | None = None,
    judge_layers: bool = False,
    shared: Sequence[RangeGroup] = (),
) -> CalibrationResult:
    """Observe `tensors` of the FP32 `model` over `dataset` and compute one amax per tensor.

    The data hash covers every batch's bytes in order, so a ranges table names exactly the data
    it came from. `drop_partial` skips a last, smaller batch (for models whose batch dim is fixed).
    `grid` is what the ranges quantize to (INT8 or FP8 E4M3); `mse` minimises the error on it.
    With method "auto", the tensors that `layers` quantize get the candidate range that harms those
    layers' outputs least on `grid`, checked end to end against whole-model tables run by
    `check_tables` (`trtq.calibrate.auto`); the others get its fallback (mse). `judge_layers` adds the table of
    per-tensor winners judged on the consuming layers to those checked. Each of the `shared` groups (the
    Q/DQ pairs around a MaxPool, `trtq.calibrate.shared`) takes one range, in every table auto checks too.
    """
    start = time.perf_counter()
    roots = value_roots(model, tensors)  # a reshaped or transposed copy of a tensor is observed once
    observed = list(dict.fromkeys(roots.values()))
    batches = None if dataset.num_samples is None else -(-dataset.num_samples // batch_size)
    name = model_name or "the model"
    try:
        backend = make_backend(device, model, observed, histogram=needs_histogram(method), batches=batches)
    except ORT_ERRORS as exc:
        problem = explain_session_failure(model, name)
        if problem is None:
            raise
        raise problem from exc
    digest = hashlib.sha256()
    judging: set[int] = set()
    take: int | None = None  # judged samples per judging batch (None: all of it)
    if method == "auto":
        indices, take = judging_plan(dataset.num_samples, batch_size, sliceable=not drop_partial)
        judging = set(indices)
    kept: list[Mapping[str, np.ndarray]] = []  # the judging batches of --method auto
    every: list[Mapping[str, np.ndarray]] | None = [] if method == "auto" else None  # all of them, while small
    every_bytes = 0
    references: list[list[np.ndarray] | None] = []  # their FP32 outputs, where the backend returns them
    samples = 0
    with tqdm(total=dataset.num_samples, desc="calibrating", unit="sample", disable=not progress,
              dynamic_ncols=True, leave=False) as bar:
        dropped: list[int] = []
        for index, batch in enumerate(prefetch(_feed(dataset, batch_size, drop_partial, digest, dropped))):
            try:
                found = backend.observe(batch, outputs=True) if index in judging else backend.observe(batch)
            except ORT_ERRORS as exc:
                problem = explain_run_failure(model, batch, samples, name, str(dataset.source), CALIBRATION_BATCH_FIX)
                if problem is None:
                    raise
                raise problem from exc
            if index in judging:
                if take is not None and len(next(iter(batch.values()))) > take:
                    # the FP32 outputs of a slice are recomputed by the check: not every output has the batch dim first
                    kept.append({name: value[:take] for name, value in batch.items()})
                    references.append(None)
                else:
                    kept.append(batch)
                    references.append(found)
            if every is not None:
                every_bytes += sum(np.asarray(value).nbytes for value in batch.values())
                if every_bytes <= SETTLE_BYTES:
                    every.append(batch)
                else:
                    every = None
            n = len(next(iter(batch.values())))
            samples += n
            bar.update(n)
    if dropped:
        warnings.warn(
            f"The last {dropped[0]} samples of {dataset.description} were skipped: the model's batch dimension "
            f"is fixed at {batch_size}.",
            stacklevel=2,
        )
    if samples == 0:
        raise TrtqError(f"Calibration data {dataset.description} yielded no samples.", "pass a non-empty --calib source.")
    stats = backend.stats()
    backend_name, notes = backend.name, backend.notes()
    del backend  # its session's memory goes back before --method auto's sessions take theirs (peak memory)
    bad = sorted(name for name, s in stats.items() if s.nan_count)
    if bad:
        raise TrtqError(
            f"The FP32 model produced NaN/Inf in tensor {bad[0]!r} ({stats[bad[0]].nan_count} values) on the "
            "calibration data.",
            "check the preprocessing (a wrong mean/std or layout can overflow), or exclude that layer.",
        )
    known: dict[str, dict[str, float]] = {}  # --method auto: every candidate amax per observed tensor
    with ThreadPoolExecutor(max_workers=AMAX_THREADS, thread_name_prefix="trtq-amax") as pool:
        if method == "auto":  # every candidate once; the tensors auto does not judge keep its fallback
            known = dict(zip(observed, pool.map(lambda name: all_candidates(stats[name], grid), observed)))
            observed_amax = {name: known[name][FALLBACK] for name in observed}
        else:
            observed_amax = dict(zip(observed, pool.map(
                lambda name: float(compute_amax(stats[name], method, percentile=percentile, grid=grid)), observed)))
    amax = tie_ranges({name: observed_amax[roots[name]] for name in tensors}, shared)
    stats = {name: stats[roots[name]] if roots[name] == name else replace(stats[roots[name]], name=name)
             for name in tensors}
    choices: dict[str, RangeChoice] = {}
    table_checks: dict[str, TableCheck] = {}
    options: dict[str, float | int | str] = {"batch_size": batch_size, "device": device}
    if method == "auto":
        complete = all(found is not None for found in references)
        auto = choose_ranges(model, layers, stats, kept, grid=grid, check_tables=check_tables, progress=progress,
                             judge=judge_layers, every=every,
                             references=[list(found or ()) for found in references] if complete else None,
                             known=tie_candidates({name: known[roots[name]] for name in tensors}, shared))
        amax.update(auto.amax)
        choices = {**{name: explain(stats[name], "mse", amax[name]) for name in tensors}, **auto.choices}
        choices.update({member: replace(choices[member], shared_with=group.sinks[0]) for group in shared
                        for member in group.members if member in choices and member not in group.sinks
                        and amax[member] == amax[group.sinks[0]]})  # --judge-layers' table may untie them
        table_checks = auto.checks
        options.update({"table": auto.table, "judged_samples": auto.samples,
                        "tables_checked_on": "every sample" if auto.settled else "judging samples"})
    if method == "percentile":
        options["percentile"] = percentile
    if grid.name != INT8.name:
        options["precision"] = grid.name
    ranges = RangesTable(
        amax=amax,
        method=method,
        model_sha256=model_sha256,
        num_samples=samples,
        data_sha256=digest.hexdigest(),
        options=options,
        model_name=model_name,
        trtq_version=__version__,
        choices=choices,
        table_scores={name: check.snr_db for name, check in table_checks.items()},
        table_checks=table_checks,
    )
    return CalibrationResult(ranges=ranges, stats=stats, seconds=time.perf_counter() - start, backend=backend_name,
                             notes=notes)
