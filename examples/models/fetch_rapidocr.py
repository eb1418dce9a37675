"""Fetch real pretrained OCR models (PaddleOCR via RapidOCR, Apache-2.0) from PyPI, offline-friendly.

Model hubs are often unreachable, but the `rapidocr` wheel on PyPI carries its ONNX models. This
script downloads that one wheel with pip (no dependencies, nothing installed) into a cache folder,
checks its SHA-256, and extracts the chosen models, plus the upstream model licence notice, into
a destination folder. The bench scripts and README tables use these models; they are not
committed to the repository.

    python examples/models/fetch_rapidocr.py out/models            # det + cls
    python examples/models/fetch_rapidocr.py out/models --models det cls rec

Models, as `trtq inspect` reports them (all ONNX opset 11, so per-channel Q/DQ needs opset 13+):
  det  PP-OCRv6_det_small.onnx               9.9 MB  x [DynamicDimension.0,3,DynamicDimension.1,
       DynamicDimension.2] -> fetch_name_0 [?,1,H,W] text probability map; 83 Conv, 2 ConvTranspose
  cls  ch_ppocr_mobile_v2.0_cls_mobile.onnx  0.6 MB  x [?,3,?,?] -> [?,2] (0 / 180 degrees);
       weights are Constant nodes, not initializers; BatchNormalization not folded
  rec  PP-OCRv6_rec_small.onnx               21 MB   x [DynamicDimension.0,3,48,DynamicDimension.1]
       -> fetch_name_0 [?,T,18710] CTC character scores

RapidOCR's preprocessing (rapidocr 3.10.0): BGR channel order, (pixel/255 - 0.5) / 0.5.
det: shorter side scaled to >= 736, both sides rounded to multiples of 32. cls: resized to height
48 keeping the aspect ratio (width <= 192), normalised, then zero-padded on the right to 48x192.
RapidOCR's own TensorRT profiles: det 1x3x32x32 / 1x3x736x736 / 1x3x2048x2048 (min/opt/max),
cls 1x3x48x32 / 6x3x48x192 / 6x3x48x192, rec 1x3x48x32 / 6x3x48x320 / 6x3x48x2048.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

PACKAGE = "rapidocr"
VERSION = "3.10.0"
WHEEL = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "2fc34e26cd0f48514804a94f8832283039c7334076bff60768b1fed9ad068050"
LICENCE_MEMBER = f"{PACKAGE}-{VERSION}.dist-info/licenses/MODEL_LICENSES.md"
MODELS: dict[str, tuple[str, str]] = {
    # key: (member of the wheel, SHA-256 of the file)
    "det": ("rapidocr/models/PP-OCRv6_det_small.onnx",
            "090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f"),
    "cls": ("rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
            "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"),
    "rec": ("rapidocr/models/PP-OCRv6_rec_small.onnx",
            "6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884"),
}
REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / ".whl"


def sha256(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def download_wheel(cache: Path) -> Path:
    """The rapidocr wheel in `cache`, downloaded with pip unless a copy with the right hash is there."""
    wheel = cache / WHEEL
    if wheel.is_file() and sha256(wheel.read_bytes()) == WHEEL_SHA256:
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-d", str(cache), f"{PACKAGE}=={VERSION}"],
        check=True,
    )
    actual = sha256(wheel.read_bytes())
    if actual != WHEEL_SHA256:
        raise SystemExit(f"{wheel} has SHA-256 {actual}, expected {WHEEL_SHA256}; delete it and retry.")
    return wheel


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, then rename, so an interrupted run leaves no partial model."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def fetch(dest: str | Path, models: Sequence[str] = ("det", "cls"), cache: str | Path = DEFAULT_CACHE
          ) -> dict[str, Path]:
    """Extract the chosen models (keys of MODELS) into `dest`; returns {key: path of the .onnx}.

    Files already in `dest` with the right hash are kept; MODEL_LICENSES.md is written beside them.
    """
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r}; choose from {sorted(MODELS)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {key: (dest / Path(MODELS[key][0]).name, MODELS[key][1]) for key in models}
    missing = {k: v for k, v in wanted.items() if not (v[0].is_file() and sha256(v[0].read_bytes()) == v[1])}
    licence = dest / "MODEL_LICENSES.md"
    if missing or not licence.is_file():
        with zipfile.ZipFile(download_wheel(Path(cache))) as wheel:
            for key, (path, digest) in missing.items():
                data = wheel.read(MODELS[key][0])
                if sha256(data) != digest:
                    raise SystemExit(f"{MODELS[key][0]} in {WHEEL} has an unexpected SHA-256.")
                write_atomic(path, data)
            write_atomic(licence, wheel.read(LICENCE_MEMBER))
    return {key: path for key, (path, _) in wanted.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder to put the .onnx files in")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["det", "cls"])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"where pip puts the wheel (default {DEFAULT_CACHE})")
    args = parser.parse_args()
    for key, path in fetch(args.dest, args.models, args.cache).items():
        print(f"{key}: {path}")


if __name__ == "__main__":
    main()
