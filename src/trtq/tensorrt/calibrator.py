"""TensorRT 10 implicit INT8 calibrator that cannot crash silently.

TensorRT calls `get_batch(names)` from C++ and swallows any Python exception raised there,
ending calibration as if the data had run out. So `BatchSource` catches everything, records
it and returns None (end of data); the build then re-raises the recorded error instead of
reporting success. Batches go through a `DeviceFeeder` (device buffers this object owns), so
TensorRT always gets exactly one device pointer per requested name, in its order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from trtq._io import atomic_write_bytes
from trtq.errors import TrtqError
from trtq.tensorrt.version import supports

Feed = Callable[[Mapping[str, np.ndarray], Sequence[str]], list[int]]
"""Copies a host batch to the device and returns one device pointer per name, in order."""

ALGORITHMS = ("entropy", "minmax")
"""trtq calibrator algorithms: TensorRT's EntropyCalibration2 and MinMaxCalibration."""


class BatchSource:
    """Feeds batches one `next_pointers` call at a time and keeps the first error instead of losing it."""

    def __init__(self, batches: Iterable[Mapping[str, np.ndarray]], feed: Feed) -> None:
        self._batches: Iterator[Mapping[str, np.ndarray]] = iter(batches)
        self._feed = feed
        self.error: BaseException | None = None
        self.batches_fed = 0

    def next_pointers(self, names: Sequence[str]) -> list[int] | None:
        """Device pointers of the next batch, or None when the data ended or an error was recorded."""
        if self.error is not None:
            return None
        try:
            batch = next(self._batches, None)
            if batch is None:
                return None
            pointers = self._feed(batch, list(names))
            if len(pointers) != len(names):
                raise RuntimeError(f"feeder returned {len(pointers)} pointers for {len(names)} inputs")
        except BaseException as exc:  # TensorRT would swallow it; keep it for raise_if_failed()
            self.error = exc
            return None
        self.batches_fed += 1
        return pointers

    def raise_if_failed(self) -> None:
        """Re-raise the error recorded during calibration, if any."""
        if self.error is not None:
            raise self.error


class CacheFile:
    """The calibration cache TensorRT reads before calibrating (`read_from`) and writes after (`write_to`)."""

    def __init__(self, read_from: str | Path | None, write_to: str | Path | None = None) -> None:
        self.read_from = Path(read_from) if read_from else None
        self.write_to = Path(write_to) if write_to else None

    def read(self) -> bytes | None:
        """The cache's bytes, or None so that TensorRT calibrates from data."""
        if self.read_from is None:
            return None
        return self.read_from.read_bytes()

    def write(self, cache: Any) -> None:
        """Write TensorRT's cache atomically (ignored without `write_to`)."""
        if self.write_to is not None:
            atomic_write_bytes(self.write_to, bytes(cache))


def cache_rejected(path: str | Path) -> Iterator[Mapping[str, np.ndarray]]:
    """A batch stream for cache-only builds: TensorRT asks for data only when it rejected the cache."""
    raise TrtqError(
        f"TensorRT did not accept the calibration cache {path} and asked for calibration data instead.",
        "write the cache for this TensorRT version (trtq quantize --trt-version X.Y.Z) and calibrator, "
        "or pass --calib DATA.",
    )
    yield {}  # unreachable; makes this a generator


@supports("10")
def make_calibrator(trt: ModuleType, source: BatchSource, cache: CacheFile, algorithm: str = "entropy") -> Any:
    """An IInt8EntropyCalibrator2 (or IInt8MinMaxCalibrator) over `source`, reading/writing `cache`."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm {algorithm!r} is not one of {ALGORITHMS}")
    base = trt.IInt8EntropyCalibrator2 if algorithm == "entropy" else trt.IInt8MinMaxCalibrator

    class Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.source = source
            self.cache = cache

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            return self.source.next_pointers(names)

        def read_calibration_cache(self) -> bytes | None:
            try:
                return self.cache.read()
            except BaseException as exc:  # swallowed by TensorRT otherwise
                self.source.error = self.source.error or exc
                return None

        def write_calibration_cache(self, data: Any) -> None:
            try:
                self.cache.write(data)
            except BaseException as exc:  # swallowed by TensorRT otherwise
                self.source.error = self.source.error or exc

    return Calibrator()
