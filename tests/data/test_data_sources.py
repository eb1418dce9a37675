"""Calibration sources: image folders, .npy/.npz and load_data() scripts, batched and checked up front."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trtq.data import PRESETS, DataRangeWarning, Preprocess, arrays, load_image, open_dataset, scripts
from trtq.errors import TrtqError
from trtq.model import TensorSpec

pytestmark = pytest.mark.filterwarnings("ignore::trtq.data.validate.DataRangeWarning")

IMAGE = TensorSpec("images", (1, 3, 8, 8), "float32")
IMAGE_SHAPES = {"images": (1, 3, 8, 8)}


def write_image(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, **({"lossless": True} if path.suffix == ".webp" else {}))
    return path


def class_folder(root: Path) -> Path:
    """cat/ holds 2 images, dog/ 3 (png, jpg, bmp, webp mixed); hidden files are ignored."""
    write_image(root / "cat" / "a.png", (10, 0, 0))
    write_image(root / "cat" / "b.bmp", (20, 0, 0))
    write_image(root / "dog" / "c.PNG", (30, 0, 0))
    write_image(root / "dog" / "deep" / "d.png", (40, 0, 0))
    write_image(root / "dog" / "e.webp", (50, 0, 0))
    (root / "dog" / "._e.png").write_bytes(b"AppleDouble junk")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes(b"junk")
    return root


def all_batches(dataset, batch_size: int) -> list[dict[str, np.ndarray]]:
    return list(dataset.batches(batch_size))


# ---------------------------------------------------------------- image folders


def test_image_folder_finds_sorted_images_with_class_labels(tmp_path: Path) -> None:
    root = class_folder(tmp_path / "calib")
    ds = open_dataset(root, [IMAGE], IMAGE_SHAPES, Preprocess(scale=1.0))
    names = [p.relative_to(root).as_posix() for p in ds.image_paths]
    assert names == ["cat/a.png", "cat/b.bmp", "dog/c.PNG", "dog/deep/d.png", "dog/e.webp"]
    assert ds.class_names == ("cat", "dog")
    assert ds.labels == (0, 0, 1, 1, 1)
    assert ds.num_samples == 5
    assert "5 images" in ds.description and "2 classes" in ds.description


def test_image_folder_batches_with_partial_last_batch_and_is_deterministic(tmp_path: Path) -> None:
    root = class_folder(tmp_path / "calib")
    ds = open_dataset(root, [IMAGE], IMAGE_SHAPES, Preprocess(scale=1.0), workers=2)
    batches = all_batches(ds, 2)
    assert [b["images"].shape for b in batches] == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]
    red = np.concatenate([b["images"][:, 0, 0, 0] for b in batches])
    assert red.tolist() == [10, 20, 30, 40, 50]  # sorted path order, kept by the thread pool
    again = all_batches(ds, 2)
    inline = all_batches(open_dataset(root, [IMAGE], IMAGE_SHAPES, Preprocess(scale=1.0), workers=0), 2)
    for first, second, third in zip(batches, again, inline):
        assert first["images"].tobytes() == second["images"].tobytes() == third["images"].tobytes()


def test_image_folder_reads_only_the_wanted_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = class_folder(tmp_path / "calib")
    ds = open_dataset(root, [IMAGE], IMAGE_SHAPES, Preprocess(scale=1.0), workers=2)
    full = all_batches(ds, 2)
    decoded: list[str] = []
    decode = ds.decode
    monkeypatch.setattr(ds, "decode", lambda path: decoded.append(path.name) or decode(path))
    some = list(ds.batches(2, only=[2, 0, 7]))  # any order, duplicates and indices past the end are fine
    assert [b["images"].tobytes() for b in some] == [full[0]["images"].tobytes(), full[2]["images"].tobytes()]
    assert sorted(decoded) == ["a.png", "b.bmp", "e.webp"]  # batch 1 (c, d) is never decoded


def test_image_folder_without_class_folders_has_no_labels(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg", (1, 2, 3))
    write_image(tmp_path / "sub" / "b.jpeg", (1, 2, 3))
    ds = open_dataset(tmp_path, [IMAGE], IMAGE_SHAPES, PRESETS["imagenet"])
    assert ds.labels is None and ds.class_names is None
    assert ds.description == f"2 images from {tmp_path} (preset imagenet)"


def test_image_limit_takes_an_evenly_spaced_subset(tmp_path: Path) -> None:
    root = class_folder(tmp_path / "calib")
    ds = open_dataset(root, [IMAGE], IMAGE_SHAPES, limit=2)
    assert [p.name for p in ds.image_paths] == ["a.png", "c.PNG"]
    assert ds.labels == (0, 1)


def test_corrupt_image_is_named_before_anything_runs(tmp_path: Path) -> None:
    class_folder(tmp_path)
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(TrtqError, match=r"broken\.jpg cannot be read"):
        open_dataset(tmp_path, [IMAGE], IMAGE_SHAPES)


def test_several_corrupt_images_are_all_named(tmp_path: Path) -> None:
    write_image(tmp_path / "ok.png", (0, 0, 0))
    for name in ("x.png", "y.webp"):
        (tmp_path / name).write_bytes(b"\x89PNG garbage")
    with pytest.raises(TrtqError, match=r"x\.png cannot be read .*1 other .*y\.webp"):
        open_dataset(tmp_path, [IMAGE], IMAGE_SHAPES)


def test_truncated_image_fails_naming_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "trunc.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(TrtqError, match=r"trunc\.jpg"):
        list(open_dataset(tmp_path, [IMAGE], IMAGE_SHAPES).batches(1))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (20, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "rot.jpg").size == (10, 20)


def test_empty_folder_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(TrtqError, match=r"contains no images .*\.txt"):
        open_dataset(tmp_path, [IMAGE], IMAGE_SHAPES)
    with pytest.raises(TrtqError, match="does not exist"):
        open_dataset(tmp_path / "nope", [IMAGE], IMAGE_SHAPES)


def test_image_folder_needs_a_single_4d_input(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", (0, 0, 0))
    mask = TensorSpec("mask", (1, 8), "float32")
    with pytest.raises(TrtqError, match="one 4-D image input"):
        open_dataset(tmp_path, [IMAGE, mask], {**IMAGE_SHAPES, "mask": (1, 8)})


def test_image_folder_with_fewer_images_than_the_batch(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", (0, 0, 0))
    ds = open_dataset(tmp_path, [IMAGE], IMAGE_SHAPES)
    with pytest.raises(TrtqError, match=r"1 sample.*fewer than the batch size 4"):
        ds.batches(4)  # raised on the call, before any batch is produced


def test_raw_pixel_range_warns_and_normalised_does_not(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", (0, 0, 0))
    with pytest.warns(DataRangeWarning, match="looks like unnormalised"):
        open_dataset(tmp_path, [IMAGE], IMAGE_SHAPES, Preprocess(scale=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_dataset(tmp_path, [IMAGE], IMAGE_SHAPES, PRESETS["imagenet"])


def test_uint8_input_needs_uint8_preprocessing(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", (7, 8, 9))
    spec = TensorSpec("images", (1, 8, 8, 3), "uint8")
    with pytest.raises(TrtqError, match="takes uint8, but preprocessing produces float32"):
        open_dataset(tmp_path, [spec], {"images": (1, 8, 8, 3)})
    ds = open_dataset(tmp_path, [spec], {"images": (1, 8, 8, 3)}, Preprocess(scale=1.0, dtype="uint8"))
    batch = next(iter(ds))
    assert batch["images"].dtype == np.uint8 and batch["images"][0, 0, 0].tolist() == [7, 8, 9]


def test_dynamic_dims_use_the_resolved_shapes(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", (0, 0, 0))
    spec = TensorSpec("images", ("N", 3, "H", "W"), "float32")
    ds = open_dataset(tmp_path, [spec], {"images": (1, 3, 6, 10)})
    assert next(iter(ds))["images"].shape == (1, 3, 6, 10)
    with pytest.raises(TrtqError, match="no resolved shape"):
        open_dataset(tmp_path, [spec], {})


# ---------------------------------------------------------------- .npy / .npz


def test_npy_nchw_batches_and_casts_float64(tmp_path: Path) -> None:
    data = np.arange(5 * 3 * 8 * 8, dtype=np.float64).reshape(5, 3, 8, 8) / 1e3
    np.save(tmp_path / "calib.npy", data)
    ds = open_dataset(tmp_path / "calib.npy", [IMAGE], IMAGE_SHAPES)
    assert isinstance(ds.arrays["images"], np.memmap)  # read lazily, memory stays bounded
    batches = all_batches(ds, 2)
    assert [b["images"].shape for b in batches] == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]
    assert all(b["images"].dtype == np.float32 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["images"] for b in batches]), data.astype(np.float32))
    assert ds.description == f"5 samples from {tmp_path / 'calib.npy'}"


def test_npy_reads_only_the_wanted_batches(tmp_path: Path) -> None:
    data = np.arange(5 * 3 * 8 * 8, dtype=np.float32).reshape(5, 3, 8, 8) / 1000
    np.save(tmp_path / "x.npy", data)
    ds = open_dataset(tmp_path / "x.npy", [IMAGE], IMAGE_SHAPES)
    some = list(ds.batches(2, only={2, 1}))
    assert [b["images"].tobytes() for b in some] == [data[2:4].tobytes(), data[4:].tobytes()]
    assert list(ds.batches(2, only=[])) == []


def test_npy_single_sample_without_batch_dim_and_limit(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.zeros((3, 8, 8), np.float32))
    assert open_dataset(tmp_path / "one.npy", [IMAGE], IMAGE_SHAPES).num_samples == 1
    np.save(tmp_path / "many.npy", np.zeros((9, 3, 8, 8), np.float32))
    assert open_dataset(tmp_path / "many.npy", [IMAGE], IMAGE_SHAPES, limit=4).num_samples == 4


def test_npy_nhwc_for_nchw_model_says_so(tmp_path: Path) -> None:
    np.save(tmp_path / "nhwc.npy", np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(TrtqError, match=r"nhwc\.npy has samples of shape 8x8x3, which looks like NHWC"):
        open_dataset(tmp_path / "nhwc.npy", [IMAGE], IMAGE_SHAPES)


def test_npy_wrong_shape_names_expected_and_actual(tmp_path: Path) -> None:
    np.save(tmp_path / "small.npy", np.zeros((4, 3, 6, 6), np.float32))
    with pytest.raises(TrtqError, match="shape 3x6x6, expected 3x8x8"):
        open_dataset(tmp_path / "small.npy", [IMAGE], IMAGE_SHAPES)
    np.save(tmp_path / "flat.npy", np.zeros((4, 192), np.float32))
    with pytest.raises(TrtqError, match="shape 4x192; input 'images' needs Nx3x8x8"):
        open_dataset(tmp_path / "flat.npy", [IMAGE], IMAGE_SHAPES)


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_npy_non_finite_names_sample_and_input(tmp_path: Path, bad: float, word: str) -> None:
    data = np.zeros((6, 3, 8, 8), np.float32)
    data[3, 1, 2, 2] = bad
    np.save(tmp_path / "calib.npy", data)
    with pytest.raises(TrtqError, match=f"Sample 3 of input 'images' in .*calib.npy contains {word}"):
        open_dataset(tmp_path / "calib.npy", [IMAGE], IMAGE_SHAPES)


def test_npy_non_finite_found_in_a_later_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arrays, "CHUNK_BYTES", 3 * 8 * 8 * 4 * 2)  # two samples per chunk
    data = np.zeros((7, 3, 8, 8), np.float32)
    data[5, 0, 0, 0] = np.nan
    np.save(tmp_path / "calib.npy", data)
    with pytest.raises(TrtqError, match="Sample 5 "):
        open_dataset(tmp_path / "calib.npy", [IMAGE], IMAGE_SHAPES)


def test_npy_float_for_int_input_is_an_error(tmp_path: Path) -> None:
    spec = TensorSpec("ids", (1, 4), "int64")
    np.save(tmp_path / "ids.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(TrtqError, match="float32 data, but the model takes int64"):
        open_dataset(tmp_path / "ids.npy", [spec], {"ids": (1, 4)})


def test_npy_int64_feeds_int32_when_values_fit(tmp_path: Path) -> None:
    spec = TensorSpec("ids", (1, 4), "int32")
    np.save(tmp_path / "ok.npy", np.arange(12, dtype=np.int64).reshape(3, 4))
    batch = next(iter(open_dataset(tmp_path / "ok.npy", [spec], {"ids": (1, 4)})))
    assert batch["ids"].dtype == np.int32 and batch["ids"].tolist() == [[0, 1, 2, 3]]
    big = np.zeros((3, 4), np.int64)
    big[2, 1] = 2**40
    np.save(tmp_path / "big.npy", big)
    with pytest.raises(TrtqError, match=r"Sample 2 of input 'ids'.*outside the int32 range"):
        open_dataset(tmp_path / "big.npy", [spec], {"ids": (1, 4)})


def test_npy_unnormalised_range_warns(tmp_path: Path) -> None:
    np.save(tmp_path / "raw.npy", np.full((2, 3, 8, 8), 200.0, np.float32))
    with pytest.warns(DataRangeWarning, match=r"'images' in .*raw\.npy has values from 200 to 200"):
        open_dataset(tmp_path / "raw.npy", [IMAGE], IMAGE_SHAPES)


def test_npy_for_multi_input_model_and_unknown_suffix(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    specs = [TensorSpec("a", (1, 3), "float32"), TensorSpec("b", (1, 3), "float32")]
    with pytest.raises(TrtqError, match="2 inputs"):
        open_dataset(tmp_path / "x.npy", specs, {"a": (1, 3), "b": (1, 3)})
    (tmp_path / "x.csv").write_text("1,2,3")
    with pytest.raises(TrtqError, match=r"not a folder, .npy, .npz or .py"):
        open_dataset(tmp_path / "x.csv", specs, {"a": (1, 3), "b": (1, 3)})


def test_preprocess_options_on_arrays_warn(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 8, 8), np.float32))
    with pytest.warns(UserWarning, match="image folders only"):
        open_dataset(tmp_path / "x.npy", [IMAGE], IMAGE_SHAPES, PRESETS["imagenet"])


MULTI = [TensorSpec("tokens", ("B", 5), "int64"), TensorSpec("feat", ("B", 2, 2), "float32")]
MULTI_SHAPES = {"tokens": (2, 5), "feat": (2, 2, 2)}


def test_npz_multi_input_batches_every_input(tmp_path: Path) -> None:
    tokens = np.arange(15).reshape(3, 5)
    feat = np.linspace(0, 1, 12).reshape(3, 2, 2)
    np.savez(tmp_path / "calib.npz", tokens=tokens, feat=feat, labels=np.arange(3))
    with pytest.warns(UserWarning, match="also holds 'labels', which no model input takes"):
        ds = open_dataset(tmp_path / "calib.npz", MULTI, MULTI_SHAPES)
    assert ds.num_samples == 3
    batches = list(ds)  # iterating the dataset uses the shapes' batch dim (2)
    assert [b["tokens"].shape[0] for b in batches] == [2, 1]
    assert set(batches[0]) == {"tokens", "feat"}
    np.testing.assert_array_equal(batches[1]["tokens"], tokens[2:])
    np.testing.assert_allclose(batches[0]["feat"], feat[:2].astype(np.float32))
    assert batches[0]["feat"].dtype == np.float32


def test_npz_missing_key_and_mismatched_counts(tmp_path: Path) -> None:
    np.savez(tmp_path / "missing.npz", tokens=np.zeros((3, 5), np.int64))
    with pytest.raises(TrtqError, match=r"no array for input 'feat'; its keys are \['tokens'\]"):
        open_dataset(tmp_path / "missing.npz", MULTI, MULTI_SHAPES)
    np.savez(tmp_path / "uneven.npz", tokens=np.zeros((3, 5), np.int64), feat=np.zeros((4, 2, 2)))
    with pytest.raises(TrtqError, match="3 samples for input 'tokens' but 4 for 'feat'"):
        open_dataset(tmp_path / "uneven.npz", MULTI, MULTI_SHAPES)


def test_corrupt_npz_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(TrtqError, match=r"bad\.npz is not a readable .npz file"):
        open_dataset(tmp_path / "bad.npz", MULTI, MULTI_SHAPES)


# ---------------------------------------------------------------- load_data() scripts


def script(tmp_path: Path, body: str, name: str = "data.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_load_data_samples_without_batch_dim_are_batched(tmp_path: Path) -> None:
    path = script(tmp_path, """
        import numpy as np

        def load_data():
            for i in range(5):
                yield {"tokens": np.full(5, i), "feat": np.full((2, 2), i / 10)}
    """)
    ds = open_dataset(path, MULTI, MULTI_SHAPES)
    assert ds.num_samples == 5 and "load_data()" in ds.description
    batches = all_batches(ds, 2)
    assert [b["tokens"][:, 0].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert batches[0]["feat"].dtype == np.float32
    for batch in batches:
        batch["tokens"][:] = -1  # a consumer writing into a batch must not change the next pass
    assert [b["tokens"][:, 0].tolist() for b in ds.batches(2)] == [[0, 1], [2, 3], [4]]


def test_load_data_wanted_batches_stop_after_the_last_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = script(tmp_path, """
        import numpy as np

        def load_data():
            for i in range(5):
                yield {"tokens": np.full(5, i), "feat": np.full((2, 2), i / 10)}
    """)
    ds = open_dataset(path, MULTI, MULTI_SHAPES)
    read: list[int] = []
    every = ds._batches

    def counted(batch_size: int):  # type: ignore[no-untyped-def]
        for batch in every(batch_size):
            read.append(int(batch["tokens"][0, 0]))
            yield batch

    monkeypatch.setattr(ds, "_batches", counted)
    assert [b["tokens"][:, 0].tolist() for b in ds.batches(2, only=[1])] == [[2, 3]]
    assert read == [0, 2]  # the script cannot seek: batch 0 is read, batch 2 is not


def test_load_data_blocks_with_batch_dim_are_regrouped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = script(tmp_path, """
        import numpy as np

        CALLS = []

        def load_data():
            CALLS.append(1)
            for start in (0, 3, 6):
                rows = np.arange(start, start + 3)
                yield {"tokens": np.repeat(rows[:, None], 5, axis=1), "feat": np.zeros((3, 2, 2))}
    """)
    monkeypatch.setattr(scripts, "SCRIPT_CACHE_BYTES", 0)  # too big to keep: called again per pass
    ds = open_dataset(path, MULTI, MULTI_SHAPES, limit=8)
    assert ds.num_samples == 8
    batches = all_batches(ds, 4)
    assert [b["tokens"][:, 0].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert len(ds.load_data.__globals__["CALLS"]) == 2


@pytest.mark.parametrize(
    "body, message",
    [
        ("def other():\n    return []\n", "defines no load_data"),
        ("load_data = [1, 2]\n", "not a function"),
        ("def load_data():\n    return {'tokens': 1}\n", "returned a single dict"),
        ("def load_data():\n    pass\n", "returned NoneType"),
        ("def load_data():\n    yield [1, 2]\n", "item 0 of load_data.* is a list"),
        ("def load_data():\n    raise RuntimeError('disk gone')\n", "raised RuntimeError: disk gone"),
        ("raise ImportError('no module foo')\n", "while it was imported, raised ImportError"),
        ("def load_data():\n    return []\n", "yielded no samples"),
    ],
)
def test_load_data_contract_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(TrtqError, match=message):
        open_dataset(script(tmp_path, body), MULTI, MULTI_SHAPES)


def test_load_data_item_checks_name_item_and_sample(tmp_path: Path) -> None:
    missing = script(tmp_path, """
        import numpy as np
        def load_data():
            yield {"tokens": np.zeros(5, np.int64)}
    """, "missing.py")
    with pytest.raises(TrtqError, match=r"item 0 of load_data.* has no array for input 'feat'"):
        open_dataset(missing, MULTI, MULTI_SHAPES)
    nan = script(tmp_path, """
        import numpy as np
        def load_data():
            for i in range(3):
                yield {"tokens": np.zeros((2, 5), np.int64), "feat": np.full((2, 2, 2), np.nan if i == 2 else 0.0)}
    """, "nan.py")
    with pytest.raises(TrtqError, match=r"Sample 4 of input 'feat' in item 2 of load_data.* contains NaN"):
        open_dataset(nan, MULTI, MULTI_SHAPES)
