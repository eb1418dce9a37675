"""Per-layer sensitivity: a layer made sensitive on purpose ranks first, by both methods."""

import math

import numpy as np
import pytest
from accuracy_models import outlier_net
from onnx import TensorProto, helper, numpy_helper
from tiny_models import residual_conv_net, save

from trtq import api
from trtq.errors import TrtqError
from trtq.evaluate.sensitivity import (
    SensitivityResult,
    analyze_sensitivity,
    layer_macs,
    layer_placement,
    quantized_layers,
    rank_agreement,
)


def _setup(tmp_path, model, shape, samples=16):
    path = save(model, tmp_path / "model.onnx")
    data = tmp_path / "data.npy"
    np.save(data, np.random.default_rng(1).standard_normal((samples, *shape)).astype(np.float32))
    calibration = api.calibrate(path, data, options=api.QuantizeOptions(method="max"), progress=False)
    prepared = api.prepare_model(path)
    dataset = api.open_data(prepared.model, data)
    return prepared, calibration.ranges.amax, dataset


@pytest.mark.parametrize("method", ["local", "exact"])
def test_layer_with_outlier_input_ranks_first(tmp_path, method):
    prepared, amax, dataset = _setup(tmp_path, outlier_net(), (4, 8, 8))
    result = analyze_sensitivity(
        prepared.model, prepared.placement, amax, dataset, method=method, batch_size=4, progress=False
    )
    assert result.method == method and result.samples == 16
    assert set(result.ranking) == {"conv1", "conv2", "conv3"}
    first, *rest = result.layers
    assert first.node == "conv2" and first.op_type == "Conv" and first.tensors[0] == "big"
    assert first.snr_db < min(layer.snr_db for layer in rest) - 10  # far worse, not a coin toss


def test_local_equals_exact_for_a_single_layer_model(tmp_path):
    """When the layer's output is the model's output, local and exact measure the same thing."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    prepared, amax, dataset = _setup(tmp_path, model, (3,), samples=8)
    local = analyze_sensitivity(
        prepared.model, prepared.placement, amax, dataset, method="local", batch_size=2, progress=False
    )
    exact = analyze_sensitivity(
        prepared.model, prepared.placement, amax, dataset, method="exact", batch_size=2, progress=False
    )
    assert local.layers[0].snr_db == pytest.approx(exact.layers[0].snr_db, abs=1e-3)
    assert 20 < local.layers[0].snr_db < 60


def test_layer_placement_keeps_only_that_layers_pairs(tmp_path):
    prepared = api.prepare_model(save(residual_conv_net(), tmp_path / "res.onnx"))
    layers = quantized_layers(prepared.placement)
    # r1 feeds conv2 (activation) and the residual add (skip input): two layers share one tensor
    assert {"conv1", "conv2", "conv3", "add", "maxpool", "conv_head"} <= set(layers)
    only_add = layer_placement(prepared.placement, {"add"})
    assert [(t.tensor, t.consumers) for t in only_add.targets] == [("r1", (("add", 1),))]
    conv2 = layer_placement(prepared.placement, ["conv2"])
    assert sorted(t.tensor for t in conv2.targets) == ["r1", "w2"]
    assert all(c[0] == "conv2" for t in conv2.targets for c in t.consumers)


def test_macs_from_inferred_shapes(tmp_path):
    prepared = api.prepare_model(save(residual_conv_net(), tmp_path / "res.onnx"))
    macs = layer_macs(prepared.model)
    assert macs["conv1"] == 8 * 16 * 16 * (3 * 3 * 3)  # out C*H*W x (Cin*kh*kw)
    assert macs["conv_head"] == 4 * 8 * 8 * 8
    assert "add" not in macs


def test_rank_agreement_known_values():
    same = rank_agreement(["a", "b", "c", "d"], ["a", "b", "c", "d"])
    assert same["spearman"] == 1.0 and same["kendall"] == 1.0 and same["top3_overlap"] == 1.0
    reverse = rank_agreement(["a", "b", "c", "d"], ["d", "c", "b", "a"])
    assert reverse["spearman"] == -1.0 and reverse["kendall"] == -1.0
    assert reverse["top3_overlap"] == pytest.approx(2 / 3)
    swap = rank_agreement(["a", "b", "c"], ["b", "a", "c"], top=1)
    assert swap["spearman"] == pytest.approx(0.5) and swap["top1_overlap"] == 0.0


def test_result_round_trips_and_bad_method(tmp_path):
    prepared, amax, dataset = _setup(tmp_path, outlier_net(), (4, 8, 8), samples=4)
    result = analyze_sensitivity(prepared.model, prepared.placement, amax, dataset, progress=False)
    again = SensitivityResult.from_dict(result.to_dict())
    assert again.ranking == result.ranking and again.layers[0].snr_db == pytest.approx(result.layers[0].snr_db)
    with pytest.raises(TrtqError, match="not one of local, exact"):
        analyze_sensitivity(prepared.model, prepared.placement, amax, dataset, method="bisect")
    assert not math.isnan(result.layers[-1].snr_db)


def test_sensitivity_command_prints_ranking_and_writes_a_record(tmp_path, capsys):
    import argparse
    import json

    from trtq.cli import accuracy

    path = save(outlier_net(), tmp_path / "model.onnx")
    data = tmp_path / "data.npy"
    np.save(data, np.random.default_rng(1).standard_normal((8, 4, 8, 8)).astype(np.float32))
    parser = argparse.ArgumentParser()
    accuracy.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "sensitivity",
            path,
            "--calib",
            str(data),
            "--calib-method",
            "max",
            "--quiet",
            "--output-dir",
            str(tmp_path / "run"),
        ]
    )
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("local sensitivity of 3 layers on 8 samples")
    assert lines[2].split()[-1] == "conv2"  # rank 1
    record = json.loads((tmp_path / "run" / "trtq-sensitivity.json").read_text())
    assert record["result"]["layers"][0]["node"] == "conv2" and record["settings"]["method"] == "local"


def test_exact_from_the_layer_on_equals_running_each_candidate_whole(tmp_path, monkeypatch):
    # residual_conv_net (tiny_models.py): conv1 -> relu -> conv2 -> relu -> conv3 -> add(skip) -> ... ->
    # conv_head -> sigmoid. Each layer's candidate is run from the layer on, fed FP32 values of what
    # it reads from before (the add's skip input among them); the whole candidate must give the same.
    from trtq.evaluate import sensitivity
    from trtq.evaluate.evaluator import Evaluator
    from trtq.evaluate.sensitivity import SharedPrefix, downstream_of
    from trtq.quantize import insert_qdq

    prepared, amax, dataset = _setup(tmp_path, residual_conv_net(batch="N"), (3, 16, 16))
    monkeypatch.setattr(sensitivity, "SHARED_MIN_MACS", 0)  # the tiny model shares too
    shared = analyze_sensitivity(prepared.model, prepared.placement, amax, dataset, method="exact", batch_size=4,
                                 progress=False)
    evaluator = Evaluator(prepared.model, dataset, batch_size=4)
    for layer in shared.layers:
        whole = evaluator.evaluate(insert_qdq(prepared.model, layer_placement(prepared.placement, {layer.node}), amax))
        assert layer.snr_db == pytest.approx(whole.snr_db, abs=1e-3), layer.node
    positions, frontier = downstream_of(prepared.model, "conv3")
    nodes = prepared.model.graph.node
    assert [nodes[i].op_type for i in positions][:3] == ["Conv", "Add", "Relu"]
    assert len(frontier) == 2  # conv3's input and the add's skip input, both FP32 values from before conv3
    used = []
    monkeypatch.setattr(SharedPrefix, "produce", lambda self, feed, ref, original=SharedPrefix.produce:
                        used.append(1) or original(self, feed, ref))
    analyze_sensitivity(prepared.model, prepared.placement, amax, dataset, method="exact", batch_size=4, progress=False)
    assert used  # the shared route ran
