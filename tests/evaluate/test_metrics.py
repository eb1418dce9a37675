"""Aggregate SNR / cosine / errors / top-1 agreement, hand-checked."""

import math

import numpy as np

from trtq.evaluate.metrics import OutputAccumulator, snr_db


def test_aggregate_snr_is_over_all_samples_not_mean_of_samples():
    acc = OutputAccumulator("y")
    ref = np.array([[1.0, 0.0], [10.0, 0.0]])
    q = np.array([[0.0, 0.0], [10.0, 1.0]])  # sample errors: 1 and 1
    acc.update(ref, q)
    m = acc.result()
    assert math.isclose(m.snr_db, 10 * math.log10(101 / 2))
    assert math.isclose(m.worst_sample_snr_db, 0.0)  # sample 0: 1 / 1
    assert m.max_abs_error == 1.0 and m.mean_abs_error == 0.5
    assert m.top1_agreement == 1.0  # argmax equal for both rows (col 0; sample 0 ties -> 0)


def test_streaming_equals_one_shot():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((10, 5))
    q = ref + rng.standard_normal((10, 5)) * 0.1
    one, two = OutputAccumulator("y"), OutputAccumulator("y")
    one.update(ref, q)
    for i in range(0, 10, 3):
        two.update(ref[i:i + 3], q[i:i + 3])
    a, b = one.result(), two.result()
    assert math.isclose(a.snr_db, b.snr_db) and math.isclose(a.cosine, b.cosine)
    assert a.top1_agreement == b.top1_agreement


def test_exact_match_and_top1_only_for_scores():
    acc = OutputAccumulator("feat")
    x = np.ones((2, 3, 4, 4))
    acc.update(x, x)
    m = acc.result()
    assert m.snr_db == math.inf and m.cosine == 1.0 and m.top1_agreement is None
    assert snr_db(0.0, 1.0) == -math.inf
