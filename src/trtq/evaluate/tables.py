"""End-to-end scores of whole ranges tables on a few batches: how `--method auto` checks its choice.

Each table becomes the Q/DQ model `trtq quantize` would write (same placement, same insertion)
and runs under onnxruntime on the judging batches. Its score is the mean over samples of each
sample's output SNR against FP32 (dB; the worst output of the sample counts). A mean of per-sample
figures is used rather than one aggregate because, on a handful of samples, an aggregate SNR is
decided by whichever sample happens to be hardest. Outputs shaped like an attention mask input
([batch, sequence, ...] with a 0/1 integer input of shape [batch, sequence]) are scored over the
positions the mask keeps, so padding does not decide a transformer's ranges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from trtq.runtime.ort_session import make_session
from trtq.evaluate.metrics import snr_db
from trtq.quantize import Placement, insert_qdq


def attention_mask(batch: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The batch's attention mask: the one 2-D integer/bool input named like a mask, holding only 0 and 1."""
    found = [v for name, v in batch.items() if "mask" in name.lower() and v.ndim == 2
             and (v.dtype == bool or np.issubdtype(v.dtype, np.integer)) and np.isin(v, (0, 1)).all()]
    return found[0].astype(bool) if len(found) == 1 else None


def sample_snrs(references: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
                mask: np.ndarray | None = None) -> list[float]:
    """Per sample of a batch, the worst output's SNR (dB); masked positions only where shapes agree."""
    worst: list[float] = []
    for ref, out in zip(references, outputs):
        ref, out = np.asarray(ref, dtype=np.float64), np.asarray(out, dtype=np.float64)
        for j in range(ref.shape[0] if ref.ndim else 1):
            r, q = (ref[j], out[j]) if ref.ndim else (ref, out)
            if mask is not None and r.ndim >= 1 and ref.shape[:2] == mask.shape:
                r, q = r[mask[j]], q[mask[j]]
            e = (q - r).reshape(-1)
            value = snr_db(float(r.reshape(-1) @ r.reshape(-1)), float(e @ e))
            if j < len(worst):
                worst[j] = min(worst[j], value)
            else:
                worst.append(value)
    return worst


def score_tables(
    model: onnx.ModelProto,
    placement: Placement,
    tables: Mapping[str, Mapping[str, float]],
    batches: Sequence[Mapping[str, np.ndarray]],
    threads: int | None = None,
) -> dict[str, float]:
    """Mean per-sample output SNR (dB) vs FP32 of `model` quantized with each table, on `batches`.

    Activation targets a table has no range for take one from the first table that has it.
    """
    if not batches or not tables:
        return {}
    outputs = [o.name for o in model.graph.output]
    fp32 = make_session(model, threads=threads)
    references = [fp32.run(outputs, dict(batch)) for batch in batches]
    del fp32
    masks = [attention_mask(batch) for batch in batches]
    scores: dict[str, float] = {}
    for name, amax in tables.items():
        full = {t: amax[t] if t in amax else next(tb[t] for tb in tables.values() if t in tb)
                for t in placement.activation_tensors}
        session = make_session(insert_qdq(model, placement, full), threads=threads)
        per_sample = [value for batch, refs, mask in zip(batches, references, masks)
                      for value in sample_snrs(refs, session.run(outputs, dict(batch)), mask)]
        finite = [min(v, 200.0) for v in per_sample]  # an exact sample (inf) counts as very good, not as all
        scores[name] = float(np.mean(finite))
    return scores
