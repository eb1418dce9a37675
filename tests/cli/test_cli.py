"""The CLI as a user runs it: exit codes, one-sentence errors without tracebacks, --json, --quiet."""

import json

import numpy as np
import pytest
from tiny_models import residual_conv_net, save

from trtq.cli import main


@pytest.fixture()
def case(tmp_path):
    model = save(residual_conv_net(batch="N"), tmp_path / "net.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((6, 3, 16, 16)).astype(np.float32))
    return tmp_path, model


def test_quantize_json_and_compare_json(case, capsys):
    tmp, model = case
    assert main(["quantize", model, "--calib", str(tmp / "calib.npy"), "--method", "max", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["onnx_path"].endswith("net.int8.onnx") and out["qdq_pairs"] == 9
    assert set(out["commands"]) >= {"tensorrt-11", "tensorrt-10-implicit"}
    assert main(["compare", model, out["onnx_path"], "--data", str(tmp / "calib.npy"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 6 and report["outputs"][0]["name"] == "scores"


def test_human_output_and_quiet(case, capsys):
    tmp, model = case
    assert main(["quantize", model, "--calib", str(tmp / "calib.npy"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "trtexec --onnx=" in captured.out
    assert "calibrating" not in captured.err  # no progress bar under --quiet


def test_external_data_flag(tmp_path, capsys):
    from tiny_models import wide_conv_net

    model = save(wide_conv_net(), tmp_path / "wide.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32))
    assert main(["quantize", model, "--calib", str(tmp_path / "calib.npy"), "--external-data", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data_path"] == str(tmp_path / "wide.int8.onnx.data")
    assert main(["quantize", model, "--calib", str(tmp_path / "calib.npy"), "--quiet"]) == 0
    assert "weights in" not in capsys.readouterr().out
    assert main(["quantize", model, "--calib", str(tmp_path / "calib.npy"), "--external-data", "--quiet"]) == 0
    assert "(weights in wide.int8.onnx.data)" in capsys.readouterr().out


def test_inspect(case, capsys):
    _, model = case
    assert main(["inspect", model]) == 0
    text = capsys.readouterr().out
    assert "input: float32 [Nx3x16x16]  (dynamic)" in text and "Conv x4" in text
    assert main(["inspect", model, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quantizable_nodes"] == ["conv1", "conv2", "conv3", "conv_head"]


def test_user_errors_are_one_sentence_exit_2_no_traceback(case, capsys):
    tmp, model = case
    assert main(["quantize", str(tmp / "nope.onnx"), "--calib", str(tmp / "calib.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trtq: error: Model file") and "Traceback" not in err and "fix:" in err
    assert main(["quantize", model, "--calib", str(tmp / "calib.npy"), "--shape", "input=1x3"]) == 2
    assert "name:AxBxC" in capsys.readouterr().err
    assert main(["quantize", model, "--calib", str(tmp / "calib.npy"), "--trt-version", "11.4.0"]) == 2
    assert "removed in 11.0" in capsys.readouterr().err


def test_python_m_trtq_runs(case):
    import subprocess
    import sys

    _, model = case
    proc = subprocess.run([sys.executable, "-m", "trtq", "inspect", model, "--json"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["opset"] == 17


def test_interrupted_run_leaves_no_output(case, capsys, monkeypatch):
    tmp, model = case
    from trtq.calibrate import backend_ort

    calls = []

    def interrupt(self, batch, outputs=False):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(backend_ort.OrtBackend, "observe", interrupt)
    out = tmp / "out"
    assert main(["quantize", model, "--calib", str(tmp / "calib.npy"), "--output-dir", str(out), "--quiet"]) == 130
    assert "interrupted; no output was written" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []


def test_quantize_fp8_json_and_text(transformer_onnx, tmp_path, capsys):
    from transformer_models import token_data

    model = str(transformer_onnx("bert", False))
    np.savez(tmp_path / "calib.npz", **token_data(8))
    common = ["quantize", model, "--calib", str(tmp_path / "calib.npz"), "--precision", "fp8",
              "--output-dir", str(tmp_path)]
    assert main([*common, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["quant_type"] == "fp8" and out["method"] == "max" and out["cache_path"] is None
    assert out["onnx_path"].endswith("bert_legacy.fp8.onnx") and not list(tmp_path.glob("*.cache"))
    assert set(out["commands"]) == {"tensorrt-11", "tensorrt-10-strongly-typed"}
    assert any("no calibration cache" in note for note in out["notes"]) and out["qdq_pairs"] == 28
    assert main([*common, "--method", "entropy", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "28 FP8 E4M3 Q/DQ pairs" in text and ".cache" not in text and "--int8" not in text
    assert "entropy clips ranges for INT8's uniform grid" in text and "--stronglyTyped" in text
    assert main(["sensitivity", model, "--calib", str(tmp_path / "calib.npz"), "--precision", "fp8",
                 "--output-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert f"trtq quantize {model} --precision fp8 --exclude-nodes" in text and "implicit" not in text


def test_fp8_on_a_model_without_fp8_layers_says_so(tmp_path, capsys):
    from tiny_models import wide_conv_net

    model = save(wide_conv_net(), tmp_path / "wide.onnx")  # every conv has <= 16 channels on one side
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32))
    assert main(["quantize", model, "--calib", str(tmp_path / "calib.npy"), "--precision", "fp8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["qdq_pairs"] == 0 and len(out["excluded_nodes"]) == 4
    assert any(note.startswith("no layer runs in FP8") for note in out["notes"])


def test_quantize_smooth_text_and_errors(transformer_onnx, tmp_path, capsys):
    from transformer_models import token_data

    model = str(transformer_onnx("bert", False))
    np.savez(tmp_path / "calib.npz", **token_data(8))
    common = ["quantize", model, "--calib", str(tmp_path / "calib.npz"), "--output-dir", str(tmp_path)]
    assert main([*common, "--smooth", "0.5", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "smoothed 8 MatMul inputs (alpha 0.5; 0 folded into LayerNorms, 8 by a Mul)" in text
    assert "FP32 outputs within" in text and "bert_legacy.smoothed.onnx" in text
    assert main([*common, "--smooth", "1.5"]) == 2
    assert "alpha must be in [0, 1]" in capsys.readouterr().err
    assert main([*common, "--smooth", "lots"]) == 2
    assert "'lots' is not a number" in capsys.readouterr().err


def test_auto_explains_its_choice_in_text_json_and_report(case, capsys):
    tmp, model = case
    assert main(["quantize", model, "--calib", str(tmp / "calib.npy"), "--method", "auto", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "calibrated 6 samples with auto" in text and "table kept; output SNR dB on every calibration sample (6)" in text
    assert "    per tensor: " in text and " of max (" in text
    assert main(["quantize", model, "--calib", str(tmp / "calib.npy"), "--method", "auto", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["range_table"] in out["table_scores"] and out["range_samples"] == 6
    assert out["range_checked_on"] == "every sample"
    assert {"r1", "input"} <= set(out["choices"])  # the residual skip and the network input
    assert {"method", "amax_over_max", "clipped", "snr_db", "max_snr_db"} <= set(out["choices"]["r1"])
    assert main(["report", str(tmp)]) == 0
    markdown = (tmp / "trtq-report.md").read_text()
    assert "## Ranges" in markdown and f"--method auto kept the {out['range_table']} table" in markdown
    assert "| r1 |" in markdown
