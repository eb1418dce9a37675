"""The PyTorch user flow: prepare(module, example, calib=loader) -> user's training -> export(...)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch", reason="QAT needs PyTorch (pip install torch); CI installs only .[test]")
from torch import nn

import trtq.qat as tq
from trtq.errors import TrtqError


class SmallNet(nn.Module):
    """x [N,3,8,8] -> conv(3->8) -> BN -> ReLU -> conv(8->8) + skip -> ReLU -> mean -> linear(8->4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv1(x)))
        y = torch.relu(self.conv2(y) + y)
        return self.fc(y.mean((2, 3)))


class TwoInputs(nn.Module):
    """a [N,6], b [N,2] -> concat -> linear(8->3)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([a, b], 1))


def _loader(n_batches: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 4, (6,), generator=g)) for _ in range(n_batches)]


def test_prepare_train_export_round_trip(tmp_path):
    torch.manual_seed(0)
    module = SmallNet().eval()
    x = torch.randn(5, 3, 8, 8)
    qmodel = tq.prepare(module, x[:1], calib=_loader(), method="max")  # DataLoader-style (x, y) batches
    assert qmodel.calibration is not None and qmodel.calibration.method == "max"
    # TensorRT placement of the exported graph: 2 convs + Gemm (3 weights) and their inputs, plus the skip
    assert sum(q.kind == "weight" for q in qmodel.quantizers) == 3
    before = {n: p.detach().clone() for n, p in zip(qmodel.weight_names, qmodel.weight_parameters())}
    opt = torch.optim.Adam(qmodel.parameters(), lr=1e-2)
    for inputs, labels in _loader():  # the user's own loop and loss
        loss = nn.functional.cross_entropy(qmodel(inputs), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert any(not torch.equal(before[n], p) for n, p in zip(qmodel.weight_names, qmodel.weight_parameters()))

    path = tmp_path / "small.qat.int8.onnx"
    result = tq.export(qmodel, path, x[:2], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    assert result.path == str(path) and result.parity.ok and result.parity.max_steps <= 1
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", 3, 8, 8]
    assert [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == ["batch", 4]
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) == len(qmodel.quantizers)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})  # 5 samples through the dynamic batch
    with torch.no_grad():
        np.testing.assert_allclose(got, qmodel(x).numpy(), atol=1e-4)


def test_fixed_shapes_without_dynamic_axes(tmp_path):
    qmodel = tq.prepare(SmallNet().eval(), torch.zeros(1, 3, 8, 8), calib=_loader(2))
    tq.export(qmodel, tmp_path / "fixed.onnx", torch.zeros(2, 3, 8, 8))
    dims = onnx.load(str(tmp_path / "fixed.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, 8, 8]


def test_multi_input_module_with_dict_batches(tmp_path):
    module = TwoInputs()
    calib = [{"a": torch.randn(4, 6), "b": torch.randn(4, 2)} for _ in range(3)]
    qmodel = tq.prepare(module, (torch.zeros(1, 6), torch.zeros(1, 2)), calib=calib, input_names=["a", "b"])
    assert qmodel.input_names == ("a", "b")
    out = qmodel(torch.ones(2, 6), torch.ones(2, 2))
    assert out.shape == (2, 3)
    result = tq.export(qmodel, tmp_path / "two.onnx", (torch.ones(3, 6), torch.ones(3, 2)),
                       dynamic_axes={"a": [0], "b": [0]})
    assert result.parity.ok
    with pytest.raises(TrtqError, match="has no input 'b'"):
        tq.prepare(module, (torch.zeros(1, 6), torch.zeros(1, 2)), calib=[{"a": torch.randn(4, 6)}],
                   input_names=["a", "b"])


class Unexportable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svd(self.fc(x))[1]  # no ONNX export for SVD


def test_unexportable_module_is_one_sentence():
    with pytest.raises(TrtqError, match=r"PyTorch module Unexportable cannot be exported to ONNX \(.*svd"):
        tq.prepare(Unexportable(), torch.zeros(2, 4), calib=[torch.zeros(2, 4)])


@pytest.mark.parametrize(("calib", "match"), [
    ([torch.full((2, 3, 8, 8), float("nan"))], "NaN or Inf"),
    (["not a tensor"], "is a str, not a tensor"),
    ([], "no samples|yielded no"),
])
def test_bad_calibration_batches(calib, match):
    with pytest.raises(TrtqError, match=match):
        tq.prepare(SmallNet().eval(), torch.zeros(1, 3, 8, 8), calib=calib)


def test_export_checks_its_arguments(tmp_path):
    qmodel = tq.prepare(SmallNet().eval(), torch.zeros(1, 3, 8, 8), calib=_loader(1))
    with pytest.raises(TrtqError, match="not an input or output"):
        tq.export(qmodel, tmp_path / "m.onnx", torch.zeros(1, 3, 8, 8), dynamic_axes={"images": {0: "n"}})
    with pytest.raises(TrtqError, match="2 example inputs"):
        tq.export(qmodel, tmp_path / "m.onnx", (torch.zeros(1, 3, 8, 8), torch.zeros(1)))
    assert not (tmp_path / "m.onnx").exists()


class Separable(nn.Module):
    """x [N,3,8,8] -> conv 1x1 (3->4, output channels scaled 1 .. 0.02) -> ReLU -> depthwise 3x3 -> ReLU
    -> conv 1x1 (4->4): a depthwise input whose channels span 50x, as MobileNet blocks leave them."""

    def __init__(self) -> None:
        super().__init__()
        self.pw, self.dw, self.out = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 4, 1)
        with torch.no_grad():
            gains = torch.tensor([1.0, 0.05, 0.3, 0.02])
            self.pw.weight.mul_(gains.view(4, 1, 1, 1))
            self.pw.bias.copy_(0.2 * gains)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.dw(torch.relu(self.pw(x)))))


def test_prepare_starts_from_quantizes_default_ptq():
    x = next(iter(_loader(1)))[0]
    snr = {}
    for equalize in (True, False):
        torch.manual_seed(0)
        module = Separable().eval()
        qmodel = tq.prepare(module, torch.zeros(1, 3, 8, 8), calib=_loader(), equalize=equalize)
        table = qmodel.calibration
        assert table is not None and table.method == "auto" and table.table_checks  # auto checked its tables
        assert bool(table.smoothing) is equalize  # the depthwise input equalized, as trtq quantize does
        with torch.no_grad():
            ref, out = module(x), qmodel(x)
        snr[equalize] = float(10 * torch.log10((ref ** 2).sum() / ((out - ref) ** 2).sum()))
    # the INT8 model before any training: equalized, the narrow channels keep their levels (measured 57 vs 51 dB)
    assert snr[True] > 50 and snr[True] > snr[False] + 3


def test_a_one_shot_loader_is_read_once_per_pass_it_needs():
    """A generator of batches: equalizing reads batches before calibration does, so prepare keeps them."""
    torch.manual_seed(0)
    qmodel = tq.prepare(Separable().eval(), torch.zeros(1, 3, 8, 8), calib=(batch for batch in _loader()))
    assert qmodel.calibration is not None and qmodel.calibration.num_samples == 24 and qmodel.calibration.smoothing
