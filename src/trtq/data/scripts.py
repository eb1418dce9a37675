"""load_data() scripts as data: the user's generator run in a guarded call, its items batched, small
results kept in memory, a long first pass announced."""

from __future__ import annotations

import hashlib
import itertools
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trtq._usercode import PASS_THROUGH, import_script, running_user_code, user_code, user_error
from trtq.data.dataset import Dataset
from trtq.data.validate import check_feed, warn_if_unnormalised
from trtq.errors import TrtqError
from trtq.model import PartialShape, TensorSpec

SCRIPT_CACHE_BYTES = 64 << 20
"""load_data() output up to this size is kept from the checking pass; larger data is re-generated."""
SCRIPT_MAX_SAMPLES = 1_000_000
"""Without --limit, a load_data() that yields more samples than this is taken to never end."""
SCRIPT_HINT_SECONDS = 15.0
"""Without --limit, a load_data() still yielding after this long gets a warning that says how to stop it."""


class ScriptDataset(Dataset):
    """Samples yielded by `load_data()` of a user's Python file (Polygraphy's convention)."""

    def __init__(
        self,
        source: Path,
        inputs: Sequence[TensorSpec],
        shapes: Mapping[str, PartialShape],
        load_data: Callable[[], object],
        dtypes: Mapping[str, np.dtype],
        limit: int | None,
        given: Collection[str] = (),
        progress: bool = False,
    ) -> None:
        super().__init__(source, inputs, shapes, None, "")
        self.load_data = load_data
        self.dtypes = dict(dtypes)
        self.limit = limit
        self.given = frozenset(given)
        self.open_inputs = {name for name, shape in shapes.items() if None in shape}
        """Inputs whose shape the first item of load_data() decides."""
        self._cache: list[dict[str, np.ndarray]] | None = []
        lows: dict[str, float] = {}
        highs: dict[str, float] = {}
        count, size = 0, 0
        start, hinted = time.monotonic(), limit is not None
        with tqdm(total=limit, desc=f"checking load_data() of {source.name}", unit="sample", disable=not progress,
                  dynamic_ncols=True, leave=False) as bar:
            for block, ranges in self._run():
                rows = len(next(iter(block.values())))
                count += rows
                bar.update(rows)
                size += sum(a.nbytes for a in block.values())
                if self._cache is not None and size <= SCRIPT_CACHE_BYTES:
                    self._cache.append(block)
                else:  # too big to keep: batches() calls load_data() again
                    self._cache = None
                for name, (low, high) in ranges.items():
                    lows[name] = min(low, lows.get(name, low))
                    highs[name] = max(high, highs.get(name, high))
                if limit is None and count > SCRIPT_MAX_SAMPLES:
                    raise TrtqError(
                        f"load_data() in {source} yielded over {SCRIPT_MAX_SAMPLES:,} samples without ending "
                        "(calibration needs hundreds to a few thousand).",
                        "pass --limit N (e.g. --limit 1000) to use its first N samples, or make load_data() stop.",
                    )
                if not hinted and time.monotonic() - start > SCRIPT_HINT_SECONDS:
                    hinted = True
                    warnings.warn(f"load_data() in {source} has yielded {count:,} samples in "
                                  f"{SCRIPT_HINT_SECONDS:g} s and goes on; if it never ends, stop trtq (Ctrl-C) and "
                                  "pass --limit N to use its first N samples.", stacklevel=2)
        if count == 0:
            raise TrtqError(f"load_data() in {source} yielded no samples.", "yield at least one sample.")
        for spec in inputs:
            warn_if_unnormalised(lows[spec.name], highs[spec.name], self.dtypes[spec.name], spec.name,
                                 f"load_data() in {source}")
        self.num_samples = count
        self.description = f"{count} samples from load_data() in {source}"

    def _run(self) -> Iterator[tuple[dict[str, np.ndarray], dict[str, tuple[float, float]]]]:
        """Call load_data() and check each item; blocks are cut at `limit` samples."""
        iterator = _call_load_data(self.load_data, self.source)
        index = 0
        try:
            for number in itertools.count():
                if self.limit is not None and index >= self.limit:
                    return
                try:
                    with running_user_code():
                        item = next(iterator)
                except StopIteration:
                    return
                except PASS_THROUGH:
                    raise
                except BaseException as exc:  # the user's code failed: report it as their error
                    error = user_error(exc, f"load_data() in {self.source}, producing item {number},",
                                       "fix the data script; run it on its own to see the traceback.")
                    if error is exc:
                        raise
                    raise error from exc
                where = f"item {number} of load_data() in {self.source}"
                block, ranges = check_feed(item, self.inputs, self.shapes, self.dtypes, where, index,
                                           given=self.given, inferred=set(self.inferred))
                for name in self.open_inputs - set(self.inferred):
                    self.shapes[name] = (self.shapes[name][0], *block[name].shape[1:])
                    self.inferred[name] = self.shapes[name]
                if self.limit is not None:
                    block = {k: v[: self.limit - index] for k, v in block.items()}
                index += len(next(iter(block.values())))
                yield block, ranges
        finally:
            close = getattr(iterator, "close", None)
            if callable(close):
                with user_code(f"load_data() in {self.source}, when closed,", "fix the data script."):
                    close()

    def _blocks(self) -> Iterator[dict[str, np.ndarray]]:
        if self._cache is not None:
            yield from self._cache
            return
        count = 0
        for block, _ in self._run():
            count += len(next(iter(block.values())))
            yield block
        if count != self.num_samples:
            raise TrtqError(
                f"load_data() in {self.source} yielded {self.num_samples} samples when checked and "
                f"{count} when called again.",
                "make load_data() yield the same data every time it is called.",
            )

    def _batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        return _rebatch(self._blocks(), batch_size)


def _rebatch(blocks: Iterable[dict[str, np.ndarray]], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Regroup blocks of any number of samples into batches of `batch_size` (last one partial)."""
    pending: list[dict[str, np.ndarray]] = []
    count = 0
    for block in blocks:
        rows = len(next(iter(block.values())))
        if rows == 0:
            continue
        pending.append(block)
        count += rows
        while count >= batch_size:
            merged = _concat(pending)
            yield {k: v[:batch_size].copy() for k, v in merged.items()}  # never alias a cached block
            count -= batch_size
            pending = [{k: v[batch_size:] for k, v in merged.items()}] if count else []
    if count:
        yield {k: v.copy() for k, v in _concat(pending).items()}


def _concat(blocks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(blocks) == 1:
        return blocks[0]
    return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def _call_load_data(load_data: Callable[[], object], source: Path) -> Iterator[object]:
    """Call the user's load_data() and check that it gave an iterable of items."""
    with user_code(f"load_data() in {source}", "fix the data script; run it on its own to see the traceback."):
        produced = load_data()
    if isinstance(produced, Mapping):
        raise TrtqError(
            f"load_data() in {source} returned a single dict, not a generator or list of dicts.",
            "yield one {input_name: array} dict per sample (or return a list of them).",
        )
    if produced is None or isinstance(produced, (str, bytes, np.ndarray)) or not isinstance(produced, Iterable):
        raise TrtqError(
            f"load_data() in {source} returned {type(produced).__name__}, not a generator or list "
            "of {input_name: array} dicts.",
            "make load_data() yield one dict per sample (or return a list of them).",
        )
    with user_code(f"load_data() in {source}, when iterated,", "fix the data script."):
        return iter(produced)


def import_load_data(path: Path) -> Callable[[], object]:
    """Run the user's script and return its load_data function."""
    module_name = "_trtq_data_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module = import_script(path, "Data script", module_name)
    load_data = getattr(module, "load_data", None)
    if load_data is None:
        raise TrtqError(
            f"Data script {path} defines no load_data() function.",
            "define load_data() that yields {input_name: array} dicts (Polygraphy's convention).",
        )
    if not callable(load_data):
        raise TrtqError(
            f"load_data in {path} is a {type(load_data).__name__}, not a function.",
            "define load_data() as a function that yields {input_name: array} dicts.",
        )
    return load_data
