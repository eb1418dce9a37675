"""onnxruntime on the CPU as a Runner."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from trtq.runtime.ort_session import make_session


class OrtRunner:
    """An onnxruntime CPU session behind the Runner protocol."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self._outputs = tuple(o.name for o in session.get_outputs())

    @classmethod
    def from_model(cls, model: onnx.ModelProto) -> OrtRunner:
        """A session for an in-memory model (weights handed over without serialising them)."""
        return cls(make_session(model))

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(list(output_names) if output_names is not None else None, dict(feeds)))
