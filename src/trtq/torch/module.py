"""OnnxModule: an ONNX graph run node by node with torch ops, on any torch device.

Why not a converter such as onnx2torch: those break on graphs current exporters emit (Constant
biases, opset-18 reductions). Running the graph directly keeps ONNX semantics in one place.

Values live in one of two places. Data (anything computed from the graph inputs' values) stays
on the module's device. Shape arithmetic (Shape -> Gather -> Concat -> Reshape and the like) runs
on CPU tensors, and because it depends only on the input shapes it is computed once per input
signature and cached ("static" values), so later runs skip it and never read the device from
the host. Float initializers are module parameters (device); small ones also keep a host copy
for shape arithmetic, used only while they do not require grad (set requires_grad before the
first run: cached values are not recomputed). Nodes without a torch implementation run through onnxruntime
(`fallback_nodes` names them).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from trtq.errors import TrtqError
from trtq.model import default_opset, tensor_types
from trtq.torch.fallback import OrtNode, subgraph_outer_names
from trtq.torch.ops import (
    DATA_DEPENDENT_OPS,
    OPS,
    SHAPE_OPS,
    OpContext,
    OpDef,
    Unsupported,
)

Hook = Callable[[str, torch.Tensor], None]

_DATA, _CONST, _PARAM = 0, 1, 2
"""Value kinds: computed from input values; known without them (per input signature); a weight."""

HOST_COPY_LIMIT = 4096
"""Float initializers up to this many elements keep a host copy for shape arithmetic."""


@dataclass
class _Branch:
    """One branch of an If node: its nodes, initializers and output names."""

    nodes: list[_Node]
    initializers: dict[str, torch.Tensor]
    outputs: tuple[str, ...]


@dataclass
class _Node:
    index: int
    proto: onnx.NodeProto
    name: str
    op: OpDef | None
    attrs: dict[str, object]
    outputs: tuple[str, ...]
    inputs: tuple[str, ...]
    """Explicit inputs plus the outer-scope values its subgraphs read."""
    branches: tuple[_Branch, _Branch] | None = None
    """(then, else) for an If node."""


@dataclass
class _Step:
    node: _Node
    watched: tuple[str, ...]
    free: tuple[str, ...]


@dataclass
class _Plan:
    """The nodes one (outputs, watched tensors, input signature) combination needs, and its caches."""

    steps: list[_Step]
    initial_watch: tuple[str, ...]
    static_values: dict[str, torch.Tensor] = field(default_factory=dict)
    static_nodes: set[int] = field(default_factory=set)
    device_values: dict[str, torch.Tensor] = field(default_factory=dict)
    fallback: set[str] = field(default_factory=set)
    synced: bool = False
    ready: bool = False

    @property
    def capturable(self) -> bool:
        """True when a run touches no host data: no onnxruntime node, no device->host read."""
        return self.ready and not self.synced and not self.fallback


class OnnxModule(torch.nn.Module):
    """An ONNX model as a torch module: `forward(*inputs)` returns the graph outputs.

    `run(feeds, outputs, watch=..., hook=...)` computes only what the requested outputs and
    watched tensors need and calls `hook(name, tensor)` as soon as each watched tensor exists,
    so callers can reduce intermediates without keeping them (calibration statistics).

    `ops` adds op types (or replaces implementations) for this module only, over the registry
    `OPS`: how a stage above hands the executor a node of its own (QAT's fake quantizer).
    """

    _anchor: torch.Tensor  # an empty buffer: moves with the module and says where it lives

    def __init__(self, model: onnx.ModelProto, device: str | torch.device = "cpu",
                 host_copy_limit: int = HOST_COPY_LIMIT, ops: Mapping[str, OpDef] | None = None) -> None:
        super().__init__()
        graph = model.graph
        self.opset = default_opset(model)
        self._model_opsets = onnx.ModelProto()
        self._model_opsets.opset_import.extend(model.opset_import)
        self._model_opsets.ir_version = model.ir_version
        self._types = tensor_types(model)
        self.params = torch.nn.ParameterDict()
        self._param_key: dict[str, str] = {}
        self._consts: dict[str, torch.Tensor] = {}
        self._host_copies: dict[str, torch.Tensor] = {}
        for i, init in enumerate(graph.initializer):
            value = _initializer_tensor(init)
            if value.dtype.is_floating_point:
                key = f"p{i}"
                self.params[key] = torch.nn.Parameter(value, requires_grad=False)
                self._param_key[init.name] = key
                if value.numel() <= host_copy_limit:
                    self._host_copies[init.name] = value.clone()
            else:
                self._consts[init.name] = value
        initializers = {init.name for init in graph.initializer}
        self.input_names: tuple[str, ...] = tuple(i.name for i in graph.input if i.name not in initializers)
        self.output_names: tuple[str, ...] = tuple(o.name for o in graph.output)
        self._nodes = _topological(graph, set(self.input_names) | initializers, {**OPS, **(ops or {})})
        self._producer = {out: node for node in self._nodes for out in node.outputs}
        self._fallbacks: dict[int, OrtNode] = {}
        self._runtime_fallback: set[str] = set()
        self._const_device: dict[str, torch.Tensor] = {}
        self._plans: dict[tuple[object, ...], _Plan] = {}
        self._param_cache: dict[str, torch.Tensor] = {}
        self._last_plan: _Plan | None = None
        self.register_buffer("_anchor", torch.empty(0), persistent=False)
        self.to(device)

    # --- public ---------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Where parameters and data live."""
        return self._anchor.device

    @property
    def fallback_nodes(self) -> tuple[str, ...]:
        """Nodes run by onnxruntime instead of torch, as "name (op_type)"."""
        nodes = list(_walk(self._nodes))
        names = {n.name for n in nodes if n.op is None and n.branches is None} | self._runtime_fallback
        return tuple(f"{n.name} ({n.proto.op_type})" for n in nodes if n.name in names)

    @property
    def last_run_capturable(self) -> bool:
        """Whether the last `run` (with its input shapes) touched no host data, so a CUDA graph can replay it."""
        return self._last_plan is not None and self._last_plan.capturable

    def parameter(self, name: str) -> torch.nn.Parameter:
        """The parameter holding float initializer `name`."""
        return self.params[self._param_key[name]]

    def forward(
        self, *args: torch.Tensor | np.ndarray, **kwargs: torch.Tensor | np.ndarray
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        feeds = dict(zip(self.input_names, args))
        feeds.update(kwargs)
        out = self.run(feeds)
        values = tuple(out[name] for name in self.output_names)
        return values[0] if len(values) == 1 else values

    def run(self, feeds: Mapping[str, torch.Tensor | np.ndarray], outputs: Sequence[str] | None = None, *,
            watch: Collection[str] = (), hook: Hook | None = None) -> dict[str, torch.Tensor]:
        """Values of `outputs` (default: the graph outputs); `hook` sees every tensor in `watch`."""
        names = self._outputs(outputs)
        watched = tuple(dict.fromkeys(watch))
        values = self._feeds(feeds)
        plan = self._plan(names, watched, values)
        kinds = dict.fromkeys(values, _DATA)
        values.update(plan.static_values)
        kinds.update(dict.fromkeys(plan.static_values, _CONST))
        dynamic: set[str] = set()
        if hook is not None:
            for name in plan.initial_watch:
                hook(name, self._device_input(name, values, plan))
        for step in plan.steps:
            node = step.node
            if plan.ready and node.index in plan.static_nodes:
                if hook is not None:
                    for name in step.watched:
                        hook(name, self._to_device(name, values[name], _CONST, plan))
                continue
            self._execute(node, values, kinds, dynamic, plan)
            if hook is not None:
                for name in step.watched:
                    hook(name, self._to_device(name, values[name], kinds[name], plan))
            for name in step.free:
                values.pop(name, None)
        plan.ready = True
        self._last_plan = plan
        return {name: self._device_input(name, values, plan) for name in names}

    # --- planning -------------------------------------------------------------------------------

    def _outputs(self, outputs: Sequence[str] | None) -> tuple[str, ...]:
        return self.output_names if outputs is None else tuple(dict.fromkeys(outputs))

    def _feeds(self, feeds: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, torch.Tensor]:
        device = self.device
        out: dict[str, torch.Tensor] = {}
        for name in self.input_names:
            if name in feeds:
                value = feeds[name]
                tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
                out[name] = tensor.to(device, non_blocking=tensor.is_pinned())
        unknown = sorted(set(feeds) - set(self.input_names))
        if unknown:
            raise TrtqError(f"Feed {unknown[0]!r} is not an input of the model (inputs: {list(self.input_names)}).",
                            "feed the names the model declares.")
        return out

    @staticmethod
    def _key(outputs: tuple[str, ...], watched: tuple[str, ...], values: Mapping[str, torch.Tensor]) -> tuple[object, ...]:
        signature = tuple((name, tuple(v.shape), v.dtype) for name, v in values.items())
        return outputs, watched, signature

    def _plan(self, outputs: tuple[str, ...], watched: tuple[str, ...], values: Mapping[str, torch.Tensor]) -> _Plan:
        key = self._key(outputs, watched, values)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._build_plan(outputs, watched, set(values))
        return plan

    def _build_plan(self, outputs: tuple[str, ...], watched: tuple[str, ...], fed: set[str]) -> _Plan:
        known = fed | set(self._param_key) | set(self._consts)
        needed = set(outputs) | set(watched)
        for name in sorted(needed):
            if name in self.input_names and name not in fed:
                raise TrtqError(f"Model input {name!r} was not fed.", f"feed every input: {list(self.input_names)}.")
            if name not in known and name not in self._producer:
                raise TrtqError(f"Tensor {name!r} is neither produced by a node nor an input of the model.",
                                "check the tensor name against `trtq inspect`.")
        kept: list[_Node] = []
        for node in reversed(self._nodes):
            if any(out in needed for out in node.outputs):
                kept.append(node)
                needed.update(node.inputs)
        kept.reverse()
        missing = sorted(name for name in needed if name not in known and name not in self._producer)
        if missing:
            raise TrtqError(f"Model input {missing[0]!r} was not fed.", f"feed every input: {list(self.input_names)}.")
        last_use: dict[str, int] = {}
        for i, node in enumerate(kept):
            for name in node.inputs:
                last_use[name] = i
        keep = set(outputs)
        watch_set = set(watched)
        steps = []
        for i, node in enumerate(kept):
            free = [name for name in node.inputs if last_use.get(name) == i and name not in keep]
            free += [name for name in node.outputs if name not in last_use and name not in keep]
            steps.append(_Step(node, tuple(n for n in node.outputs if n in watch_set), tuple(free)))
        produced = {out for node in kept for out in node.outputs}
        initial = tuple(name for name in watched if name not in produced)
        return _Plan(steps=steps, initial_watch=initial)

    # --- execution ------------------------------------------------------------------------------

    def _lookup(self, name: str, values: Mapping[str, torch.Tensor], kinds: Mapping[str, int]) -> tuple[torch.Tensor, int]:
        if name in values:
            return values[name], kinds[name]
        if name in self._param_key:
            return self._param(name), _PARAM
        return self._consts[name], _CONST

    def _param(self, name: str) -> torch.Tensor:
        cached = self._param_cache.get(name)
        if cached is None:
            cached = self._param_cache[name] = self.params[self._param_key[name]]
        return cached

    def _device_input(self, name: str, values: Mapping[str, torch.Tensor], plan: _Plan) -> torch.Tensor:
        if name in values:
            return self._to_device(name, values[name], _CONST if name in plan.static_values else _DATA, plan)
        if name in self._param_key:
            return self._param(name)
        return self._to_device(name, self._consts[name], _CONST, plan)

    def _to_device(self, name: str, t: torch.Tensor, kind: int, plan: _Plan) -> torch.Tensor:
        device = self.device
        if t.device == device:
            return t
        if kind != _CONST:
            return t.to(device)
        cache = self._const_device if name in self._consts else plan.device_values
        moved = cache.get(name)
        if moved is None:
            moved = cache[name] = t.to(device)
        return moved

    def _to_host(self, name: str, t: torch.Tensor, kind: int, plan: _Plan) -> torch.Tensor:
        if t.device.type == "cpu":
            return t
        if kind == _PARAM and name in self._host_copies:
            return self._host_copies[name]
        plan.synced = True
        return t.detach().cpu()

    def _execute(self, node: _Node, values: dict[str, torch.Tensor], kinds: dict[str, int], dynamic: set[str],
                 plan: _Plan) -> None:
        proto = node.proto
        if node.branches is not None:
            self._execute_if(node, node.branches, values, kinds, dynamic, plan)
            return
        ins: list[torch.Tensor | None] = []
        in_kinds: list[int | None] = []
        for name in proto.input:
            if not name:
                ins.append(None)
                in_kinds.append(None)
                continue
            value, kind = self._lookup(name, values, kinds)
            ins.append(value)
            in_kinds.append(kind)
        opdef = node.op
        is_dynamic = any(name in dynamic for name in proto.input if name)
        static = False
        result: list[torch.Tensor] | None = None
        if opdef is not None:
            host = opdef.host
            data_pos = [i for i, k in enumerate(in_kinds) if k is not None and i not in host]
            if proto.op_type in SHAPE_OPS:
                static = not is_dynamic
                on_host, args = True, list(ins)
            else:
                if _DATA in in_kinds:
                    on_host = False
                else:
                    # Host arithmetic on constants (shape math) may read small frozen weights' host
                    # copies; a node on weights alone stays on the device, where gradients flow.
                    hostable = all(in_kinds[i] == _CONST or self._frozen_host_copy(proto.input[i], ins[i])
                                   for i in data_pos)
                    on_host = hostable and (not data_pos or any(in_kinds[i] == _CONST for i in data_pos))
                static = on_host and not is_dynamic and _DATA not in in_kinds
                args = []
                for i, (name, arg, arg_kind) in enumerate(zip(proto.input, ins, in_kinds)):
                    if arg is None or arg_kind is None:
                        args.append(None)
                    elif i in host:
                        args.append(self._to_host(name, arg, arg_kind, plan))
                    elif on_host:
                        args.append(self._host_copies[name] if arg_kind == _PARAM
                                    else self._to_host(name, arg, arg_kind, plan))
                    else:
                        args.append(self._to_device(name, arg, arg_kind, plan))
            ctx = OpContext(node.attrs, self.opset, len(proto.output), torch.device("cpu") if on_host else self.device,
                            node.name)
            try:
                out = opdef.fn(ctx, *args)
                result = list(out) if isinstance(out, tuple) else [out]
            except Unsupported:
                result = None
            if proto.op_type in DATA_DEPENDENT_OPS and self.device.type != "cpu":
                plan.synced = True
                is_dynamic = True
        if result is None:
            static = False
            is_dynamic = True
            plan.fallback.add(node.name)
            self._runtime_fallback.add(node.name)
            plan.synced = True
            explicit = set(proto.input)
            outer = [(name, self._lookup(name, values, kinds)[0]) for name in node.inputs if name not in explicit]
            result = self._fallback(node)(ins, self.device, outer)
        kind = _CONST if static else _DATA
        for name, value in zip(proto.output, result):
            if not name:
                continue
            values[name] = value
            kinds[name] = kind
            if is_dynamic:
                dynamic.add(name)
            if static and not plan.ready:
                plan.static_values[name] = value
        if static and not plan.ready:
            plan.static_nodes.add(node.index)

    def _execute_if(self, node: _Node, branches: tuple[_Branch, _Branch], values: dict[str, torch.Tensor],
                    kinds: dict[str, int], dynamic: set[str], plan: _Plan) -> None:
        """Run the branch the (host-read) condition picks; its nodes see the outer values."""
        cond_name = node.proto.input[0]
        value, kind = self._lookup(cond_name, values, kinds)
        branch = branches[0] if bool(self._to_host(cond_name, value, kind, plan).reshape(-1)[0]) else branches[1]
        for name, tensor in branch.initializers.items():
            values[name] = tensor
            kinds[name] = _CONST
        for sub in branch.nodes:
            self._execute(sub, values, kinds, dynamic, plan)
        fixed = kind == _CONST and cond_name not in dynamic
        static = fixed and all(kinds[src] == _CONST for src in branch.outputs)
        for out, src in zip(node.proto.output, branch.outputs):
            if not out:
                continue
            values[out] = values[src]
            kinds[out] = _CONST if static else _DATA
            if not fixed or src in dynamic:
                dynamic.add(out)
            if static and not plan.ready:
                plan.static_values[out] = values[out]
        if static and not plan.ready:
            plan.static_nodes.add(node.index)

    def _frozen_host_copy(self, name: str, value: torch.Tensor | None) -> bool:
        return name in self._host_copies and value is not None and not value.requires_grad

    def _fallback(self, node: _Node) -> OrtNode:
        runner = self._fallbacks.get(node.index)
        if runner is None:
            runner = self._fallbacks[node.index] = OrtNode(node.proto, self._model_opsets, self._types)
        return runner

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> OnnxModule:
        """Moving the module invalidates device copies of constants and per-signature caches."""
        self._param_cache = {}
        self._const_device = {}
        self._plans = {}
        self._last_plan = None
        return super()._apply(fn, recurse)


def _initializer_tensor(init: onnx.TensorProto) -> torch.Tensor:
    array = numpy_helper.to_array(init)
    if init.data_type == onnx.TensorProto.BFLOAT16:
        return torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
    if array.dtype.kind not in "biuf":
        raise TrtqError(f"Initializer {init.name!r} has element type {array.dtype}, which the torch executor cannot hold.",
                        "use --device cpu for this model.")
    return torch.from_numpy(np.array(array, copy=True))


def _topological(graph: onnx.GraphProto, available: set[str], ops: Mapping[str, OpDef],
                 counter: Iterator[int] | None = None) -> list[_Node]:
    """The graph's nodes in an order where every input is produced before use, each with its op from `ops`."""
    counter = itertools.count() if counter is None else counter
    protos = list(graph.node)
    ready = set(available) | {""}
    order: list[onnx.NodeProto] = []
    pending = list(range(len(protos)))
    reads = [[*proto.input, *subgraph_outer_names(proto)] for proto in protos]
    while pending:
        still = []
        for i in pending:
            if all(name in ready for name in reads[i]):
                order.append(protos[i])
                ready.update(protos[i].output)
            else:
                still.append(i)
        if len(still) == len(pending):
            first = protos[still[0]]
            absent = [name for name in reads[still[0]] if name not in ready]
            raise TrtqError(
                f"Node {first.name or first.op_type!r} reads {absent[0]!r}, which no node, input or initializer "
                "provides (or the graph has a cycle).",
                "run onnx.checker.check_model on the model and re-export it.",
            )
        pending = still
    nodes = []
    for proto in order:
        index = next(counter)
        default = proto.domain in ("", "ai.onnx")
        opdef = ops.get(proto.op_type) if default else None
        attrs = {a.name: _attribute(a) for a in proto.attribute}
        inputs = [name for name in proto.input if name]
        branches = None
        if default and proto.op_type == "If" and opdef is None:
            branches = (_branch(attrs["then_branch"], ops, counter),  # type: ignore[arg-type]
                        _branch(attrs["else_branch"], ops, counter))  # type: ignore[arg-type]
            inputs += [name for b in branches for name in _outer_names(b)]
        else:  # Loop, Scan (run by onnxruntime): their bodies' outer-scope reads are inputs too
            inputs += subgraph_outer_names(proto)
        nodes.append(_Node(index, proto, proto.name or f"{proto.op_type}_{index}", opdef, attrs,
                           tuple(o for o in proto.output if o), tuple(dict.fromkeys(inputs)), branches))
    return nodes


def _branch(graph: onnx.GraphProto, ops: Mapping[str, OpDef], counter: Iterator[int]) -> _Branch:
    produced = {out for node in graph.node for out in node.output}
    inits = {init.name: _initializer_tensor(init) for init in graph.initializer}
    outer = {name for node in graph.node for name in node.input if name and name not in produced}
    nodes = _topological(graph, outer | set(inits) | {i.name for i in graph.input}, ops, counter)
    return _Branch(nodes, inits, tuple(o.name for o in graph.output))


def _walk(nodes: Sequence[_Node]) -> Iterator[_Node]:
    """`nodes` and, recursively, the nodes of their If branches."""
    for node in nodes:
        yield node
        for branch in node.branches or ():
            yield from _walk(branch.nodes)


def _outer_names(branch: _Branch) -> list[str]:
    """Values a branch reads from enclosing scopes (recursively through nested Ifs)."""
    produced = set(branch.initializers) | {out for node in branch.nodes for out in node.outputs}
    return [name for node in branch.nodes for name in node.inputs if name not in produced]


def _attribute(attr: onnx.AttributeProto) -> object:
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value
