"""Per-channel maxima for --smooth: the onnxruntime pass and the PyTorch pass against plain numpy
over exposed tensors, and the rows kept for judging alpha."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from tiny_models import gemm_matmul_net, save

from trtq import api
from trtq.calibrate.channels import channel_amax

TENSORS = ["x", "gr", "xr"]  # a graph input, a [1, 24] activation, a [1, 4, 8] reshape


@pytest.fixture()
def case(tmp_path):
    path = save(gemm_matmul_net(), tmp_path / "net.onnx")
    data = (np.random.default_rng(3).standard_normal((6, 1, 32)) * np.linspace(0.1, 5, 32)).astype(np.float32)
    np.save(tmp_path / "calib.npy", data.reshape(6, 32))
    prepared = api.prepare_model(path)
    return prepared.model, api.open_data(prepared.model, tmp_path / "calib.npy"), data.reshape(6, 1, 32)


def _expected(model, samples):
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in TENSORS[1:])
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    found = {}
    for sample in samples:
        values = dict(zip(TENSORS[1:], session.run(TENSORS[1:], {"x": sample})))
        values["x"] = sample
        for name, value in values.items():
            channel = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            found[name] = np.maximum(found.get(name, channel), channel)
    return found


def test_cpu_pass_matches_numpy_and_keeps_rows(case):
    model, dataset, samples = case
    stats = channel_amax(model, TENSORS, dataset, rows=5, progress=False)
    expected = _expected(model, samples)
    for name in TENSORS:
        assert np.array_equal(stats.amax[name], expected[name]), name
    assert {name: rows.shape for name, rows in stats.rows.items()} == {"x": (5, 32), "gr": (5, 24), "xr": (5, 8)}
    assert np.all(np.abs(stats.rows["gr"]) <= stats.amax["gr"])  # kept rows are rows of the tensor
    assert channel_amax(model, TENSORS, dataset, progress=False).rows == {}


def test_torch_pass_matches_the_cpu_pass(case):
    pytest.importorskip("torch")
    from trtq.calibrate.channels import _on_torch, _Rows

    model, dataset, samples = case
    found, kept = {}, _Rows(5, 6)

    class Bar:
        def update(self, n):
            pass

    _on_torch(model, TENSORS, dataset.batches(1), found, kept, Bar(), "cpu")
    expected = _expected(model, samples)
    for name in TENSORS:
        assert np.allclose(found[name], expected[name], rtol=1e-6), name
    assert kept.result()["gr"].shape == (5, 24)
