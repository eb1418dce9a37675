"""Image preprocessing: presets, option parsing, binding to an input shape, and the pixel math."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trtq.data import (
    PRESETS,
    Preprocess,
    PreprocessOverrides,
    bind_preprocess,
    letterbox_geometry,
    preprocess_image,
    resolve_preprocess,
)
from trtq.data.preprocess import center_crop_geometry, output_range
from trtq.errors import TrtqError


def solid(color: tuple[int, int, int], width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), color)


def bound(pre: Preprocess, shape: tuple[int, ...]) -> Preprocess:
    return bind_preprocess(pre, "x", shape)


def test_presets_hold_the_documented_recipes() -> None:
    imagenet, yolo, none = PRESETS["imagenet"], PRESETS["yolo"], PRESETS["none"]
    assert imagenet.resize == "center-crop" and imagenet.color == "RGB"
    assert imagenet.mean == (0.485, 0.456, 0.406) and imagenet.std == (0.229, 0.224, 0.225)
    assert yolo.resize == "letterbox" and yolo.pad_value == 114 and yolo.scale == pytest.approx(1 / 255)
    assert none == Preprocess() and none.resize == "resize" and none.mean == (0.0,) and none.std == (1.0,)


def test_resolve_preprocess_applies_the_given_overrides() -> None:
    pre = resolve_preprocess(
        "imagenet", PreprocessOverrides(size=(224, 224), color="bgr", scale=1 / 255, mean=(0.5, 0.5, 0.5))
    )
    assert pre.size == (224, 224)
    assert pre.color == "BGR"
    assert pre.scale == pytest.approx(1 / 255)
    assert pre.mean == (0.5, 0.5, 0.5)
    assert pre.std == PRESETS["imagenet"].std  # None means "not given"
    assert resolve_preprocess(None) == resolve_preprocess(None, PreprocessOverrides()) == PRESETS["none"]
    assert resolve_preprocess("YOLO", PreprocessOverrides(size=(480, 640))).size == (480, 640)


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(TrtqError, match="imagenet, yolo, none"):
        resolve_preprocess("coco")


def test_an_invalid_override_is_an_error_naming_the_option() -> None:
    with pytest.raises(TrtqError, match="color='RGBA'"):
        resolve_preprocess("none", PreprocessOverrides(color="RGBA"))
    with pytest.raises(TrtqError, match="size"):
        resolve_preprocess("none", PreprocessOverrides(size=(0, 640)))


@pytest.mark.parametrize(
    "options, option",
    [
        ({"resize": "crop"}, "resize"),
        ({"color": "HSV"}, "color"),
        ({"std": (0.0,)}, "std"),
        ({"pad_value": 300}, "pad_value"),
        ({"layout": "CHW"}, "layout"),
        ({"dtype": "str"}, "dtype"),
    ],
)
def test_invalid_options_are_rejected(options: dict, option: str) -> None:
    with pytest.raises(TrtqError, match=f"option {option}="):
        Preprocess(**options)


def test_bind_infers_size_layout_and_gray() -> None:
    nchw = bound(Preprocess(), (1, 3, 32, 48))
    assert (nchw.size, nchw.layout, nchw.color) == ((32, 48), "NCHW", "RGB")
    assert nchw.mean == (0.0, 0.0, 0.0)
    nhwc = bound(Preprocess(), (1, 32, 48, 3))
    assert (nhwc.size, nhwc.layout) == ((32, 48), "NHWC")
    gray = bound(Preprocess(color="RGB"), (1, 1, 28, 28))
    assert gray.color == "GRAY"


@pytest.mark.parametrize(
    "pre, shape, message",
    [
        (Preprocess(size=(64, 64)), (1, 3, 32, 32), "size 64x64"),
        (Preprocess(color="GRAY"), (1, 3, 32, 32), "GRAY"),
        (PRESETS["imagenet"], (1, 1, 32, 32), "mean has 3 values"),
        (Preprocess(), (1, 5, 7, 9), "neither dim 1 nor dim 3"),
        (Preprocess(layout="NCHW"), (1, 4, 8, 8), "4 channels"),
        (Preprocess(), (1, 3, 8), "4-D image input"),
    ],
)
def test_bind_rejects_what_does_not_fit(pre: Preprocess, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(TrtqError, match=message):
        bound(pre, shape)


def test_letterbox_geometry_keeps_aspect_and_centres() -> None:
    box = letterbox_geometry((100, 200), (64, 64))  # (H, W): a 2:1 landscape image
    assert box.scale == pytest.approx(0.32)
    assert box.resized == (32, 64)
    assert (box.top, box.bottom, box.left, box.right) == (16, 16, 0, 0)
    odd = letterbox_geometry((100, 200), (65, 64))  # one spare row goes to the bottom
    assert (odd.top, odd.bottom) == (16, 17)
    assert odd.top + odd.resized[0] + odd.bottom == 65


def test_letterbox_pads_with_pad_value_where_expected() -> None:
    pre = bound(Preprocess(resize="letterbox", pad_value=114, scale=1.0), (1, 3, 64, 64))
    out = preprocess_image(solid((200, 10, 50), 200, 100), pre)
    assert out.shape == (3, 64, 64) and out.dtype == np.float32
    assert np.all(out[:, :16, :] == 114) and np.all(out[:, 48:, :] == 114)
    content = out[:, 16:48, :]  # 32x64: the image at 2:1, as in the source
    assert np.all(content == np.array([200, 10, 50], np.float32)[:, None, None])


def test_letterbox_gray_pads_one_channel() -> None:
    pre = bound(Preprocess(resize="letterbox", pad_value=7, scale=1.0), (1, 1, 40, 20))
    out = preprocess_image(Image.new("L", (10, 10), 250), pre)  # square into a tall canvas
    assert out.shape == (1, 40, 20)
    assert np.all(out[0, :10] == 7) and np.all(out[0, 30:] == 7) and np.all(out[0, 10:30] == 250)


def test_center_crop_geometry_matches_imagenet_eval() -> None:
    # torchvision: Resize(256) on a 300x400 (H, W) image -> 256x341, CenterCrop(224) -> top 16, left 58
    assert center_crop_geometry((300, 400), (224, 224)) == ((256, 341), 16, 58)
    assert center_crop_geometry((400, 300), (224, 224)) == ((341, 256), 58, 16)
    (new_h, new_w), _, _ = center_crop_geometry((100, 100), (112, 160))  # non-square target
    assert new_h >= 128 and new_w >= 182 and new_h == new_w  # covers target/0.875, aspect kept


def test_center_crop_output_is_the_centre_of_the_resized_image() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    pre = bound(Preprocess(resize="center-crop", scale=1.0), (1, 3, 14, 14))
    out = preprocess_image(image, pre)
    assert out.shape == (3, 14, 14)
    (new_h, new_w), top, left = center_crop_geometry((30, 40), (14, 14))
    assert (new_h, new_w) == (16, 21)
    expected = np.asarray(image.resize((new_w, new_h), Image.Resampling.BILINEAR))[top:top + 14, left:left + 14]
    np.testing.assert_array_equal(out, expected.transpose(2, 0, 1).astype(np.float32))


def test_bgr_reverses_channel_order_and_nhwc_keeps_channels_last() -> None:
    image = solid((10, 20, 30), 8, 8)
    rgb = preprocess_image(image, bound(Preprocess(scale=1.0), (1, 3, 4, 4)))
    bgr = preprocess_image(image, bound(Preprocess(scale=1.0, color="BGR"), (1, 3, 4, 4)))
    assert rgb[:, 0, 0].tolist() == [10, 20, 30]
    assert bgr[:, 0, 0].tolist() == [30, 20, 10]
    nhwc = preprocess_image(image, bound(Preprocess(scale=1.0, color="BGR"), (1, 4, 4, 3)))
    assert nhwc.shape == (4, 4, 3) and nhwc[0, 0].tolist() == [30, 20, 10]


def test_gray_uses_pillow_luma_and_one_channel() -> None:
    image = solid((10, 20, 30), 8, 8)
    out = preprocess_image(image, bound(Preprocess(scale=1.0), (1, 1, 8, 8)))
    assert out.shape == (1, 8, 8)
    assert np.all(out == float(np.asarray(image.convert("L"))[0, 0]))
    assert out[0, 0, 0] == 18  # 0.299*10 + 0.587*20 + 0.114*30 = 18.15


def test_mean_std_math_per_channel() -> None:
    pre = bound(PRESETS["imagenet"], (1, 3, 8, 8))
    out = preprocess_image(solid((255, 0, 128), 16, 16), pre)
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(out[:, 3, 3], expected, rtol=1e-6)
    low, high = output_range(pre)
    assert low == pytest.approx(-0.485 / 0.229) and high == pytest.approx((1 - 0.406) / 0.225)


def test_integer_dtype_keeps_raw_pixels() -> None:
    pre = bound(Preprocess(scale=1.0, dtype="uint8"), (1, 3, 4, 4))
    out = preprocess_image(solid((0, 128, 255), 4, 4), pre)
    assert out.dtype == np.uint8 and out[:, 0, 0].tolist() == [0, 128, 255]


def test_palette_and_rgba_images_convert() -> None:
    palette = solid((10, 20, 30), 4, 4).convert("P", palette=Image.Palette.ADAPTIVE)
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    pre = bound(Preprocess(scale=1.0), (1, 3, 4, 4))
    assert preprocess_image(palette, pre)[:, 0, 0].tolist() == [10, 20, 30]
    assert preprocess_image(rgba, pre)[:, 0, 0].tolist() == [10, 20, 30]


def test_preprocessing_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    pre = bound(PRESETS["yolo"], (1, 3, 32, 32))
    assert preprocess_image(image, pre).tobytes() == preprocess_image(image.copy(), pre).tobytes()
