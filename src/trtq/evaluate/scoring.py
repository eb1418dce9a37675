"""What each output is scored over (the attention mask), and which outputs hold class scores.

**Attention masks.** Token data is padded to a fixed length. Padding positions carry no meaning
(every head and pooling of a transformer ignores them), yet they can be most of the positions (77%
of all-MiniLM-L6-v2's at 64 tokens), and an SNR over every position mostly measures them. A graph
input is taken as the attention mask when

- it is integer or bool, has a position axis (rank >= 2), holds only 0 and 1 in the data and marks
  at least one position; or it is a float input named like a mask holding 0/1, or 0 and large
  negative values (an additive mask: 0 marks a real token);
- its positions ([B, S]; for a [B, S, S] or [B, 1, 1, S] mask the last axis, the keys, where any
  query may attend) equal the leading dims of at least one output, in every batch
  (attention_mask [B, S] against last_hidden_state [B, S, H]);
- its name does not read as token types or segments (token_type_ids is 0/1 too), and, where several
  inputs qualify, one named like a mask wins (`attention_mask` first); otherwise none is taken and
  a note asks for `--mask-input`.

Outputs whose leading dims equal the mask's shape are scored over the positions it marks (SNR,
cosine, max/mean abs, the worst sample, top-1); the others (pooler_output [B, H]) over all of
each sample. `--mask-input NAME` names the mask, `--no-mask` scores every position.

**Class scores.** `top-1 agree` (the share of samples, or of marked tokens, whose arg-max matches
FP32's) means something for class scores only, not for embeddings or hidden states. An output holds
class scores when

- each sample (or each marked token) is a vector of C >= 2 values: [N, C], or [B, S, C] under the mask;
- it comes from a classifier head: walking back from the output through reshapes, casts,
  Softmax/LogSoftmax/Sigmoid, ReLU, average pooling and arithmetic with a constant (a bias, a
  temperature), the first other op is a Gemm, MatMul or Conv (so not a LayerNorm's hidden state, a
  pooler's Tanh or a normalised embedding);
- its name does not read as an embedding, hidden state, feature or pooled output;

or it is the output `--task classify` scores. Without a graph to look at, [N, C] outputs count.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from trtq.errors import TrtqError
from trtq.model import TensorSpec
from trtq.quantize.placement import attention_matmuls

MASK_NAME = re.compile(r"mask", re.IGNORECASE)
NOT_A_MASK = re.compile(r"type|segment|position", re.IGNORECASE)
"""Names of 0/1 inputs that are not attention masks (token_type_ids, segment_ids, position ids)."""
NOT_SCORES = re.compile(r"embed|hidden|feature|pooler|pooled|latent|encod", re.IGNORECASE)
"""Output names that read as embeddings or hidden states, never class scores."""
HEAD_OPS = ("Gemm", "MatMul", "Conv")
LOOK_THROUGH = ("Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Split", "Softmax", "LogSoftmax",
                "Sigmoid", "Relu", "GlobalAveragePool", "AveragePool", "ReduceMean", "Dropout", "Exp")
CONSTANT_ARITHMETIC = ("Add", "Sub", "Mul", "Div")
SELF_NORMALISING = ("Sub", "Div")
"""Of CONSTANT_ARITHMETIC, the ops a written-out softmax applies with a statistic of their own first input."""


ADDITIVE_FLOOR = -1000.0
"""An additive mask adds 0 at real tokens and a large negative number at padding (-10000, -1e9,
the dtype's minimum, -inf): values at or below this count as padding."""


def mask_positions(array: np.ndarray, additive: bool = False) -> np.ndarray:
    """The [batch, sequence] bool array of real positions an attention mask input marks.

    [B, S]: the mask itself (1 = real). Masks of rank 3 or 4 ([B, S, S] as Google's BERT builds
    them, [B, 1, 1, S] or [B, 1, S, S] as transformers extends them) have the key positions on the
    last axis: a position is real when any query may attend to it. `additive`: 0 marks a real
    position and a large negative number padding (masks added to the attention scores).
    """
    values = np.asarray(array)
    real = values == 0 if additive else values != 0
    if real.ndim > 2:
        real = real.any(axis=tuple(range(1, real.ndim - 1)))
    return real


def batch_positions(batch: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The real positions ([batch, sequence], bool) of a batch without a model to check shapes
    against: from its one input named like a mask (not token types) of rank >= 2 that holds 0/1,
    or, for floats, 0 and values <= ADDITIVE_FLOOR; None when there is not exactly one."""
    found = []
    for name, value in batch.items():
        array = np.asarray(value)
        if array.ndim < 2 or not MASK_NAME.search(name) or NOT_A_MASK.search(name):
            continue
        if np.isin(array, (0, 1)).all() and array.any():
            found.append(mask_positions(array))
        elif array.dtype.kind == "f" and ((array == 0) | (array <= ADDITIVE_FLOOR)).all() and (array == 0).any():
            found.append(mask_positions(array, additive=True))
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class TokenMask:
    """The input that marks real positions, what share it marks, and which outputs it masks."""

    input: str
    share: float
    """Share of the positions of the scored data the mask marks."""
    outputs: tuple[str, ...]
    """Outputs scored over the marked positions (their leading dims are the mask's [batch, sequence])."""
    unmasked: tuple[str, ...] = ()
    """Outputs without those leading dims, scored over all of each sample."""
    named: bool = False
    """True when `--mask-input` named it; False when it was detected."""
    additive: bool = False
    """True for a float mask added to the attention scores (0 = real token, large negative = padding)."""

    def positions(self, array: np.ndarray) -> np.ndarray:
        """The real positions ([batch, sequence], bool) the mask input's value `array` marks."""
        return mask_positions(array, self.additive)

    def sentence(self) -> str:
        """e.g. "scored over real tokens: attention_mask marks 23% of positions"."""
        how = " (--mask-input)" if self.named else ""
        kind = ", additive" if self.additive else ""
        text = f"scored over real tokens: {self.input}{how}{kind} marks {100 * self.share:.0f}% of positions"
        if self.unmasked:
            text += f"; {', '.join(self.unmasked)} over all positions (no position axis)"
        return text

    def to_dict(self) -> dict:
        """JSON-friendly view."""
        return {"input": self.input, "share": round(self.share, 6), "outputs": list(self.outputs),
                "unmasked": list(self.unmasked), "named": self.named, "additive": self.additive,
                "sentence": self.sentence()}

    @classmethod
    def from_dict(cls, data: Mapping) -> TokenMask:
        """Inverse of `to_dict`."""
        return cls(str(data["input"]), float(data["share"]), tuple(data["outputs"]), tuple(data.get("unmasked", ())),
                   bool(data.get("named", False)), bool(data.get("additive", False)))


MaskRequest = bool | str
"""How the caller asks for a mask: True detects it, False scores every position, a name picks that input."""


@dataclass
class _Reading:
    """What one interpretation of a candidate input (multiplicative 0/1, or additive) has seen."""

    ones: int = 0
    total: int = 0
    matches: dict[str, bool] = field(default_factory=dict)

    def update(self, positions: np.ndarray, outputs: Mapping[str, np.ndarray] | None) -> None:
        self.ones += int(np.count_nonzero(positions))
        self.total += positions.size
        for out, value in (outputs or {}).items():
            shape = np.shape(value)
            fits = len(shape) >= positions.ndim and tuple(shape[:positions.ndim]) == positions.shape
            self.matches[out] = self.matches.get(out, True) and fits


@dataclass
class _Candidate:
    zero_one: bool = True
    additive: bool = False
    """Whether it may be an additive mask (a float input): only 0 and values <= ADDITIVE_FLOOR so far."""
    rank: int = 0
    example: float | None = None
    plain: _Reading = field(default_factory=_Reading)
    added: _Reading = field(default_factory=_Reading)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def reading(self) -> tuple[_Reading, bool] | None:
        """The interpretation the data supports: (reading, additive), or None."""
        if self.zero_one and self.plain.ones > 0:
            return self.plain, False
        if self.additive and self.added.ones > 0:
            return self.added, True
        return None


class MaskDetector:
    """Watches the inputs that could be the attention mask over a pass of the data, then decides.

    `update` takes each batch's inputs and, where at hand, the model's outputs for it (the shape
    test needs at least one batch with outputs); `result` gives the mask (or None) and notes.
    Integer and bool inputs of rank >= 2 are watched; float inputs only when named like a mask
    (0/1, or additive: 0 and large negative values).
    """

    def __init__(self, inputs: Sequence[TensorSpec], request: MaskRequest = True, source: str = "the data") -> None:
        self.request = request
        self.source = source
        names = [spec.name for spec in inputs]
        if isinstance(request, str):
            if request not in names:
                raise TrtqError(f"--mask-input {request!r} is not an input of the model; its inputs are {names}.",
                                "name the input that holds the attention mask, or leave --mask-input out.")
            watched = [spec for spec in inputs if spec.name == request]
        elif request:
            watched = [spec for spec in inputs if len(spec.shape) >= 2 and not NOT_A_MASK.search(spec.name)
                       and (_integer(spec.dtype) or (_floating(spec.dtype) and MASK_NAME.search(spec.name)))]
        else:
            watched = []
        self._candidates = {spec.name: _Candidate(additive=_floating(spec.dtype)) for spec in watched}

    @property
    def active(self) -> bool:
        """Whether any input is being watched (False: nothing to detect, no pass needed)."""
        return bool(self._candidates)

    def viable(self) -> tuple[tuple[str, bool], ...]:
        """(input, additive) for each reading of a watched input that could still be the mask."""
        found = []
        for name, c in self._candidates.items():
            if c.zero_one:
                found.append((name, False))
            if c.additive:
                found.append((name, True))
        return tuple(found)

    def update(self, feed: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray] | None = None) -> None:
        """Fold one batch: its inputs, and the model's outputs for them when at hand."""
        for name, candidate in self._candidates.items():
            array = np.asarray(feed[name])
            candidate.rank = array.ndim
            if candidate.zero_one:
                bad = (array != 0) & (array != 1)
                if bad.any():
                    candidate.zero_one = False
                    candidate.example = float(array[bad].flat[0])
            if candidate.additive and ((array != 0) & ~(array <= ADDITIVE_FLOOR)).any():
                candidate.additive = False
            if array.ndim < 2:
                continue
            if candidate.zero_one:
                candidate.plain.update(mask_positions(array), outputs)
            if candidate.additive:
                candidate.added.update(mask_positions(array, additive=True), outputs)
            for out, value in (outputs or {}).items():
                candidate.shapes.setdefault(out, tuple(np.shape(value)))

    def result(self) -> tuple[TokenMask | None, tuple[str, ...]]:
        """The mask, or None; and notes on what was passed over (an ambiguous choice)."""
        if isinstance(self.request, str):
            return self._named(self.request), ()
        qualified = {}
        for name, c in self._candidates.items():
            found = c.reading() if c.rank >= 2 else None
            if found is not None and any(found[0].matches.values()):
                qualified[name] = (c, *found)
        if not qualified:
            return None, ()
        masks = [name for name in qualified if MASK_NAME.search(name)]
        if len(masks) > 1:
            masks = [name for name in masks if "attention" in name.lower()] or masks
        chosen = masks if masks else list(qualified)
        if len(chosen) > 1:
            note = (f"several inputs could be the attention mask ({', '.join(chosen)}): every position is scored; "
                    "name one with --mask-input NAME")
            return None, (note,)
        _, reading, additive = qualified[chosen[0]]
        return _mask(chosen[0], reading, named=False, additive=additive), ()

    def _named(self, name: str) -> TokenMask:
        candidate = self._candidates[name]
        if not candidate.zero_one and not candidate.additive:
            raise TrtqError(f"--mask-input {name!r} holds values other than 0 and 1 in {self.source} "
                            f"(e.g. {candidate.example:g}), so it does not mark positions.",
                            "name the attention mask input (1 = real token, 0 = padding), or leave --mask-input out.")
        reading, additive = candidate.reading() or (candidate.plain if candidate.zero_one else candidate.added,
                                                    not candidate.zero_one)
        if candidate.rank < 2 or not any(reading.matches.values()):
            shapes = ", ".join(f"{out} {list(shape)}" for out, shape in candidate.shapes.items())
            raise TrtqError(f"--mask-input {name!r} has rank {candidate.rank}, and no output's leading dims equal its "
                            f"[batch, sequence] (outputs: {shapes}), so it marks positions of no output.",
                            "name an input shaped like the outputs' leading dims ([batch, sequence]), or use --no-mask.")
        if reading.ones == 0:
            raise TrtqError(f"--mask-input {name!r} is 0 everywhere in {self.source}, so no position would be scored.",
                            "name the attention mask input (1 = real token), or leave --mask-input out.")
        return _mask(name, reading, named=True, additive=additive)


def _mask(name: str, reading: _Reading, named: bool, additive: bool) -> TokenMask:
    return TokenMask(name, reading.ones / reading.total if reading.total else 0.0,
                     tuple(out for out, fits in reading.matches.items() if fits),
                     tuple(out for out, fits in reading.matches.items() if not fits), named, additive)


def _floating(dtype: str) -> bool:
    try:
        return np.dtype(dtype).kind == "f"
    except TypeError:
        return False


def _integer(dtype: str) -> bool:
    try:
        kind = np.dtype(dtype).kind
    except TypeError:
        return False
    return kind in "biu"


def leading_mask(value_shape: Sequence[int], mask: np.ndarray) -> np.ndarray | None:
    """`mask` as bool when it covers the leading dims of a tensor of `value_shape`, else None."""
    if len(value_shape) >= mask.ndim and tuple(value_shape[:mask.ndim]) == mask.shape:
        return mask.astype(bool, copy=False)
    return None


def layer_positions(value_shape: Sequence[int], mask: np.ndarray, attention_scores: bool = False) -> np.ndarray | None:
    """A bool array, broadcastable to `value_shape`, of the elements at marked positions of an
    intermediate tensor of a transformer; None when the tensor's layout is not recognised.

    - [B, S, ...] (projections, FFN): the mask on the leading dims;
    - attention scores [B, h, S, S] (Q.K^T): real query rows x real key columns;
    - heads first [B, h, S, d] (softmax.V): the mask on axis 2.
    """
    lead = leading_mask(value_shape, mask)
    if lead is not None:
        return lead.reshape(lead.shape + (1,) * (len(value_shape) - lead.ndim))
    if mask.ndim != 2 or len(value_shape) != 4 or value_shape[0] != mask.shape[0]:
        return None
    m = mask.astype(bool, copy=False)
    seq = mask.shape[1]
    if attention_scores and value_shape[2] == seq and value_shape[3] == seq:
        return m[:, None, :, None] & m[:, None, None, :]
    if value_shape[2] == seq:
        return m[:, None, :, None]
    return None


def attention_score_tensors(model: onnx.ModelProto) -> set[str]:
    """Outputs of the Q.K^T MatMuls (`trtq.quantize.placement.attention_matmuls`)."""
    outputs = {node.name: node.output[0] for node in model.graph.node if node.output}
    return {outputs[scores] for scores, _ in attention_matmuls(model)}


def class_score_outputs(model: onnx.ModelProto, forced: Sequence[str] = ()) -> frozenset[str]:
    """Outputs that come from a classifier head and are not named like embeddings (module docstring),
    plus `forced` (the output a classification task scores)."""
    producer = {out: node for node in model.graph.node for out in node.output if out}
    constants = {init.name for init in model.graph.initializer}
    for node in model.graph.node:  # in graph order: what only constants compute (a bias reshaped) is constant too
        if node.op_type == "Constant" or (node.input and all(not name or name in constants for name in node.input)):
            constants.update(out for out in node.output if out)

    def softmax_statistic(tensor: str, source: str) -> bool:
        """Whether `tensor` is a max or sum of `source` taken within a few nodes, as softmax's are, and not a
        mean or deviation (a LayerNorm written out normalises an embedding, not scores)."""
        frontier = {tensor}
        ops: set[str] = set()
        for _ in range(8):
            if source in frontier:
                return bool(ops & {"ReduceMax", "ReduceSum"}) and not ops & {"ReduceMean", "Sqrt", "Pow"}
            nodes = [producer[t] for t in frontier if t in producer]
            ops.update(node.op_type for node in nodes)
            frontier = {name for node in nodes for name in node.input if name}
        return False

    def from_head(tensor: str) -> bool:
        for _ in range(64):
            node = producer.get(tensor)
            if node is None:
                return False
            if node.op_type in HEAD_OPS:
                return True
            if node.op_type in LOOK_THROUGH:
                tensor = node.input[0]
            elif node.op_type in CONSTANT_ARITHMETIC and len(node.input) == 2:
                variable = [name for name in node.input if name not in constants]
                if len(variable) == 2 and node.op_type in SELF_NORMALISING and softmax_statistic(variable[1], variable[0]):
                    variable = variable[:1]  # x - max(x), exp / sum(exp): a softmax written out (jax2tf, tf2onnx)
                if len(variable) != 1:
                    return False
                tensor = variable[0]
            else:
                return False
        return False

    found = {o.name for o in model.graph.output if not NOT_SCORES.search(o.name) and from_head(o.name)}
    return frozenset(found | set(forced))


def top1_axes(value_shape: Sequence[int], masked_rank: int | None) -> bool:
    """Whether a class-score output of this shape has one score vector per sample ([N, C]) or per
    marked token ([B, S, C] under a rank-2 mask), with C >= 2."""
    if masked_rank is None:
        return len(value_shape) == 2 and value_shape[1] > 1
    return len(value_shape) == masked_rank + 1 and value_shape[-1] > 1
