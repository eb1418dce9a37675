"""Checks on calibration data before the model runs, each failing with one clear sentence.

A bad sample found half-way through calibration wastes the run, and a silently wrong one
(NHWC for NCHW, 0..255 for a normalised model, a NaN) gives bad ranges without any error,
so everything here runs up front and names the file, image, input and sample it is about.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from trtq._io import special_kind
from trtq.errors import TrtqError
from trtq.model import PartialShape, TensorSpec

IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes PIL.UnidentifiedImageError and truncated-file errors
    ValueError,
    SyntaxError,  # Pillow's PNG/GIF plugins signal broken files this way
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)
"""What Pillow raises for an unreadable, corrupt or hostile image file."""

UNNORMALISED_MAX = 20.0
"""A float input whose values are all >= 0 and reach above this looks like raw 0..255 pixels."""


class DataRangeWarning(UserWarning):
    """Calibration data whose value range looks unnormalised (e.g. 0..255 for a float input)."""


def _dims(shape: Sequence[int | None]) -> str:
    return "x".join("?" if d is None else str(int(d)) for d in shape) if len(shape) else "scalar"


def require_source(path: str | os.PathLike[str]) -> Path:
    """The calibration data path, which must exist."""
    path = Path(path)
    if not path.exists():
        raise TrtqError(
            f"Calibration data {path} does not exist.",
            "pass an image folder, a .npy/.npz file or a .py file defining load_data().",
        )
    kind = special_kind(path)
    if kind:  # reading a named pipe waits for a writer; trtq reads its data more than once anyway
        raise TrtqError(f"Data {path} is a {kind}, not a file or folder: trtq reads its data more than once.",
                        "save the data to a .npy/.npz file (or an image folder) and pass that.")
    return path


def check_shapes(
    inputs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int | None]]
) -> dict[str, PartialShape]:
    """Every input has a shape of the model's rank, with positive sizes or None where the data
    must say (a dynamic dim no --shape fixed); the batch dim must be set."""
    resolved: dict[str, PartialShape] = {}
    for spec in inputs:
        if not spec.shape:
            raise TrtqError(
                f"Input {spec.name!r} has no dims in the model (a scalar, or a shape the export left out), and trtq "
                "feeds samples stacked along a first (batch) dim.",
                "export the model with the input's shape, batch dim first (onnx.tools.update_model_dims can set it).",
            )
        if spec.name not in shapes:
            raise TrtqError(
                f"Input {spec.name!r} ({spec.shape_str()}) has no resolved shape for calibration.",
                f"pass --shape {spec.name}:<dims> for its dynamic dimensions.",
            )
        shape = tuple(None if d is None else int(d) for d in shapes[spec.name])
        if len(shape) != len(spec.shape) or any(d is not None and d <= 0 for d in shape) or (
                shape and shape[0] is None):
            raise TrtqError(
                f"Shape {_dims(shape)} for input {spec.name!r} does not fit the model's "
                f"{spec.shape_str()}.",
                "give one positive size per dimension.",
            )
        resolved[spec.name] = shape
    return resolved


def match_sample_shape(
    actual: Sequence[int],
    shape: Sequence[int | None],
    spec: TensorSpec,
    where: str,
    given: bool = False,
    inferred: bool = False,
) -> tuple[int, ...]:
    """The sample dims of input `spec` when `where` holds samples of shape `actual`.

    `shape` is the input's shape, batch dim first, None where the data says. A mismatch raises
    one sentence saying where the expected size came from: the model, --shape (`given`), or the
    first samples of the same data (`inferred`).
    """
    actual = tuple(int(d) for d in actual)
    expected = tuple(shape[1:])
    if len(actual) != len(expected):
        check_sample_shape(actual, tuple(1 if e is None else int(e) for e in expected), spec.name, where)
    wanted = tuple(a if e is None else int(e) for a, e in zip(actual, expected))
    if actual == wanted:
        return actual
    differing = [axis + 1 for axis, (a, e) in enumerate(zip(actual, wanted)) if a != e]
    model_fixed = any(isinstance(dim, int) and dim > 0 for dim in (spec.shape[axis] for axis in differing))
    if inferred and not model_fixed:
        raise TrtqError(
            f"Input {spec.name!r} in {where} has samples of shape {_dims(actual)}, but the first samples of "
            f"the data had {_dims(wanted)} (the shape taken from the data, as the model leaves it dynamic).",
            "give samples of one shape (pad them to a common size), or set --shape and pad to it.",
        )
    if given and not model_fixed:
        raise TrtqError(
            f"--shape {spec.name}:{_dims(shape)} asks for samples of {_dims(wanted)}, but "
            f"{where} holds samples of {_dims(actual)} for input {spec.name!r}.",
            "drop --shape to take the shape from the data, or give data of the shape --shape names.",
        )
    check_sample_shape(actual, wanted, spec.name, where)
    return actual


def check_named_dims(inputs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]], where: str) -> None:
    """Dims the model names alike (e.g. every input's `sequence`) have one size across inputs.

    The batch dim is left out: batches are cut alike for every input whatever its shape says. So
    are placeholders that name nothing (paddle2onnx writes "?" for every unknown dim, H and W alike).
    """
    seen: dict[str, tuple[str, int]] = {}
    for spec in inputs:
        for axis, (dim, size) in enumerate(zip(spec.shape, shapes[spec.name])):
            if axis == 0 or not isinstance(dim, str) or not _names_a_dim(dim):
                continue
            if dim in seen and seen[dim][1] != size:
                other, other_size = seen[dim]
                raise TrtqError(
                    f"The model names dim {axis} of input {spec.name!r} and a dim of {other!r} alike ({dim!r}), "
                    f"but {where} gives them {size} and {other_size}.",
                    f"give every input the same {dim} (pad the data, or set --shape for each input alike).",
                )
            seen.setdefault(dim, (spec.name, int(size)))


def _names_a_dim(dim: str) -> bool:
    """Whether a symbolic dim is a name (`seq`, `batch_size`) rather than a placeholder (`?`, `-1`, `None`)."""
    return any(c.isalpha() for c in dim) and dim.lower() not in ("none", "null", "unk", "unknown", "dynamic")


def input_dtype(spec: TensorSpec) -> np.dtype:
    """The numpy dtype an input takes; only numeric and bool inputs can be fed."""
    try:
        dtype = np.dtype(spec.dtype)
    except TypeError:
        dtype = np.dtype(object)
    if dtype.kind not in "fiub":
        raise TrtqError(
            f"Input {spec.name!r} has element type {spec.dtype}, which trtq cannot feed.",
            "calibrate a model whose inputs are numeric tensors.",
        )
    return dtype


def check_sample_shape(
    actual: Sequence[int], expected: Sequence[int], input_name: str, where: str
) -> None:
    """A sample's non-batch dims equal the model's; names NHWC/NCHW mix-ups specifically."""
    actual, expected = tuple(int(d) for d in actual), tuple(int(d) for d in expected)
    if actual == expected:
        return
    if len(expected) == 3 and len(actual) == 3:
        if expected[0] in (1, 3) and actual == expected[1:] + expected[:1]:
            raise TrtqError(
                f"Input {input_name!r} in {where} has samples of shape {_dims(actual)}, which "
                f"looks like NHWC; the model takes NCHW samples of shape {_dims(expected)}.",
                "transpose the data to NCHW, e.g. np.transpose(x, (0, 3, 1, 2)).",
            )
        if expected[2] in (1, 3) and actual == expected[2:] + expected[:2]:
            raise TrtqError(
                f"Input {input_name!r} in {where} has samples of shape {_dims(actual)}, which "
                f"looks like NCHW; the model takes NHWC samples of shape {_dims(expected)}.",
                "transpose the data to NHWC, e.g. np.transpose(x, (0, 2, 3, 1)).",
            )
    raise TrtqError(
        f"Input {input_name!r} in {where} has samples of shape {_dims(actual)}, expected "
        f"{_dims(expected)}.",
        "give samples of the model's input shape (or set --shape for dynamic dimensions).",
    )


def check_cast(src: np.dtype, dst: np.dtype, input_name: str, where: str) -> bool:
    """Raise if `src` data cannot feed a `dst` input; True when int values need a range check.

    Floats of any width feed float inputs (float64 -> float32 is fine for calibration), and
    ints or bools do too; ints feed ints when they fit; floats never feed integer inputs.
    """
    src, dst = np.dtype(src), np.dtype(dst)
    if src == dst or (dst.kind == "f" and src.kind in "fiub"):
        return False
    if dst.kind in "iu" and src.kind in "iub":
        return not np.can_cast(src, dst)
    wanted = {"i": "integer", "u": "integer", "b": "boolean", "f": "numeric"}[dst.kind]
    raise TrtqError(
        f"Input {input_name!r} in {where} is {src} data, but the model takes {dst}; {src} cannot "
        f"be cast to {dst} without changing values.",
        f"give {wanted} data for this input.",
    )


def check_values(
    array: np.ndarray,
    dst: np.dtype,
    range_check: bool,
    input_name: str,
    where: str,
    first_sample: int = 0,
) -> tuple[float, float]:
    """Check a block of samples (batch dim first) once cast to `dst`; returns its min and max.

    Floats must be finite after the cast (a float16 input can overflow); ints must fit `dst`
    when `range_check` says so. Errors name the sample by its index in the whole data set.
    """
    if array.size == 0:
        return 0.0, 0.0
    rows = array.reshape(array.shape[0], -1)
    if dst.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
            cast = rows.astype(dst, copy=False)
        finite = np.isfinite(cast).all(axis=1)
        if not finite.all():
            bad = int(np.argmin(finite))
            original = rows[bad]
            if array.dtype.kind == "f" and np.isnan(original).any():
                what = "NaN"
            elif array.dtype.kind == "f" and np.isinf(original).any():
                what = "Inf"
            else:
                what = f"values too large for {dst} (largest magnitude {np.abs(original).max():g})"
            raise TrtqError(
                f"Sample {first_sample + bad} of input {input_name!r} in {where} contains {what}.",
                "remove or repair that sample; calibration needs finite values.",
            )
        return float(cast.min()), float(cast.max())
    low, high = rows.min(), rows.max()
    if range_check:
        info = np.iinfo(dst)
        if low < info.min or high > info.max:
            outside = ((rows < info.min) | (rows > info.max)).any(axis=1)
            bad = int(np.argmax(outside))
            raise TrtqError(
                f"Sample {first_sample + bad} of input {input_name!r} in {where} has values from "
                f"{rows[bad].min()} to {rows[bad].max()}, outside the {dst} range the model takes "
                f"({info.min}..{info.max}).",
                f"give values that fit {dst}.",
            )
    return float(low), float(high)


def warn_if_unnormalised(low: float, high: float, dtype: np.dtype, input_name: str, where: str) -> None:
    """Warn (not fail) when float data looks like raw 0..255 pixels."""
    if np.dtype(dtype).kind == "f" and low >= 0.0 and high > UNNORMALISED_MAX:
        warnings.warn(
            DataRangeWarning(
                f"Input {input_name!r} in {where} has values from {low:g} to {high:g}, which looks "
                "like unnormalised data (e.g. 0..255 pixels); if the model expects normalised "
                "input, scale it (e.g. /255, or the model's mean/std) before calibrating."
            ),
            stacklevel=3,
        )


def check_batch_size(batch_size: int, num_samples: int | None, description: str) -> None:
    """A positive batch size, and at least that many samples."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise TrtqError(f"Batch size {batch_size!r} is not a positive integer.", "use a batch size >= 1.")
    if num_samples is not None and num_samples < batch_size:
        raise TrtqError(
            f"Calibration data ({description}) has {num_samples} sample(s), fewer than the batch "
            f"size {batch_size}.",
            f"give at least {batch_size} samples, or calibrate with a smaller batch.",
        )


def _verify_image(path: Path) -> str | None:
    """None when Pillow opens and verifies the file, else the reason it cannot."""
    try:
        with Image.open(path) as image:
            image.verify()
    except IMAGE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def verify_images(paths: Sequence[Path], root: Path, workers: int = 2) -> None:
    """Every image opens and passes Pillow's verify(); the error names the unreadable ones."""
    if workers > 0 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trtq-verify") as pool:
            reasons = list(pool.map(_verify_image, paths))
    else:
        reasons = [_verify_image(p) for p in paths]
    bad = [(p, r) for p, r in zip(paths, reasons) if r is not None]
    if not bad:
        return
    first, reason = bad[0]
    others = ""
    if len(bad) > 1:
        names = ", ".join(str(p.relative_to(root)) for p, _ in bad[1:6])
        more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
        others = f" ({len(bad) - 1} other unreadable image(s): {names}{more})"
    raise TrtqError(
        f"Image {first} cannot be read as an image ({reason}){others}.",
        "delete or replace the corrupt file(s) in the calibration folder.",
    )


def check_feed(
    item: object,
    inputs: Sequence[TensorSpec],
    shapes: Mapping[str, PartialShape],
    dtypes: Mapping[str, np.dtype],
    where: str,
    first_sample: int,
    given: Collection[str] = (),
    inferred: Collection[str] = (),
) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, float]]]:
    """Check one {input_name: array} item (with or without batch dim); cast it, batch dim first.

    Dims that `shapes` leaves open (None) take any size. `given` names the inputs whose shape
    came from --shape and `inferred` those whose shape came from earlier items, for the wording
    of a mismatch. Returns the arrays and each input's (min, max) for the range warning.
    """
    if not isinstance(item, Mapping):
        raise TrtqError(
            f"{where} is a {type(item).__name__}, not a dict of input name to array.",
            "yield one {input_name: array} dict per sample or batch.",
        )
    names = [spec.name for spec in inputs]
    missing = [n for n in names if n not in item]
    if missing:
        raise TrtqError(
            f"{where} has no array for input {missing[0]!r}; it has keys {sorted(map(str, item))}.",
            f"yield every model input: {names}.",
        )
    extra = sorted(str(k) for k in item if k not in names)
    if extra:
        raise TrtqError(
            f"{where} has key {extra[0]!r}, which is not a model input ({names}).",
            "yield only the model's input names as keys.",
        )
    arrays: dict[str, np.ndarray] = {}
    ranges: dict[str, tuple[float, float]] = {}
    rows: int | None = None
    for spec in inputs:
        try:
            array = np.asarray(item[spec.name])
        except (ValueError, TypeError) as exc:  # ragged nested lists, objects numpy cannot read
            raise TrtqError(
                f"Input {spec.name!r} in {where} cannot be read as an array ({' '.join(str(exc).split())}).",
                "yield numpy arrays (all samples of one input the same shape).",
            ) from exc
        if array.dtype.kind not in "fiub":
            raise TrtqError(
                f"Input {spec.name!r} in {where} is a {array.dtype} array, not numbers.",
                "yield numeric numpy arrays.",
            )
        expected = shapes[spec.name]
        if array.ndim == len(expected) - 1:
            array = array[None]
        elif array.ndim != len(expected):
            raise TrtqError(
                f"Input {spec.name!r} in {where} has shape {_dims(array.shape)}, expected "
                f"{_dims(expected[1:])} or a batch of them (Nx{_dims(expected[1:])}).",
                "yield arrays of the model's input shape.",
            )
        match_sample_shape(array.shape[1:], expected, spec, where, spec.name in given, spec.name in inferred)
        if rows is not None and array.shape[0] != rows:
            raise TrtqError(
                f"{where} has {array.shape[0]} sample(s) for input {spec.name!r} but {rows} for "
                f"{inputs[0].name!r}.",
                "give every input the same batch size.",
            )
        rows = array.shape[0]
        range_check = check_cast(array.dtype, dtypes[spec.name], spec.name, where)
        ranges[spec.name] = check_values(array, dtypes[spec.name], range_check, spec.name, where, first_sample)
        arrays[spec.name] = np.array(array, dtype=dtypes[spec.name], copy=True)  # scripts may reuse buffers
    return arrays, ranges
