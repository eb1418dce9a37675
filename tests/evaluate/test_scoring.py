"""Scoring over real tokens (the attention mask) and the class-score rule for top-1, on arrays and
small hand-built graphs; the transformer exports are in test_scoring_transformers.py."""

import math

import numpy as np
import pytest
from onnx import TensorProto, helper

from trtq.errors import TrtqError
from trtq.evaluate.metrics import OutputAccumulator
from trtq.evaluate.scoring import (
    MaskDetector,
    attention_score_tensors,
    class_score_outputs,
    layer_positions,
)
from trtq.model import TensorSpec

TOKEN_INPUTS = (TensorSpec("input_ids", ("batch", 6), "int64"), TensorSpec("attention_mask", ("batch", 6), "int64"),
                TensorSpec("token_type_ids", ("batch", 6), "int64"))


def _tokens(n, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 7, n)
    mask = (np.arange(6)[None] < lengths[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(2, 50, (n, 6)) * mask, "attention_mask": mask,
            "token_type_ids": np.zeros((n, 6), np.int64)}


def _numpy_snr(ref, q, keep):
    r, e = ref[keep], ref[keep] - q[keep]
    return 10 * math.log10(float((r * r).sum()) / float((e * e).sum()))


def test_masked_metrics_equal_numpy_over_marked_positions():
    rng = np.random.default_rng(1)
    feed = _tokens(10)
    mask = feed["attention_mask"].astype(bool)
    ref = rng.standard_normal((10, 6, 4))
    q = ref + rng.standard_normal((10, 6, 4)) * np.where(mask, 0.1, 3.0)[..., None]  # padding: much worse
    acc = OutputAccumulator("h", class_scores=False)
    for i in range(0, 10, 3):  # streamed in uneven batches
        acc.update(ref[i:i + 3], q[i:i + 3], feed["attention_mask"][i:i + 3], "attention_mask")
    m = acc.result()
    assert m.mask == "attention_mask" and m.top1_agreement is None
    assert math.isclose(m.snr_db, _numpy_snr(ref, q, mask), rel_tol=1e-9)
    err = np.abs(ref - q)[mask]
    assert math.isclose(m.max_abs_error, err.max()) and math.isclose(m.mean_abs_error, err.mean())
    cos = float((ref[mask] * q[mask]).sum() / np.linalg.norm(ref[mask]) / np.linalg.norm(q[mask]))
    assert math.isclose(m.cosine, cos, rel_tol=1e-9)
    worst = min(_numpy_snr(ref[i], q[i], mask[i]) for i in range(10))
    assert math.isclose(m.worst_sample_snr_db, worst, rel_tol=1e-9)
    unmasked = OutputAccumulator("h")
    unmasked.update(ref, q)
    assert unmasked.result().snr_db < m.snr_db - 10  # the padding dominated the old figure


def test_top1_per_real_token_for_masked_class_scores_and_never_for_embeddings():
    feed = _tokens(4, seed=2)
    mask = feed["attention_mask"]
    ref = np.random.default_rng(3).standard_normal((4, 6, 5))
    q = ref.copy()
    q[~mask.astype(bool)] = -ref[~mask.astype(bool)]  # every padding token flips its arg-max: not counted
    real = np.argwhere(mask)[0]
    q[real[0], real[1]] = -ref[real[0], real[1]]  # one real token flips
    tokens = OutputAccumulator("logits", class_scores=True)
    tokens.update(ref, q, mask, "attention_mask")
    assert tokens.result().top1_agreement == pytest.approx(1 - 1 / mask.sum())
    embedding = OutputAccumulator("pooler_output", class_scores=False)  # [N, C], but not class scores
    embedding.update(ref[:, 0], q[:, 0])
    assert embedding.result().top1_agreement is None
    scores = OutputAccumulator("logits", class_scores=True)
    scores.update(ref[:, 0], ref[:, 0])
    assert scores.result().top1_agreement == 1.0


def test_detector_takes_the_attention_mask_not_token_types():
    detector = MaskDetector(TOKEN_INPUTS)
    feed = _tokens(8)
    feed["token_type_ids"][:, 3:] = 1  # sentence pairs: token types are 0/1 too
    hidden, pooled = np.zeros((8, 6, 4)), np.zeros((8, 4))
    detector.update(feed, {"last_hidden_state": hidden, "pooler_output": pooled})
    mask, notes = detector.result()
    assert notes == () and mask is not None and mask.input == "attention_mask" and not mask.named
    assert mask.outputs == ("last_hidden_state",) and mask.unmasked == ("pooler_output",)
    assert mask.share == pytest.approx(feed["attention_mask"].mean())
    assert mask.sentence().startswith(f"scored over real tokens: attention_mask marks "
                                      f"{100 * feed['attention_mask'].mean():.0f}% of positions")


def test_detector_needs_0_1_values_and_an_output_with_those_leading_dims():
    feed = _tokens(4)
    detector = MaskDetector(TOKEN_INPUTS)
    detector.update(feed, {"pooled": np.zeros((4, 8))})  # no output has [B, S] leading dims
    assert detector.result() == (None, ())
    renamed = (TensorSpec("ids", ("batch", 6), "int64"), TensorSpec("valid", ("batch", 6), "int32"))
    detector = MaskDetector(renamed)  # no name says mask: the one 0/1 input is taken
    detector.update({"ids": feed["input_ids"], "valid": feed["attention_mask"].astype(np.int32)},
                    {"y": np.zeros((4, 6, 2))})
    assert detector.result()[0].input == "valid"
    assert not MaskDetector((TensorSpec("pixel_values", ("batch", 3, 8, 8), "float32"),)).active


def test_detector_leaves_an_ambiguous_choice_to_the_user():
    specs = (TensorSpec("a", ("batch", 6), "int64"), TensorSpec("b", ("batch", 6), "bool"))
    detector = MaskDetector(specs)
    feed = _tokens(4)
    detector.update({"a": feed["attention_mask"], "b": feed["attention_mask"].astype(bool)}, {"y": np.zeros((4, 6))})
    mask, notes = detector.result()
    assert mask is None and "--mask-input" in notes[0] and "a, b" in notes[0]


def test_named_mask_and_its_errors():
    feed = _tokens(4)
    outputs = {"last_hidden_state": np.zeros((4, 6, 4))}
    detector = MaskDetector(TOKEN_INPUTS, "attention_mask")
    detector.update(feed, outputs)
    assert detector.result()[0].named
    for name, words in (("input_ids", "values other than 0 and 1"), ("token_type_ids", "0 everywhere")):
        detector = MaskDetector(TOKEN_INPUTS, name)
        detector.update(feed, outputs)
        with pytest.raises(TrtqError, match=words):
            detector.result()
    with pytest.raises(TrtqError, match="is not an input of the model"):
        MaskDetector(TOKEN_INPUTS, "mask")
    assert not MaskDetector(TOKEN_INPUTS, False).active  # --no-mask: nothing watched, nothing masked


@pytest.mark.parametrize("form", ["3d", "4d", "4d-square", "additive", "additive-min", "bool-3d"])
def test_detector_reads_3d_4d_and_additive_masks_as_their_key_positions(form):
    feed = _tokens(6, seed=4)
    mask = feed["attention_mask"]
    arrays = {
        "3d": (np.repeat(mask[:, None, :], 6, axis=1), "int64"),  # [B, S, S], row i = the key mask (Google's BERT)
        "4d": (mask[:, None, None, :], "int64"),  # [B, 1, 1, S]
        "4d-square": (mask[:, None, :, None] & mask[:, None, None, :], "int64"),  # [B, 1, S, S], real x real
        "additive": (((1.0 - mask) * -10000.0)[:, None, None, :].astype(np.float32), "float32"),
        "additive-min": (np.where(mask, 0.0, np.finfo(np.float32).min)[:, None, None, :].astype(np.float32),
                         "float32"),
        "bool-3d": (np.repeat(mask[:, None, :], 6, axis=1).astype(bool), "bool"),
    }
    value, dtype = arrays[form]
    specs = (TOKEN_INPUTS[0], TensorSpec("attention_mask", ("batch",) + (6,) * (value.ndim - 1), dtype))
    detector = MaskDetector(specs)
    detector.update({"input_ids": feed["input_ids"], "attention_mask": value},
                    {"last_hidden_state": np.zeros((6, 6, 4)), "pooled": np.zeros((6, 4))})
    found, notes = detector.result()
    assert notes == () and found is not None and found.outputs == ("last_hidden_state",)
    assert found.additive == form.startswith("additive")
    assert found.share == pytest.approx(mask.mean())
    assert np.array_equal(found.positions(value), mask.astype(bool))


def test_float_inputs_count_as_masks_only_when_named_so():
    feed = _tokens(4)
    weights = feed["attention_mask"].astype(np.float32)  # 0/1 floats, but named like anything else
    detector = MaskDetector((TensorSpec("scale", ("batch", 6), "float32"),))
    assert not detector.active
    named = MaskDetector((TensorSpec("input_mask", ("batch", 6), "float32"),))
    named.update({"input_mask": weights}, {"y": np.zeros((4, 6, 2))})
    found = named.result()[0]
    assert found.input == "input_mask" and not found.additive
    scaled = MaskDetector((TensorSpec("input_mask", ("batch", 6), "float32"),))  # -1 is no additive mask value
    scaled.update({"input_mask": weights - 1.0}, {"y": np.zeros((4, 6, 2))})
    assert scaled.result() == (None, ())


def test_layer_positions_of_transformer_layouts():
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    assert layer_positions((2, 3, 8), mask).shape == (2, 3, 1)
    scores = layer_positions((2, 4, 3, 3), mask, attention_scores=True)
    assert scores.shape == (2, 1, 3, 3) and scores[0, 0].sum() == 4 and scores[1, 0].sum() == 1
    assert layer_positions((2, 4, 3, 5), mask).shape == (2, 1, 3, 1)  # heads first: the query axis
    assert layer_positions((2, 7), mask) is None  # no position axis: every element counts


def _graph(nodes, outputs, inits=()):
    """x [N, 8] -> `nodes` -> `outputs` (each [N, *])."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_class_scores_come_from_a_classifier_head():
    #   x -> Gemm(w) -> h -> Add(bias) -> logits -> Softmax -> probs
    #              h -> Tanh -> pooler_output ;  h -> LayerNormalization -> hidden ;  x -> Gemm(w) -> image_embeds
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8], np.ones(64, np.float32))
    b = helper.make_tensor("b", TensorProto.FLOAT, [8], np.ones(8, np.float32))
    s = helper.make_tensor("s", TensorProto.FLOAT, [8], np.ones(8, np.float32))
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"]), helper.make_node("Tanh", ["h"], ["pooler_output"]),
             helper.make_node("LayerNormalization", ["h", "s", "b"], ["hidden"]),
             helper.make_node("Gemm", ["x", "w"], ["image_embeds"]),
             helper.make_node("Add", ["h", "h"], ["doubled"])]
    model = _graph(nodes, ["logits", "probs", "pooler_output", "hidden", "image_embeds", "doubled"], [w, b, s])
    assert class_score_outputs(model) == {"logits", "probs"}
    assert class_score_outputs(model, forced=["hidden"]) == {"logits", "probs", "hidden"}  # --task classify's output


def test_a_softmax_written_out_is_seen_through_and_a_difference_of_two_heads_is_not():
    # jax2tf / tf2onnx write softmax as ops, and a bias as a Reshape of a constant:
    #   x -> MatMul(w) -> m -> Add(Reshape(b)) -> logits -> Sub(., ReduceMax(logits)) -> Exp -> e -> Div(., ReduceSum(e)) -> probs
    #   x -> MatMul(w) -> m2 ;  Sub(m, m2) -> diff   (two variable inputs, neither a statistic of the other)
    #   m -> Sub(., ReduceMean(m)) -> c -> Div(., Sqrt(ReduceMean(c * c))) -> normed   (a LayerNorm)
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8], np.ones(64, np.float32))
    b = helper.make_tensor("b", TensorProto.FLOAT, [8], np.ones(8, np.float32))
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], np.array([1, 8], np.int64))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Reshape", ["b", "shape"], ["bias"]),
             helper.make_node("Add", ["m", "bias"], ["logits"]),
             helper.make_node("ReduceMax", ["logits"], ["top"], axes=[1], keepdims=1),
             helper.make_node("Sub", ["logits", "top"], ["shifted"]), helper.make_node("Exp", ["shifted"], ["e"]),
             helper.make_node("ReduceSum", ["e"], ["total"], keepdims=1),
             helper.make_node("Div", ["e", "total"], ["probs"]),
             helper.make_node("MatMul", ["x", "w"], ["m2"]), helper.make_node("Sub", ["m", "m2"], ["diff"]),
             # a LayerNorm written out (older opsets) over the head: an embedding, not scores
             helper.make_node("ReduceMean", ["m"], ["mean"], axes=[1]), helper.make_node("Sub", ["m", "mean"], ["c"]),
             helper.make_node("Mul", ["c", "c"], ["sq"]), helper.make_node("ReduceMean", ["sq"], ["var"], axes=[1]),
             helper.make_node("Sqrt", ["var"], ["std"]), helper.make_node("Div", ["c", "std"], ["normed"])]
    model = _graph(nodes, ["probs", "diff", "normed"], [w, b, shape])
    assert class_score_outputs(model) == {"probs"}


def test_attention_scores_are_the_matmuls_before_a_softmax():
    #   x -> MatMul(x, xT) -> Div -> Add(mask) -> Softmax -> MatMul(., x) -> out
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], name="t"),
             helper.make_node("MatMul", ["x", "xt"], ["qk"], name="bmm1"),
             helper.make_node("Div", ["qk", "c"], ["scaled"], name="div"),
             helper.make_node("Add", ["scaled", "c"], ["masked"], name="mask"),
             helper.make_node("Softmax", ["masked"], ["p"], name="softmax"),
             helper.make_node("MatMul", ["p", "x"], ["out"], name="bmm2")]
    c = helper.make_tensor("c", TensorProto.FLOAT, [], [2.0])
    assert attention_score_tensors(_graph(nodes, ["out"], [c])) == {"qk"}
