"""The run records and the report built from them: sections, charts, Markdown, and a real browser render."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from trtq.calibrate.collector import StatsCollector
from trtq.errors import TrtqError
from trtq.report import build_report, histogram_summary, load_records, render_markdown, write_record, write_report
from trtq.report.charts import histogram_svg, sensitivity_svg
from trtq.report.render import render_html

LAYERS = [
    {"node": "conv2", "op_type": "Conv", "tensors": ["big", "w2"], "snr_db": 8.5, "task_drop": 3.0, "macs": 4096},
    {"node": "conv1", "op_type": "Conv", "tensors": ["x", "w1"], "snr_db": 35.0, "task_drop": 0.0, "macs": 18432},
    {"node": "conv3", "op_type": "Conv", "tensors": ["r2", "w3"], "snr_db": "inf", "task_drop": 0.0, "macs": 2048},
]


def _evaluation(snr, top1, agreement):
    return {
        "outputs": [{"name": "y", "snr_db": snr, "cosine": 0.99, "top1_agreement": agreement}],
        "task": {"task": "classify", "against": "labels", "values": {"top1": top1}, "samples": 10},
        "seconds": 0.1,
    }


def _records(directory):
    stats = StatsCollector(["big"])
    stats.update("big", np.linspace(-4, 4, 1001, dtype=np.float32))
    hist = {"big": histogram_summary(stats.stats()["big"], amax=2.0, method="entropy")}
    write_record(
        directory,
        "sensitivity",
        settings={"model": "m.onnx", "method": "exact"},
        result={"method": "exact", "samples": 10, "seconds": 0.2, "task_metric": "top1", "layers": LAYERS},
        histograms=hist,
        command=["trtq", "sensitivity", "m.onnx"],
    )
    mixed = {
        "target": "top1-drop<=0.5",
        "holds": True,
        "int8_metric": 3.0,
        "final_metric": 0.0,
        "excluded": [
            {
                "node": "conv2",
                "op_type": "Conv",
                "pattern": "^conv2$",
                "sensitivity_snr_db": 8.5,
                "metric_with_layer_int8": 3.0,
                "macs": 4096,
                "macs_share": 0.167,
            }
        ],
        "exclude_nodes": ["^conv2$"],
        "reference": {"task": "classify", "against": "labels", "values": {"top1": 90.0}, "samples": 10},
        "int8": _evaluation(12.0, 87.0, 0.9),
        "final": _evaluation(38.0, 90.0, 1.0),
    }
    write_record(
        directory,
        "quantize",
        settings={"model": "m.onnx", "method": "entropy", "target": "top1-drop<=0.5"},
        result={
            "model": "m.onnx",
            "mixed": mixed,
            "commands": {"tensorrt-11": "trtexec --onnx=m.int8.onnx --saveEngine=m.int8.engine"},
        },
        command=["trtq", "quantize", "m.onnx", "--target", "top1-drop<=0.5"],
    )


def test_records_round_trip_and_missing_folder(tmp_path):
    _records(tmp_path)
    records = load_records(tmp_path)
    assert set(records) == {"quantize", "sensitivity"}
    assert records["sensitivity"].command == "trtq sensitivity m.onnx"
    assert records["sensitivity"].result["layers"][2]["snr_db"] == "inf"
    big = records["sensitivity"].histograms["big"]
    assert len(big["hist"]) == 128 and sum(big["hist"]) == 1001 and big["threshold"] == 2.0
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrtqError, match="holds no trtq run records"):
        load_records(tmp_path / "empty")
    with pytest.raises(TrtqError, match="does not exist"):
        load_records(tmp_path / "nowhere")


def test_report_gathers_metrics_sensitivity_exclusions_and_commands(tmp_path):
    _records(tmp_path)
    report = build_report(tmp_path)
    assert [row.variant for row in report.metrics] == [
        "FP32",
        "INT8 (all layers)",
        "mixed (1 layers kept high precision)",
    ]
    assert [row.task["top1"] for row in report.metrics] == [90.0, 87.0, 90.0]
    assert report.metrics[1].snr_db == 12.0 and report.exclude_nodes == ("^conv2$",)
    assert report.commands == (("tensorrt-11", "trtexec --onnx=m.int8.onnx --saveEngine=m.int8.engine"),)
    markdown = render_markdown(report)
    assert "| FP32 | 90.00 |" in markdown and "--exclude-nodes '^conv2$'" in markdown
    assert "| 1 | conv2 | Conv | 8.50 | 3.00 |" in markdown


def test_charts_scale_with_the_numbers():
    svg = sensitivity_svg(LAYERS, width=860)
    bars = [part for part in svg.split("<rect ")[1:]]
    assert len(bars) == 3
    widths = [float(b.split('width="')[1].split('"')[0]) for b in bars]
    plot_w = 860 - 330 - 70
    assert widths == pytest.approx([plot_w * 8.5 / 60, plot_w * 35 / 60, plot_w], abs=0.05)  # inf clipped at 60 dB
    assert 'fill="#d9534f"' in bars[0] and 'fill="#5cb85c"' in bars[2]
    hist = histogram_svg(
        "t", {"hist": [10, 0, 5, 1], "hist_max": 4.0, "threshold": 2.0, "observed_max": 3.5}, width=216, height=150
    )
    threshold_x = float(hist.split('class="threshold"')[0].rsplit('x1="', 1)[1].split('"')[0])
    assert threshold_x == pytest.approx(8 + 200 * 0.5)
    assert "37.500% clipped" in hist  # bins 2 and 3 (6 of 16 values) lie at or above 2.0


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(tmp_path):
    _records(tmp_path)
    html_path, md_path = write_report(tmp_path)
    assert md_path.read_text().startswith("# trtq report: m.onnx")
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", html_path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for heading in (
        "Metrics: FP32 vs INT8 vs mixed",
        "Per-layer sensitivity",
        "Histograms of the most sensitive",
        "Layers kept in high precision",
        "Build commands",
    ):
        assert heading in dom
    assert dom.count("<svg") == 2 and "<script" not in dom
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1200,1600",
            f"--screenshot={screenshot}",
            html_path.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20000


def test_record_kinds_are_checked(tmp_path):
    with pytest.raises(ValueError, match="not one of"):
        write_record(tmp_path, "train", settings={}, result={})
    (tmp_path / "trtq-compare.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(TrtqError, match="is not a trtq run record"):
        load_records(tmp_path)


def test_report_says_the_target_was_measured_on_the_written_fp16_model(tmp_path):
    """A --target --high-precision fp16 run's metrics describe the converted model; an unreachable-but-met target
    (every layer out of INT8, infinite SNR) is said too, and nothing crashes on "inf"."""
    _records(tmp_path)
    record = json.loads((tmp_path / "trtq-quantize.json").read_text())
    mixed = record["result"]["mixed"]
    mixed.update(measured_on="the Q/DQ model after the FP16 conversion, as written", all_excluded=True,
                 final_metric="inf", final=_evaluation("inf", 90.0, 1.0))
    write_record(tmp_path, "quantize", settings=record["settings"], result=record["result"],
                 command=["trtq", "quantize", "m.onnx"])
    report = build_report(tmp_path)
    assert any("after the FP16 conversion, as written" in note for note in report.notes)
    assert any("runs nothing in INT8" in note for note in report.notes)
    assert "| mixed (1 layers kept high precision) | 90.00 | inf |" in render_markdown(report)


def test_ranges_section_lists_the_most_clipped_first(tmp_path):
    choices = {
        "a": {"method": "max", "amax_over_max": 1.0, "clipped": 0.0, "snr_db": 30.0, "max_snr_db": 30.0},
        "b": {"method": "percentile 99.9", "amax_over_max": 0.42, "clipped": 0.001, "snr_db": "inf",
              "max_snr_db": 20.5},
        "c": {"method": "mse", "amax_over_max": 0.8, "clipped": 0.0001, "snr_db": 33.0, "max_snr_db": 31.0},
    }
    write_record(tmp_path, "quantize", settings={"model": "m.onnx"},
                 result={"choices": choices, "range_table": "per-tensor",
                         "table_scores": {"mse": 20.0, "per-tensor": 21.5}})
    report = build_report(tmp_path)
    assert [name for name, _ in report.ranges] == ["b", "c", "a"]
    assert report.table_scores == (("per-tensor", 21.5), ("mse", 20.0))
    markdown = render_markdown(report)
    assert "kept the per-tensor table" in markdown and "per-tensor 21.50 dB, mse 20.00 dB" in markdown
    assert "| b | percentile 99.9 | 0.420 | 0.1000% | inf | 20.5 |" in markdown
    assert "<h2>Ranges</h2>" in render_html(report)
