"""Image folders as data: files found and checked, decoded (16-bit and EXIF orientation included)
and preprocessed lazily, a few batches ahead in a thread pool; class sub-folders give labels."""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps

from trtq._io import special_kind
from trtq.data.dataset import Dataset
from trtq.data.preprocess import PRESETS, Preprocess, bind_preprocess, infer_layout, output_range, preprocess_image
from trtq.data.validate import IMAGE_ERRORS, verify_images, warn_if_unnormalised
from trtq.errors import TrtqError
from trtq.model import PartialShape, TensorSpec, missing_shapes_error

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
T = TypeVar("T")
R = TypeVar("R")


class ImageFolderDataset(Dataset):
    """Images under a folder, decoded and preprocessed lazily for a single 4-D image input."""

    image_paths: tuple[Path, ...]
    preprocess: Preprocess

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
        return self._some_batches(batch_size, list(range(-(-len(self.image_paths) // batch_size))))

    def _some_batches(self, batch_size: int, wanted: list[int]) -> Iterator[dict[str, np.ndarray]]:
        """Only the wanted batches' images are decoded."""
        name = self.inputs[0].name
        ahead = batch_size + 2 * self.workers
        groups = [self.image_paths[i * batch_size:(i + 1) * batch_size] for i in wanted]
        groups = [group for group in groups if group]
        samples = _ordered_map(self.decode, (path for group in groups for path in group), self.workers, ahead)
        for group in groups:
            yield {name: np.stack(list(itertools.islice(samples, len(group)))).astype(self.dtype, copy=False)}


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
                kind = special_kind(Path(dirpath) / filename)
                if kind:  # reading it would wait for a writer for ever
                    raise TrtqError(f"Image {Path(dirpath) / filename} is a {kind}, not a file.",
                                    "remove it from the image folder (or pass a folder of image files only).")
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


def open_images(
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
