"""Tied ranges: a group's members take the largest range of its sinks, in one table or per candidate method."""

from trtq.calibrate.shared import RangeGroup, tie_candidates, tie_ranges

GROUPS = (RangeGroup(members=("r", "p"), sinks=("p",)), RangeGroup(members=("a", "b", "c"), sinks=("a", "c")))


def test_members_take_the_largest_sink_range_and_others_stay():
    tied = tie_ranges({"r": 4.0, "p": 3.0, "a": 1.0, "b": 5.0, "c": 2.0, "x": 7.0}, GROUPS)
    assert tied == {"r": 3.0, "p": 3.0, "a": 2.0, "b": 2.0, "c": 2.0, "x": 7.0}


def test_a_group_without_its_sinks_is_left_alone():
    assert tie_ranges({"r": 4.0}, GROUPS) == {"r": 4.0}


def test_candidates_are_tied_method_by_method():
    tied = tie_candidates({"r": {"mse": 4.0, "max": 6.0}, "p": {"mse": 3.0, "max": 6.0}, "x": {"mse": 1.0}}, GROUPS)
    assert tied == {"r": {"mse": 3.0, "max": 6.0}, "p": {"mse": 3.0, "max": 6.0}, "x": {"mse": 1.0}}
