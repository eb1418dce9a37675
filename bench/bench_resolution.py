"""How finely one calibration draw and one held-out set can rank the range methods of a model.

Two measurements per model, on bench_ranges' cases (same models, data and scoring):

1. Scan: the `mse` table (the one `--method auto` keeps unless another is proven better) with one tensor's
   amax moved in steps over a span of its observed maximum, everything else as it was. The tensor is the
   one where the best fixed method's amax differs most from mse's (or `--tensor`). The spread of the
   held-out SNR over the steps, against the gap between methods, says whether that gap is a property of
   the method or of where one rounding grid happens to fall.
2. All-calibration check: each fixed table's paired gain over `mse` with auto's own statistic
   (`trtq.calibrate.auto.sample_snrs`, `gain_bounds` shared over the tables), on every calibration sample
   instead of auto's 4 to 16: whether even the whole calibration set could prove the held-out winner.
3. Bias: the share of the mse model's held-out error power that is the error's mean over the samples (the same
   in every sample), which moves with where a rounding grid falls on values the data repeats.

    python bench/bench_resolution.py --models digits onet

Quantized models come from out/bench_ranges/<model>/<method> where bench_ranges.py left them, else are
made here the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ranges as br

from trtq import api
from trtq.calibrate.auto import (
    PER_TENSOR,
    PREFERRED_TABLE,
    TABLE_MARGIN_DB,
    TABLE_ORDER,
    gain_bounds,
    sample_snrs,
)
from trtq.formats.ranges import RangesTable


def method_model(case: br.Case, method: str) -> tuple[Path, RangesTable]:
    """The Q/DQ model and ranges table of `method` on `case` (bench_ranges' output, or made now)."""
    out = br.WORK / case.name / method
    found = sorted(out.glob("*.int8.onnx"))
    path = found[0] if found else br.quantize(case, method, out)[0]
    return path, RangesTable.load(path.with_suffix("").with_suffix(".int8.json"))


def quantized_tensors(path: Path) -> list[str]:
    """The activations a Q/DQ model quantizes (the inputs of its QuantizeLinear nodes that are not weights)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    return list(dict.fromkeys(n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"
                              and n.input[0] not in weights))


def held_out_snr(case: br.Case, table: RangesTable, amax: dict[str, float], feeds: list[dict[str, np.ndarray]]) -> float:
    """Held-out SNR (bench_ranges' scoring) of the model quantized with `amax` in place of `table`'s ranges."""
    changed = dataclasses.replace(table, amax=amax, choices={}, table_checks={}, table_scores={})
    with tempfile.TemporaryDirectory() as folder:
        result = api.quantize(case.model, ranges=changed, data=api.DataOptions(preset=case.preset, shapes=case.shapes),
                              options=api.QuantizeOptions(output_dir=folder), progress=False)
        return br.score(case, br.held_out_powers(case, Path(result.onnx_path), feeds))


def bias_share(case: br.Case, path: Path, feeds: list[dict[str, np.ndarray]]) -> float:
    """Share of the scored outputs' error power (quantized minus FP32) that is the error's mean over the held-out
    samples: a bias, the same in every sample (nan for cases scored over an attention mask)."""
    import onnxruntime as ort

    if case.mask_input:
        return float("nan")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    fp32 = ort.InferenceSession(str(case.model), options, providers=["CPUExecutionProvider"])
    quant = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [case.output] if case.output else [o.name for o in fp32.get_outputs()]
    errors = [[(q.astype(np.float64) - r) for r, q in zip(fp32.run(names, feed), quant.run(names, feed))]
              for feed in feeds]
    mean_power = total = 0.0
    for k in range(len(names)):
        stacked = np.stack([sample[k] for sample in errors])
        mean_power += float((stacked.mean(axis=0) ** 2).sum()) * len(feeds)
        total += float((stacked ** 2).sum())
    return mean_power / total if total > 0 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(br.CASES), default=["digits"])
    parser.add_argument("--tensor", help="the tensor to scan (default: where mse and the best fixed method differ most)")
    parser.add_argument("--span", nargs=2, type=float, metavar=("LOW", "HIGH"),
                        help="scan from LOW to HIGH times the tensor's observed maximum (default: from 0.9 of the"
                             " smaller of mse's and the other method's amax to 1.1 of the larger, at most 1)")
    parser.add_argument("--steps", type=int, default=16, help="amax values scanned (default 16)")
    args = parser.parse_args()
    rows = []
    for key in args.models:
        case = br.CASES[key]()
        feeds = br._feeds(case)
        models = {m: method_model(case, m) for m in br.FIXED_METHODS}
        held = {m: br.score(case, br.held_out_powers(case, path, feeds)) for m, (path, _) in models.items()}
        best = max(held, key=held.__getitem__)
        base = models[PREFERRED_TABLE][1]
        ceiling = models["max"][1].amax
        other = models[best][1].amax if best != PREFERRED_TABLE else models["percentile"][1].amax
        quantized = quantized_tensors(models[PREFERRED_TABLE][0])
        tensor = args.tensor or max((t for t in quantized if t in other and t in ceiling and ceiling[t] > 0),
                                    key=lambda t: abs(np.log(other[t] / base.amax[t])))
        own, theirs = base.amax[tensor] / ceiling[tensor], other[tensor] / ceiling[tensor]
        low, high = args.span or (0.9 * min(own, theirs), min(1.0, 1.1 * max(own, theirs)))
        steps = np.linspace(low, high, args.steps)
        scan = []
        for factor in steps:
            amax = {**base.amax, tensor: float(factor * ceiling[tensor])}
            amax.update({t: amax[tensor] for t, v in base.amax.items() if v == base.amax[tensor]})  # a shared range moves as one
            scan.append(held_out_snr(case, base, amax, feeds))
            print(f"{key:<9} {tensor} at {factor:.3f} x max: {scan[-1]:.2f} dB", flush=True)
        calib = br._feeds(dataclasses.replace(case, held=case.calib))
        snrs = {m: sample_snrs(*np.moveaxis(br.held_out_powers(case, path, calib), -1, 0)) for m, (path, _) in models.items()}
        challengers = sum(1 for name in TABLE_ORDER if name not in (PER_TENSOR, PREFERRED_TABLE))  # as auto shares its bound
        checks = {m: gain_bounds(snrs[m] - snrs[PREFERRED_TABLE], challengers) for m in models if m != PREFERRED_TABLE}
        bias = bias_share(case, models[PREFERRED_TABLE][0], feeds)
        rows.append((key, held, best, tensor, own, theirs, (low, high), min(scan), max(scan), len(calib), checks, bias))
    print()
    print("| model | held-out SNR: entropy / max / percentile / mse | mse - best | tensor scanned (mse's, other's amax / max)"
          f" | held-out SNR over {args.steps} amax values (span / max), min .. max | calibration samples | gain over mse"
          " on all of them, mean (lower bound) | mse's held-out error power in its mean over samples |")
    print("|---|---|---|---|---|---|---|---|")
    for key, held, best, tensor, own, other, span, low, high, n, checks, bias in rows:
        figures = " / ".join(f"{held[m]:.2f}" for m in br.FIXED_METHODS)
        gains = ", ".join(f"{m} {mean:+.2f} ({bound:+.2f})" for m, (mean, bound, _) in checks.items())
        print(f"| {key} | {figures} | {held[PREFERRED_TABLE] - held[best]:+.2f} ({best} best) | {tensor} ({own:.2f}, "
              f"{other:.2f}) | {low:.2f} .. {high:.2f} ({span[0]:.2f} .. {span[1]:.2f}) | {n} | {gains} | {bias:.0%} |")
    print(f"A table replaces {PREFERRED_TABLE} only with a lower bound of at least +{TABLE_MARGIN_DB} dB "
          "(Student's t, 2.5% one-sided shared over the tables, as `--method auto` judges).")


if __name__ == "__main__":
    main()
