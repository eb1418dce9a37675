"""The calibration options are declared once: every calibrating command (quantize, sensitivity,
finetune) has the flags of every `CalibrationOptions` field, reads them the same way, and PTQ
and QAT options share those fields."""

from __future__ import annotations

import dataclasses

import pytest

from trtq import api
from trtq.cli import build_parser
from trtq.cli.options import calibration_options
from trtq.errors import TrtqError

FLAGS = ["--percentile", "99.5", "--exclude-nodes", "conv1", "--exclude-ops", "Sigmoid,Softmax", "--residual-qdq",
         "--device", "cpu"]
EXPECTED = {"method": "percentile", "percentile": 99.5, "exclude_nodes": ("conv1",),
            "exclude_ops": ("Sigmoid", "Softmax"), "residual_qdq": True, "device": "cpu"}


@pytest.mark.parametrize(("command", "method_option"), [
    (["quantize", "m.onnx", "--calib", "d"], "--method"),
    (["finetune", "m.onnx", "--calib", "d"], "--method"),
    (["sensitivity", "m.onnx", "--calib", "d"], "--calib-method"),  # its --method is the ranking
])
def test_every_calibrating_command_reads_the_calibration_flags_alike(command, method_option):
    args = build_parser().parse_args([*command, method_option, "percentile", *FLAGS])
    assert calibration_options(args, method_option) == EXPECTED
    defaults = build_parser().parse_args(command)
    assert calibration_options(defaults, method_option) == {"exclude_nodes": (), "exclude_ops": (), "residual_qdq": False,
                                                           "device": "cpu"}
    with pytest.raises(TrtqError, match=f"--percentile 99.5 applies only to {method_option} percentile"):
        calibration_options(build_parser().parse_args([*command, "--percentile", "99.5"]), method_option)


def test_the_cache_header_flag_goes_with_the_commands_that_write_a_cache():
    parser = build_parser()
    assert parser.parse_args(["quantize", "m.onnx", "--calib", "d", "--trt-version", "8.6.1"]).trt_version == "8.6.1"
    assert parser.parse_args(["finetune", "m.onnx", "--calib", "d", "--trt-version", "8.6.1"]).trt_version == "8.6.1"
    with pytest.raises(SystemExit):
        parser.parse_args(["sensitivity", "m.onnx", "--calib", "d", "--trt-version", "8.6.1"])


def test_ptq_and_qat_options_share_the_calibration_fields():
    pytest.importorskip("torch", reason="QAT needs PyTorch")
    from trtq.qat import FinetuneOptions

    shared = [f.name for f in dataclasses.fields(api.CalibrationOptions)]
    for options in (api.QuantizeOptions, FinetuneOptions):
        assert issubclass(options, api.CalibrationOptions)
        assert [f.name for f in dataclasses.fields(options)][:len(shared)] == shared
    # fine-tuning starts from quantize's INT8 default; both check the shared fields the same way
    assert api.QuantizeOptions().method == "auto" and api.QuantizeOptions(precision="fp8").method == "max"
    assert FinetuneOptions().method == "auto"
    for options in (api.QuantizeOptions, FinetuneOptions):
        with pytest.raises(TrtqError, match="--percentile 0 is not a percentile"):
            options(percentile=0)
        with pytest.raises(TrtqError, match="--device 'tpu' is not a device name"):
            options(device="tpu")
