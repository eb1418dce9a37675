"""Streaming FP32-vs-quantized agreement metrics, aggregated over a data set (docs/design.md,
"Accuracy metrics").

SNR and cosine similarity are aggregate over all samples and elements of an output; the worst
single-sample SNR is reported beside it but never drives decisions. Top-1 agreement is the share
of samples whose arg-max matches FP32's, for outputs that hold class scores (`trtq.evaluate.scoring`).

With an attention mask, an output whose leading dims are the mask's shape is scored over the
positions the mask marks only: every sum, the worst sample (over its marked positions) and top-1
(per marked token) leave the padding out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from trtq.evaluate.scoring import top1_axes


def snr_db(signal_power: float, noise_power: float) -> float:
    """10*log10(signal/noise); +inf for an exact match, -inf for a zero reference with noise."""
    if noise_power == 0.0:
        return math.inf
    if signal_power == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


@dataclass(frozen=True)
class OutputMetrics:
    """Agreement of one output over a data set."""

    name: str
    samples: int
    snr_db: float
    worst_sample_snr_db: float
    cosine: float
    max_abs_error: float
    mean_abs_error: float
    top1_agreement: float | None = None
    mask: str | None = None
    """The input whose marked positions were scored (None: every position)."""

    def to_dict(self) -> dict:
        """JSON-friendly view (infinities as strings)."""
        return {k: (str(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}


def looks_like_scores(shape: tuple[int, ...]) -> bool:
    """True for [N, C] outputs with C > 1: the class-score rule where no graph says more."""
    return len(shape) == 2 and shape[1] > 1


class OutputAccumulator:
    """Accumulates the sums behind OutputMetrics, one batch at a time (per-sample sums in float64).

    `class_scores`: whether the output holds class scores (top-1 agreement); None decides by shape
    alone ([N, C]).
    """

    def __init__(self, name: str, class_scores: bool | None = None) -> None:
        self.name = name
        self.class_scores = class_scores
        self.samples = 0
        self.ref_sq = 0.0
        self.err_sq = 0.0
        self.q_sq = 0.0
        self.dot = 0.0
        self.abs_err = 0.0
        self.max_abs = 0.0
        self.elements = 0
        self.worst = math.inf
        self.top1_matches = 0
        self.top1_items = 0
        self.scores = True
        self.mask: str | None = None
        self._per_sample: list[tuple[np.ndarray, np.ndarray]] = []

    def update(self, ref: np.ndarray, quant: np.ndarray, mask: np.ndarray | None = None,
               mask_name: str | None = None) -> None:
        """Add one batch (leading dim = samples) of reference and quantized outputs; with `mask`
        (0/1 over the output's leading dims, e.g. attention_mask [B, S] of a [B, S, H] output) only
        the marked positions count.

        Elementwise work runs in the outputs' own precision (float32 unless they are float64);
        per-sample sums are added in float64. Large outputs (a recogniser's [N, 40, 18710]
        scores) made float64 copies cost as much as the forward pass.
        """
        ref = np.asarray(ref)
        quant = np.asarray(quant)
        if ref.shape != quant.shape:
            raise ValueError(f"output {self.name}: shapes differ, {ref.shape} vs {quant.shape}")
        dtype = np.float64 if np.float64 in (ref.dtype, quant.dtype) else np.float32
        n = ref.shape[0] if ref.ndim else 1
        r = np.asarray(ref, dtype=dtype).reshape(n, -1)
        e = np.asarray(quant, dtype=dtype).reshape(n, -1) - r
        scored = np.ones(n, dtype=bool)
        elements = e.size
        if mask is not None:
            self.mask = mask_name
            marked = np.asarray(mask).astype(bool).reshape(n, -1)
            keep = np.repeat(marked, r.shape[1] // marked.shape[1], axis=1)  # each position's values
            r = np.where(keep, r, 0)
            e = np.where(keep, e, 0)
            scored = np.asarray(marked.any(axis=1))
            elements = int(keep.sum())
        per_ref = np.einsum("ij,ij->i", r, r).astype(np.float64)
        per_err = np.einsum("ij,ij->i", e, e).astype(np.float64)
        ref_err = float(np.einsum("ij,ij->i", r, e).astype(np.float64).sum())
        self._per_sample.append((per_ref, per_err))
        self.ref_sq += float(per_ref.sum())
        self.err_sq += float(per_err.sum())
        self.q_sq += float(per_ref.sum()) + 2.0 * ref_err + float(per_err.sum())
        self.dot += float(per_ref.sum()) + ref_err
        np.abs(e, out=e)
        self.abs_err += float(e.sum(dtype=np.float64))
        self.max_abs = max(self.max_abs, float(e.max(initial=0.0)))
        self.elements += elements
        for s_ref, s_err, counted in zip(per_ref.tolist(), per_err.tolist(), scored.tolist()):
            if counted:  # a sample without marked positions has nothing to score
                self.worst = min(self.worst, snr_db(s_ref, s_err))
        self._top1(ref, quant, mask)
        self.samples += n

    def _top1(self, ref: np.ndarray, quant: np.ndarray, mask: np.ndarray | None) -> None:
        masked_rank = None if mask is None else np.ndim(mask)
        if self.class_scores is None and mask is None:
            is_scores = looks_like_scores(ref.shape)
        else:
            is_scores = bool(self.class_scores) and top1_axes(ref.shape, masked_rank)
        if not is_scores:
            self.scores = False
            return
        same = ref.argmax(axis=-1) == quant.argmax(axis=-1)
        if mask is not None:
            marked = np.asarray(mask).astype(bool)
            self.top1_matches += int(same[marked].sum())
            self.top1_items += int(marked.sum())
        else:
            self.top1_matches += int(same.sum())
            self.top1_items += same.size

    def sample_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample reference power and error power, in update order (what the SNR sums add up)."""
        if not self._per_sample:
            return np.zeros(0), np.zeros(0)
        return (np.concatenate([r for r, _ in self._per_sample]), np.concatenate([e for _, e in self._per_sample]))

    def result(self) -> OutputMetrics:
        """The metrics over everything seen."""
        denom = math.sqrt(self.ref_sq) * math.sqrt(self.q_sq)
        cosine = min(1.0, max(-1.0, self.dot / denom)) if denom else (1.0 if self.ref_sq == self.q_sq else 0.0)
        return OutputMetrics(
            name=self.name,
            samples=self.samples,
            snr_db=snr_db(self.ref_sq, self.err_sq),
            worst_sample_snr_db=self.worst,
            cosine=cosine,
            max_abs_error=self.max_abs,
            mean_abs_error=self.abs_err / self.elements if self.elements else 0.0,
            top1_agreement=(self.top1_matches / self.top1_items) if (self.scores and self.top1_items) else None,
            mask=self.mask,
        )
