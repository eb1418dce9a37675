"""Runners: run an ONNX model on a batch of inputs, on some device.

Evaluation (compare, sensitivity, the --target search) scores candidate models through a
`Runner`, so the same code runs them with onnxruntime on the CPU or with the ONNX-to-PyTorch
executor on a GPU (`--device cuda`); a TensorRT engine (`trtq.tensorrt.runner.EngineRunner`) is
one more Runner. `ort_session` makes the onnxruntime sessions behind `OrtRunner` and calibration.
"""

from trtq.runtime.base import Runner, RunnerFactory, runner_factory

__all__ = ["Runner", "RunnerFactory", "runner_factory"]
