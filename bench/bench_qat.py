"""Fine-tuning throughput: trtq's QAT training step against plain FP32 training steps of the same model.

Same model (examples/qat/digits_dw.onnx, or --model), same data on the device, same batch, Adam,
each loop timed over --steps steps after --warmup steps (CUDA synchronised at both ends):

  qat         what `trtq finetune` runs: `trtq.qat.train` on the fake-quantized QatModel (OnnxModule
              executor), label-free distillation against cached FP32 outputs; the reported time
              excludes its progress evaluations and checkpoints
  fp32-onnx   the same ONNX graph on the same executor (OnnxModule), no fake quantization, MSE to
              the same targets: the cost of quantization-aware training itself
  fp32-torch  the PyTorch module the ONNX was exported from (examples/qat/make_example.py's
              architecture, BatchNorm folded), plain eager nn.Module training: the cost against
              what users train today

Prints samples/s of each and the ratios qat / fp32-*; target >= 0.5x. --json for a machine-readable line.

    python bench/bench_qat.py --device cuda --batch 256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "examples" / "qat"))

from trtq import api
from trtq.qat.data import TrainingData
from trtq.qat.model import QatModel
from trtq.qat.train import Distillation, Monitor, TrainOptions, train
from trtq.torch import OnnxModule


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_loop(step: Callable[[int], torch.Tensor], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for `steps` calls of step(i) after `warmup` calls; the loss stays on the device."""
    total = torch.zeros((), device=device)
    for i in range(warmup):
        total += step(i).detach()
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        total += step(warmup + i).detach()
    _sync(device)
    seconds = time.perf_counter() - start
    if not torch.isfinite(total):
        raise RuntimeError("a benchmark loss became NaN/Inf")
    return seconds


def bench(model_path: Path, device: torch.device, batch: int, steps: int, warmup: int, samples: int) -> dict:
    prepared = api.prepare_model(model_path)
    rng = np.random.default_rng(0)
    inputs = prepared.model.graph.input[0]
    shape = [d.dim_value for d in inputs.type.tensor_type.shape.dim][1:]
    x = rng.random((samples, *shape), dtype=np.float32)
    amax = {name: 1.0 for name in prepared.placement.calibrated_tensors}  # ranges do not change the cost
    name = inputs.name
    out_name = prepared.model.graph.output[0].name

    # qat: trtq's own loop
    qmodel = QatModel(prepared.model, prepared.placement, amax, device=device)
    teacher = OnnxModule(prepared.model, device=device)
    data = TrainingData({name: x}, None, "bench", batch).to(device)
    monitor = Monitor(teacher, [{name: x[:batch]}], (out_name,))
    loss = Distillation((out_name,))
    options = TrainOptions(steps=warmup, lr=1e-4, scale_lr=1e-3, eval_every=10**9, checkpoint_every=10**9,
                           check_every=10**9)
    train(qmodel, teacher, data, loss, loss.tensors, monitor, options, progress=False)  # warm-up run
    _sync(device)
    timed = train(qmodel, teacher, data, loss, loss.tensors, monitor,
                  TrainOptions(steps=steps, lr=1e-4, scale_lr=1e-3, eval_every=10**9, checkpoint_every=10**9,
                               check_every=10**9), progress=False)
    qat = timed.samples / timed.train_seconds

    # targets for the FP32 loops: the teacher's outputs, on the device
    batches = [torch.from_numpy(x[i:i + batch]).to(device) for i in range(0, samples - batch + 1, batch)]
    with torch.no_grad():
        targets = [teacher.run({name: b}, [out_name])[out_name] for b in batches]

    # fp32-onnx: the same executor, no fake quantization
    student = OnnxModule(prepared.model, device=device)
    params = []
    for weight in qmodel.weight_names:
        p = student.parameter(weight)
        p.requires_grad_(True)
        params.append(p)
    opt = torch.optim.Adam(params, lr=1e-4)

    def onnx_step(i: int) -> torch.Tensor:
        k = i % len(batches)
        out = student.run({name: batches[k]}, [out_name])[out_name]
        value = torch.nn.functional.mse_loss(out, targets[k])
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        return value

    fp32_onnx = steps * batch / _timed_loop(onnx_step, steps, warmup, device)

    # fp32-torch: the eager PyTorch module of the same architecture
    from make_example import DepthwiseCNN, spread_ranges

    module = spread_ranges(DepthwiseCNN().eval(), np.random.default_rng(0)).to(device).train()
    opt_t = torch.optim.Adam(module.parameters(), lr=1e-4)

    def torch_step(i: int) -> torch.Tensor:
        k = i % len(batches)
        value = torch.nn.functional.mse_loss(module(batches[k]), targets[k])
        opt_t.zero_grad(set_to_none=True)
        value.backward()
        opt_t.step()
        return value

    fp32_torch = steps * batch / _timed_loop(torch_step, steps, warmup, device)
    return {
        "model": str(model_path), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "batch": batch, "steps": steps,
        "samples_per_s": {"qat": round(qat, 1), "fp32_onnx": round(fp32_onnx, 1), "fp32_torch": round(fp32_torch, 1)},
        "ratio_qat_over_fp32_onnx": round(qat / fp32_onnx, 3),
        "ratio_qat_over_fp32_torch": round(qat / fp32_torch, 3),
        "fake_quantizers": len(qmodel.quantizers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "examples" / "qat" / "digits_dw.onnx")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--samples", type=int, default=2048, help="random samples held on the device")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = bench(args.model, torch.device(args.device), args.batch, args.steps, args.warmup, args.samples)
    if args.json:
        print(json.dumps(result))
        return
    s = result["samples_per_s"]
    print(f"{result['model']} on {result['device_name']} (torch {result['torch']}), batch {result['batch']}, "
          f"{result['steps']} timed steps, {result['fake_quantizers']} fake-quantizers")
    print(f"  qat (trtq finetune loop)   {s['qat']:>10.1f} samples/s")
    print(f"  fp32, same ONNX executor   {s['fp32_onnx']:>10.1f} samples/s   qat/fp32 = "
          f"{result['ratio_qat_over_fp32_onnx']:.2f}x")
    print(f"  fp32, eager PyTorch module {s['fp32_torch']:>10.1f} samples/s   qat/fp32 = "
          f"{result['ratio_qat_over_fp32_torch']:.2f}x   (target >= 0.5x)")


if __name__ == "__main__":
    main()
