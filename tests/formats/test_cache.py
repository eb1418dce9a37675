"""TensorRT calibration cache: header codes, byte format, round trip, bad input."""

import struct

import pytest

from trtq.errors import TrtqError
from trtq.formats.cache import format_cache, parse_cache, read_cache, trt_version_code, write_cache


@pytest.mark.parametrize(
    ("version", "code"), [("10.13.3", 101303), ("10.0.1", 100001), ("10.13.3.9", 101303), ("8.6.1", 8601), ("8.5.3", 8503)]
)
def test_version_codes(version, code):
    assert trt_version_code(version) == code


def test_tensorrt_11_has_no_cache():
    with pytest.raises(TrtqError, match=r"removed in 11.0"):
        trt_version_code("11.4.0")


def test_bad_version_spelling():
    with pytest.raises(TrtqError, match=r"MAJOR.MINOR.PATCH"):
        trt_version_code("ten")


def test_hand_computed_line():
    # amax 1.27 -> scale 0.01 -> float32 0.01 is 0x3c23d70a (big-endian bits)
    data = format_cache({"conv1_out": 1.27}, "10.13.3", "entropy")
    assert data == b"TRT-101303-EntropyCalibration2\nconv1_out: 3c23d70a\n"


def test_minmax_header_and_sorted_lines():
    text = format_cache({"b": 1.0, "a": 2.0}, "8.6.1", "max").decode()
    lines = text.splitlines()
    assert lines[0] == "TRT-8601-MinMaxCalibration"
    assert [line.split(":")[0] for line in lines[1:]] == ["a", "b"]


def test_round_trip_with_colons_in_names(tmp_path):
    amax = {"/model.0/conv/Conv_output_0": 3.5, "onnx::Conv_12": 0.25, "input": 2.64}
    path = tmp_path / "m.cache"
    write_cache(path, amax, "10.13.3", "entropy")
    parsed = read_cache(path)
    assert parsed.version_code == 101303 and parsed.algorithm == "EntropyCalibration2"
    for name, value in amax.items():
        assert parsed.scales[name] == struct.unpack(">f", struct.pack(">f", value / 127))[0]


def test_parse_rejects_garbage():
    with pytest.raises(TrtqError, match="expected a header"):
        parse_cache(b"hello\n", "x.cache")
    with pytest.raises(TrtqError, match=r"Line 2 of calibration cache x.cache"):
        parse_cache(b"TRT-8601-EntropyCalibration2\ninput: zz\n", "x.cache")


GOOD = format_cache({"a": 1.27, "b": 2.54})  # scales 0.01 (3c23d70a) and 0.02 (3ca3d70a)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"is empty \(0 bytes\)"),
        (b"\n\n", r"is empty \(2 bytes\)"),
        (GOOD.splitlines(keepends=True)[0], "has a header but no tensor scales"),
        (GOOD.replace(b"TRT-101303", b"TRT-99"), "which no TensorRT writes"),
        (GOOD.replace(b"TRT-101303", b"TRT-111303"), "which no TensorRT writes"),  # 11.x has no cache
        (GOOD.replace(b"EntropyCalibration2", b"MyCalibrator"), "which no TensorRT writes"),
        (GOOD.replace(b"3c23d70a", b"7fc00000"), "gives tensor 'a' the scale nan"),
        (GOOD.replace(b"3c23d70a", b"7f800000"), "gives tensor 'a' the scale inf"),
        (GOOD.replace(b"3c23d70a", b"bc23d70a"), r"gives tensor 'a' the scale -0.00999"),
        (GOOD[:-4], r"Line 3 .* is 'b: 3ca3d', expected"),
        (GOOD.replace(b"a: ", b": "), r"Line 2 .* expected '<tensor>: <8 hex digits>'"),
        (GOOD + b"a: 3c23d70a\n", "names tensor 'a' twice"),
        (b"\xff\xfe garbage", "is not text"),
    ],
)
def test_a_cache_that_no_tensorrt_wrote_is_refused(data, message):
    with pytest.raises(TrtqError, match=message):
        parse_cache(data, "m.cache")


def test_version_codes_of_the_tensorrt_releases_with_a_cache():
    from trtq.formats.cache import version_of_code

    assert version_of_code(101303) == (10, 13, 3) and version_of_code(8601) == (8, 6, 1)
    assert version_of_code(7103) == (7, 1, 3)
    assert [version_of_code(c) for c in (10500, 111303, 6000, 70000, 1)] == [None] * 5


def test_a_zero_scale_is_kept():
    """TensorRT writes 0 for a tensor that is zero on every calibration sample."""
    assert parse_cache(b"TRT-8601-EntropyCalibration2\ndead: 00000000\n").scales == {"dead": 0.0}
