"""I/O format parsing in trtexec's type:format spelling."""

from __future__ import annotations

import pytest

from trtq.errors import TrtqError
from trtq.tensorrt.ioformats import (
    IO_FORMATS,
    IO_TYPES,
    IOFormat,
    expand_io_formats,
    format_io_formats,
    parse_io_format,
    parse_io_formats,
)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("fp16:chw16", IOFormat("fp16", ("chw16",))),
        ("INT8:DLA_HWC4", IOFormat("int8", ("dla_hwc4",))),
        (" fp32 : chw ", IOFormat("fp32", ("chw",))),
        ("int8:chw32+dla_linear", IOFormat("int8", ("chw32", "dla_linear"))),
        ("bool:chw", IOFormat("bool", ("chw",))),
    ],
)
def test_good_spellings(text, parsed):
    assert parse_io_format(text) == parsed


def test_lists_round_trip():
    formats = parse_io_formats(["fp16:chw16,int8:chw32", "fp32:hwc8"])
    assert [f.spec() for f in formats] == ["fp16:chw16", "int8:chw32", "fp32:hwc8"]
    assert format_io_formats(formats) == "fp16:chw16,int8:chw32,fp32:hwc8"
    assert parse_io_formats(None) == () and parse_io_formats("") == ()


@pytest.mark.parametrize(
    ("text", "fragment", "accepted"),
    [
        ("fp16", "is not of the form type:format", "chw16"),
        ("half:chw16", "has type 'half', which is not one of", ", ".join(IO_TYPES)),
        ("fp16:nchw", "has format 'nchw', which is not one of", ", ".join(IO_FORMATS)),
        ("fp16:chw16+nhwc", "has format 'nhwc'", ", ".join(IO_FORMATS)),
    ],
)
def test_bad_spellings_list_the_accepted_ones(text, fragment, accepted):
    with pytest.raises(TrtqError) as info:
        parse_io_formats(text, "--output-io-formats")
    assert fragment in info.value.message
    assert accepted in str(info.value)
    assert "--output-io-formats" in info.value.message


def test_slugs_for_file_names():
    assert IOFormat("fp16", ("chw16",)).slug() == "fp16chw16"
    assert IOFormat("int8", ("chw32", "dla_linear")).slug() == "int8chw32_dla_linear"


def test_expand_one_per_tensor_or_broadcast():
    one = parse_io_formats("fp16:chw16")
    assert expand_io_formats(one, ["a", "b"], "--input-io-formats") == {"a": one[0], "b": one[0]}
    two = parse_io_formats("fp16:chw16,fp32:chw")
    assert expand_io_formats(two, ["a", "b"], "--input-io-formats") == {"a": two[0], "b": two[1]}
    assert expand_io_formats((), ["a"], "--input-io-formats") == {}
    with pytest.raises(TrtqError, match="lists 2 formats, but the network has 3"):
        expand_io_formats(two, ["a", "b", "c"], "--input-io-formats")
