"""Calibration data sources: image folders, .npy/.npz arrays and load_data() scripts.

`open_dataset` checks everything it can before the model runs (see validate.py) and returns a
re-iterable Dataset of batches {input_name: array with batch dim}. Memory stays bounded:
.npy files are memory-mapped, images are decoded lazily a few batches ahead in a thread pool.
One module per kind of source: `images`, `arrays` (.npy/.npz and in-memory arrays), `scripts`
(load_data()); `dataset` holds the `Dataset` they all are.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from trtq.data.arrays import open_in_memory, open_npy, open_npz
from trtq.data.dataset import Dataset
from trtq.data.images import open_images
from trtq.data.preprocess import PRESETS, Preprocess
from trtq.data.scripts import ScriptDataset, import_load_data
from trtq.data.validate import check_named_dims, check_shapes, input_dtype, require_source
from trtq.errors import TrtqError
from trtq.model import TensorSpec

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
        dataset = open_in_memory(source, inputs, requested, dtypes, limit, given)
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
        dataset = open_images(path, inputs, requested, dtypes, preprocess, limit, workers, purpose)
    else:
        if preprocess is not None and preprocess != PRESETS["none"]:
            warnings.warn(
                f"Preprocessing options apply to image folders only; {path} is used as it is.",
                UserWarning,
                stacklevel=2,
            )
        suffix = path.suffix.lower()
        if suffix == ".npy":
            dataset = open_npy(path, inputs, requested, dtypes, limit, given)
        elif suffix == ".npz":
            dataset = open_npz(path, inputs, requested, dtypes, limit, given)
        elif suffix == ".py":
            dataset = ScriptDataset(path, inputs, requested, import_load_data(path), dtypes, limit, given, progress)
        else:
            raise TrtqError(
                f"Calibration data {path} is not a folder, .npy, .npz or .py file.",
                "put single images in a folder, or convert the data to .npy/.npz.",
            )
    check_named_dims(dataset.inputs, dataset.shapes, str(path))
    return dataset
