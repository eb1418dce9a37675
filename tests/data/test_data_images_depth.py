"""Image files of every kind a folder holds: deep pixels read at their depth, other Pillow modes
converted as Pillow converts them, animated files by their first frame, broken files named."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trtq.data import PRESETS, bind_preprocess, load_image, preprocess_image
from trtq.data.images import ImageFolderDataset
from trtq.errors import TrtqError
from trtq.model import TensorSpec


def png(path: Path, pixels: np.ndarray, depth: int, color_type: int) -> Path:
    """A PNG written byte by byte (Pillow cannot write 16-bit RGB), filter 0 on every row."""
    height, width = pixels.shape[:2]
    dtype = ">u2" if depth == 16 else "u1"
    raw = b"".join(b"\x00" + pixels[y].astype(dtype).tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def sample(path: Path, channels: int) -> np.ndarray:
    """Preset none at the image's own size (no resampling): pixel / 255, channels first."""
    image = load_image(path)
    pre = bind_preprocess(PRESETS["none"], "x", (1, channels, image.height, image.width))
    return preprocess_image(image, pre)


def test_16_bit_grayscale_is_read_at_its_depth(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65536, (6, 8)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)  # Pillow writes mode I;16 as a 16-bit grayscale PNG
    assert Image.open(path).mode == "I;16"
    for channels in (1, 3):
        values = sample(path, channels)
        assert values.shape == (channels, 6, 8)
        # 65535 is white: nothing is clipped (the old reading made 3 in 4 pixels 1.0), within float32 rounding
        np.testing.assert_allclose(values, np.broadcast_to(pixels / 65535.0, values.shape), atol=1e-6)
        assert (values >= 1.0).mean() < 0.01


def test_16_bit_color_png_is_scaled_as_pillow_decodes_it(tmp_path: Path) -> None:
    pixels = np.array([[[0, 32768, 65535], [65535, 0, 257]]], dtype=np.uint16)  # 1x2 RGB
    values = sample(png(tmp_path / "rgb16.png", pixels, 16, 2), 3)
    np.testing.assert_allclose(values[:, 0, :].T, (pixels[0] >> 8) / 255.0, atol=1e-6)  # the high byte


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK"])
def test_every_8_bit_mode_converts(tmp_path: Path, mode: str) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    image.save(path)
    for channels in (1, 3):
        values = sample(path, channels)
        expected = np.asarray(Image.open(path).convert("RGBA" if mode in ("P", "PA") else mode)
                              .convert("L" if channels == 1 else "RGB"), np.float32) / 255.0
        np.testing.assert_allclose(values, np.moveaxis(np.atleast_3d(expected), 2, 0), atol=1e-6)


def test_an_animated_file_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), (v, v, v)) for v in (10, 200, 90)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    np.testing.assert_allclose(sample(tmp_path / "anim.png", 1), 10 / 255.0, atol=1e-6)


def test_a_truncated_jpeg_is_named(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "f.jpg")
    data = (tmp_path / "f.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])  # passes Pillow's verify(), fails to decode
    with pytest.raises(TrtqError, match=r"Image .*cut.jpg cannot be decoded \(OSError: image file is truncated"):
        load_image(tmp_path / "cut.jpg")


def test_an_image_that_cannot_be_converted_is_named(tmp_path: Path, monkeypatch) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    spec = TensorSpec("x", (1, 3, 4, 4), "float32")
    pre = bind_preprocess(PRESETS["none"], "x", (1, 3, 4, 4))
    dataset = ImageFolderDataset(tmp_path, spec, (1, 3, 4, 4), [tmp_path / "a.png"], None, None, pre,
                                 np.dtype(np.float32), 0, "one image")

    def refuse(image, target):
        raise ValueError("conversion from HSV to RGB not supported")

    monkeypatch.setattr("trtq.data.preprocess._to_mode", refuse)
    with pytest.raises(TrtqError, match=r"Image .*a.png \(Pillow mode RGB\) cannot be converted to RGB"):
        dataset.decode(tmp_path / "a.png")
