"""onnxruntime failures caused by the user's model and data, told apart from trtq's own bugs.

A Gather index beyond its table in the data, or a Reshape that fixes batch 1 run on a batch of 4,
makes onnxruntime raise in the middle of a run. When the user's own FP32 model fails the same way
on the same batch, the model and data are at fault and the user can fix them: the error becomes a
TrtqError that names the sample (or says that only the batch fails). When only a graph trtq made
from the model fails (an observing or quantized copy), it is a bug in trtq and the original
exception keeps its traceback: the callers re-raise when these functions return None.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnxruntime as ort

from trtq.errors import TrtqError
from trtq.runtime.ort_session import _ORT_ERRORS, make_session, ort_reason

ORT_ERRORS = _ORT_ERRORS
"""onnxruntime's exception types."""


class BatchSizeError(TrtqError):
    """The user's model runs each sample of a batch alone, but not the batch: it fixes its batch size."""


def explain_session_failure(model: onnx.ModelProto, model_name: str) -> TrtqError | None:
    """When onnxruntime could not make a session for a graph derived from `model`: a TrtqError if it
    cannot load `model` itself either (the user's model is at fault), else None (trtq's graph is)."""
    try:
        make_session(model)
    except ORT_ERRORS as exc:
        return TrtqError(
            f"onnxruntime {ort.__version__} cannot load {model_name}: {ort_reason(exc)}.",
            "check the model with onnx.checker.check_model(path, full_check=True) and export it again; trtq runs "
            "models in onnxruntime on the CPU.",
        )
    return None


def explain_run_failure(
    reference: onnx.ModelProto | ort.InferenceSession,
    batch: Mapping[str, np.ndarray],
    first_sample: int,
    model_name: str,
    data: str,
    batch_fix: str,
) -> TrtqError | None:
    """When a run on `batch` failed: a TrtqError if the user's FP32 model (`reference`, a model or a
    session running it) fails on it as well, else None (only trtq's graph fails: a bug in trtq).

    The error names the first failing sample (`first_sample` is the batch's first index in `data`),
    or, when every sample runs alone but the batch does not, says the model fixes its batch size and
    how to run at batch 1 (`batch_fix`, e.g. "pass --batch-size 1"; empty where there is no way).
    """
    session = reference if isinstance(reference, ort.InferenceSession) else _session(reference)
    if session is None:
        return explain_session_failure(reference, model_name)
    feed = {name: np.ascontiguousarray(value) for name, value in batch.items()}
    try:
        session.run(None, feed)
    except ORT_ERRORS as exc:
        return _blame(session, feed, exc, first_sample, model_name, data, batch_fix)
    return None


def _session(model: onnx.ModelProto) -> ort.InferenceSession | None:
    try:
        return make_session(model)
    except ORT_ERRORS:
        return None


def _blame(
    session: ort.InferenceSession,
    feed: Mapping[str, np.ndarray],
    exc: BaseException,
    first_sample: int,
    model_name: str,
    data: str,
    batch_fix: str,
) -> TrtqError:
    """The TrtqError for a batch the user's model fails on: the first sample that fails alone, else the batch."""
    rows = len(next(iter(feed.values())))
    names = ", ".join(repr(name) for name in feed)
    inputs = f"input {names}" if len(feed) == 1 else f"inputs {names}"
    dynamic_batch = all(not isinstance(i.shape[0], int) for i in session.get_inputs() if i.shape)
    if rows > 1 and dynamic_batch:
        for row in range(rows):
            try:
                session.run(None, {name: value[row:row + 1] for name, value in feed.items()})
            except ORT_ERRORS as single:
                exc = single
                first_sample += row
                break
        else:
            return BatchSizeError(
                f"{model_name} fails in onnxruntime on a batch of {rows} samples ({inputs}, samples {first_sample} to "
                f"{first_sample + rows - 1} of {data}) but runs each of them alone: {ort_reason(exc)}.",
                "the model fixes its batch size somewhere (e.g. a Reshape to a constant shape): "
                + (f"{batch_fix}, or " if batch_fix else "") + "export it again with a dynamic batch dim.",
            )
    where = f"sample {first_sample}" if rows == 1 or dynamic_batch else \
        f"the batch of samples {first_sample} to {first_sample + rows - 1}"
    return TrtqError(
        f"{model_name} fails in onnxruntime on {where} of {data} ({inputs}): {ort_reason(exc)}.",
        "check those values against what the model takes (e.g. token ids below the vocabulary size, indices in "
        "range) and fix or drop that sample.",
    )


def check_model_runs(model: onnx.ModelProto, batches: Iterable[Mapping[str, np.ndarray]], model_name: str, data: str,
                     batch_fix: str) -> None:
    """Run the user's FP32 `model` over `batches` in onnxruntime: for work that runs it elsewhere (fine-tuning
    runs it in PyTorch, whose errors cannot be told from trtq's), so that data the model fails on is named
    up front, as `explain_run_failure` would."""
    try:
        session = make_session(model)
    except ORT_ERRORS as exc:
        problem = explain_session_failure(model, model_name)
        if problem is None:
            raise
        raise problem from exc
    first = 0
    for batch in batches:
        feed = {name: np.ascontiguousarray(value) for name, value in batch.items()}
        try:
            session.run(None, feed)
        except ORT_ERRORS as exc:
            raise _blame(session, feed, exc, first, model_name, data, batch_fix) from exc
        first += len(next(iter(feed.values())))
