"""Optimization profiles from network dims (-1 dynamic) and trtexec-style shapes."""

from __future__ import annotations

import pytest

from trtq.errors import TrtqError
from trtq.tensorrt.profiles import ProfileShape, format_shapes, resolve_profile

INPUTS = {"images": (-1, 3, -1, -1), "scale": (1, 2)}


def test_fixed_shape_and_static_input():
    profile = resolve_profile(INPUTS, shapes={"images": (2, 3, 640, 640)})
    assert profile["images"] == ProfileShape((2, 3, 640, 640), (2, 3, 640, 640), (2, 3, 640, 640))
    assert profile["scale"].is_static and profile["scale"].opt == (1, 2)


def test_range_with_defaults_from_opt():
    profile = resolve_profile(INPUTS, opt_shapes={"images": (4, 3, 640, 640)}, max_shapes={"images": (8, 3, 640, 640)})
    assert profile["images"] == ProfileShape((4, 3, 640, 640), (4, 3, 640, 640), (8, 3, 640, 640))
    assert not profile["images"].is_static


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({}, "Input 'images' (?x3x?x?) has dynamic dims and no --shape"),
        ({"shapes": {"image": (1, 3, 8, 8)}}, "--shape names input 'image'"),
        ({"shapes": {"images": (1, 3, 8)}}, "has rank 3"),
        ({"shapes": {"images": (1, 4, 8, 8)}}, "sets dim 1 to 4, but the network fixes it at 3"),
        ({"shapes": {"images": (1, 3, 8, 8)}, "opt_shapes": {"images": (1, 3, 8, 8)}}, "both --shape and"),
        ({"min_shapes": {"images": (4, 3, 8, 8)}, "opt_shapes": {"images": (2, 3, 8, 8)}}, "min <= opt <= max"),
        ({"shapes": {"images": (0, 3, 8, 8)}}, "non-positive"),
    ],
)
def test_bad_profiles(kwargs, fragment):
    with pytest.raises(TrtqError) as info:
        resolve_profile(INPUTS, **kwargs)
    assert fragment in info.value.message


def test_format_shapes():
    assert format_shapes({"a": (1, 3), "b:0": (2,)}) == "a:1x3,b:0:2"


def test_every_dynamic_input_is_named_in_one_error():
    inputs = {"input_ids": (-1, -1), "attention_mask": (-1, -1), "scale": (1, 2)}
    with pytest.raises(TrtqError) as info:
        resolve_profile(inputs, shapes={"scale": (1, 2)})
    assert info.value.message == ("Inputs 'input_ids' (?x?) and 'attention_mask' (?x?) have dynamic dims and no "
                                  "--shape or --min/--opt/--max-shape was given.")
    assert info.value.hint.startswith("pass --shape input_ids:1xD1 --shape attention_mask:1xD1, with D1 replaced by "
                                      "the size to build at")
