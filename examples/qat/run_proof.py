"""FP32 vs PTQ vs label-free QAT vs labelled QAT on the depthwise digits CNN: the table in docs/qat.md.

    python examples/qat/run_proof.py --device cuda --out out/qat-proof

- FP32 and PTQ: `trtq quantize` with its defaults (`auto` ranges on the depthwise-equalized graph, calibrated
  on ../digits/calib, 200 images; `finetune` starts from the same model), top-1 with onnxruntime on the 300
  held-out images of ../digits/val.
- Label-free QAT: `trtq finetune` as `trtq finetune digits_dw.onnx --calib ../digits/calib
  --data ../digits/val --task classify --steps 600 --lr 3e-4 --scale-lr 1e-4 --batch-size 64`:
  the FP32 model teaches on the 200 unlabelled calibration images.
- Labelled QAT: the same through the Python API with `labels=True` (the calibration images' class
  folders): cross-entropy instead of distillation.
Each QAT row is the exported Q/DQ ONNX run by onnxruntime; "recovered" is the share of the PTQ
top-1 drop the row wins back. The held-out images never steer training or the choice of state.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

from trtq import api
from trtq.qat import FinetuneOptions, finetune

MODEL = HERE / "digits_dw.onnx"
CALIB = HERE.parent / "digits" / "calib"
VAL = HERE.parent / "digits" / "val"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path("out/qat-proof"))
    args = parser.parse_args()
    data = api.DataOptions(preset="none")
    ptq = api.quantize(MODEL, CALIB, data=data, options=api.QuantizeOptions(output_dir=str(args.out / "ptq")),
                       progress=False)
    common = {"steps": args.steps, "lr": 3e-4, "scale_lr": 1e-4, "batch_size": 64, "eval_every": 50,
              "checkpoint_every": 200, "device": args.device, "task": "classify"}
    runs = {
        "label-free QAT": finetune(MODEL, CALIB, eval_data=VAL, data=data, progress=False,
                                   options=FinetuneOptions(**common, output_dir=str(args.out / "label-free"))),
        "labelled QAT": finetune(MODEL, CALIB, eval_data=VAL, data=data, progress=False,
                                 options=FinetuneOptions(**common, labels=True, output_dir=str(args.out / "labelled"))),
    }
    first = next(iter(runs.values()))
    rows = {r.stage: r for r in first.comparison.rows}
    fp32, ptq_top1 = rows["fp32"].task["top1"], rows["ptq"].task["top1"]
    drop = fp32 - ptq_top1
    lines = [
        (f"Depthwise CNN on scikit-learn digits, {first.comparison.samples} held-out images; fine-tuned on "
         f"{first.device_name} (torch {torch.__version__}); PTQ = `trtq quantize` ({ptq.method}, "
         f"{ptq.samples} images)."),
        "",
        "| model | top-1 | SNR vs FP32 | recovered | steps (exported) | fine-tuning time | samples/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| FP32 | {fp32:.1f}% | - | - | - | - | - |",
        f"| PTQ INT8 | {ptq_top1:.1f}% | {rows['ptq'].snr_db:.1f} dB | - | - | - | - |",
    ]
    record = {"device": first.device_name, "torch": torch.__version__, "fp32_top1": fp32, "ptq_top1": ptq_top1,
              "ptq_snr_db": rows["ptq"].snr_db, "runs": {}}
    for name, result in runs.items():
        qat = {r.stage: r for r in result.comparison.rows}["qat"]
        top1 = qat.task["top1"]
        recovered = (top1 - ptq_top1) / drop if drop > 0 else float("nan")
        t = result.training
        lines.append(f"| {name} | {top1:.1f}% | {qat.snr_db:.1f} dB | {100 * recovered:.0f}% | {t.steps} ({t.best_step}) "
                     f"| {t.train_seconds:.1f} s | {t.samples_per_second:.0f} |")
        record["runs"][name] = {"top1": top1, "snr_db": qat.snr_db, "recovered": recovered, "steps": t.steps,
                                "best_step": t.best_step, "train_seconds": t.train_seconds,
                                "samples_per_second": t.samples_per_second, "wall_seconds": result.seconds,
                                "parity_max_steps": result.parity.max_steps,
                                "parity_mismatched": result.parity.mismatched, "parity_elements": result.parity.elements,
                                "parity_local_max_steps": result.parity.local_max_steps,
                                "history": [p.to_dict() for p in t.history]}
    lines.append("")
    lines.append("Parity (onnxruntime vs PyTorch, int8 codes of every quantized tensor): " + "; ".join(
        f"{name}: end to end max {r.parity.max_steps} step(s), {r.parity.mismatched} of {r.parity.elements} "
        f"differ; each quantizer on onnxruntime's own input: max {r.parity.local_max_steps}"
        for name, r in runs.items()))
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "proof.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
