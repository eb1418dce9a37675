"""TensorRT-RTX builds trtq's FP8 Q/DQ models ahead of time (no GPU needed) and runs their GEMMs
with FP8 inputs: the build log's layer list (DETAILED profiling) gives each layer's input types.

Skipped where `tensorrt_rtx_bindings` is not installed.
"""

import re

import numpy as np
import pytest

trt = pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX (tensorrt-rtx-cu13-bindings) is not installed")

from transformer_models import SEQ, token_data

from trtq import api


class _Log(trt.ILogger):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def log(self, severity, message) -> None:
        self.messages.append(message)


def gemm_input_types(onnx_path: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[str, ...]]:
    """Build `onnx_path` for an Ada GPU (SM 8.9, the first with FP8) and return each gemm layer's input datatypes."""
    log = _Log()
    builder = trt.Builder(log)
    network = builder.create_network(0)  # always strongly typed in TensorRT-RTX
    parser = trt.OnnxParser(network, log)
    assert parser.parse_from_file(onnx_path), [parser.get_error(i).desc() for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.SM89, 0)
    profile = builder.create_optimization_profile()
    for name, shape in shapes.items():
        profile.set_shape(name, shape, shape, shape)
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None
    layers = next(m for m in log.messages if m.startswith("Layers:"))
    found = {}
    for entry in layers.split("\nName: ")[1:]:
        if "LayerType: gemm" in entry:
            inputs = entry.split("Outputs:")[0]
            found[entry.split(",")[0]] = tuple(re.findall(r"Datatype: (\w+)", inputs))
    return found


@pytest.mark.parametrize("high_precision", ["fp32", "fp16"])
def test_fp8_bert_gemms_run_in_fp8(transformer_onnx, tmp_path, high_precision):
    model = transformer_onnx("bert", False)
    np.savez(tmp_path / "calib.npz", **token_data(8))
    result = api.quantize(model, tmp_path / "calib.npz", progress=False, options=api.QuantizeOptions(
        precision="fp8", high_precision=high_precision, output_dir=str(tmp_path)))
    gemms = gemm_input_types(result.onnx_path, {n: (1, SEQ) for n in ("input_ids", "attention_mask", "token_type_ids")})
    # 16 MatMuls; TensorRT fuses each layer's Q, K and V projections into one GEMM: 2 x (1 + 5) layers
    assert len(gemms) == 12
    for name, types in gemms.items():
        assert types[:2] == ("FP8", "FP8"), (name, types)
