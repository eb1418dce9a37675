"""The calibrator's TensorRT-free parts: errors are recorded and re-raised, never swallowed; the cache file."""

from __future__ import annotations

import numpy as np
import pytest

from trtq.errors import TrtqError
from trtq.tensorrt.build import exact_batches
from trtq.tensorrt.calibrator import BatchSource, CacheFile, cache_rejected


def batches(n):
    for i in range(n):
        yield {"x": np.full((2, 3), i, np.float32), "m": np.zeros((2, 1), np.int64)}


def test_pointers_in_requested_order_then_none():
    seen = []

    def feed(batch, names):
        seen.append(int(batch["x"][0, 0]))
        return [{"x": 100, "m": 200}[n] for n in names]

    source = BatchSource(batches(2), feed)
    assert source.next_pointers(["m", "x"]) == [200, 100]
    assert source.next_pointers(["x", "m"]) == [100, 200]
    assert source.next_pointers(["x", "m"]) is None
    assert seen == [0, 1] and source.batches_fed == 2
    source.raise_if_failed()


def test_an_error_in_the_feeder_is_kept_and_reraised():
    def feed(batch, names):
        raise TrtqError("shape mismatch for 'x'.")

    source = BatchSource(batches(3), feed)
    assert source.next_pointers(["x", "m"]) is None  # what TensorRT sees: end of data
    assert source.next_pointers(["x", "m"]) is None  # and no further batch is consumed
    with pytest.raises(TrtqError, match="shape mismatch"):
        source.raise_if_failed()


def test_an_error_in_the_data_is_kept_and_a_wrong_pointer_count_is_an_error():
    def broken():
        yield {"x": np.zeros((2, 3), np.float32)}
        raise OSError("image 7 is truncated")

    source = BatchSource(broken(), lambda batch, names: [1] * len(names))
    assert source.next_pointers(["x"]) == [1]
    assert source.next_pointers(["x"]) is None
    with pytest.raises(OSError, match="truncated"):
        source.raise_if_failed()
    short = BatchSource(batches(1), lambda batch, names: [1])
    assert short.next_pointers(["x", "m"]) is None
    with pytest.raises(RuntimeError, match="1 pointers for 2 inputs"):
        short.raise_if_failed()


def test_cache_file_reads_and_writes(tmp_path):
    given = tmp_path / "given.cache"
    given.write_bytes(b"TRT-101303-EntropyCalibration2\nx: 3c010204\n")
    assert CacheFile(given).read() == given.read_bytes()
    assert CacheFile(None).read() is None
    out = tmp_path / "out.cache"
    CacheFile(None, write_to=out).write(memoryview(b"TRT-101303-MinMaxCalibration\n"))
    assert out.read_bytes() == b"TRT-101303-MinMaxCalibration\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind


def test_a_rejected_cache_becomes_a_clear_error():
    source = BatchSource(cache_rejected("m.int8.cache"), lambda batch, names: [])
    assert source.next_pointers(["x"]) is None
    with pytest.raises(TrtqError, match=r"did not accept the calibration cache m.int8.cache"):
        source.raise_if_failed()


def test_exact_batches_drops_a_short_last_batch():
    data = [{"x": np.zeros((4, 3))}, {"x": np.zeros((4, 3))}, {"x": np.zeros((1, 3))}]
    with pytest.warns(UserWarning, match="1 calibration samples"):
        kept = list(exact_batches(data, {"x": (4, 3)}))
    assert len(kept) == 2
    wrong = [{"x": np.zeros((4, 5))}]
    assert len(list(exact_batches(wrong, {"x": (4, 3)}))) == 1  # passed on for the feeder to reject by name
