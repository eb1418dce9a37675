"""DeviceFeeder's bookkeeping on CPU, over a host-memory stand-in for the CUDA backend.

The stand-in only stores bytes at integer addresses; what is tested is the feeder's own logic
(one buffer per input, pointers in the requested order, shape/dtype checks, casting, freeing).
That the pointers are real device memory is tested on the GPU in test_feeder_gpu.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from trtq.errors import TrtqError
from trtq.tensorrt.device import BufferSpec, DeviceFeeder, open_backend


class HostMemory:
    """alloc/free/to_device/to_host over bytearrays at fake addresses."""

    name = "host"

    def __init__(self) -> None:
        self.blocks: dict[int, bytearray] = {}
        self._next = 0x1000

    def alloc(self, nbytes: int) -> int:
        address, self._next = self._next, self._next + nbytes + 0x100
        self.blocks[address] = bytearray(nbytes)
        return address

    def free(self, pointer: int) -> None:
        del self.blocks[pointer]

    def to_device(self, pointer: int, array: np.ndarray, stream: int = 0) -> None:
        data = np.ascontiguousarray(array).tobytes()
        assert len(data) <= len(self.blocks[pointer]), "copy overruns the buffer"
        self.blocks[pointer][: len(data)] = data

    def to_host(self, pointer: int, out: np.ndarray, stream: int = 0) -> None:
        out.reshape(-1).view(np.uint8)[:] = np.frombuffer(bytes(self.blocks[pointer][: out.nbytes]), np.uint8)


SPECS = {"x": BufferSpec((2, 3), np.dtype(np.float32)), "ids": BufferSpec((2,), np.dtype(np.int32))}


def test_one_buffer_per_input_sized_for_the_opt_shape():
    memory = HostMemory()
    feeder = DeviceFeeder(SPECS, memory)
    assert sorted(len(b) for b in memory.blocks.values()) == [8, 24]
    feeder.close()
    assert memory.blocks == {}


def test_feed_returns_pointers_in_the_requested_order_and_copies_the_data():
    memory = HostMemory()
    with DeviceFeeder(SPECS, memory) as feeder:
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        ids = np.array([7, 9], np.int32)
        forward = feeder.feed({"x": x, "ids": ids}, ["x", "ids"])
        backward = feeder.feed({"x": x + 1, "ids": ids}, ["ids", "x"])
        assert backward == forward[::-1]
        np.testing.assert_array_equal(feeder.read_back("x"), x + 1)
        np.testing.assert_array_equal(np.frombuffer(bytes(memory.blocks[forward[1]]), np.int32), ids)


def test_checks_and_casts():
    with DeviceFeeder(SPECS, HostMemory()) as feeder:
        ids = np.array([1, 2], np.int32)
        with pytest.raises(TrtqError, match=r"input 'x' has shape \(3, 2\), but the calibration profile's OPT shape is \(2, 3\)"):
            feeder.feed({"x": np.zeros((3, 2), np.float32), "ids": ids})
        with pytest.raises(TrtqError, match="input 'ids' is float32, and the engine input is int32"):
            feeder.feed({"x": np.zeros((2, 3), np.float32), "ids": ids.astype(np.float32)})
        feeder.feed({"x": np.full((2, 3), 0.5, np.float64), "ids": ids.astype(np.int64)})
        np.testing.assert_array_equal(feeder.read_back("x"), np.full((2, 3), 0.5, np.float32))
        with pytest.raises(TrtqError, match="has no array for input 'ids'"):
            feeder.feed({"x": np.zeros((2, 3), np.float32)})
        with pytest.raises(TrtqError, match="asked for calibration input 'y'"):
            feeder.pointers(["x", "y"])


def test_unknown_backend_name():
    with pytest.raises(TrtqError, match="is not one of auto, torch, cuda-python"):
        open_backend("opencl")
