"""Ranges table: JSON round trip, determinism, validation of bad files."""

import math

import pytest

from trtq.errors import TrtqError
from trtq.formats.ranges import RangesTable, scale_from_amax


def _table(**kw):
    base = dict(amax={"b": 2.0, "a": 1.5}, method="entropy", model_sha256="ab" * 32, num_samples=8,
                data_sha256="cd" * 32, options={"batch_size": 1})
    base.update(kw)
    return RangesTable(**base)


def test_round_trip_and_sorted_json(tmp_path):
    table = _table()
    path = tmp_path / "r.json"
    table.save(path)
    assert RangesTable.load(path) == table
    text = path.read_text()
    assert text.index('"a"') < text.index('"b"')
    assert table.to_json() == _table(amax={"a": 1.5, "b": 2.0}).to_json()


def test_scale_is_amax_over_127_and_positive():
    assert _table().scale("b") == 2.0 / 127
    assert scale_from_amax(0.0) > 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_non_finite_or_negative_amax_rejected(bad):
    with pytest.raises(TrtqError, match="finite and non-negative"):
        _table(amax={"x": bad})


def test_bad_files(tmp_path):
    with pytest.raises(TrtqError, match="does not exist"):
        RangesTable.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TrtqError, match="not valid JSON"):
        RangesTable.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": "something"}')
    with pytest.raises(TrtqError, match="not a trtq ranges table"):
        RangesTable.load(tmp_path / "other.json")
    (tmp_path / "partial.json").write_text('{"format": "trtq-ranges", "format_version": 1, "amax": {}}')
    with pytest.raises(TrtqError, match="malformed field"):
        RangesTable.load(tmp_path / "partial.json")
