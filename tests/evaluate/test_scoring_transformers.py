"""Scoring over real tokens on transformers built from `transformers` configs (random weights),
exported by both torch exporters (tests/support/transformer_models.py): a tiny BERT with its
pooler and a classifier head (last_hidden_state [B, S, 32], pooler_output [B, 32], logits [B, 3])
and a tiny ViT (last_hidden_state [B, 17, 32], image input: no mask).

Token data pads 16-token sequences after 4..16 real tokens (about 60% real). The masked SNR is
checked against numpy over attention_mask == 1 within 0.01 dB (the two sides run separate
onnxruntime sessions).
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from transformer_models import (
    MASK_FORMS,
    export_mask_form,
    image_data,
    mask_form_data,
    masked_snr_db,
    token_data,
)

from trtq import api
from trtq.cli import main
from trtq.evaluate.evaluator import Evaluator
from trtq.model import load_model

TOL_DB = 0.01


def _run(path, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _snr(ref, cand, mask=None):
    return masked_snr_db(ref.astype(np.float64), cand.astype(np.float64), mask)


@pytest.fixture(scope="module")
def bert_int8(transformer_onnx, tmp_path_factory):
    """`get(dynamo)`: (FP32 model, its INT8 model (max ranges), held-out .npz, held-out feeds)."""
    folder = tmp_path_factory.mktemp("scoring")
    np.savez(folder / "calib.npz", **token_data(24, seed=5))
    held = token_data(16, seed=6)
    np.savez(folder / "held.npz", **held)
    made = {}

    def get(dynamo):
        if dynamo not in made:
            model = transformer_onnx("bert-heads", dynamo)
            result = api.quantize(model, folder / "calib.npz", progress=False, options=api.QuantizeOptions(
                method="max", output_dir=str(folder / ("dynamo" if dynamo else "legacy"))))
            made[dynamo] = (model, result.onnx_path, folder / "held.npz", held)
        return made[dynamo]

    return get


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_compare_scores_hidden_states_over_real_tokens(bert_int8, dynamo):
    model, candidate, held_path, held = bert_int8(dynamo)
    ref, cand = _run(model, held), _run(candidate, held)
    mask = held["attention_mask"]
    report = api.compare(model, candidate, held_path, progress=False)
    assert report.mask is not None and report.mask.input == "attention_mask" and not report.mask.named
    assert report.mask.outputs == ("last_hidden_state",)
    assert set(report.mask.unmasked) == {"pooler_output", "logits"}
    assert report.mask.share == pytest.approx(mask.mean())
    out = {o.name: o for o in report.outputs}
    real = _snr(ref["last_hidden_state"], cand["last_hidden_state"], mask)
    every = _snr(ref["last_hidden_state"], cand["last_hidden_state"])
    assert abs(real - every) > 0.1  # the padding moves the figure: the check below can fail
    assert abs(out["last_hidden_state"].snr_db - real) < TOL_DB
    assert out["last_hidden_state"].mask == "attention_mask" and out["pooler_output"].mask is None
    for name in ("pooler_output", "logits"):  # no position axis: every sample, whole
        assert abs(out[name].snr_db - _snr(ref[name], cand[name])) < TOL_DB
    # top-1 only for the class scores: not the hidden states, not the pooler's [B, 32] embedding
    assert out["last_hidden_state"].top1_agreement is None and out["pooler_output"].top1_agreement is None
    agree = float((ref["logits"].argmax(1) == cand["logits"].argmax(1)).mean())
    assert out["logits"].top1_agreement == pytest.approx(agree)

    everywhere = api.compare(model, candidate, held_path, data=api.DataOptions(mask=False), progress=False)
    assert everywhere.mask is None
    assert abs(everywhere.outputs[0].snr_db - every) < TOL_DB
    named = api.compare(model, candidate, held_path, data=api.DataOptions(mask="attention_mask"), progress=False)
    assert named.mask.named and abs(named.outputs[0].snr_db - real) < TOL_DB


@pytest.mark.parametrize("form", MASK_FORMS)
def test_compare_scores_3d_and_additive_masks_over_real_tokens(tmp_path, form):
    # input_ids [B, 16], mask [B, 16, 16] int64 or [B, 1, 1, 16] float (0 / -10000) -> tiny BERT -> last_hidden_state
    pytest.importorskip("torch", reason="the transformer tests export with torch")
    model = export_mask_form(form, tmp_path / f"bert_{form}.onnx")
    np.savez(tmp_path / "calib.npz", **mask_form_data(form, token_data(16, seed=5)))
    tokens = token_data(16, seed=6)
    held = mask_form_data(form, tokens)
    np.savez(tmp_path / "held.npz", **held)
    candidate = api.quantize(model, tmp_path / "calib.npz", progress=False,
                             options=api.QuantizeOptions(method="max", output_dir=str(tmp_path / "q"))).onnx_path
    ref, cand = _run(model, held)["last_hidden_state"], _run(candidate, held)["last_hidden_state"]
    real = _snr(ref, cand, tokens["attention_mask"])
    assert abs(real - _snr(ref, cand)) > 0.1  # the padding moves the figure: the check below can fail
    report = api.compare(model, candidate, tmp_path / "held.npz", progress=False)
    assert report.mask is not None and report.mask.input == "mask" and report.mask.additive == (form != "3d")
    assert report.mask.share == pytest.approx(tokens["attention_mask"].mean())
    assert abs(report.outputs[0].snr_db - real) < TOL_DB


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_vit_has_no_mask_and_no_top1(transformer_onnx, tmp_path, dynamo):
    model = transformer_onnx("vit", dynamo)
    np.save(tmp_path / "calib.npy", image_data(16, seed=5))
    held = image_data(8, seed=6)
    np.save(tmp_path / "held.npy", held)
    candidate = api.quantize(model, tmp_path / "calib.npy", progress=False,
                             options=api.QuantizeOptions(method="max", output_dir=str(tmp_path))).onnx_path
    report = api.compare(model, candidate, tmp_path / "held.npy", progress=False)
    assert report.mask is None and report.mask_notes == ()
    ref, cand = _run(model, {"pixel_values": held}), _run(candidate, {"pixel_values": held})
    assert abs(report.outputs[0].snr_db - _snr(ref["last_hidden_state"], cand["last_hidden_state"])) < TOL_DB
    assert report.outputs[0].top1_agreement is None


def test_sensitivity_and_target_score_over_real_tokens(bert_int8):
    model, candidate, held_path, held = bert_int8(False)
    calib = held_path.with_name("calib.npz")
    exact = api.sensitivity(model, calib=calib, data_source=held_path, method="exact",
                            options=api.QuantizeOptions(method="max"), progress=False).result
    assert exact.mask is not None and exact.mask.input == "attention_mask"
    local = api.sensitivity(model, calib=calib, data_source=held_path, options=api.QuantizeOptions(method="max"),
                            progress=False).result
    assert local.mask is not None and local.mask.outputs == ("last_hidden_state",)
    unmasked = api.sensitivity(model, calib=calib, data_source=held_path, data=api.DataOptions(mask=False),
                               options=api.QuantizeOptions(method="max"), progress=False).result
    assert unmasked.mask is None
    scores = {layer.node: layer.snr_db for layer in local.layers}
    moved = [abs(scores[layer.node] - layer.snr_db) for layer in unmasked.layers]
    assert max(moved) > 0.1  # local scores left the padding out

    # --target measures the all-INT8 model as compare does: over real tokens, worst output; early
    # stopping weighs the error seen against the FP32 power over the same positions
    ref, cand = _run(model, held), _run(candidate, held)
    evaluator = Evaluator(load_model(model), api.open_data(load_model(model), held_path), batch_size=4)
    keep = held["attention_mask"].astype(bool)
    power = float((ref["last_hidden_state"].astype(np.float64)[keep] ** 2).sum())
    assert evaluator.signal_power["last_hidden_state"] == pytest.approx(power, rel=1e-5)
    int8 = min(_snr(ref["last_hidden_state"], cand["last_hidden_state"], held["attention_mask"]),
               _snr(ref["pooler_output"], cand["pooler_output"]), _snr(ref["logits"], cand["logits"]))
    result = api.quantize(model, calib, progress=False, options=api.QuantizeOptions(
        method="max", target=f"snr>={int8 + 2:.2f}", target_data=str(held_path),
        output_dir=str(held_path.parent / "target")))
    assert abs(result.mixed.int8_metric - int8) < TOL_DB
    assert result.mixed.mask.input == "attention_mask" and result.mixed.holds


def test_cli_says_what_it_scored(bert_int8, capsys):
    model, candidate, held_path, held = bert_int8(True)
    assert main(["compare", str(model), str(candidate), "--data", str(held_path), "--quiet"]) == 0
    text = capsys.readouterr().out
    share = f"{100 * held['attention_mask'].mean():.0f}%"
    assert f"scored over real tokens: attention_mask marks {share} of positions" in text
    assert "pooler_output, logits over all positions" in text
    header = next(line for line in text.splitlines() if line.startswith("output"))
    assert "top-1 agree" in header  # the classifier's logits have it
    assert main(["compare", str(model), str(candidate), "--data", str(held_path), "--no-mask", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mask"] is None and all(o["mask"] is None for o in out["outputs"])
    assert main(["compare", str(model), str(candidate), "--data", str(held_path), "--mask-input", "input_ids"]) == 2
    assert "holds values other than 0 and 1" in capsys.readouterr().err
    record = json.loads((Path(candidate).parent / "trtq-compare.json").read_text())
    assert record["result"]["mask"] is None  # the --no-mask run's record (the failed run left it alone)


def test_cli_hidden_states_only_has_no_top1_column(transformer_onnx, tmp_path, capsys):
    model = str(transformer_onnx("bert", False))  # last_hidden_state only
    np.savez(tmp_path / "data.npz", **token_data(8))
    assert main(["quantize", model, "--calib", str(tmp_path / "data.npz"), "--output-dir", str(tmp_path),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["compare", model, str(tmp_path / "bert_legacy.int8.onnx"), "--data", str(tmp_path / "data.npz"),
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "top-1" not in text and "scored over real tokens: attention_mask" in text


def test_finetune_progress_is_scored_over_real_tokens(bert_int8):
    pytest.importorskip("torch")
    from trtq.qat import FinetuneOptions, finetune

    model, _, held_path, held = bert_int8(False)
    result = finetune(model, held_path.with_name("calib.npz"), eval_data=held_path, progress=False,
                      options=FinetuneOptions(steps=2, eval_every=1, method="max",
                                              output_dir=str(held_path.parent / "qat")))
    assert result.monitor_mask is not None and result.monitor_mask.input == "attention_mask"
    assert result.comparison.mask is not None and result.comparison.mask.outputs == ("last_hidden_state",)
    ref, qat = _run(model, held), _run(result.onnx_path, held)
    snr = min(_snr(ref["last_hidden_state"], qat["last_hidden_state"], held["attention_mask"]),
              _snr(ref["pooler_output"], qat["pooler_output"]), _snr(ref["logits"], qat["logits"]))
    row = next(r for r in result.comparison.rows if r.stage == "qat")
    assert abs(row.snr_db - snr) < TOL_DB and row.top1_agreement is not None
