""".npy/.npz files and in-memory arrays as data: .npy memory-mapped, every array checked against
the model's inputs (dtype, shape, finite values) in bounded chunks."""

from __future__ import annotations

import itertools
import warnings
import zipfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from trtq.data.dataset import Dataset
from trtq.data.validate import check_cast, check_values, match_sample_shape, warn_if_unnormalised
from trtq.errors import TrtqError
from trtq.model import PartialShape, TensorSpec

CHUNK_BYTES = 64 << 20
"""Up-front checks of memory-mapped arrays read this much at a time."""
_NUMPY_FILE_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile)
"""What np.load raises for a truncated, corrupt or pickled file."""
_MAGIC = {"npy": b"\x93NUMPY", "npz": b"PK\x03\x04"}
"""The bytes every .npy file (and every .npz, a zip archive) starts with."""


def numpy_file_problem(path: str | Path, exc: BaseException, kind: str) -> str:
    """Why np.load refused `path` (a .npy or .npz file by `kind`), in one clause naming the file and what
    its first bytes are: numpy's own message for a text file is about pickles."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return f"{path} is not a readable .{kind} file ({exc})"
    if not head:
        return f"{path} is empty (0 bytes), not a .{kind} file"
    found = next((k for k, magic in _MAGIC.items() if head.startswith(magic)), None)
    if found == kind:
        return f"{path} is not a readable .{kind} file ({' '.join(str(exc).split())})"
    what = {"npy": "a .npy array", "npz": "a zip archive (an .npz?)"}.get(found or "", "")
    if what:
        return f"{path} is {what}, not a .{kind} file"
    return f"{path} is not a .{kind} file: it starts with {head[:12]!r}, where a .{kind} file starts with {_MAGIC[kind]!r}"


class ArrayDataset(Dataset):
    """Samples held in arrays (N, ...) per input: a memory-mapped .npy or a loaded .npz."""

    def __init__(
        self,
        source: Path,
        inputs: Sequence[TensorSpec],
        shapes: Mapping[str, tuple[int, ...]],
        arrays: Mapping[str, np.ndarray],
        dtypes: Mapping[str, np.dtype],
        description: str,
    ) -> None:
        num = len(next(iter(arrays.values())))
        super().__init__(source, inputs, shapes, num, description)
        self.arrays = dict(arrays)
        self.dtypes = dict(dtypes)

    def _batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        return self._some_batches(batch_size, list(range(-(-(self.num_samples or 0) // batch_size))))

    def _some_batches(self, batch_size: int, wanted: list[int]) -> Iterator[dict[str, np.ndarray]]:
        for index in wanted:
            start = index * batch_size
            if start >= (self.num_samples or 0):
                return
            yield {
                name: np.array(array[start:start + batch_size], dtype=self.dtypes[name], copy=True)
                for name, array in self.arrays.items()
            }


def _as_samples(
    array: np.ndarray, spec: TensorSpec, shape: PartialShape, where: str, given: bool = False
) -> tuple[np.ndarray, tuple[int, ...]]:
    """View `array` as (N, *sample dims): a batch of samples, or one sample given without batch dim.

    Returns the view and the input's shape, its open dims (None in `shape`) taken from the array.
    """
    if array.ndim == len(shape) - 1:
        array = array[None]
    elif array.ndim != len(shape):
        expected = "x".join("?" if d is None else str(d) for d in shape[1:])
        raise TrtqError(
            f"{where} holds {'an array of shape ' + 'x'.join(map(str, array.shape)) if array.ndim else 'a single number'}; input "
            f"{spec.name!r} needs Nx{expected}.",
            "save samples stacked along a first (batch) axis.",
        )
    sample = match_sample_shape(array.shape[1:], shape, spec, where, given=given)
    if array.shape[0] == 0:
        raise TrtqError(f"{where} holds no samples for input {spec.name!r}.", "save at least one sample.")
    return array, (int(shape[0]), *sample)  # type: ignore[arg-type]


def _scan(array: np.ndarray, dtype: np.dtype, input_name: str, where: str) -> None:
    """Check every sample of an (N, ...) array, a chunk at a time so memory-mapped data stays on disk."""
    range_check = check_cast(array.dtype, dtype, input_name, where)
    row_bytes = max(1, array[0].nbytes)
    step = max(1, CHUNK_BYTES // row_bytes)
    low, high = np.inf, -np.inf
    for start in range(0, len(array), step):
        chunk = np.asarray(array[start:start + step])
        chunk_low, chunk_high = check_values(chunk, dtype, range_check, input_name, where, start)
        low, high = min(low, chunk_low), max(high, chunk_high)
    warn_if_unnormalised(low, high, dtype, input_name, where)


def open_npy(
    path: Path,
    inputs: Sequence[TensorSpec],
    shapes: Mapping[str, PartialShape],
    dtypes: Mapping[str, np.dtype],
    limit: int | None,
    given: Collection[str] = (),
) -> ArrayDataset:
    if len(inputs) != 1:
        raise TrtqError(
            f"{path} holds one array, but the model has {len(inputs)} inputs "
            f"({', '.join(s.name for s in inputs)}).",
            "save an .npz keyed by input name (np.savez(path, **{name: array})), or use load_data().",
        )
    spec = inputs[0]
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except _NUMPY_FILE_ERRORS as exc:
        raise TrtqError(f"{numpy_file_problem(path, exc, 'npy')}.", "save it with np.save().") from exc
    if not isinstance(array, np.ndarray):
        raise TrtqError(f"{path} is an .npz archive, not a single .npy array.", "rename it to .npz.")
    array, shape = _as_samples(array, spec, shapes[spec.name], str(path), spec.name in given)
    array = array[:limit]
    _scan(array, dtypes[spec.name], spec.name, str(path))
    dataset = ArrayDataset(path, inputs, {spec.name: shape}, {spec.name: array}, dtypes,
                           f"{len(array)} samples from {path}")
    dataset.inferred = {spec.name: shape} if None in shapes[spec.name] else {}
    return dataset


def open_npz(
    path: Path,
    inputs: Sequence[TensorSpec],
    shapes: Mapping[str, PartialShape],
    dtypes: Mapping[str, np.dtype],
    limit: int | None,
    given: Collection[str] = (),
) -> ArrayDataset:
    arrays: dict[str, np.ndarray] = {}
    resolved: dict[str, tuple[int, ...]] = {}
    try:
        with open(path, "rb") as handle:  # np.load leaks its own handle when the zip is corrupt
            archive = np.load(handle, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise TrtqError(f"{path} is a single .npy array, not an .npz archive.", "rename it to .npy.")
            keys = list(archive.files)
            single = len(inputs) == 1 and keys == ["arr_0"]  # np.savez(path, array)
            for spec in inputs:
                key = "arr_0" if single else spec.name
                if key not in keys:
                    raise TrtqError(
                        f"{path} has no array for input {spec.name!r}; its keys are {keys}.",
                        f"save one array per model input: np.savez(path, "
                        f"{', '.join(f'{s.name}=...' for s in inputs)}).",
                    )
                array, resolved[spec.name] = _as_samples(archive[key], spec, shapes[spec.name], str(path),
                                                         spec.name in given)
                arrays[spec.name] = array[:limit]
            unused = [key for key in keys if key not in {s.name for s in inputs} and not single]
            if unused:
                warnings.warn(f"{path} also holds {', '.join(map(repr, unused))}, which no model input takes "
                              f"(the inputs are {[s.name for s in inputs]}); those arrays are not used.", stacklevel=3)
    except _NUMPY_FILE_ERRORS as exc:
        raise TrtqError(f"{numpy_file_problem(path, exc, 'npz')}.", "save it with np.savez().") from exc
    counts = {name: len(a) for name, a in arrays.items()}
    if len(set(counts.values())) > 1:
        (first, n_first), (other, n_other) = next(
            ((a, b) for a, b in itertools.combinations(counts.items(), 2) if a[1] != b[1])
        )
        raise TrtqError(
            f"{path} has {n_first} samples for input {first!r} but {n_other} for {other!r}.",
            "save the same number of samples for every input.",
        )
    for name, array in arrays.items():
        _scan(array, dtypes[name], name, str(path))
    n = counts[inputs[0].name]
    names = ", ".join(arrays)
    dataset = ArrayDataset(path, inputs, resolved, arrays, dtypes, f"{n} samples of {names} from {path}")
    dataset.inferred = {name: shape for name, shape in resolved.items() if None in shapes[name]}
    return dataset


IN_MEMORY = Path("<arrays>")
"""The `source` of a Dataset made from arrays passed in Python rather than read from a file."""


def open_in_memory(
    source: np.ndarray | Mapping[str, object],
    inputs: Sequence[TensorSpec],
    shapes: Mapping[str, PartialShape],
    dtypes: Mapping[str, np.dtype],
    limit: int | None,
    given: Collection[str] = (),
) -> ArrayDataset:
    """Samples passed as arrays: one array (N, ...) for a one-input model, or {input_name: array}."""
    names = [spec.name for spec in inputs]
    if isinstance(source, np.ndarray):
        if len(inputs) != 1:
            raise TrtqError(f"One array was given as data, but the model has {len(inputs)} inputs ({', '.join(names)}).",
                            "pass a dict {input_name: array} with one array per input.")
        source = {names[0]: source}
    missing = [name for name in names if name not in source]
    extra = sorted(str(key) for key in source if key not in names)
    if missing or extra:
        raise TrtqError(
            f"The data dict has keys {sorted(map(str, source))}, but the model's inputs are {names}.",
            "pass one array per model input, keyed by input name.",
        )
    arrays: dict[str, np.ndarray] = {}
    resolved: dict[str, tuple[int, ...]] = {}
    for spec in inputs:
        where = f"the array given for input {spec.name!r}"
        try:
            value = np.asarray(source[spec.name])
        except (ValueError, TypeError) as exc:
            raise TrtqError(f"{where} cannot be read as an array ({exc}).", "pass numpy arrays.") from exc
        array, resolved[spec.name] = _as_samples(value, spec, shapes[spec.name], where, spec.name in given)
        arrays[spec.name] = array[:limit]
    counts = {name: len(a) for name, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise TrtqError(f"The arrays given as data have different sample counts: {counts}.",
                        "give every input the same number of samples.")
    for name, array in arrays.items():
        _scan(array, dtypes[name], name, f"the array given for input {name!r}")
    n = counts[names[0]]
    dataset = ArrayDataset(IN_MEMORY, inputs, resolved, arrays, dtypes, f"{n} samples from arrays")
    dataset.inferred = {name: shape for name, shape in resolved.items() if None in shapes[name]}
    return dataset
