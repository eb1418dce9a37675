"""`Dataset`: what every data source gives the stages after it: input specs, shapes, a sample
count, and batches {input name: array with batch dim}, re-iterable."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from trtq.data.preprocess import Preprocess
from trtq.data.validate import check_batch_size
from trtq.model import PartialShape, TensorSpec


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

    def batches(self, batch_size: int, only: Collection[int] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Batches of `batch_size` samples; the last one may be smaller. `only`: the indices of the batches
        wanted, each the batch it is in the whole sequence; sources that can seek (arrays, image files) leave
        the others unread."""
        check_batch_size(batch_size, self.num_samples, self.description)
        if only is None:
            return self._batches(int(batch_size))
        return self._some_batches(int(batch_size), sorted(set(only)))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.batches(self.batch_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r})"

    def _batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        raise NotImplementedError

    def _some_batches(self, batch_size: int, wanted: list[int]) -> Iterator[dict[str, np.ndarray]]:
        """The batches at the sorted indices `wanted`; here by reading every batch up to the last one wanted
        (a script's generator cannot seek)."""
        if not wanted:
            return
        for index, batch in enumerate(self._batches(batch_size)):
            if index in wanted:
                yield batch
            if index >= wanted[-1]:
                return
