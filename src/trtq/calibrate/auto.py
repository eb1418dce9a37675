"""`--method auto`: per quantized tensor, the candidate range that harms its consuming layers least.

Candidates come from the streamed histogram (max, entropy, mse and a few percentiles). Each is
judged, as in EasyQuant and AIMET's range search, by the error it causes in the outputs of the
layers that read the tensor: every such layer runs with its weights on the target grid (per
channel) and its quantized inputs fake-quantized, on the activations of the first few calibration
samples, against the same layer in FP32. The winner has the smallest error, summed over its
consumers relative to each consumer's output power; near-ties go to the larger range, which is
safer on data the judge did not see.

The local judge (`trtq.calibrate.judge`) is a few onnxruntime runs on the CPU, whatever the backend
that gathered the statistics: one FP32 pass per judging batch exposing the layers' inputs and
outputs, and one run of a "bag" of the layers per candidate slot. A layer reading two quantized
activations (attention's Q.K^T and P.V) judges each with the other at its current choice; a second
round settles them after the first choices are made. Whole-model tables are then checked end to end
(`check`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Protocol

import numpy as np
import onnx
from tqdm import tqdm

from trtq.calibrate.algorithms import (
    amax_entropy,
    amax_max,
    amax_mse,
    amax_percentile,
)
from trtq.calibrate.collector import TensorStats
from trtq.calibrate.grids import INT8, Grid
from trtq.calibrate.judge import Bag, Judge, JudgedLayer, Key, slots, tensor_errors
from trtq.formats.ranges import RangeChoice, TableCheck

DEFAULT_PERCENTILE = 99.99
CANDIDATE_PERCENTILES = (99.9, DEFAULT_PERCENTILE, 99.999)
"""Percentiles offered as candidates besides max, entropy and mse."""

FALLBACK = "mse"
"""The range of tensors the judge cannot score (no quantized consumer, or a failed run); also the
start point for the other inputs of two-activation layers."""

JUDGE_SAMPLES = 4
"""Fewest calibration samples the candidates are judged on (spread evenly over the calibration data)."""

JUDGE_SHARE = 8
"""Beyond JUDGE_SAMPLES, one calibration sample in this many is judged on."""

JUDGE_MAX_SAMPLES = 16
"""Most samples judged on, whatever the calibration set's size."""

LOCAL_BATCHES = 1
"""Judging batches the consuming layers are run on (the end-to-end check uses all of them): the
layer runs cost about one forward pass per candidate and batch."""

TIE_TOLERANCE = 0.02
"""Candidates whose error is within this share of the best count as tied; the largest amax wins."""


def candidate_ranges(stats: TensorStats, grid: Grid = INT8,
                     found: Mapping[str, float] | None = None) -> dict[str, float]:
    """Candidate amax values of one tensor, by name, distinct, largest first.

    `found`: the tensor's `all_candidates`, where already computed (the calibration pass does).
    """
    found = all_candidates(stats, grid) if found is None else found
    distinct: dict[str, float] = {}
    for name, value in sorted(found.items(), key=lambda item: -item[1]):
        if value > 0 and all(abs(value - v) > 1e-6 * value for v in distinct.values()):
            distinct[name] = value
    return distinct or {"max": float(stats.amax)}


def all_candidates(stats: TensorStats, grid: Grid = INT8) -> dict[str, float]:
    """Every candidate's amax of one tensor, by name, equal values included. `mse` minimises the error
    on `grid`, exactly as `--method mse` does (`trtq.calibrate.algorithms.amax_mse`)."""
    found = {"max": amax_max(stats), "entropy": amax_entropy(stats), "mse": amax_mse(stats, grid)}
    for p in CANDIDATE_PERCENTILES:
        found[f"percentile {p:g}"] = amax_percentile(stats, p)
    return found


def clipped_share(stats: TensorStats, amax: float) -> float:
    """Share of the observed values with |x| > amax (from the histogram; a partial bin pro rata)."""
    if stats.count == 0 or amax >= stats.amax or not stats.has_histogram or stats.hist_max <= 0:
        return 0.0
    edge = amax / stats.bin_width
    whole = math.ceil(edge)
    above = float(stats.hist[whole:].sum())
    if whole > 0 and whole - 1 < stats.hist.size:
        above += float(stats.hist[whole - 1]) * (whole - edge)
    return above / stats.count



def _pick(candidates: Mapping[str, float], errors: Mapping[str, float]) -> str:
    """The candidate with the least error; near-ties (TIE_TOLERANCE) go to the largest amax."""
    if not errors:
        return FALLBACK if FALLBACK in candidates else max(candidates, key=candidates.__getitem__)
    best = min(errors.values())
    tied = [name for name in errors if errors[name] <= best * (1.0 + TIE_TOLERANCE) + 1e-30]
    return max(tied, key=candidates.__getitem__)


def _snr(relative_error: float | None) -> float | None:
    if relative_error is None:
        return None
    return math.inf if relative_error <= 0 else -10.0 * math.log10(relative_error)


def explain(stats: TensorStats, method: str, amax: float, errors: Mapping[str, float] | None = None,
            judged_samples: int = 0) -> RangeChoice:
    """Why a tensor got its range: the winner, its amax against max, what it clips, what it scored."""
    errors = errors or {}
    return RangeChoice(
        method=method,
        amax_over_max=amax / stats.amax if stats.amax > 0 else 1.0,
        clipped=clipped_share(stats, amax),
        snr_db=_snr(errors.get(method)),
        max_snr_db=_snr(errors.get("max")),
        candidates={name: s for name, value in errors.items() if (s := _snr(value)) is not None},
        judged_samples=judged_samples,
    )




PER_TENSOR = "per-tensor"
"""Name of the table of per-tensor winners among the candidate tables."""

PREFERRED_TABLE = "mse"
"""The table kept unless another is shown better end to end. Of the fixed methods, mse was the best
or within 0.15 dB of the best on every model measured with a large held-out set (README)."""

TABLE_ORDER = (PREFERRED_TABLE, PER_TENSOR, f"percentile {DEFAULT_PERCENTILE:g}", "max", "entropy",
               f"percentile {max(CANDIDATE_PERCENTILES):g}")
"""The candidate tables checked end to end: the per-tensor winners, every fixed method's table (mse,
percentile, max, entropy) and the widest percentile. Percentile 99.9 stays a per-tensor candidate only:
as a whole table it clipped too much on every model measured (2 to 11 dB below mse). A table equal
to an earlier one is run once, under the earlier name."""

CLAMP_DB = 60.0
"""Per-sample SNRs are clamped to +-this before they are compared: beyond it the noise is rounding, and a
confident classifier's softmax reaches 100+ dB on most samples, which would otherwise decide the mean."""

FAMILY_ALPHA = 0.025
"""A table replaces PREFERRED_TABLE only when its mean per-sample gain (paired over the judging samples) is at
least TABLE_MARGIN_DB at a one-sided Student's t bound: the chance, when no table is better, that one is picked
anyway, shared over the tables checked (Bonferroni). At a fixed 2 standard errors on 8 samples with five challengers,
a random-weight Swin (bench_ranges' `swin`) took `max` on samples favouring it by 2.1 dB (held out: 0.46 below mse)."""

TABLE_MARGIN_DB = 0.1
"""Least gain (dB per sample, at the lower confidence bound) that replaces PREFERRED_TABLE."""

SETTLE_VALUES = 100_000_000
"""Where the quantized activations of the whole calibration set hold at most this many values (samples times
values per sample, summed over the tensors `--method auto` chooses), every candidate table runs on every
calibration sample (`settle`) instead of racing on the judging samples, and the table with the best aggregate
output SNR wins (`pick_settled`). On the digits CNN the 16 judging samples rank mse ahead of percentile while
all 200 calibration samples rank percentile ahead, as the 300 held-out images do (bench/bench_ranges.py: the
default went from 0.44 dB below percentile to equal); over 8 calibration draws of the digits CNN it is 0.13 dB
above the best fixed method by mean, taking percentile on exactly the two draws where percentile was best; on
MTCNN's RNet and ONet within 0.05 dB of the best by mean once no table may trade one output for another
(`pick_settled`; README, bench/bench_draws.py). The bound
admits small models only (the digits CNN, the MTCNN nets, the direction classifier, a small Swin), where it
costs a fraction of a second; ResNet-50, the recognisers and the detectors race as before."""

SETTLE_MARGIN_DB = 0.1
"""Least aggregate SNR gain (dB, on every calibration sample) that replaces PREFERRED_TABLE in `pick_settled`."""

SETTLE_EFFECTIVE_SAMPLES = 32.0
"""Fewest effective samples (TableCheck.effective_samples) both tables' aggregates must rest on for `pick_settled`
to trust their order; below it the race's per-sample rule decides. A confident classifier's softmax puts its
error on a few borderline samples (the direction classifier's mse table: 5 effective of 64 lines; the digits
CNN's logits 132-135 of 200, the Swin's 52-54 of 64, the MTCNN nets' box regression 58-72 of 128): there the
aggregate over the calibration set is a few samples' verdict, and on 8 draws of the direction classifier it
took `max` on two where `max` read 1.1 and 2.6 dB below `mse` held out."""

SETTLE_BYTES = 16 * 2**20
"""Most memory the calibration inputs may take to be kept for `settle` (beyond it, auto races as before)."""

MIN_RACE_SAMPLES = 2
"""Judging samples every table runs on before one can be dropped from the check. Replayed on the recorded
per-sample errors of 8 models (every table on 32-200 calibration samples, judging subsets of 4-16),
2 picked the same tables as 3 with a third fewer runs; the checks are most of `--method auto`'s cost."""


class TableRunner(Protocol):
    """Runs the model quantized with a whole ranges table on the judging batches (trtq.evaluate.tables)."""

    def __len__(self) -> int: ...

    def scales(self, amax: Mapping[str, float]) -> Mapping[str, np.ndarray]:
        """What `run` needs to quantize with `amax` (every activation target must have a range)."""
        ...

    def run(self, scales: Mapping[str, np.ndarray], index: int) -> tuple[np.ndarray, np.ndarray]:
        """Signal and noise power, [samples, outputs], of judging batch `index` against FP32."""
        ...


RunnerFactory = Callable[[Sequence[Mapping[str, np.ndarray]], Sequence[Sequence[np.ndarray]] | None], TableRunner]
"""(judging batches (model inputs), their FP32 outputs if known) -> a TableRunner over them."""


@dataclass(frozen=True)
class AutoRanges:
    """What `choose_ranges` decided: the ranges, why per tensor, and how each candidate table scored."""

    amax: dict[str, float]
    choices: dict[str, RangeChoice]
    table: str
    """The table the ranges come from: PER_TENSOR or a candidate method's name."""
    checks: dict[str, TableCheck]
    """Each candidate table's end-to-end check on the judging samples (empty: not checked)."""
    samples: int
    """Samples the tables were checked on (the per-tensor choice used those of the first LOCAL_BATCHES batches)."""
    settled: bool = False
    """Whether the tables were compared on every calibration sample (`settle`) rather than raced (`check`)."""

    @property
    def table_scores(self) -> dict[str, float]:
        """Each checked table's aggregate output SNR (dB) on the samples it ran on."""
        return {name: check.snr_db for name, check in self.checks.items()}


def choose_ranges(
    model: onnx.ModelProto,
    layers: Sequence[JudgedLayer],
    stats: Mapping[str, TensorStats],
    batches: Sequence[Mapping[str, np.ndarray]],
    *,
    grid: Grid = INT8,
    check_tables: RunnerFactory | None = None,
    references: Sequence[Sequence[np.ndarray]] | None = None,
    known: Mapping[str, Mapping[str, float]] | None = None,
    threads: int | None = None,
    progress: bool = True,
    judge: bool = True,
    every: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> AutoRanges:
    """The amax of every tensor the `layers` quantize, chosen on `batches` (model inputs), and why.

    With `check_tables` (given the batches' FP32 outputs `references` where the calibration pass kept them),
    every candidate method's whole table runs end to end on all `batches` (`check`), and PREFERRED_TABLE is
    kept unless another is better with confidence: a few judging samples rank close tables by chance, so a
    table has to prove itself. With `judge`, per tensor, the candidate that least disturbs its consuming
    layers on the first LOCAL_BATCHES batches also wins a place in the per-tensor table, checked with the
    others (`trtq.calibrate.judge`); measured on real models, that local choice did worse end to end than the
    best fixed method (it cannot see how an error grows downstream). `stats` must hold histograms of those
    tensors. Memory: one batch's activations at a time (plus the inputs of two-activation layers of the
    local batches). `known`: per tensor, its `all_candidates` where the caller already computed them (each
    costs an mse search). `every`: all the calibration batches, where the caller kept them; if their quantized
    activations hold at most SETTLE_VALUES values, the tables are compared on all of them (`settle`).
    """
    layers = [layer for layer in layers if layer.activations]
    tensors = list(dict.fromkeys(t for layer in layers for _, t in layer.activations))
    if not tensors:
        return AutoRanges({}, {}, PER_TENSOR, {}, 0)
    found = {t: dict(known[t]) if known is not None and t in known else all_candidates(stats[t], grid)
             for t in tensors}
    candidates = {t: candidate_ranges(stats[t], grid, found[t]) for t in tensors}
    local = batches[:LOCAL_BATCHES] if judge else []
    copy_errors = _judge_locally(model, layers, candidates, local, grid, threads, progress) if local else {}
    winners = {t: _pick(candidates[t], tensor_errors(copy_errors, t)) for t in tensors}
    judged = sum(len(next(iter(batch.values()))) for batch in local)
    tables = {PER_TENSOR: {t: candidates[t][winners[t]] for t in tensors}} if local else {}
    tables.update({name: {t: found[t][name] for t in tensors} for name in TABLE_ORDER if name != PER_TENSOR})
    checked = batches  # the samples the tables run on
    if check_tables is not None and every is not None and settles(stats, tensors, len(every)):
        checked = every
        checks = settle(tables, check_tables(every, None), progress)
        chosen = pick_settled(checks)
    else:
        checks = check(tables, check_tables(batches, references), progress) if check_tables is not None and batches else {}
        chosen = pick_table(checks) if checks else next(iter(tables))
    amax = tables[chosen]
    methods = winners if chosen == PER_TENSOR else dict.fromkeys(tensors, chosen)
    return AutoRanges(
        amax=amax,
        choices={t: explain(stats[t], methods[t], amax[t], tensor_errors(copy_errors, t), judged) for t in tensors},
        table=chosen,
        checks=checks,
        samples=sum(len(next(iter(batch.values()))) for batch in checked),
        settled=checked is every,
    )


def _judge_locally(model: onnx.ModelProto, layers: Sequence[JudgedLayer], candidates: Mapping[str, Mapping[str, float]],
                   local: Sequence[Mapping[str, np.ndarray]], grid: Grid, threads: int | None, progress: bool
                   ) -> dict[Key, dict[str, float]]:
    """Every copy's relative error per candidate on the `local` batches (`trtq.calibrate.judge`); two-activation
    layers settled in a second round with the other input at its first-round winner. Its sessions end here,
    before the end-to-end check makes its own."""
    from trtq.runtime.ort_session import make_session

    tensors = list(candidates)
    bag = Bag(model, layers, grid)
    paired = [layer for layer in layers if len(dict.fromkeys(t for _, t in layer.activations)) > 1]
    second = Bag(model, paired, grid) if paired else None
    exposed = list(dict.fromkeys(bag.exposed + (second.exposed if second is not None else [])))
    steps = len(local) * sum(slots(b, candidates) for b in (bag, second) if b is not None)
    current = {t: candidates[t].get(FALLBACK, max(candidates[t].values())) for t in tensors}
    kept: list[dict[str, np.ndarray]] = []  # what the second round reads (two-activation layers only)
    with tqdm(total=steps, desc="choosing ranges", unit="run", disable=not progress, dynamic_ncols=True,
              leave=False) as bar:
        exposing = make_session(model, threads=threads, spin=False, outputs=exposed)
        first = Judge(bag, candidates, current, grid, threads)
        for batch in local:
            values = {name: np.ascontiguousarray(v) for name, v in batch.items()}
            values.update(zip(exposed, exposing.run(exposed, values)))
            first.add(values, bar)
            if second is not None:
                kept.append({name: values[name] for name in (*second.sources, *second.exposed) if name in values})
        del exposing
        copy_errors = first.errors()
        del first
        if second is not None:
            winners = {t: _pick(candidates[t], tensor_errors(copy_errors, t)) for t in tensors}
            settle = Judge(second, candidates, {t: candidates[t][winners[t]] for t in tensors}, grid, threads)
            for values in kept:
                settle.add(values, bar)
            copy_errors.update(settle.errors())
    return copy_errors


def distinct_tables(tables: Mapping[str, Mapping[str, float]]) -> dict[str, Mapping[str, float]]:
    """`tables` in TABLE_ORDER (then any others), each table equal to an earlier one left out."""
    ordered = [name for name in TABLE_ORDER if name in tables] + [name for name in tables if name not in TABLE_ORDER]
    out: dict[str, Mapping[str, float]] = {}
    for name in ordered:
        if all(dict(tables[name]) != dict(seen) for seen in out.values()):
            out[name] = tables[name]
    return out


def sample_snrs(signal: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Per sample, the worst output's SNR (dB), clamped to +-CLAMP_DB ([samples, outputs] powers in)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = 10.0 * np.log10(signal / noise)
    snr = np.where(noise == 0.0, CLAMP_DB, np.where(signal == 0.0, -CLAMP_DB, snr))
    return np.clip(snr, -CLAMP_DB, CLAMP_DB).min(axis=1) if snr.size else np.zeros(signal.shape[0])


def critical_value(samples: float, comparisons: int = 1) -> float:
    """Student's t quantile at 1 - FAMILY_ALPHA / comparisons with samples - 1 degrees of freedom
    (Cornish-Fisher expansion, Abramowitz & Stegun 26.7.5: within 0.05 of the exact value from 3 samples on)."""
    z = NormalDist().inv_cdf(1.0 - FAMILY_ALPHA / max(comparisons, 1))
    nu = max(samples - 1.0, 1.0)
    terms = ((z ** 3 + z) / 4, (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
             (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384,
             (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160)
    return float(z + sum(term / nu ** (k + 1) for k, term in enumerate(terms)))


def gain_bounds(gains: np.ndarray, comparisons: int = 1) -> tuple[float, float, float]:
    """Mean of paired per-sample gains (dB) and its bounds at `critical_value` standard errors, for one of
    `comparisons` tables checked against the same reference (unbounded with fewer than 3 samples)."""
    if gains.size == 0:
        return 0.0, -math.inf, math.inf
    mean = float(gains.mean())
    if gains.size < 3:
        return mean, -math.inf, math.inf
    half = critical_value(gains.size, comparisons) * float(gains.std(ddof=1)) / math.sqrt(gains.size)
    return mean, mean - half, mean + half


def check(tables: Mapping[str, Mapping[str, float]], runner: TableRunner, progress: bool = True, race: bool = True
          ) -> dict[str, TableCheck]:
    """Run the distinct `tables` end to end on the runner's batches, racing (unless `race` is off): after
    MIN_RACE_SAMPLES, a table on course to fail `pick_table`, or shown worse than a table on course to pass, stops
    running (`_still_running`). Each table's check covers the samples it ran on; its gains are paired with
    PREFERRED_TABLE's on the same samples."""
    tables = distinct_tables(tables)
    preferred = PREFERRED_TABLE if PREFERRED_TABLE in tables else next(iter(tables))
    comparisons = max(len(tables) - 1, 1)
    scales = {name: runner.scales(amax) for name, amax in tables.items()}
    powers: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in tables}
    alive = list(tables)
    with tqdm(total=len(runner) * len(alive), desc="checking tables", unit="run", disable=not progress,
              dynamic_ncols=True, leave=False) as bar:
        for index in range(len(runner)):
            for name in alive:
                powers[name].append(runner.run(scales[name], index))
                bar.update(1)
            gains = {name: _gains(powers[name], powers[preferred]) for name in alive}
            if race and gains[preferred].size >= MIN_RACE_SAMPLES:
                total = gains[preferred].size * len(runner) / (index + 1)  # samples at the end, estimated
                alive = _still_running(alive, preferred, powers, gains, total, comparisons)
                bar.total = bar.n + (len(runner) - index - 1) * len(alive)
                bar.refresh()
            if alive == [preferred]:
                break
    return _summaries(powers, preferred, comparisons)


def settles(stats: Mapping[str, TensorStats], tensors: Sequence[str], batches: int) -> bool:
    """Whether the quantized activations of the whole calibration set (`stats`' counts of `tensors`) are
    few enough for `settle` (SETTLE_VALUES); never with fewer than JUDGE_SAMPLES batches to settle on."""
    return batches >= JUDGE_SAMPLES and sum(stats[t].count for t in tensors) <= SETTLE_VALUES


def settle(tables: Mapping[str, Mapping[str, float]], runner: TableRunner, progress: bool = True
           ) -> dict[str, TableCheck]:
    """Run every distinct table on every batch of `runner` (the whole calibration set, for `pick_settled`): `check`
    without the race."""
    return check(tables, runner, progress, race=False)


def pick_settled(checks: Mapping[str, TableCheck]) -> str:
    """Of the tables that beat PREFERRED_TABLE's aggregate output SNR on every calibration sample by at least
    SETTLE_MARGIN_DB and are no worse on any other output, the best; else PREFERRED_TABLE. Where the aggregates
    rest on fewer than SETTLE_EFFECTIVE_SAMPLES, `pick_table`'s choice (per-sample gains with a bound).

    Over the whole calibration set the aggregate (what `trtq compare` reports) is the statistic: a per-sample
    bound could not prove the held-out winner on the digits CNN even with all 200 images (README: *How finely one
    draw can rank the methods*). A table that gains on the worst output by losing on another is a trade, not a
    better table: on MTCNN's RNet, tables ahead on the box regression and behind on the face probability over
    the calibration windows were behind on both held out (README, bench/bench_draws.py)."""
    preferred = PREFERRED_TABLE if PREFERRED_TABLE in checks else next(iter(checks))
    reference = checks[preferred]
    if reference.effective_samples < SETTLE_EFFECTIVE_SAMPLES:
        return pick_table(checks)
    better = [name for name, c in checks.items() if name != preferred
              and c.effective_samples >= SETTLE_EFFECTIVE_SAMPLES
              and c.snr_db >= reference.snr_db + SETTLE_MARGIN_DB
              and len(c.output_snr_db) == len(reference.output_snr_db)
              and all(mine >= theirs for mine, theirs in zip(c.output_snr_db, reference.output_snr_db))]
    return max(better, key=lambda name: checks[name].snr_db, default=preferred)


def _summaries(powers: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]], preferred: str, comparisons: int
               ) -> dict[str, TableCheck]:
    """Each table's TableCheck from its recorded [samples, outputs] signal and noise powers per batch."""
    out = {}
    for name, runs in powers.items():
        signal = np.concatenate([s for s, _ in runs])
        noise = np.concatenate([n for _, n in runs])
        mean, low, high = gain_bounds(_gains(runs, powers[preferred]), comparisons)
        outputs = _output_db(signal, noise)
        out[name] = TableCheck(samples=int(signal.shape[0]), snr_db=min(outputs, default=math.inf), gain_db=mean,
                               gain_low_db=low, gain_high_db=high, effective_samples=_effective_samples(noise, outputs),
                               output_snr_db=outputs)
    return out


def _effective_samples(noise: np.ndarray, outputs: Sequence[float]) -> float:
    """TableCheck.effective_samples of [samples, outputs] noise powers: for the output with the worst aggregate SNR
    (`outputs`, from `_output_db`), (sum of the per-sample noise)^2 / sum of its squares (the sample count where
    there is no noise at all)."""
    if noise.size == 0:
        return 0.0
    worst = noise[:, int(np.argmin(outputs))]
    total = float(worst.sum())
    return float(noise.shape[0]) if total <= 0 else total * total / float((worst * worst).sum())


def _gains(runs: Sequence[tuple[np.ndarray, np.ndarray]], reference: Sequence[tuple[np.ndarray, np.ndarray]]
           ) -> np.ndarray:
    """Per-sample SNR gains (dB) of `runs` over `reference` on the batches both ran."""
    n = min(len(runs), len(reference))
    if n == 0:
        return np.zeros(0)
    return (np.concatenate([sample_snrs(s, e) for s, e in runs[:n]])
            - np.concatenate([sample_snrs(s, e) for s, e in reference[:n]]))


def _still_running(alive: list[str], preferred: str, powers: Mapping[str, list[tuple[np.ndarray, np.ndarray]]],
                   gains: Mapping[str, np.ndarray], total: float, comparisons: int = 1) -> list[str]:
    """The tables still worth running: PREFERRED_TABLE, and every other one that would pass `pick_table`
    after `total` samples were its mean gain and spread to stay as they are now, and that is not shown
    worse than a table already proven better. (A futility rule: a table on course to fail stops, which
    at worst keeps PREFERRED_TABLE; running every table on every sample cost more than the gain.)"""
    bounds = {name: gain_bounds(gains[name], comparisons) for name in alive}
    proven = [name for name in alive if name != preferred and bounds[name][1] >= TABLE_MARGIN_DB]
    leader = max(proven, key=lambda name: bounds[name][1], default=None)
    kept = [preferred]
    for name in alive:
        if name == preferred:
            continue
        spread = float(gains[name].std(ddof=1)) if gains[name].size > 1 else math.inf
        if bounds[name][0] - critical_value(total, comparisons) * spread / math.sqrt(max(total, 1.0)) < TABLE_MARGIN_DB:
            continue
        if leader is not None and name != leader and \
                gain_bounds(_gains(powers[name], powers[leader]), comparisons)[2] < 0.0:
            continue
        kept.append(name)
    return [name for name in alive if name in kept]


def _output_db(signal: np.ndarray, noise: np.ndarray) -> tuple[float, ...]:
    """Each output's SNR (dB) over all samples together ([samples, outputs] powers in); the least is what `trtq
    compare` reports."""
    return tuple(math.inf if e == 0 else (-math.inf if s == 0 else 10.0 * math.log10(s / e))
                 for s, e in zip(signal.sum(axis=0), noise.sum(axis=0)))


def pick_table(checks: Mapping[str, TableCheck]) -> str:
    """PREFERRED_TABLE, unless another table that ran on every judging sample gains at least
    TABLE_MARGIN_DB over it at its lower confidence bound: then the one with the highest lower bound."""
    preferred = PREFERRED_TABLE if PREFERRED_TABLE in checks else next(iter(checks))
    full = max(c.samples for c in checks.values())
    best, bound = preferred, TABLE_MARGIN_DB
    for name, c in checks.items():
        if name != preferred and c.samples == full and c.gain_low_db >= bound:
            best, bound = name, c.gain_low_db
    return best
