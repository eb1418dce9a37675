"""Would judging a Softmax/Sigmoid output on its logits rank range tables as the held-out output does?

`--method auto` checks whole candidate tables end to end on a few calibration samples. On a
confident classifier the softmax output is exact to rounding on most samples whatever the table,
so the idea was to score such outputs on the activation's input (the logits), which every sample
moves. This script measures that idea on the Q/DQ models `bench/bench_ranges.py` wrote (run it first
for the same models): for each range method, the SNR (dB) of the output and of its logits, on the
calibration samples and on the held-out samples, scored as bench_ranges scores the output
(aggregate, or mean of per-sample SNRs for the detectors). The logits are the input of the Softmax
or Sigmoid that makes the scored output, found through ops that only rearrange values.

    python bench/bench_ranges.py --models cls rec   # writes out/bench_ranges/<model>/<method>/
    python bench/bench_logits.py --models cls rec
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_ranges import CASES, DEFAULT, FIXED_METHODS, WORK, Case, score

REARRANGING = ("Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze")
SATURATING = ("Softmax", "Sigmoid")


def logits_of(model: onnx.ModelProto, output: str) -> str | None:
    """The input of the Softmax/Sigmoid that makes `output` (through REARRANGING ops), if any."""
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get(output)
    while node is not None and node.op_type in REARRANGING:
        node = producers.get(node.input[0])
    return node.input[0] if node is not None and node.op_type in SATURATING else None


def powers(case: Case, reference: Path, candidate: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """[samples, 2 (output, logits), 2 (signal, noise)] of `candidate` against `reference` (FP32)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = []
    for path in (reference, candidate):
        model = onnx.load(str(path))
        output = case.output or model.graph.output[0].name
        logits = logits_of(model, output)
        if logits is None:
            raise SystemExit(f"{path}: output {output!r} is not made by Softmax or Sigmoid")
        if logits not in {o.name for o in model.graph.output}:
            model.graph.output.append(helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None))
        sessions.append((ort.InferenceSession(model.SerializeToString(), options,
                                              providers=["CPUExecutionProvider"]), [output, logits]))
    out = np.zeros((len(feeds), 2, 2))
    for i, feed in enumerate(feeds):
        (fp32, names), (quant, qnames) = sessions
        for k, (r, q) in enumerate(zip(fp32.run(names, feed), quant.run(qnames, feed))):
            r, q = r.astype(np.float64), q.astype(np.float64)
            out[i, k] = float((r * r).sum()), float(((r - q) ** 2).sum())
    return out


def feeds_of(case: Case, source: Path) -> list[dict[str, np.ndarray]]:
    """One feed per sample of `source`, preprocessed as trtq does."""
    from trtq import api
    from trtq.model import load_model

    model = load_model(case.model, load_external_data=False)
    dataset = api.open_data(model, source, api.DataOptions(preset=case.preset, shapes=case.shapes))
    return [dict(batch) for batch in dataset.batches(1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(CASES), default=["cls", "rec"])
    parser.add_argument("--methods", nargs="+", default=[DEFAULT, *FIXED_METHODS])
    args = parser.parse_args()
    for key in args.models:
        case = CASES[key]()
        sets = {"calibration": feeds_of(case, case.calib), "held-out": feeds_of(case, case.held)}
        print(f"{key}: SNR (dB) of the output / of its logits "
              f"({', '.join(f'{len(f)} {name}' for name, f in sets.items())} samples)", flush=True)
        print(f"  {'method':<11}" + "".join(f"{name + ' output':>22}{name + ' logits':>22}" for name in sets))
        for method in args.methods:
            found = sorted((WORK / key / method).glob("*.onnx"))
            if not found:
                print(f"  {method:<11} no Q/DQ model under {WORK / key / method} (run bench_ranges.py first)")
                continue
            cells = []
            for feeds in sets.values():
                p = powers(case, case.model, found[0], feeds)
                cells += [score(case, p[:, :1]), score(case, p[:, 1:])]
            print(f"  {method:<11}" + "".join(f"{c:22.2f}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
