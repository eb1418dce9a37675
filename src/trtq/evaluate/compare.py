"""`trtq compare`: run the FP32 and the quantized model on the same samples and measure agreement."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import onnx
from tqdm import tqdm

from trtq.calibrate.backend_ort import make_session
from trtq.data import Dataset
from trtq.errors import TrtqError
from trtq.evaluate.metrics import OutputAccumulator, OutputMetrics


@dataclass(frozen=True)
class ComparisonReport:
    """Per-output agreement of a quantized model with its FP32 reference."""

    reference: str
    candidate: str
    data: str
    samples: int
    outputs: tuple[OutputMetrics, ...]
    seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "data": self.data,
            "samples": self.samples,
            "seconds": round(self.seconds, 3),
            "outputs": [o.to_dict() for o in self.outputs],
            "notes": list(self.notes),
        }


def compare_models(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    dataset: Dataset,
    *,
    reference_name: str = "fp32",
    candidate_name: str = "quantized",
    batch_size: int = 1,
    progress: bool = True,
) -> ComparisonReport:
    """Run both models with onnxruntime (CPU) over `dataset` and aggregate per-output metrics."""
    ref_outputs = [o.name for o in reference.graph.output]
    cand_outputs = [o.name for o in candidate.graph.output]
    if ref_outputs != cand_outputs:
        raise TrtqError(
            f"{candidate_name} has outputs {cand_outputs}, expected {ref_outputs} as in {reference_name}.",
            "compare a quantized model with the FP32 model it was made from.",
        )
    start = time.perf_counter()
    ref_session = make_session(reference)
    cand_session = make_session(candidate)
    accumulators = {name: OutputAccumulator(name) for name in ref_outputs}
    samples = 0
    with tqdm(total=dataset.num_samples, desc="comparing", unit="sample", disable=not progress,
              dynamic_ncols=True, leave=False) as bar:
        for batch in dataset.batches(batch_size):
            ref_values = ref_session.run(ref_outputs, dict(batch))
            cand_values = cand_session.run(ref_outputs, dict(batch))
            for name, r, q in zip(ref_outputs, ref_values, cand_values):
                accumulators[name].update(r, q)
            n = len(next(iter(batch.values())))
            samples += n
            bar.update(n)
    return ComparisonReport(
        reference=reference_name,
        candidate=candidate_name,
        data=dataset.description,
        samples=samples,
        outputs=tuple(acc.result() for acc in accumulators.values()),
        seconds=time.perf_counter() - start,
    )
