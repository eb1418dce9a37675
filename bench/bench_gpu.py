"""Calibration throughput of the GPU backend against plain PyTorch and the CPU backend.

For torchvision ResNet-50 (224x224, batch 32) and RetinaNet-ResNet50-FPN (640x640, batch 8;
backbone + FPN + head, the part that gets quantized), random-init weights, exported to ONNX
with torch's legacy exporter and normalised as `trtq quantize` does:

* gpu backend: TorchBackend observing every tensor trtq's Q/DQ placement calibrates, with
  histograms (entropy), numpy batches in, statistics on the host at the end;
* floor: the torchvision module itself in plain FP32 PyTorch inference on the same GPU, same
  batches (pre-pinned host tensors, asynchronous copies), same math settings (TF32 off); the
  default-settings (TF32 convolutions) floor is printed for reference;
* cpu backend: OrtBackend (onnxruntime, all cores) on the same machine, fewer batches.

Run on the GPU machine: python bench/bench_gpu.py [--out results.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trtq.calibrate.algorithms import compute_amax
from trtq.calibrate.backend_ort import OrtBackend
from trtq.calibrate.backend_torch import TorchBackend, _fp32_math
from trtq.model import normalize_model
from trtq.quantize import plan_placement
from trtq.torch import OnnxModule


class RetinaNetCore(torch.nn.Module):
    """Backbone + FPN + head of a torchvision RetinaNet (anchors, decoding and NMS stay outside)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.head(list(self.model.backbone(x).values()))
        return out["cls_logits"], out["bbox_regression"]


MODELS: dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, int, int, int]]] = {
    "resnet50": (torchvision.models.resnet50, (32, 3, 224, 224)),
    "retinanet_resnet50_fpn": (
        lambda: RetinaNetCore(torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)),
        (8, 3, 640, 640),
    ),
}


def export(module: torch.nn.Module, shape: Sequence[int]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(module, (torch.randn(*shape),), buffer, dynamo=False, opset_version=17,
                      input_names=["images"], dynamic_axes={"images": {0: "batch"}})
    return normalize_model(onnx.load_from_string(buffer.getvalue()))


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bench_model(name: str, gpu_batches: int, cpu_batches: int, device: torch.device,
                smoke: bool = False) -> dict[str, object]:
    build, shape = MODELS[name]
    if smoke:  # a quick check of the script itself: tiny batches
        shape = (2, 3, 64, 64)
    torch.manual_seed(0)
    module = build().eval()
    model = export(module, shape)
    tensors = plan_placement(model).calibrated_tensors
    rng = np.random.default_rng(0)
    batches = [{"images": rng.standard_normal(shape, dtype=np.float32)} for _ in range(gpu_batches + 2)]
    warm, timed_batches = batches[:2], batches[2:]
    samples = shape[0] * len(timed_batches)
    result: dict[str, object] = {"model": name, "batch": shape[0], "input": "x".join(map(str, shape[1:])),
                                 "observed_tensors": len(tensors), "nodes": len(model.graph.node)}

    backend = TorchBackend(model, tensors, histogram=True, device=str(device))
    for batch in warm:  # eager run (plans, cuDNN autotuning), then CUDA-graph capture
        backend.observe(batch)
    def calibrate() -> None:
        for b in timed_batches:
            backend.observe(b)

    seconds = timed(calibrate, device)
    start = time.perf_counter()
    stats = backend.stats()
    amax = {t: compute_amax(stats[t], "entropy") for t in tensors}
    entropy_s = time.perf_counter() - start
    result.update(gpu_samples_per_s=samples / seconds, stats_engine=backend.stats_engine,
                  cuda_graphs=backend.uses_cuda_graphs, graph_note=backend.graph_note,
                  fallback_nodes=list(backend.fallback_nodes), entropy_seconds=entropy_s,
                  nonzero_ranges=sum(v > 0 for v in amax.values()))

    fast = TorchBackend(model, tensors, histogram=True, device=str(device), tf32=True)
    for batch in warm:
        fast.observe(batch)

    def calibrate_tf32() -> None:
        for b in timed_batches:
            fast.observe(b)
        fast.stats()

    result["gpu_tf32_samples_per_s"] = samples / timed(calibrate_tf32, device)
    fast = None  # frees its GPU memory (the closure above holds the name)

    eager = TorchBackend(model, tensors, histogram=True, device=str(device), cuda_graphs=False)
    for batch in warm:
        eager.observe(batch)
    def calibrate_eager() -> None:
        for b in timed_batches:
            eager.observe(b)
        eager.stats()

    seconds = timed(calibrate_eager, device)
    result["gpu_eager_samples_per_s"] = samples / seconds
    eager = None

    executor = OnnxModule(model, device=device)
    with torch.no_grad(), _fp32_math(False):
        for batch in warm:
            executor.run(batch)

        def execute() -> None:
            for b in timed_batches:
                executor.run(b)

        seconds = timed(execute, device)
    result["executor_only_samples_per_s"] = samples / seconds
    executor = None

    net = module.to(device)
    pinned = [torch.from_numpy(b["images"]) for b in batches]
    if device.type == "cuda":
        pinned = [p.pin_memory() for p in pinned]

    def floor() -> None:
        for x in pinned[2:]:
            net(x.to(device, non_blocking=True))

    with torch.no_grad():
        with _fp32_math(False):
            for x in pinned[:2]:
                net(x.to(device, non_blocking=True))
            result["floor_fp32_samples_per_s"] = samples / timed(floor, device)
        with _fp32_math(True):  # torch's default: TF32 convolutions
            for x in pinned[:2]:
                net(x.to(device, non_blocking=True))
            result["floor_tf32_samples_per_s"] = samples / timed(floor, device)
    net = pinned = None

    cpu = OrtBackend(model, tensors, histogram=True)
    cpu.observe(batches[0])
    cpu.stats()
    start = time.perf_counter()
    for batch in batches[1:1 + cpu_batches]:
        cpu.observe(batch)
    cpu.stats()
    result["cpu_samples_per_s"] = shape[0] * cpu_batches / (time.perf_counter() - start)
    result["cpu_batches"] = cpu_batches
    result["ratio_vs_floor"] = result["gpu_samples_per_s"] / result["floor_fp32_samples_per_s"]
    result["ratio_tf32_vs_floor_tf32"] = result["gpu_tf32_samples_per_s"] / result["floor_tf32_samples_per_s"]
    result["speedup_vs_cpu"] = result["gpu_samples_per_s"] / result["cpu_samples_per_s"]
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--gpu-batches", type=int, default=20, help="timed batches per GPU measurement")
    parser.add_argument("--cpu-batches", type=int, default=2, help="timed batches for the CPU backend")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--smoke", action="store_true", help="tiny inputs, to check the script itself")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = {"gpu": gpu, "torch": torch.__version__, "torchvision": torchvision.__version__,
              "cpu_cores": os.cpu_count()}
    print(json.dumps(header), flush=True)
    results = []
    for name in args.models.split(","):
        result = bench_model(name, args.gpu_batches, args.cpu_batches, device, args.smoke)
        print(json.dumps(result), flush=True)
        results.append(result)
    print(f"\n{gpu}, torch {torch.__version__}, {os.cpu_count()} CPU cores; samples/s")
    print(f"{'model':24} {'gpu fp32':>9} {'floor fp32':>10} {'ratio':>6} | {'gpu tf32':>9} {'floor tf32':>10} "
          f"{'ratio':>6} | {'eager':>7} {'exec only':>9} | {'cpu (ORT)':>9} {'gpu/cpu':>8}")
    for r in results:
        print(f"{r['model']:24} {r['gpu_samples_per_s']:9.1f} {r['floor_fp32_samples_per_s']:10.1f} "
              f"{r['ratio_vs_floor']:5.2f}x | {r['gpu_tf32_samples_per_s']:9.1f} {r['floor_tf32_samples_per_s']:10.1f} "
              f"{r['ratio_tf32_vs_floor_tf32']:5.2f}x | {r['gpu_eager_samples_per_s']:7.1f} "
              f"{r['executor_only_samples_per_s']:9.1f} | {r['cpu_samples_per_s']:9.2f} {r['speedup_vs_cpu']:7.1f}x")
    if args.out:
        args.out.write_text(json.dumps({**header, "results": results}, indent=2))


if __name__ == "__main__":
    main()
