"""Shapes from the data: dynamic dims that --shape leaves open take their size from the arrays,
the first load_data() item, or (image folders) the preprocessing size; --shape must agree."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trtq.data import Preprocess, open_dataset
from trtq.errors import TrtqError
from trtq.model import TensorSpec, requested_shapes

pytestmark = pytest.mark.filterwarnings("ignore::trtq.data.validate.DataRangeWarning")

IMAGE = TensorSpec("x", ("N", 3, "H", "W"), "float32")
TOKENS = tuple(TensorSpec(n, ("batch", "seq"), "int64") for n in ("input_ids", "attention_mask", "token_type_ids"))


def open_for(source: Path, inputs, shapes=None, **kwargs):
    """open_dataset as api.open_data calls it: --shape values, the rest open."""
    return open_dataset(source, inputs, requested_shapes(inputs, shapes), given=tuple(shapes or ()), **kwargs)


def test_npy_gives_the_per_sample_shape_and_the_batch_stays_one(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((5, 3, 24, 20), np.float32))
    ds = open_for(tmp_path / "x.npy", [IMAGE])
    assert ds.shapes == {"x": (1, 3, 24, 20)} and ds.batch_size == 1
    assert ds.inferred == {"x": (1, 3, 24, 20)}
    assert ds.shape_note == "shape of 'x' taken from the data: 1x3x24x20"
    assert next(iter(ds))["x"].shape == (1, 3, 24, 20)
    np.save(tmp_path / "one.npy", np.zeros((3, 24, 20), np.float32))  # one sample, no batch dim
    assert open_for(tmp_path / "one.npy", [IMAGE]).shapes == {"x": (1, 3, 24, 20)}


def test_shape_from_the_flag_is_not_called_inferred_and_must_agree(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 24, 20), np.float32))
    ds = open_for(tmp_path / "x.npy", [IMAGE], {"x": (2, 3, 24, 20)})
    assert ds.batch_size == 2 and ds.inferred == {} and ds.shape_note is None
    with pytest.raises(TrtqError) as info:
        open_for(tmp_path / "x.npy", [IMAGE], {"x": (1, 3, 32, 32)})
    assert info.value.message == (f"--shape x:1x3x32x32 asks for samples of 3x32x32, but {tmp_path / 'x.npy'} holds "
                                  "samples of 3x24x20 for input 'x'.")
    assert "drop --shape" in info.value.hint


def test_npz_gives_every_input_its_shape(tmp_path: Path) -> None:
    arrays = {s.name: np.ones((6, 12), np.int64) for s in TOKENS}
    np.savez(tmp_path / "t.npz", **arrays)
    ds = open_for(tmp_path / "t.npz", TOKENS)
    assert ds.shapes == {s.name: (1, 12) for s in TOKENS}
    assert ds.shape_note == ("shapes taken from the data: 'input_ids' 1x12, 'attention_mask' 1x12, "
                             "'token_type_ids' 1x12")
    batch = next(iter(ds.batches(4)))
    assert {k: v.shape for k, v in batch.items()} == {s.name: (4, 12) for s in TOKENS}


def test_dims_the_model_names_alike_must_agree_in_the_data(tmp_path: Path) -> None:
    np.savez(tmp_path / "t.npz", input_ids=np.ones((2, 12), np.int64), attention_mask=np.ones((2, 10), np.int64),
             token_type_ids=np.ones((2, 12), np.int64))
    with pytest.raises(TrtqError, match=r"names dim 1 of input 'attention_mask' and a dim of 'input_ids' alike "
                                        r"\('seq'\), but .* gives them 10 and 12"):
        open_for(tmp_path / "t.npz", TOKENS)


def test_placeholder_dim_names_are_not_names(tmp_path: Path) -> None:
    # paddle2onnx writes "?" for every unknown dim (the PP-OCR classifier's H and W alike)
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 48, 192), np.float32))
    ds = open_for(tmp_path / "x.npy", [TensorSpec("x", ("?", 3, "?", "?"), "float32")])
    assert ds.shapes == {"x": (1, 3, 48, 192)}


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "data.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_load_data_first_item_fixes_the_shape_and_later_items_must_match(tmp_path: Path) -> None:
    good = script(tmp_path, """
        import numpy as np

        def load_data():
            for i in range(3):
                yield {n: np.full((1, 7), i) for n in ("input_ids", "attention_mask", "token_type_ids")}
    """)
    ds = open_for(good, TOKENS)
    assert ds.shapes == {s.name: (1, 7) for s in TOKENS} and set(ds.inferred) == {s.name for s in TOKENS}
    assert [b["input_ids"][:, 0].tolist() for b in ds.batches(2)] == [[0, 1], [2]]
    ragged = tmp_path / "ragged"
    ragged.mkdir()
    bad = script(ragged, """
        import numpy as np

        def load_data():
            for n in (7, 7, 5):
                yield {k: np.ones(n, np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    """)
    with pytest.raises(TrtqError, match=r"'input_ids' in item 2 of load_data\(\) .* has samples of shape 5, but the "
                                        r"first samples of the data had 7"):
        open_for(bad, TOKENS)


def write_images(root: Path, count: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (30, 20), (40 * i, 0, 0)).save(root / f"{i}.png")
    return root


def test_image_folder_takes_h_and_w_from_the_size_option_only(tmp_path: Path) -> None:
    root = write_images(tmp_path / "imgs")
    with pytest.raises(TrtqError) as info:
        open_for(root, [IMAGE], purpose="compare")
    assert info.value.message == ("Input 'x' (Nx3xHxW) has dynamic dims and an image folder does not fix them "
                                  "(no --size was given).")
    assert info.value.hint == ("pass --shape x:1x3xHxW, with H, W replaced by the sizes to compare at, or --size HxW "
                               "for the image height and width.")
    ds = open_for(root, [IMAGE], preprocess=Preprocess(size=(16, 12)))
    assert ds.shapes == {"x": (1, 3, 16, 12)} and next(iter(ds))["x"].shape == (1, 3, 16, 12)
    assert ds.shape_note == "shape of 'x' taken from the preprocessing size (--size): 1x3x16x12"
    assert open_for(root, [IMAGE], {"x": (1, 3, 8, 8)}).shapes == {"x": (1, 3, 8, 8)}


def test_image_folder_for_several_inputs_says_so_before_asking_for_shapes(tmp_path: Path) -> None:
    root = write_images(tmp_path / "imgs")
    with pytest.raises(TrtqError, match="can only feed a model with one 4-D image input; this model has input_ids "):
        open_for(root, TOKENS)
