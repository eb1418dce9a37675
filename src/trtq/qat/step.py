"""One optimizer step of the fine-tuning, run eagerly or replayed from a captured CUDA graph.

The ONNX executor launches every node's kernels from Python, and the fake-quantizers add a dozen
small kernels per quantized tensor: on a GPU a training step of a small network is bound by
launch overhead, not by the GPU. When the samples and the teacher outputs already live on the GPU
(`TrainingData.to`, the teacher cache), the whole step (gather the batch, forward, loss, backward,
Adam) is captured once as a CUDA graph and replayed: per step the host copies the batch indices
and the learning rates and launches one graph.

The first `WARMUP` steps run eagerly on a side stream (lazy initialisation must not happen inside
a capture); they are real training steps. If the executor reports a host read in the step, or the
capture fails, training goes on eagerly and `mode` says why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from trtq.qat.data import TrainingData
from trtq.qat.model import QatModel

WARMUP = 3
"""Eager steps before a capture."""

LossCall = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor | None, dict[str, torch.Tensor]],
                    torch.Tensor]
"""(student tensors, teacher tensors, labels, feeds) -> loss."""


def make_optimizer(qmodel: QatModel, lr: float, scale_lr: float, capturable: bool) -> torch.optim.Adam:
    """Adam over weights (`lr`) and step-size log-ratios (`scale_lr`); graph-capturable on CUDA."""
    if not capturable:
        return torch.optim.Adam(qmodel.param_groups(lr, scale_lr))
    groups = qmodel.param_groups(lr, scale_lr)
    for group in groups:
        group["lr"] = torch.tensor(float(group["lr"]), device=qmodel.device)  # type: ignore[arg-type]
    return torch.optim.Adam(groups, capturable=True)


def set_learning_rates(optimizer: torch.optim.Optimizer, values: Sequence[float]) -> None:
    """Write the step's learning rates (in place when they are device tensors a graph reads)."""
    for group, value in zip(optimizer.param_groups, values):
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


def normalise_learning_rates(optimizer: torch.optim.Optimizer, capturable: bool, device: torch.device) -> None:
    """After `load_state_dict`: learning rates as this optimizer needs them (tensor or float)."""
    for group in optimizer.param_groups:
        value = float(group["lr"])
        group["lr"] = torch.tensor(value, device=device) if capturable else value


class StepRunner:
    """Runs training steps; `mode` is "eager", "cuda-graph" or "eager (reason)"."""

    def __init__(self, qmodel: QatModel, optimizer: torch.optim.Optimizer, data: TrainingData,
                 teacher: Callable[[Mapping[str, torch.Tensor], torch.Tensor], dict[str, torch.Tensor]],
                 teacher_cache: Mapping[str, torch.Tensor] | None, loss: LossCall, names: Sequence[str],
                 loss_sum: torch.Tensor, use_graph: bool) -> None:
        self.qmodel, self.optimizer, self.data = qmodel, optimizer, data
        self.teacher, self.cache, self.loss, self.names = teacher, teacher_cache, loss, tuple(names)
        self.loss_sum = loss_sum
        device = qmodel.device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.index: torch.Tensor | None = None
        self.eager_steps = 0
        self.mode = "eager"
        self.capture = use_graph and device.type == "cuda"
        if self.capture and (data.device != device or teacher_cache is None):
            self.capture, self.mode = False, "eager (samples or teacher outputs do not fit on the GPU)"
        self.stream = torch.cuda.Stream(device) if self.capture else None

    def step(self, step: int) -> int:
        """Run training step `step`; returns the number of samples it used."""
        if self.graph is not None:
            assert self.index is not None
            self.index.copy_(torch.from_numpy(self.data.indices(step)), non_blocking=False)
            self.graph.replay()
            return self.data.batch_size
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                used = self._eager(step)
            torch.cuda.current_stream().wait_stream(self.stream)
        else:
            used = self._eager(step)
        self.eager_steps += 1
        if self.capture and self.eager_steps >= WARMUP:
            self._capture()
        return used

    def _eager(self, step: int) -> int:
        batch = self.data.batch(step, self.qmodel.device)
        teacher_values = self.teacher(batch.feeds, batch.indices)
        student = self.qmodel.run(batch.feeds, self.names)
        loss = self.loss(student, teacher_values, batch.labels, batch.feeds)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach()
        return len(batch.indices)

    def _capture(self) -> None:
        self.capture = False
        if not self.qmodel.net.last_run_capturable:
            self.mode = "eager (a node of the model reads data on the host)"
            return
        assert self.cache is not None
        device = self.qmodel.device
        index = torch.zeros(self.data.batch_size, dtype=torch.long, device=device)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(graph):
                feeds = {name: a.index_select(0, index) for name, a in self.data.arrays.items()}
                labels = None if self.data.labels is None else self.data.labels.index_select(0, index)
                teacher_values = {name: v.index_select(0, index) for name, v in self.cache.items()}
                student = self.qmodel.run(feeds, self.names)
                loss = self.loss(student, teacher_values, labels, feeds)
                loss.backward()
                self.optimizer.step()
                self.loss_sum.add_(loss.detach())
        except RuntimeError as exc:
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
            self.mode = f"eager (CUDA graph capture failed: {str(exc).splitlines()[0][:160]})"
            return
        self.graph, self.index, self.mode = graph, index, "cuda-graph"
