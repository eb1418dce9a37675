"""DeviceFeeder on a real GPU (no TensorRT needed): the pointers it returns hold the batch.

Each pointer is checked to be device memory (cudaPointerGetAttributes, when cuda-python is
there) and read back, through the feeder and, with cuda-python, by a plain cudaMemcpy from the
raw pointer (as TensorRT reads it), and compared with the host batch.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from trtq.errors import TrtqError
from trtq.tensorrt.calibrator import BatchSource
from trtq.tensorrt.device import BufferSpec, DeviceFeeder, available_backends, open_backend

pytestmark = pytest.mark.gpu


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


if not _cuda_available():
    pytest.skip("needs torch with a CUDA device (run on the GPU machine)", allow_module_level=True)

BACKENDS = available_backends()
SPECS = {
    "images": BufferSpec((2, 3, 8, 8), np.dtype(np.float32)),
    "mask": BufferSpec((2, 5), np.dtype(np.int64)),
    "half": BufferSpec((2, 7), np.dtype(np.float16)),
}


def batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "images": rng.standard_normal((2, 3, 8, 8)).astype(np.float32),
        "mask": rng.integers(-5, 5, (2, 5)).astype(np.int64),
        "half": rng.standard_normal((2, 7)).astype(np.float16),
    }


def read_raw(pointer: int, spec: BufferSpec) -> np.ndarray:
    """Copy device memory at a raw pointer to the host with cudaMemcpy (cuda-python reads any device pointer)."""
    out = np.empty(spec.shape, spec.dtype)
    open_backend("cuda-python").to_host(pointer, out)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_pointers_hold_the_batch_in_requested_order(backend):
    with DeviceFeeder(SPECS, open_backend(backend)) as feeder:
        for seed in range(3):
            data = batch(seed)
            names = ["mask", "half", "images"]
            pointers = feeder.feed(data, names)
            assert len(pointers) == 3 and len(set(pointers)) == 3
            assert pointers == feeder.pointers(names)
            for name, pointer in zip(names, pointers):
                np.testing.assert_array_equal(feeder.read_back(name), data[name])
                if "cuda-python" in BACKENDS:  # read the raw pointer as device memory, as TensorRT does
                    np.testing.assert_array_equal(read_raw(pointer, SPECS[name]), data[name])


def test_pointers_are_device_memory():
    cudart = None
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            cudart = importlib.import_module(module)
            break
        except ImportError:
            continue
    if cudart is None:
        pytest.skip("cuda-python is not installed")
    for backend in BACKENDS:
        with DeviceFeeder(SPECS, open_backend(backend)) as feeder:
            for pointer in feeder.feed(batch(0)):
                err, attributes = cudart.cudaPointerGetAttributes(pointer)
                assert err == cudart.cudaError_t.cudaSuccess
                assert attributes.type == cudart.cudaMemoryType.cudaMemoryTypeDevice


@pytest.mark.parametrize("backend", BACKENDS)
def test_shape_dtype_and_name_checks(backend):
    with DeviceFeeder(SPECS, open_backend(backend)) as feeder:
        data = batch(0)
        wrong = {**data, "images": data["images"][:1]}
        with pytest.raises(TrtqError, match=r"shape \(1, 3, 8, 8\), but the calibration profile's OPT shape"):
            feeder.feed(wrong)
        with pytest.raises(TrtqError, match="is float32, and the engine input is int64"):
            feeder.feed({**data, "mask": data["mask"].astype(np.float32)})
        widened = {**data, "images": data["images"].astype(np.float64)}
        feeder.feed(widened)  # same kind: cast down to the engine's float32
        np.testing.assert_array_equal(feeder.read_back("images"), data["images"])
        with pytest.raises(TrtqError, match="asked for calibration input 'other'"):
            feeder.pointers(["images", "other"])
        with pytest.raises(TrtqError, match="has no array for input 'mask'"):
            feeder.feed({"images": data["images"], "half": data["half"]})


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_source_over_the_feeder_records_the_shape_error(backend):
    with DeviceFeeder(SPECS, open_backend(backend)) as feeder:
        good, bad = batch(1), batch(2)
        bad["images"] = bad["images"][:, :2]
        source = BatchSource([good, bad, batch(3)], feeder.feed)
        pointers = source.next_pointers(["images", "mask", "half"])
        assert pointers is not None
        np.testing.assert_array_equal(feeder.read_back("images"), good["images"])
        if "cuda-python" in BACKENDS:
            np.testing.assert_array_equal(read_raw(pointers[0], SPECS["images"]), good["images"])
        assert source.next_pointers(["images", "mask", "half"]) is None
        with pytest.raises(TrtqError, match="OPT shape"):
            source.raise_if_failed()
