"""GridSample (deformable attention: RT-DETR, Deformable DETR) and LSTM (CRNN text recognisers), as torch ops.

Both have gradients in torch, so models that use them can be fine-tuned (`trtq finetune`) instead of
running those nodes through onnxruntime, which has none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trtq.torch.ops.registry import OpContext, Tensor, Unsupported, op

_GRID_MODES = {"bilinear": "bilinear", "linear": "bilinear", "nearest": "nearest", "bicubic": "bicubic",
               "cubic": "bicubic"}
"""ONNX GridSample modes (opset 16 names, and opset 20's) -> torch grid_sample modes."""


@op("GridSample")
def grid_sample(ctx: OpContext, x: Tensor, grid: Tensor) -> Tensor:
    mode = _GRID_MODES.get(str(ctx.get("mode", "bilinear" if ctx.opset < 20 else "linear")))
    padding = str(ctx.get("padding_mode", "zeros"))
    if mode is None or padding not in ("zeros", "border", "reflection"):
        raise Unsupported(f"GridSample mode {ctx.get('mode')!r} with padding {padding!r}")
    if x.dim() not in (4, 5) or (mode == "bicubic" and x.dim() != 4):
        raise Unsupported(f"GridSample {mode} of a rank-{x.dim()} input")
    return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode=padding,
                         align_corners=bool(ctx.get("align_corners", 0)))


_LSTM_ACTIVATIONS = ["Sigmoid", "Tanh", "Tanh"]


@op("LSTM")
def lstm(ctx: OpContext, x: Tensor, w: Tensor, r: Tensor, b: Tensor | None = None, lengths: Tensor | None = None,
         h0: Tensor | None = None, c0: Tensor | None = None, peepholes: Tensor | None = None) -> tuple[Tensor, ...]:
    """ONNX LSTM (gates i, o, f, c; optional bias, initial state, peepholes, clip, per-sample lengths),
    stepped through time; Y, Y_h, Y_c as the node asks for them."""
    directions = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}.get(
        str(ctx.get("direction", "forward")))
    activations = [str(a) for a in ctx.get("activations", [])]
    if directions is None or ctx.get("input_forget", 0) or (
            activations and activations != _LSTM_ACTIVATIONS * (len(activations) // 3)):
        raise Unsupported("LSTM with other activations, input_forget or an unknown direction")
    batch_first = bool(ctx.get("layout", 0))
    if batch_first:
        x = x.transpose(0, 1)
        h0 = h0.transpose(0, 1) if h0 is not None else None
        c0 = c0.transpose(0, 1) if c0 is not None else None
    steps, batch = x.shape[0], x.shape[1]
    hidden = r.shape[-1]
    clip = ctx.get("clip")
    valid = None
    if lengths is not None:
        valid = torch.arange(steps, device=x.device)[:, None] < lengths.to(x.device).reshape(1, -1)  # [steps, batch]
    ys, hs, cs = [], [], []
    for d, reverse in enumerate(directions):
        h = h0[d] if h0 is not None else x.new_zeros(batch, hidden)
        c = c0[d] if c0 is not None else x.new_zeros(batch, hidden)
        bias = b[d, : 4 * hidden] + b[d, 4 * hidden:] if b is not None else None
        p_i, p_o, p_f = (peepholes[d].chunk(3) if peepholes is not None else (None, None, None))
        projected = x @ w[d].transpose(0, 1)  # [steps, batch, 4*hidden], every step at once
        if bias is not None:
            projected = projected + bias
        out = [x.new_zeros(0)] * steps
        for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
            gates = projected[t] + h @ r[d].transpose(0, 1)
            if clip is not None:
                gates = gates.clamp(-float(clip), float(clip))
            gi, go, gf, gc = gates.chunk(4, dim=-1)
            if p_i is not None and p_f is not None:
                gi, gf = gi + p_i * c, gf + p_f * c
            c_new = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gc)
            if p_o is not None:
                go = go + p_o * c_new
            h_new = torch.sigmoid(go) * torch.tanh(c_new)
            if valid is not None:  # past a sample's length its state stays and its output is zero
                keep = valid[t][:, None]
                h, c = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
                out[t] = torch.where(keep, h_new, torch.zeros_like(h_new))
            else:
                h, c = h_new, c_new
                out[t] = h_new
        ys.append(torch.stack(out))  # [steps, batch, hidden]
        hs.append(h)
        cs.append(c)
    y = torch.stack(ys, dim=1)  # [steps, directions, batch, hidden]
    y_h, y_c = torch.stack(hs), torch.stack(cs)  # [directions, batch, hidden]
    if batch_first:
        y, y_h, y_c = y.permute(2, 0, 1, 3), y_h.transpose(0, 1), y_c.transpose(0, 1)
    return (y, y_h, y_c)[: max(ctx.num_outputs, 1)]
