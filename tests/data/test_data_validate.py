"""The individual checks: casting policy, layout hints, finiteness, ranges, batch size, feeds."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trtq.data.validate import (
    DataRangeWarning,
    check_batch_size,
    check_cast,
    check_feed,
    check_sample_shape,
    check_shapes,
    check_values,
    input_dtype,
    verify_images,
    warn_if_unnormalised,
)
from trtq.errors import TrtqError
from trtq.model import TensorSpec


@pytest.mark.parametrize(
    "src, dst, needs_range",
    [
        ("float32", "float32", False),
        ("float64", "float32", False),
        ("float32", "float16", False),
        ("uint8", "float32", False),
        ("int64", "float32", False),
        ("int32", "int64", False),
        ("int64", "int32", True),
        ("bool", "int64", False),
    ],
)
def test_allowed_casts(src: str, dst: str, needs_range: bool) -> None:
    assert check_cast(np.dtype(src), np.dtype(dst), "x", "data.npy") is needs_range


@pytest.mark.parametrize("src, dst", [("float32", "int64"), ("float64", "uint8"), ("int64", "bool")])
def test_refused_casts(src: str, dst: str) -> None:
    with pytest.raises(TrtqError, match=f"'x' in data.npy is {src} data, but the model takes {dst}"):
        check_cast(np.dtype(src), np.dtype(dst), "x", "data.npy")


def test_nchw_given_to_nhwc_model_says_so() -> None:
    with pytest.raises(TrtqError, match="3x8x8, which looks like NCHW; the model takes NHWC"):
        check_sample_shape((3, 8, 8), (8, 8, 3), "x", "d.npy")
    with pytest.raises(TrtqError, match="8x8x3, which looks like NHWC"):
        check_sample_shape((8, 8, 3), (3, 8, 8), "x", "d.npy")
    with pytest.raises(TrtqError, match="shape 8x3, expected 3x8"):
        check_sample_shape((8, 3), (3, 8), "x", "d.npy")
    check_sample_shape((3, 3, 3), (3, 3, 3), "x", "d.npy")


def test_float16_overflow_is_reported_as_such() -> None:
    block = np.zeros((3, 4), np.float32)
    block[1, 2] = 1e6
    with pytest.raises(TrtqError, match=r"Sample 11 of input 'x' in d.npy contains values too large for float16"):
        check_values(block, np.dtype(np.float16), False, "x", "d.npy", first_sample=10)


def test_check_values_returns_range_of_the_cast_data() -> None:
    block = np.array([[1.0, -2.5], [3.0, 0.0]])
    assert check_values(block, np.dtype(np.float32), False, "x", "d") == (-2.5, 3.0)
    assert check_values(np.array([[1, 9]], np.int64), np.dtype(np.int32), True, "x", "d") == (1.0, 9.0)


def test_unnormalised_warning_threshold() -> None:
    with pytest.warns(DataRangeWarning, match="from 0 to 255"):
        warn_if_unnormalised(0.0, 255.0, np.dtype(np.float32), "x", "d.npy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_unnormalised(0.0, 20.0, np.dtype(np.float32), "x", "d.npy")  # at the threshold
        warn_if_unnormalised(-1.0, 255.0, np.dtype(np.float32), "x", "d.npy")  # signed: normalised
        warn_if_unnormalised(0.0, 255.0, np.dtype(np.uint8), "x", "d.npy")  # integer input: raw is right


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_bad_batch_sizes(batch_size: object) -> None:
    with pytest.raises(TrtqError, match="not a positive integer"):
        check_batch_size(batch_size, 10, "d")  # type: ignore[arg-type]


def test_check_shapes_needs_every_input_at_the_model_rank() -> None:
    spec = TensorSpec("x", ("N", 3), "float32")
    assert check_shapes([spec], {"x": (4, 3)}) == {"x": (4, 3)}
    with pytest.raises(TrtqError, match=r"no resolved shape.*--shape x:"):
        check_shapes([spec], {})
    with pytest.raises(TrtqError, match="does not fit"):
        check_shapes([spec], {"x": (4, 3, 1)})


def test_input_dtype_rejects_non_numeric_inputs() -> None:
    assert input_dtype(TensorSpec("x", (1,), "float16")) == np.float16
    with pytest.raises(TrtqError, match="element type undefined"):
        input_dtype(TensorSpec("x", (1,), "undefined"))


def test_check_feed_adds_batch_dim_and_checks_keys_and_counts() -> None:
    specs = [TensorSpec("a", (1, 2), "float32"), TensorSpec("b", (1,), "int64")]
    shapes = {"a": (1, 2), "b": (1,)}
    dtypes = {"a": np.dtype(np.float32), "b": np.dtype(np.int64)}
    arrays, ranges = check_feed({"a": [1.0, 2.0], "b": 7}, specs, shapes, dtypes, "item 0", 0)
    assert arrays["a"].shape == (1, 2) and arrays["a"].dtype == np.float32
    assert arrays["b"].tolist() == [7] and ranges == {"a": (1.0, 2.0), "b": (7.0, 7.0)}
    with pytest.raises(TrtqError, match="item 1 has key 'c', which is not a model input"):
        check_feed({"a": [1.0, 2.0], "b": 7, "c": 1}, specs, shapes, dtypes, "item 1", 0)
    with pytest.raises(TrtqError, match=r"1 sample.* for input 'b' but 2 for 'a'"):
        check_feed({"a": np.zeros((2, 2)), "b": [7]}, specs, shapes, dtypes, "item 2", 0)
    with pytest.raises(TrtqError, match="is a <U1 array, not numbers"):
        check_feed({"a": ["x", "y"], "b": 7}, specs, shapes, dtypes, "item 3", 0)


def test_verify_images_names_the_first_and_counts_the_rest(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4)).save(good)
    bad = []
    for i in range(8):
        path = tmp_path / f"bad{i}.png"
        path.write_bytes(b"nope")
        bad.append(path)
    verify_images([good], tmp_path, workers=0)
    with pytest.raises(TrtqError, match=r"bad0\.png cannot be read .*7 other .*bad5\.png and 2 more"):
        verify_images([good, *bad], tmp_path, workers=2)
