"""`trtq finetune` as a user runs it: files, JSON, the FP32/PTQ/QAT table, one-sentence errors."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_models import depthwise_net, residual_conv_net, save

pytest.importorskip("torch", reason="QAT needs PyTorch (pip install torch); CI installs only .[test]")

from trtq import cli

ARTIFACTS = ["net.qat.int8.cache", "net.qat.int8.json", "net.qat.int8.onnx"]


@pytest.fixture(autouse=True)
def finetune_registered(monkeypatch):
    """Register the command whether or not cli/__init__ lists trtq.cli.qat yet."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", tuple(dict.fromkeys((*cli.COMMAND_MODULES, "trtq.cli.qat"))))


@pytest.fixture()
def case(tmp_path):
    model = save(residual_conv_net(batch="N"), tmp_path / "net.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((24, 3, 16, 16)).astype(np.float32))
    return tmp_path, model


def _args(tmp, model, *extra: str) -> list[str]:
    return ["finetune", model, "--calib", str(tmp / "calib.npy"), "--steps", "6", "--lr", "1e-3",
            "--batch-size", "8", "--eval-every", "3", "--checkpoint-every", "3",
            "--output-dir", str(tmp / "out"), *extra]


def _artifacts(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".qat.int8." in p.name) if folder.exists() else []


def test_json_result_and_files(case, capsys):
    tmp, model = case
    assert cli.main(_args(tmp, model, "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    assert _artifacts(tmp / "out") == ARTIFACTS
    assert out["onnx_path"].endswith("net.qat.int8.onnx")
    assert [r["stage"] for r in out["comparison"]["rows"]] == ["fp32", "ptq", "qat"]
    assert out["training"]["steps"] == 6 and out["training"]["stopped"] == "steps"
    assert [h["step"] for h in out["training"]["history"]] == [0, 3, 6]
    assert out["parity"]["ok"] is True and out["parity"]["max_steps"] <= 1
    table = json.loads((tmp / "out" / "net.qat.int8.json").read_text())
    assert table["options"]["qat_steps"] == 6
    cache = (tmp / "out" / "net.qat.int8.cache").read_text().splitlines()
    assert cache[0].startswith("TRT-") and cache[0].endswith("EntropyCalibration2")


@pytest.mark.parametrize(("extra", "equalized"), [((), True), (("--no-equalize",), False)])
def test_depthwise_inputs_are_equalized_unless_told_not_to(tmp_path, capsys, extra, equalized):
    model = save(depthwise_net(), tmp_path / "net.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((24, 3, 16, 16)).astype(np.float32))
    assert cli.main(_args(tmp_path, model, "--json", *extra)) == 0
    out = json.loads(capsys.readouterr().out)
    table = json.loads((tmp_path / "out" / "net.qat.int8.json").read_text())
    assert ("smoothing" in table) is equalized
    assert any(note.startswith("equalized 1 depthwise") for note in out["notes"]) is equalized


def test_text_table_and_target_early_stop(case, capsys):
    tmp, model = case
    assert cli.main(_args(tmp, model, "--quiet", "--target", "snr>=-50")) == 0
    text = capsys.readouterr().out
    assert "target reached" in text
    assert "FP32 vs PTQ vs QAT" in text
    rows = [line.split()[0] for line in text.splitlines() if line.strip().split()[:1] in (["fp32"], ["ptq"], ["qat"])]
    assert rows == ["fp32", "ptq", "qat"]
    assert "parity (onnxruntime vs PyTorch" in text


def test_resume_continues_to_more_steps(case, capsys):
    tmp, model = case
    assert cli.main(_args(tmp, model, "--quiet")) == 0
    capsys.readouterr()
    args = _args(tmp, model, "--json", "--resume")
    args[args.index("--steps") + 1] = "9"
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["training"]["start_step"] == 6 and out["training"]["steps"] == 9


@pytest.mark.parametrize(("extra", "message"), [
    (["--calib", "missing.npy"], "does not exist"),
    (["--resume"], "there is no checkpoint"),
    (["--target", "map-drop<=1"], "not one fine-tuning can check"),
    (["--steps", "-3"], "is not a whole number >= 1"),
])
def test_bad_input_is_one_sentence_and_writes_nothing(case, capsys, extra, message):
    tmp, model = case
    args = _args(tmp, model, "--quiet")
    if extra[0] == "--calib":
        args[args.index("--calib") + 1] = str(tmp / extra[1])
        extra = []
    assert cli.main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trtq: error: ") and message in err and "Traceback" not in err
    assert _artifacts(tmp / "out") == []


def test_without_pytorch_the_command_says_how_to_get_it(case, capsys, monkeypatch):
    tmp, model = case
    monkeypatch.setitem(sys.modules, "trtq.qat", None)  # import trtq.qat now raises ImportError
    assert cli.main(_args(tmp, model, "--quiet")) == 2
    err = capsys.readouterr().err
    assert "needs PyTorch" in err and "pip install" in err


def test_an_output_that_is_a_directory_stops_before_training(case, capsys, monkeypatch):
    """The .qat.int8.json name is taken by a folder: one sentence before any calibration or training."""
    tmp, model = case
    (tmp / "out" / "net.qat.int8.json").mkdir(parents=True)
    from trtq.qat import api as qat_api

    monkeypatch.setattr(qat_api, "train", lambda *a, **k: pytest.fail("training must not start"))
    assert cli.main(_args(tmp, model, "--quiet")) == 2
    err = capsys.readouterr().err
    assert "net.qat.int8.json is a directory" in err and "Traceback" not in err
    assert _artifacts(tmp / "out") == ["net.qat.int8.json"]  # the folder, nothing else


@pytest.mark.parametrize(("content", "message"), [
    (b"garbage\n", r"not a readable fine-tuning checkpoint \(it is not a file torch.save wrote\)"),
    (b"", r"not a readable fine-tuning checkpoint \(it is empty or cut short\)"),
    (b"PK\x03\x04" + bytes(64), "not a readable fine-tuning checkpoint"),
    ("missing-fields", "belongs to another run"),
    ("wrong-types", "lacks part of a fine-tuning checkpoint"),
])
def test_a_corrupt_checkpoint_with_resume_is_one_sentence(case, capsys, content, message):
    import torch

    tmp, model = case
    (tmp / "out").mkdir()
    checkpoint = tmp / "out" / "net.qat.ckpt"
    if content == "missing-fields":
        torch.save({"format": "trtq-qat-checkpoint", "format_version": 1}, checkpoint)
    elif content == "wrong-types":  # what the run writes, less its tensors
        from trtq.qat import api as qat_api

        real = {}
        original = qat_api.fingerprint

        def spy(parts):
            real["fingerprint"] = original(parts)
            return real["fingerprint"]

        import unittest.mock

        torch.save({"format": "trtq-qat-checkpoint", "format_version": 1}, checkpoint)  # another run's
        with unittest.mock.patch.object(qat_api, "fingerprint", spy):
            assert cli.main(_args(tmp, model, "--quiet", "--resume")) == 2  # learns the fingerprint
        torch.save({"format": "trtq-qat-checkpoint", "format_version": 1, "fingerprint": real["fingerprint"],
                    "step": "three", "trained": [], "optimizer": {}, "history": [], "best_step": 0,
                    "best_score": 0.0, "best_trained": {}}, checkpoint)
        capsys.readouterr()
    else:
        checkpoint.write_bytes(content)
    assert cli.main(_args(tmp, model, "--quiet", "--resume")) == 2
    err = capsys.readouterr().err
    assert err.startswith("trtq: error: ") and re.search(message, err), err
    assert "Traceback" not in err and _artifacts(tmp / "out") == []


def test_data_the_model_fails_on_is_named_before_pytorch_runs_it(tmp_path, capsys, monkeypatch):
    """Fine-tuning runs the model in PyTorch, whose errors are not told from trtq's: onnxruntime checks first."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "cli"))
    from test_cli_hostile import batch_one_model, gather_model

    ids = tmp_path / "ids.npy"
    np.save(ids, np.full((4, 8), 5, np.int64))
    bad = tmp_path / "bad.npy"
    np.save(bad, np.concatenate([np.full((2, 8), 5), np.full((1, 8), 99)]).astype(np.int64))
    model = save(gather_model(), tmp_path / "gather.onnx")
    assert cli.main(["finetune", model, "--calib", str(ids), "--train", str(bad), "--steps", "2", "--quiet",
                     "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "gather.onnx fails in onnxruntime on sample 2 of" in err and "bad.npy" in err and "Traceback" not in err
    model = save(batch_one_model(), tmp_path / "one.onnx")
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 16, 16), np.float32))
    assert cli.main(["finetune", model, "--calib", str(tmp_path / "x.npy"), "--steps", "2", "--quiet",
                     "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "on a batch of 4 samples" in err and "export it again with a dynamic batch dim" in err
