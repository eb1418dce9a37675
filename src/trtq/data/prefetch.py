"""Read batches on a background thread, a few ahead, so decoding and hashing overlap the model."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Mapping

import numpy as np


def prefetch(batches: Iterable[Mapping[str, np.ndarray]], depth: int = 2) -> Iterator[Mapping[str, np.ndarray]]:
    """Iterate `batches` on a background thread, `depth` batches ahead (decoding overlaps device work)."""
    items: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(("batch", batch)):
                    return
            put(("end", None))
        except BaseException as exc:  # re-raised in the consumer, with its traceback
            put(("error", exc))

    worker = threading.Thread(target=produce, name="trtq-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "end":
                return
            if kind == "error":
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]
    finally:
        stop.set()
