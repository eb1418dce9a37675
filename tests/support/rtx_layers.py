"""Ahead-of-time TensorRT-RTX builds (no GPU needed) and the engine's layer list, for tests that
check what TensorRT makes of trtq's Q/DQ placement. Callers skip when `tensorrt_rtx_bindings` is
not installed."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class EngineLayer:
    """One layer of the built engine: name, type (gemm, kgen, ...) and its tensors' data types."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    onnx_nodes: tuple[str, ...] = ()
    """The ONNX nodes whose work the layer does (its metadata)."""
    runtime_inputs: tuple[str, ...] = ()
    """Data types of the inputs computed at run time (`inputs` also holds the constants')."""


def engine_layers(onnx_path: str, shapes: dict[str, tuple[int, ...]], capability: str | None = "8.9") -> list[EngineLayer]:
    """Build `onnx_path` for an Ada GPU (SM 8.9, the first with FP8; None: TensorRT-RTX's portable
    default) at `shapes` and return the engine's layers (from the build log at DETAILED profiling
    verbosity)."""
    import tensorrt_rtx_bindings as trt

    class Log(trt.ILogger):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[str] = []

        def log(self, severity, message) -> None:
            self.messages.append(message)

    log = Log()
    builder = trt.Builder(log)
    network = builder.create_network(0)  # always strongly typed in TensorRT-RTX
    parser = trt.OnnxParser(network, log)
    assert parser.parse_from_file(onnx_path), [parser.get_error(i).desc() for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if capability is not None:
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + capability.replace(".", "")), 0)
    profile = builder.create_optimization_profile()
    for name, shape in shapes.items():
        profile.set_shape(name, shape, shape, shape)
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None
    listing = next(m for m in log.messages if m.startswith("Layers:"))
    layers = []
    for entry in listing.split("\nName: ")[1:]:
        inputs, _, outputs = entry.partition("Outputs:")
        runtime = inputs.partition("Constants:")[0]
        layers.append(EngineLayer(entry.split(",")[0], re.search(r"LayerType: (\w+)", entry).group(1),
                                  tuple(re.findall(r"Datatype: (\w+)", inputs)),
                                  tuple(re.findall(r"Datatype: (\w+)", outputs)),
                                  tuple(re.findall(r"\[ONNX Layer: ([^\]]+)\]", entry)),
                                  tuple(re.findall(r"Datatype: (\w+)", runtime))))
    return layers
