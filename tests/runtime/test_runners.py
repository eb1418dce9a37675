"""Runners: onnxruntime and the PyTorch executor give the same outputs and the same scores."""

import numpy as np
import pytest
from tiny_models import residual_conv_net, save

from trtq import api
from trtq.cli import main
from trtq.evaluate.compare import compare_models
from trtq.quantize import insert_qdq
from trtq.runtime import Runner, runner_factory
from trtq.runtime.ort_runner import OrtRunner

torch = pytest.importorskip("torch", reason="the PyTorch runner needs torch (pip install 'trtq[gpu]')")
from trtq.runtime.torch_runner import TorchRunner


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    # residual_conv_net: x -> conv -> relu -> conv -> add(skip) -> relu -> ... (tiny_models.py draws it)
    tmp = tmp_path_factory.mktemp("runners")
    path = save(residual_conv_net(batch="N"), tmp / "model.onnx")
    data = tmp / "data.npy"
    np.save(data, np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32))
    calibration = api.calibrate(path, data, options=api.QuantizeOptions(method="max"), progress=False)
    prepared = api.prepare_model(path)
    qdq = insert_qdq(prepared.model, prepared.placement, calibration.ranges.amax)
    return prepared.model, qdq, api.open_data(prepared.model, data), path, data


def test_torch_runner_matches_onnxruntime_on_fp32_and_qdq(quantized):
    fp32, qdq, dataset, _, _ = quantized
    feed = next(iter(dataset.batches(4)))
    for model, tolerance in ((fp32, 1e-4), (qdq, 2e-2)):
        ort_runner, torch_runner = OrtRunner.from_model(model), TorchRunner(model, torch.device("cpu"))
        assert isinstance(torch_runner, Runner) and torch_runner.output_names == ort_runner.output_names
        (a,), (b,) = ort_runner.run(None, feed), torch_runner.run(None, feed)
        assert a.shape == b.shape and a.dtype == b.dtype == np.float32
        # Q/DQ: a value on a rounding boundary may land one step apart (int8 kernels vs float emulation)
        assert np.abs(a - b).max() <= tolerance * max(1.0, float(np.abs(a).max()))


def test_compare_scores_agree_between_runners(quantized):
    fp32, qdq, dataset, _, _ = quantized
    on_cpu = compare_models(fp32, qdq, dataset, batch_size=4, progress=False)
    on_torch = compare_models(fp32, qdq, dataset, batch_size=4, progress=False,
                              runner=lambda model: TorchRunner(model, torch.device("cpu")))
    assert on_torch.samples == on_cpu.samples == 16
    assert on_torch.outputs[0].snr_db == pytest.approx(on_cpu.outputs[0].snr_db, abs=0.3)


def test_runner_factory_cpu_is_onnxruntime():
    assert runner_factory("cpu") == OrtRunner.from_model


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without a GPU")
def test_device_cuda_without_a_gpu_is_one_sentence(quantized, capsys, tmp_path):
    _, _, _, path, data = quantized
    code = main(["compare", path, path, "--data", str(data), "--device", "cuda", "--quiet",
                 "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--device cuda needs a CUDA GPU" in err and "Traceback" not in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the GPU machine, not on CI)")
def test_sensitivity_and_target_on_the_gpu_match_the_cpu(quantized):
    fp32, qdq, dataset, path, data = quantized
    on_cpu = compare_models(fp32, qdq, dataset, batch_size=4, progress=False)
    on_gpu = compare_models(fp32, qdq, dataset, batch_size=4, progress=False, runner=runner_factory("cuda"))
    assert on_gpu.outputs[0].snr_db == pytest.approx(on_cpu.outputs[0].snr_db, abs=0.3)
    cpu_run = api.sensitivity(path, calib=data, options=api.QuantizeOptions(method="max"), progress=False)
    gpu_run = api.sensitivity(path, calib=data, options=api.QuantizeOptions(method="max", device="cuda"),
                              progress=False)
    assert [layer.node for layer in gpu_run.result.layers][:2] == [layer.node for layer in cpu_run.result.layers][:2]
