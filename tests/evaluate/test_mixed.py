"""Automatic mixed precision: target parsing, no exclusions when not needed, the sensitive layer when needed."""

import math

import numpy as np
import pytest
from accuracy_models import graded_chain, outlier_net
from tiny_models import save

from trtq import api
from trtq.errors import TrtqError
from trtq.evaluate.evaluator import Evaluator, spread_order
from trtq.evaluate.mixed import (
    Target,
    node_pattern,
    parse_target,
    proven_miss,
    search_mixed_precision,
)
from trtq.evaluate.sensitivity import quantized_layers
from trtq.quantize import insert_qdq


def test_parse_target_forms_and_errors():
    assert parse_target("top1-drop<=0.5") == Target("top1-drop", "<=", 0.5)
    assert parse_target(" snr >= 30 dB") == Target("snr", ">=", 30.0)
    assert parse_target("map-drop<=1.0").task == "detect"
    assert parse_target("cosine>=.999").value == 0.999
    assert str(parse_target("top5-drop<=2")) == "top5-drop<=2"
    with pytest.raises(TrtqError, match="written snr>=VALUE"):
        parse_target("snr<=30")
    with pytest.raises(TrtqError, match="'accuracy' is not one of"):
        parse_target("accuracy>=0.9")
    with pytest.raises(TrtqError, match="not of the form"):
        parse_target("top1-drop 0.5")


def test_target_direction():
    drop, snr = Target("top1-drop", "<=", 0.5), Target("snr", ">=", 30)
    assert drop.holds(0.5) and not drop.holds(0.6) and not drop.holds(math.nan)
    assert snr.holds(math.inf) and not snr.holds(29.9)


@pytest.fixture()
def outlier(tmp_path):
    path = save(outlier_net(), tmp_path / "model.onnx")
    data = tmp_path / "data.npy"
    np.save(data, np.random.default_rng(1).standard_normal((12, 4, 8, 8)).astype(np.float32))
    calibration = api.calibrate(path, data, options=api.QuantizeOptions(method="max"), progress=False)
    prepared = api.prepare_model(path)
    return prepared, calibration.ranges.amax, api.open_data(prepared.model, data)


def test_target_that_already_holds_excludes_nothing(outlier):
    prepared, amax, dataset = outlier
    result = search_mixed_precision(prepared.model, amax, dataset, "snr>=-100", batch_size=4, progress=False)
    assert result.holds and result.excluded == () and result.exclude_nodes == ()
    assert len(result.steps) == 1 and result.steps[0].phase == "int8"
    assert result.placement.targets == prepared.placement.targets
    # a task target builds its task; top-1 over this model's [N, 4, 8, 8] map would be no accuracy
    with pytest.raises(TrtqError, match="output 'y' is Nx4x8x8"):
        search_mixed_precision(prepared.model, amax, dataset, "top1-drop<=100", batch_size=4, progress=False)


def test_sensitive_layer_is_excluded_and_reported(outlier):
    prepared, amax, dataset = outlier
    result = search_mixed_precision(prepared.model, amax, dataset, "snr>=25", batch_size=4, progress=False)
    assert not Target("snr", ">=", 25).holds(result.int8_metric)  # INT8 alone misses the target
    assert result.holds and result.final_metric >= 25
    assert [layer.node for layer in result.excluded] == ["conv2"]
    layer = result.excluded[0]
    assert layer.pattern == node_pattern("conv2") == "^conv2$"
    assert layer.metric_with_layer_int8 == pytest.approx(result.int8_metric)
    assert 0 < layer.macs_share < 1 and layer.macs == 8 * 8 * 8 * 8
    assert "conv2" not in quantized_layers(result.placement)
    # the reported patterns reproduce the placement through the normal quantize options
    again = api.prepare_model(prepared.path, exclude_nodes=result.exclude_nodes)
    assert again.placement == result.placement


def test_unreachable_target_says_how_close_it_came(outlier):
    prepared, amax, dataset = outlier
    result = search_mixed_precision(
        prepared.model, amax, dataset, "snr>=25", batch_size=4, max_exclusions=0, progress=False
    )
    assert not result.holds and result.excluded == ()
    with pytest.raises(TrtqError, match="Target snr>=25 was not reached: best snr was"):
        result.require()


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    return _graded(tmp_path_factory, scores=False)


@pytest.fixture(scope="module")
def graded_scores(tmp_path_factory):
    """graded_chain with y flattened into scores [N, 128] as well: top-k targets read one vector per sample."""
    return _graded(tmp_path_factory, scores=True)


def _graded(tmp_path_factory, scores: bool):
    tmp = tmp_path_factory.mktemp("graded")
    path = save(graded_chain(scores=scores), tmp / "model.onnx")
    data = tmp / "data.npy"
    np.save(data, np.random.default_rng(1).standard_normal((48, 8, 4, 4)).astype(np.float32))
    calibration = api.calibrate(path, data, options=api.QuantizeOptions(method="max"), progress=False)
    prepared = api.prepare_model(path)
    return prepared, calibration.ranges.amax, api.open_data(prepared.model, data)


@pytest.mark.parametrize("target", ["snr>=25", "snr>=35", "top1-drop<=0"])
def test_early_stopped_search_decides_as_every_sample_would(graded, graded_scores, target):
    # graded_chain: 12 convs whose sensitivity grows with depth (local SNR 8.7 dB .. 40 dB)
    prepared, amax, dataset = graded_scores if target.startswith("top") else graded
    fast = search_mixed_precision(prepared.model, amax, dataset, target, batch_size=4, progress=False)
    slow = search_mixed_precision(prepared.model, amax, dataset, target, batch_size=4, early_stop=False,
                                  progress=False)
    assert fast.holds and slow.holds
    assert fast.exclude_nodes == slow.exclude_nodes and len(fast.excluded) >= 2
    assert fast.final_metric == pytest.approx(slow.final_metric)
    assert fast.final.complete and fast.final.samples == 48
    assert sum(s.samples for s in fast.steps) < sum(s.samples for s in slow.steps)
    assert any(not s.holds and s.samples < 48 for s in fast.steps)  # misses are proven early


def test_bisection_needs_about_log2_evaluations(graded):
    prepared, amax, dataset = graded
    result = search_mixed_precision(prepared.model, amax, dataset, "snr>=35", batch_size=4, prune=False,
                                    progress=False)
    # 10 of 12 layers kept out: a greedy scan evaluates 11 models, bisection 1 + ceil(log2 12) + 1
    assert len(result.excluded) == 10
    assert len(result.steps) <= 6
    assert result.steps[0].phase == "int8"


def test_proven_miss_is_a_bound_not_an_estimate(graded):
    prepared, amax, dataset = graded
    evaluator = Evaluator(prepared.model, dataset, batch_size=4)
    quantized = insert_qdq(prepared.model, prepared.placement, amax)
    seen = []

    def record(evaluation):
        seen.append(evaluation)
        return False

    whole = evaluator.evaluate(quantized, decide=record)
    assert whole.complete and len(seen) == 11  # 12 batches: decide is asked after all but the last
    total = evaluator.samples
    for partial in seen:
        for value in (whole.snr_db - 0.5, whole.snr_db + 0.5):
            target = Target("snr", ">=", value)
            if proven_miss(target, partial, None, evaluator.signal_power, total):
                assert not target.holds(whole.snr_db)  # never claims a miss that all samples would not give
    assert proven_miss(Target("snr", ">=", whole.snr_db + 0.5), seen[-1], None, evaluator.signal_power, total)


def test_spread_order_visits_each_index_once_prefixes_spread():
    order = spread_order(12)
    assert sorted(order) == list(range(12)) and order[:4] == [0, 8, 4, 2]
    assert spread_order(1) == [0]
