"""Run one ONNX node with onnxruntime (CPU) for ops the torch executor does not implement.

The node is wrapped in a one-node model whose inputs have the runtime element types and free
shapes, so one session serves every batch. Inputs are copied to the host and outputs back to the
device: correct but slow, which is why the executor reports which nodes took this path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import helper, shape_inference

from trtq.errors import TrtqError
from trtq.torch.dtypes import TORCH_TO_ONNX


class OrtNode:
    """A single node run by onnxruntime, sessions cached per input element types."""

    def __init__(self, node: onnx.NodeProto, model: onnx.ModelProto, types: Mapping[str, int]) -> None:
        self.node = node
        self._opsets = list(model.opset_import)
        self._ir_version = model.ir_version
        self._types = dict(types)
        self._sessions: dict[tuple[int, ...], object] = {}

    def __call__(self, inputs: Sequence[torch.Tensor | None], device: torch.device,
                 outer: Sequence[tuple[str, torch.Tensor]] = ()) -> list[torch.Tensor]:
        """Outputs of the node for `inputs` (None for omitted optional inputs), on `device`.

        `outer` holds the values its subgraphs (a Loop or Scan body) read from the enclosing graph by
        name: the one-node model takes them as graph inputs, where the subgraphs find them.
        """
        present = [(name, t) for name, t in zip(self.node.input, inputs) if name and t is not None]
        present += [(name, t) for name, t in outer if name not in dict(present)]
        key = tuple(TORCH_TO_ONNX.get(t.dtype, 0) for _, t in present)
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = self._session(present)
        feeds = {name: _to_numpy(t) for name, t in present}
        outs = session.run(None, feeds)  # type: ignore[attr-defined]
        return [torch.from_numpy(np.ascontiguousarray(o)).to(device) for o in outs]

    def _session(self, present: Sequence[tuple[str, torch.Tensor]]) -> object:
        import onnxruntime as ort

        inputs = []
        for name, t in dict(present).items():
            if t.dtype not in TORCH_TO_ONNX:
                raise TrtqError(f"Node {self.node.name!r} ({self.node.op_type}) gets input {name!r} of dtype {t.dtype}, "
                                "which the onnxruntime fallback cannot pass.", "report the model to the trtq maintainers.")
            inputs.append(helper.make_tensor_value_info(name, TORCH_TO_ONNX[t.dtype], [None] * t.dim()))
        outputs = [helper.make_tensor_value_info(name, self._types.get(name, 0), None) for name in self.node.output if name]
        graph = helper.make_graph([self.node], "trtq_fallback", inputs, outputs)
        model = helper.make_model(graph, opset_imports=self._opsets)
        model.ir_version = self._ir_version
        if any(not o.type.tensor_type.elem_type for o in graph.output):
            inferred = shape_inference.infer_shapes(model)
            found = {vi.name: vi.type.tensor_type.elem_type for vi in [*inferred.graph.output, *inferred.graph.value_info]}
            for out in model.graph.output:
                if not out.type.tensor_type.elem_type and found.get(out.name):
                    out.type.tensor_type.elem_type = found[out.name]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise TrtqError(
                f"Node {self.node.name!r} ({self.node.domain or 'ai.onnx'}.{self.node.op_type}) has no torch "
                f"implementation and onnxruntime cannot run it alone ({exc}).",
                "report the op to the trtq maintainers (quantize, compare and sensitivity run the model in "
            "onnxruntime with --device cpu, the default).",
            ) from exc


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def subgraph_outer_names(node: onnx.NodeProto) -> list[str]:
    """Names the node's subgraphs (Loop/Scan bodies, If branches, nested ones too) read from enclosing scopes."""
    names: list[str] = []
    for attr in node.attribute:
        for graph in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            local = {i.name for i in graph.input} | {i.name for i in graph.initializer}
            local |= {out for sub in graph.node for out in sub.output}
            for sub in graph.node:
                for name in [*sub.input, *subgraph_outer_names(sub)]:
                    if name and name not in local and name not in names:
                        names.append(name)
    return names
