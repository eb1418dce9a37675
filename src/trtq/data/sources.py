"""Calibration data sources: image folders, .npy/.npz arrays and load_data() scripts.

`open_dataset` checks everything it can before the model runs (see validate.py) and returns a
re-iterable Dataset of batches {input_name: array with batch dim}. Memory stays bounded:
.npy files are memory-mapped, images are decoded lazily a few batches ahead in a thread pool.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
import warnings
import zipfile
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from trtq._usercode import import_script, printing_to_stderr, user_code, user_error
from trtq.data.preprocess import (
    PRESETS,
    Preprocess,
    bind_preprocess,
    infer_layout,
    output_range,
    preprocess_image,
)
from trtq.data.validate import (
    IMAGE_ERRORS,
    check_batch_size,
    check_cast,
    check_feed,
    check_named_dims,
    check_shapes,
    check_values,
    input_dtype,
    match_sample_shape,
    require_source,
    verify_images,
    warn_if_unnormalised,
)
from trtq.errors import TrtqError
from trtq.model import PartialShape, TensorSpec, missing_shapes_error

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CHUNK_BYTES = 64 << 20
"""Up-front checks of memory-mapped arrays read this much at a time."""
SCRIPT_CACHE_BYTES = 64 << 20
"""load_data() output up to this size is kept from the checking pass; larger data is re-generated."""
SCRIPT_MAX_SAMPLES = 1_000_000
"""Without --limit, a load_data() that yields more samples than this is taken to never end."""
SCRIPT_HINT_SECONDS = 15.0
"""Without --limit, a load_data() still yielding after this long gets a warning that says how to stop it."""

_NUMPY_FILE_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile)
"""What np.load raises for a truncated, corrupt or pickled file."""

T = TypeVar("T")
R = TypeVar("R")


class Dataset:
    """Calibration samples for a model's inputs, re-iterable as batches.

    Each call of `batches` starts again from the first sample; every batch is a dict
    {input_name: array} with the batch dim first, in the model's dtypes, already validated.
    What evaluation reads beyond the samples (labels, image files, preprocessing) is None for data
    that has none: only an image folder has them (`ImageFolderDataset`).
    """

    image_paths: tuple[Path, ...] | None = None
    """The image file of each sample, in order."""
    labels: tuple[int, ...] | None = None
    """Each sample's class index, from the class sub-folders the images sit in."""
    class_names: tuple[str, ...] | None = None
    """The class sub-folders' names, by class index."""
    preprocess: Preprocess | None = None
    """How each image became a sample (size, resize mode, layout)."""

    def __init__(
        self,
        source: Path,
        inputs: Sequence[TensorSpec],
        shapes: Mapping[str, PartialShape],
        num_samples: int | None,
        description: str,
    ) -> None:
        self.source = source
        self.inputs = tuple(inputs)
        self.shapes: dict[str, tuple[int, ...]] = dict(shapes)  # type: ignore[arg-type]  # open dims: see ScriptDataset
        self.num_samples = num_samples
        self.description = description
        self.inferred: dict[str, tuple[int, ...]] = {}
        """Inputs whose shape was (partly) taken from the data rather than the model or --shape."""
        self.inferred_from = "the data"

    @property
    def shape_note(self) -> str | None:
        """One line saying which input shapes were taken from the data (None when none were)."""
        if not self.inferred:
            return None
        shapes = {name: "x".join(map(str, shape)) for name, shape in self.inferred.items()}
        if len(shapes) == 1:
            name, dims = next(iter(shapes.items()))
            return f"shape of {name!r} taken from {self.inferred_from}: {dims}"
        return f"shapes taken from {self.inferred_from}: " + ", ".join(f"{n!r} {d}" for n, d in shapes.items())

    @property
    def input_names(self) -> tuple[str, ...]:
        """The model input names every batch has."""
        return tuple(spec.name for spec in self.inputs)

    @property
    def batch_size(self) -> int:
        """The batch dim of the resolved input shapes; what iterating the Dataset itself uses."""
        return self.shapes[self.inputs[0].name][0]

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches of `batch_size` samples; the last one may be smaller."""
        check_batch_size(batch_size, self.num_samples, self.description)
        return self._batches(int(batch_size))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.batches(self.batch_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r})"

    def _batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        raise NotImplementedError


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
        for start in range(0, self.num_samples or 0, batch_size):
            yield {
                name: np.array(array[start:start + batch_size], dtype=self.dtypes[name], copy=True)
                for name, array in self.arrays.items()
            }


class ImageFolderDataset(Dataset):
    """Images under a folder, decoded and preprocessed lazily for a single 4-D image input."""

    def __init__(
        self,
        source: Path,
        spec: TensorSpec,
        shape: tuple[int, ...],
        image_paths: Sequence[Path],
        labels: Sequence[int] | None,
        class_names: Sequence[str] | None,
        preprocess: Preprocess,
        dtype: np.dtype,
        workers: int,
        description: str,
    ) -> None:
        super().__init__(source, (spec,), {spec.name: shape}, len(image_paths), description)
        self.image_paths = tuple(image_paths)
        self.labels = None if labels is None else tuple(labels)
        self.class_names = None if class_names is None else tuple(class_names)
        self.preprocess = preprocess
        self.dtype = dtype
        self.workers = workers

    def decode(self, path: Path) -> np.ndarray:
        """One preprocessed sample (no batch dim); a file that fails to decode or convert is named."""
        image = load_image(path)
        try:
            return preprocess_image(image, self.preprocess)
        except IMAGE_ERRORS as exc:
            raise TrtqError(
                f"Image {path} (Pillow mode {image.mode}) cannot be converted to {self.preprocess.color} "
                f"({type(exc).__name__}: {exc}).",
                "save it as an 8-bit RGB or grayscale image.",
            ) from exc

    def _batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        name = self.inputs[0].name
        ahead = batch_size + 2 * self.workers
        samples = _ordered_map(self.decode, self.image_paths, self.workers, ahead)
        while True:
            chunk = list(itertools.islice(samples, batch_size))
            if not chunk:
                return
            yield {name: np.stack(chunk).astype(self.dtype, copy=False)}


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
                    with printing_to_stderr():
                        item = next(iterator)
                except StopIteration:
                    return
                except (Exception, SystemExit) as exc:  # the user's code failed: report it as their error
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


HIGH_DEPTH_MAX = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}
"""Pillow modes of pixels deeper than 8 bits (16-bit grayscale PNGs), and the value of full white."""


def load_image(path: Path) -> Image.Image:
    """Decode an image file fully, EXIF orientation applied; TrtqError naming the file on failure.

    Animated files give their first frame. Pixels deeper than 8 bits (16-bit grayscale PNG) come
    back as a float image ("F") on the 8-bit scale, 0..255, so that 65535 is white and not clipped.
    """
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
    except IMAGE_ERRORS as exc:
        raise TrtqError(
            f"Image {path} cannot be decoded ({type(exc).__name__}: {exc}).",
            "delete or replace the corrupt file in the calibration folder.",
        ) from exc
    if image.mode in HIGH_DEPTH_MAX:
        pixels = np.asarray(image, dtype=np.float64)
        full = HIGH_DEPTH_MAX[image.mode]
        if pixels.size and (pixels.min() < 0 or pixels.max() > full):
            raise TrtqError(
                f"Image {path} has {image.mode} pixels from {pixels.min():g} to {pixels.max():g}, outside the "
                f"16-bit range 0..{full} that trtq scales to 0..255.",
                "save the image with 8 or 16 bits per channel.",
            )
        return Image.fromarray((pixels * (255.0 / full)).astype(np.float32))
    return image


def _ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, ahead: int) -> Iterator[R]:
    """`map(fn, items)` in order on `workers` threads, at most `ahead` results in flight."""
    if workers <= 0:
        yield from map(fn, items)
        return
    iterator = iter(items)
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trtq-decode") as pool:
        try:
            for item in itertools.islice(iterator, max(1, ahead)):
                pending.append(pool.submit(fn, item))
            while pending:
                future = pending.popleft()
                for item in itertools.islice(iterator, 1):
                    pending.append(pool.submit(fn, item))
                yield future.result()
        finally:
            for future in pending:
                future.cancel()


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


def _import_load_data(path: Path) -> Callable[[], object]:
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


def _find_images(root: Path) -> tuple[list[Path], list[str]]:
    """Image files under `root` (recursive, hidden entries skipped), sorted by path parts.

    Also returns the suffixes of other files, for the empty-folder message.
    """
    images: list[Path] = []
    others: set[str] = set()
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in filenames:
            if filename.startswith("."):
                continue
            suffix = os.path.splitext(filename)[1].lower()
            if suffix in IMAGE_EXTENSIONS:
                images.append(Path(dirpath) / filename)
            else:
                others.add(suffix or filename)
    images.sort(key=lambda p: p.relative_to(root).parts)
    return images, sorted(others)


def _class_folders(root: Path, paths: Sequence[Path]) -> tuple[list[int] | None, list[str] | None]:
    """ImageFolder labels: when every image sits under a sub-folder of `root`, its index among
    the sorted sub-folder names (all of them, as torchvision does, so indices match)."""
    relative = [p.relative_to(root).parts for p in paths]
    if not relative or any(len(parts) < 2 for parts in relative):
        return None, None
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    index = {name: i for i, name in enumerate(names)}
    return [index[parts[0]] for parts in relative], names


def _open_images(
    root: Path,
    inputs: Sequence[TensorSpec],
    shapes: Mapping[str, PartialShape],
    dtypes: Mapping[str, np.dtype],
    preprocess: Preprocess | None,
    limit: int | None,
    workers: int,
    purpose: str = "calibrate",
) -> ImageFolderDataset:
    if len(inputs) != 1 or len(shapes[inputs[0].name]) != 4:
        described = ", ".join(f"{s.name} ({s.shape_str()})" for s in inputs)
        raise TrtqError(
            f"An image folder ({root}) can only feed a model with one 4-D image input; this model "
            f"has {described}.",
            "give the data as .npz keyed by input name, or as a .py file defining load_data().",
        )
    spec = inputs[0]
    paths, others = _find_images(root)
    if not paths:
        found = f"; it holds only {', '.join(others[:5])} files" if others else ""
        raise TrtqError(
            f"Folder {root} contains no images ({', '.join(IMAGE_EXTENSIONS)}){found}.",
            "point --calib at a folder of images, or give .npy/.npz/.py data.",
        )
    labels, class_names = _class_folders(root, paths)
    if limit is not None and limit < len(paths):
        # sorted paths group images by class folder; a strided subset keeps every class in it
        keep = [i * len(paths) // limit for i in range(limit)]
        paths = [paths[i] for i in keep]
        labels = None if labels is None else [labels[i] for i in keep]
    requested = preprocess or PRESETS["none"]
    shape = _image_shape(spec, shapes[spec.name], requested, purpose)
    verify_images(paths, root, workers)
    bound = bind_preprocess(requested, spec.name, shape)
    src, dst = np.dtype(bound.dtype), dtypes[spec.name]
    if dst.kind == "f" and src.kind != "f":
        raise TrtqError(
            f"Input {spec.name!r} takes {dst}, but the preprocessing dtype {src} would round its values to "
            f"integers (e.g. pixels scaled to 0..1 become 0 or 1) before they reach the model.",
            f"drop --dtype (float inputs are fed {dst}), or give a float dtype such as float32.",
        )
    if not (src == dst or dst.kind == "f" or np.can_cast(src, dst)):
        raise TrtqError(
            f"Input {spec.name!r} takes {dst}, but preprocessing produces {src}.",
            f"set the preprocessing dtype to {dst} (with scale 1 for raw pixel values).",
        )
    low, high = output_range(bound)
    warn_if_unnormalised(low, high, dst, spec.name, f"images from {root}")
    classes = f" in {len(class_names)} classes" if class_names else ""
    description = f"{len(paths)} images from {root}{classes} ({requested.describe()})"
    dataset = ImageFolderDataset(root, spec, shape, paths, labels, class_names, bound, dst, workers, description)
    if None in shapes[spec.name]:
        dataset.inferred, dataset.inferred_from = {spec.name: shape}, "the preprocessing size (--size)"
    return dataset


def _image_shape(spec: TensorSpec, shape: PartialShape, preprocess: Preprocess, purpose: str) -> tuple[int, ...]:
    """The 4-D shape of an image input: open H and W from the preprocessing size (--size or a
    preset's); an image folder cannot say them otherwise, nor an open channel count."""
    if None not in shape:
        return tuple(int(d) for d in shape)  # type: ignore[arg-type]
    known = tuple(1 if d is None else int(d) for d in shape)
    layout = preprocess.layout or (
        "NCHW" if shape[1] in (1, 3) else "NHWC" if shape[3] in (1, 3) else infer_layout(known))
    channel_axis, hw_axes = (1, (2, 3)) if layout == "NCHW" else (3, (1, 2))
    if layout is None or shape[channel_axis] is None or preprocess.size is None:
        raise missing_shapes_error(
            [(spec, shape)], purpose,
            reason="an image folder does not fix them" + ("" if preprocess.size else " (no --size was given)"),
            alternatives=("or --size HxW for the image height and width" if shape[channel_axis] is not None else ""),
        )
    filled = list(shape)
    for axis, size in zip(hw_axes, preprocess.size):
        filled[axis] = size if filled[axis] is None else filled[axis]
    if None in filled:
        raise missing_shapes_error([(spec, shape)], purpose, reason="an image folder does not fix them", alternatives="")
    return tuple(int(d) for d in filled)  # type: ignore[arg-type]


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
            f"{where} holds an array of shape {'x'.join(map(str, array.shape))}; input "
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


def _open_npy(
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
        raise TrtqError(f"{path} is not a readable .npy file ({exc}).", "save it with np.save().") from exc
    if not isinstance(array, np.ndarray):
        raise TrtqError(f"{path} is an .npz archive, not a single .npy array.", "rename it to .npz.")
    array, shape = _as_samples(array, spec, shapes[spec.name], str(path), spec.name in given)
    array = array[:limit]
    _scan(array, dtypes[spec.name], spec.name, str(path))
    dataset = ArrayDataset(path, inputs, {spec.name: shape}, {spec.name: array}, dtypes,
                           f"{len(array)} samples from {path}")
    dataset.inferred = {spec.name: shape} if None in shapes[spec.name] else {}
    return dataset


def _open_npz(
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
        raise TrtqError(f"{path} is not a readable .npz file ({exc}).", "save it with np.savez().") from exc
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


def _open_in_memory(
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


DataSource = str | os.PathLike | np.ndarray | Mapping[str, object]
"""What data can be given as: a path (image folder, .npy, .npz, .py with load_data()), one numpy array
(N, ...) for a one-input model, or a dict {input_name: array}."""


def open_dataset(
    source: DataSource,
    inputs: Sequence[TensorSpec],
    shapes: Mapping[str, Sequence[int | None]],
    preprocess: Preprocess | None = None,
    limit: int | None = None,
    workers: int = 2,
    *,
    given: Collection[str] = (),
    purpose: str = "calibrate",
    progress: bool = False,
) -> Dataset:
    """Open calibration data for a model and check it all before anything runs.

    `shapes` are the input shapes, batch dim included, e.g. from `trtq.model.requested_shapes`;
    a None dim is taken from the data (arrays, load_data()) or the preprocessing size (image
    folders), and `Dataset.inferred` says which were. `given` names the inputs whose shape came
    from --shape (the data must agree with them), `purpose` the verb for a missing-shape error
    ("calibrate", "compare", ...). `preprocess` applies to image folders only (default: preset
    "none"). `limit` keeps at most that many samples: the first ones of arrays and load_data(),
    an evenly spaced subset of an image folder (sorted paths group classes). `workers` threads
    decode images ahead of the model (0: decode inline). `progress` shows a bar while a load_data()
    script's samples are checked (its length is unknown up front).
    """
    if not inputs:
        raise TrtqError("The model has no graph inputs, so no samples can be fed to it.",
                        "export the model with its inputs as graph inputs (not constants or initializers).")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TrtqError(f"Sample limit {limit!r} is not a positive integer.", "give a limit >= 1.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise TrtqError(f"Worker count {workers!r} is not a non-negative integer.", "give workers >= 0.")
    requested = check_shapes(inputs, shapes)
    dtypes = {spec.name: input_dtype(spec) for spec in inputs}
    dataset: Dataset
    if isinstance(source, (np.ndarray, Mapping)):
        dataset = _open_in_memory(source, inputs, requested, dtypes, limit, given)
        check_named_dims(dataset.inputs, dataset.shapes, "the arrays given as data")
        return dataset
    if not isinstance(source, (str, os.PathLike)):
        raise TrtqError(
            f"Data must be a path (image folder, .npy, .npz, or .py with load_data()), a numpy array or a dict of "
            f"arrays, not a {type(source).__name__}.",
            "pass one of those.",
        )
    path = require_source(source)
    if path.is_dir():
        dataset = _open_images(path, inputs, requested, dtypes, preprocess, limit, workers, purpose)
    else:
        if preprocess is not None and preprocess != PRESETS["none"]:
            warnings.warn(
                f"Preprocessing options apply to image folders only; {path} is used as it is.",
                UserWarning,
                stacklevel=2,
            )
        suffix = path.suffix.lower()
        if suffix == ".npy":
            dataset = _open_npy(path, inputs, requested, dtypes, limit, given)
        elif suffix == ".npz":
            dataset = _open_npz(path, inputs, requested, dtypes, limit, given)
        elif suffix == ".py":
            dataset = ScriptDataset(path, inputs, requested, _import_load_data(path), dtypes, limit, given, progress)
        else:
            raise TrtqError(
                f"Calibration data {path} is not a folder, .npy, .npz or .py file.",
                "put single images in a folder, or convert the data to .npy/.npz.",
            )
    check_named_dims(dataset.inputs, dataset.shapes, str(path))
    return dataset
