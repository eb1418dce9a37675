"""Tiny BERT- and ViT-style models from `transformers` configs (random weights), exported to ONNX
with both torch exporters, and token/image data for them.

Each encoder layer of both is the standard transformer block:

    x --> LayerNorm? --> Q/K/V MatMuls --> Q.K^T (MatMul) --> Softmax --> P.V (MatMul) --> out MatMul --+
    |                                                                                                   |
    +-------------------------------------------------- residual Add <----------------------------------+
    --> LayerNorm --> FFN1 MatMul --> GELU --> FFN2 MatMul --> residual Add --> LayerNorm --> ...

(BERT normalises after each residual Add, ViT before each block.) `outliers=True` plants the
activation outliers real trained transformers have: a few LayerNorm channels with a large gain
(so QKV/FFN1 inputs have outlier channels) and a few FFN1 output channels with large weights (so
the GELU output feeding FFN2 has outlier channels), which per-tensor INT8 handles badly.

Exports are cached per (model, exporter) under a pytest temporary folder by the callers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEQ = 16
"""Tokens per sequence in the test data."""
VOCAB = 96
IMAGE = 16
OUTLIER_GAIN = 40.0


def _plant_outliers(norms, ffns, rng: np.random.Generator) -> None:
    """Outlier channels as trained transformers have them, keeping each MatMul's output scale.

    `norms`: (LayerNorm, the Linear layers reading it) pairs; 2 channels of each LayerNorm get a
    gain x OUTLIER_GAIN and the weight rows reading them / OUTLIER_GAIN. `ffns`: (FFN1, FFN2) pairs;
    2 FFN1 output channels get x OUTLIER_GAIN and the FFN2 weight rows reading them / OUTLIER_GAIN.
    The FP32 model stays a plain transformer; what changes is that a few input channels of those
    MatMuls are much larger than the rest, and per-tensor INT8 rounds the other channels away.
    """
    import torch

    def scale(source_weight, source_bias, readers) -> None:
        channels = torch.from_numpy(rng.choice(source_weight.shape[0], 2, replace=False))
        source_weight[channels] *= OUTLIER_GAIN
        source_bias[channels] *= OUTLIER_GAIN
        for linear in readers:
            linear.weight[:, channels] /= OUTLIER_GAIN

    with torch.no_grad():
        for norm, readers in norms:
            scale(norm.weight, norm.bias, readers)
        for ffn1, ffn2 in ffns:
            scale(ffn1.weight, ffn1.bias, (ffn2,))


def tiny_bert(outliers: bool = False, seed: int = 0):
    """A 2-layer BERT (hidden 32, 2 heads, FFN 64), eval mode, returning last_hidden_state."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=SEQ, type_vocab_size=2,
                                     initializer_range=0.2)
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()
    if outliers:
        layers = bert.encoder.layer
        qkv = [(a.query, a.key, a.value) for a in (layer.attention.self for layer in layers)]
        norms = [(bert.embeddings.LayerNorm, qkv[0])]  # post-LN: each layer's last LayerNorm feeds the next Q/K/V
        norms += [(layers[i - 1].output.LayerNorm, qkv[i]) for i in range(1, len(layers))]
        norms += [(layer.attention.output.LayerNorm, (layer.intermediate.dense,)) for layer in layers]
        ffns = [(layer.intermediate.dense, layer.output.dense) for layer in layers]
        _plant_outliers(norms, ffns, np.random.default_rng(seed))

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    return LastHidden().eval()


def tiny_bert_heads(seed: int = 0, labels: int = 3):
    """The tiny BERT with its pooler and a sequence-classification head: three outputs,

        input_ids, attention_mask, token_type_ids --> encoder --> last_hidden_state [B, S, 32]   (LayerNorm)
                                                         +--> first token --> Gemm --> Tanh --> pooler_output [B, 32]
                                                                                          +--> Gemm --> logits [B, labels]

    one each of what `trtq compare` scores over real tokens (the hidden states), over every sample
    (the pooler's embedding: no position axis) and with top-1 agreement (the class scores).
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=SEQ, type_vocab_size=2,
                                     initializer_range=0.2, num_labels=labels)
    model = transformers.BertForSequenceClassification(config).eval()

    class Heads(torch.nn.Module):
        output_names = ("last_hidden_state", "pooler_output", "logits")

        def __init__(self) -> None:
            super().__init__()
            self.bert = model.bert
            self.classifier = model.classifier

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state, out.pooler_output, self.classifier(out.pooler_output)

    return Heads().eval()


MASK_FORMS = ("3d", "additive-4d")


def tiny_bert_mask_form(form: str, seed: int = 0):
    """The tiny BERT taking (input_ids, mask) with the mask in another form than [B, S] 0/1:

    - "3d": [B, S, S] int64, row i = the key mask (as Google's BERT builds it);
    - "additive-4d": [B, 1, 1, S] float32, 0 for real tokens and -10000 for padding, added to the scores.

    `mask_form_data` makes matching data.
    """
    import torch

    bert = tiny_bert(seed=seed).bert

    class Masked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, mask):  # type: ignore[no-untyped-def]
            extended = mask[:, None].bool() if form == "3d" else mask
            return self.bert(input_ids=input_ids, attention_mask=extended).last_hidden_state

    return Masked().eval()


def mask_form_data(form: str, tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`tokens` (token_data) with its attention mask in `form` (tiny_bert_mask_form), as input `mask`."""
    mask = tokens["attention_mask"]
    if form == "3d":
        value = np.repeat(mask[:, None, :], mask.shape[1], axis=1)
    else:
        value = ((1.0 - mask) * -10000.0)[:, None, None, :].astype(np.float32)
    return {"input_ids": tokens["input_ids"], "mask": value}


def export_mask_form(form: str, path: Path) -> Path:
    """tiny_bert_mask_form(form) exported by the legacy exporter, dynamic batch."""
    import warnings

    import torch

    data = mask_form_data(form, token_data(2, seed=1))
    args = tuple(torch.from_numpy(data[k]) for k in ("input_ids", "mask"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _export(tiny_bert_mask_form(form), args, ["input_ids", "mask"], ["last_hidden_state"], path, False)
    return path


def tiny_vit(outliers: bool = False, seed: int = 0):
    """A 2-layer ViT (16x16 images, 4x4 patches, hidden 32, 2 heads, FFN 64), returning last_hidden_state."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.ViTConfig(image_size=IMAGE, patch_size=4, num_channels=3, hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    initializer_range=0.2)
    vit = transformers.ViTModel(config, add_pooling_layer=False).eval()
    if outliers:
        layers = vit.layers
        norms = [(layer.layernorm_before, (layer.attention.q_proj, layer.attention.k_proj, layer.attention.v_proj))
                 for layer in layers]
        norms += [(layer.layernorm_after, (layer.mlp.fc1,)) for layer in layers]
        _plant_outliers(norms, [(layer.mlp.fc1, layer.mlp.fc2) for layer in layers], np.random.default_rng(seed))

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vit = vit

        def forward(self, pixel_values):
            return self.vit(pixel_values=pixel_values).last_hidden_state

    return LastHidden().eval()


def token_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`n` sequences of SEQ random tokens, each with 4..SEQ real tokens and the rest padding (mask 0)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, SEQ + 1, n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, VOCAB, (n, SEQ)) * mask
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask, "token_type_ids": np.zeros((n, SEQ), np.int64)}


def image_data(n: int, seed: int = 0) -> np.ndarray:
    """`n` smooth random images (N, 3, IMAGE, IMAGE), float32, roughly unit scale."""
    rng = np.random.default_rng(seed)
    small = rng.standard_normal((n, 3, IMAGE // 4, IMAGE // 4)).astype(np.float32)
    return np.ascontiguousarray(small.repeat(4, axis=2).repeat(4, axis=3))


def export(module, path: Path, dynamo: bool) -> Path:
    """Export `module` (tiny_bert or tiny_vit) to `path` with a dynamic batch dim, legacy or dynamo exporter.

    The example batch has padding (mask zeros): with an all-ones mask, transformers drops the mask
    while tracing and the export would ignore it.
    """
    import warnings

    import torch

    if hasattr(module, "bert"):
        data = token_data(2, seed=1)
        args = tuple(torch.from_numpy(data[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
        names = ["input_ids", "attention_mask", "token_type_ids"]
    else:
        args = (torch.from_numpy(image_data(2, seed=1)),)
        names = ["pixel_values"]
    outputs = list(getattr(module, "output_names", ("last_hidden_state",)))
    with warnings.catch_warnings():  # the exporters' tracer and deprecation warnings are not the tests' concern
        warnings.simplefilter("ignore")
        _export(module, args, names, outputs, path, dynamo)
    return path


def _export(module, args: tuple, names: list[str], outputs: list[str], path: Path, dynamo: bool) -> None:
    import torch

    if dynamo:
        batch = torch.export.Dim("batch")
        torch.onnx.export(module, args, str(path), dynamo=True, input_names=names, output_names=outputs,
                          dynamic_shapes={name: {0: batch} for name in names}, external_data=False,
                          verbose=False)
    else:
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=outputs, dynamic_axes={name: {0: "batch"} for name in [*names, *outputs]})


def masked_snr_db(reference: np.ndarray, candidate: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Aggregate SNR in dB over the positions where `mask` is 1 (all positions without a mask)."""
    if mask is not None:
        keep = mask.astype(bool)
        reference, candidate = reference[keep], candidate[keep]
    noise = float(((reference - candidate) ** 2).sum())
    return 10.0 * np.log10(float((reference**2).sum()) / noise) if noise else float("inf")
