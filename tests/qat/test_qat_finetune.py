"""`trtq.qat.finetune` end to end on tiny models: resume equals no interruption, NaN handling,
early stop, labels, bad input with no partial output."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_models import depthwise_net, gemm_matmul_net, residual_conv_net, save

torch = pytest.importorskip("torch", reason="QAT needs PyTorch (pip install torch); CI installs only .[test]")

from trtq import api
from trtq.errors import TrtqError
from trtq.formats.ranges import RangesTable
from trtq.qat import Distillation, FinetuneOptions, TrainingDiverged, finetune

OUTPUTS = (".qat.int8.onnx", ".qat.int8.cache", ".qat.int8.json")


@pytest.fixture()
def conv_case(tmp_path):
    """The residual conv net (dynamic batch) and 48 random samples as .npy."""
    model = save(residual_conv_net(batch="N"), tmp_path / "net.onnx")
    data = tmp_path / "calib.npy"
    np.save(data, np.random.default_rng(0).standard_normal((48, 3, 16, 16)).astype(np.float32))
    return model, str(data)


def _options(out, **overrides) -> FinetuneOptions:
    base = {"steps": 12, "lr": 1e-2, "scale_lr": 1e-2, "batch_size": 8, "eval_every": 4, "checkpoint_every": 4,
            "output_dir": str(out), "monitor_samples": 16, "parity_samples": 8}
    base.update(overrides)
    return FinetuneOptions(**base)


def _written(out) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith(OUTPUTS))


def test_resume_after_an_interruption_gives_the_uninterrupted_result(conv_case, tmp_path):
    model, data = conv_case
    straight = finetune(model, data, options=_options(tmp_path / "a"), progress=False)

    def interrupt(step: int) -> None:
        if step == 7:
            raise KeyboardInterrupt

    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        finetune(model, data, options=_options(out), progress=False, on_step=interrupt)
    assert _written(out) == []  # interrupted: no output, only the checkpoint of step 4
    assert torch.load(out / "net.qat.ckpt", weights_only=True)["step"] == 4
    resumed = finetune(model, data, options=_options(out, resume=True), progress=False)

    assert resumed.training.start_step == 4 and resumed.training.steps == straight.training.steps == 12
    assert [(p.step, p.snr_db) for p in resumed.training.history] == [(p.step, p.snr_db) for p in straight.training.history]
    for suffix in OUTPUTS:
        a = (tmp_path / "a" / f"net{suffix}").read_bytes()
        b = (out / f"net{suffix}").read_bytes()
        assert a == b, suffix
    assert straight.parity.ok and straight.parity.max_steps <= 1


def test_checkpoint_of_another_run_is_refused(conv_case, tmp_path):
    model, data = conv_case
    finetune(model, data, options=_options(tmp_path, steps=4), progress=False)
    with pytest.raises(TrtqError, match="belongs to another run"):
        finetune(model, data, options=_options(tmp_path, steps=8, seed=1, resume=True), progress=False)


def test_nan_loss_stops_keeps_the_last_good_checkpoint_and_writes_nothing(conv_case, tmp_path):
    model, data = conv_case
    calls = {"n": 0}
    distill = Distillation(("scores",))

    def loss(inputs):
        calls["n"] += 1
        value = distill(inputs)
        return value * math.nan if calls["n"] >= 6 else value

    with pytest.raises(TrainingDiverged) as caught:
        finetune(model, data, options=_options(tmp_path), loss=loss, progress=False)
    message = str(caught.value)
    assert "became nan between steps 4 and 8" in message
    assert "last good checkpoint (step 4)" in message and "net.qat.ckpt" in message
    assert caught.value.hint and "--resume" in caught.value.hint
    assert _written(tmp_path) == []
    saved = torch.load(tmp_path / "net.qat.ckpt", weights_only=True)
    assert saved["step"] == 4
    assert all(torch.isfinite(t).all() for t in saved["trained"].values())
    # the kept checkpoint resumes (here with a sane loss) to a finished run
    resumed = finetune(model, data, options=_options(tmp_path, resume=True), loss=distill, progress=False)
    assert resumed.training.start_step == 4 and resumed.training.steps == 12


def test_loss_blowing_up_counts_as_divergence(conv_case, tmp_path):
    model, data = conv_case
    calls = {"n": 0}
    distill = Distillation(("scores",))

    def loss(inputs):
        calls["n"] += 1
        return distill(inputs) * (1.0 if calls["n"] <= 4 else 1e6)

    with pytest.raises(TrainingDiverged, match="over 100x its start"):
        finetune(model, data, options=_options(tmp_path), loss=loss, progress=False)
    assert _written(tmp_path) == []


def test_target_that_already_holds_stops_before_any_step(conv_case, tmp_path):
    model, data = conv_case
    result = finetune(model, data, options=_options(tmp_path, target="snr>=-50"), progress=False)
    assert result.training.stopped == "target"
    assert result.training.steps == 0 and result.training.samples == 0
    assert _written(tmp_path) == ["net.qat.int8.cache", "net.qat.int8.json", "net.qat.int8.onnx"]
    rows = {r.stage: r for r in result.comparison.rows}
    assert rows["qat"].snr_db == pytest.approx(rows["ptq"].snr_db)  # nothing trained: QAT export == PTQ


def test_fixed_batch_multi_output_model_trains_at_its_batch(tmp_path):
    # gemm_matmul_net: input [1,32] fixed, outputs logits [1,10] and gram [1,4,4]
    model = save(gemm_matmul_net(), tmp_path / "gm.onnx")
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(1).standard_normal((10, 32)).astype(np.float32))
    result = finetune(model, str(data), options=_options(tmp_path, steps=6, eval_every=3, checkpoint_every=3),
                      progress=False)
    assert result.training.samples == 6  # batch 1 whatever --batch-size says
    assert {r.stage for r in result.comparison.rows} == {"fp32", "ptq", "qat"}
    assert result.parity.max_steps <= 1


def _classifier(path) -> str:
    """image [N,2,4,4] -> conv (2->3, 1x1) -> relu -> GlobalAveragePool -> flatten -> gemm (3->3) -> logits [N,3]."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 2, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((3, 3)).astype(np.float32), "g")]
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "g"], ["logits"], name="head", transB=1)]
    graph = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 2, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return save(model, path)


def test_labels_make_the_loss_cross_entropy(tmp_path):
    model = _classifier(tmp_path / "cls.onnx")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((24, 2, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(24) % 3)
    result = finetune(model, str(tmp_path / "x.npy"), progress=False,
                      options=_options(tmp_path, steps=8, labels=str(tmp_path / "y.npy"), task="classify"))
    losses = [p.loss for p in result.training.history if p.loss is not None]
    assert losses and losses[0] > 0.3  # cross-entropy of 3 random classes, not a tiny 1/SNR
    np.save(tmp_path / "bad.npy", np.arange(5))
    with pytest.raises(TrtqError, match=r"has 5 labels, but data .* has 24 samples"):
        finetune(model, str(tmp_path / "x.npy"), progress=False,
                 options=_options(tmp_path / "bad", labels=str(tmp_path / "bad.npy")))
    assert not (tmp_path / "bad").exists() or _written(tmp_path / "bad") == []


@pytest.mark.parametrize(("overrides", "match"), [
    ({"steps": -1}, "--steps -1 is not a non-negative integer"),
    ({"lr": float("nan")}, "--lr nan is not a non-negative number"),
    ({"target": "top1-drop<=1"}, "not one fine-tuning can check"),
    ({"device": "tpu"}, "neither cpu nor cuda"),
    ({"resume": True}, "there is no checkpoint"),
])
def test_bad_options_get_one_sentence_and_no_output(conv_case, tmp_path, overrides, match):
    model, data = conv_case
    with pytest.raises(TrtqError, match=match):
        finetune(model, data, options=_options(tmp_path / "out", **overrides), progress=False)
    assert not (tmp_path / "out").exists() or _written(tmp_path / "out") == []


def test_empty_data_folder_is_refused(conv_case, tmp_path):
    model, _ = conv_case
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrtqError, match="contains no images"):
        finetune(model, str(tmp_path / "empty"), options=_options(tmp_path / "out"), progress=False)


def test_depthwise_inputs_are_equalized_as_quantize_does(tmp_path):
    """`depthwise_net`: the depthwise input's channels span 50x. Fine-tuning starts from the PTQ model `trtq quantize`
    writes by default (the same equalization factors), and --no-equalize leaves the graph as it is."""
    model = save(depthwise_net(), tmp_path / "dw.onnx")
    data = tmp_path / "calib.npy"
    np.save(data, np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype(np.float32))
    ptq = api.quantize(model, str(data), options=api.QuantizeOptions(output_dir=str(tmp_path / "ptq")), progress=False)
    factors = RangesTable.load(ptq.ranges_path).smoothing
    assert list(factors) == ["h"]  # the quantizer equalizes the depthwise input
    result = finetune(model, str(data), options=_options(tmp_path / "qat", steps=2), progress=False)
    assert result.ranges_from.startswith("calibrated (auto)")  # quantize's default method too
    assert RangesTable.load(result.ranges_path).smoothing == factors
    assert any(note.startswith("equalized 1 depthwise") for note in result.notes)
    exported = onnx.load(result.onnx_path)
    assert [n.input[0] for n in exported.graph.node if n.op_type == "Mul"] == ["h"]  # 1/s before the depthwise Q/DQ
    plain = finetune(model, str(data), options=_options(tmp_path / "plain", steps=2, equalize=False), progress=False)
    assert RangesTable.load(plain.ranges_path).smoothing == {}
    assert not any(n.op_type == "Mul" for n in onnx.load(plain.onnx_path).graph.node)
