"""The report's charts as inline SVG: per-layer sensitivity bars and calibration histograms
(no scripts, no external files)."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

from trtq._format import fmt, number

SNR_CAP = 60.0
"""Bars of the sensitivity chart are clipped at this SNR (dB); beyond it a layer is insensitive."""


def _color(snr: float) -> str:
    if snr < 20:
        return "#d9534f"
    if snr < 30:
        return "#f0ad4e"
    return "#5cb85c"


def sensitivity_svg(layers: Sequence[Mapping], width: int = 860) -> str:
    """Horizontal bars of each layer's SNR (most sensitive first; shorter and redder = more sensitive)."""
    label_w, row_h, top = 330, 20, 28
    plot_w = width - label_w - 70
    height = top + row_h * len(layers) + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="per-layer sensitivity">',
        f'<text x="{label_w}" y="16" class="axis">SNR of the output with only this layer in INT8 (dB, '
        f"clipped at {SNR_CAP:g})</text>",
    ]
    for tick in range(0, int(SNR_CAP) + 1, 10):
        x = label_w + plot_w * tick / SNR_CAP
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 8}" class="grid"/>'
            f'<text x="{x:.1f}" y="{height}" class="tick">{tick}</text>'
        )
    for i, layer in enumerate(layers):
        snr = number(layer.get("snr_db"))
        snr = SNR_CAP if snr is None or snr > SNR_CAP else max(snr, 0.0)
        y = top + i * row_h
        name = str(layer.get("node", ""))
        short = name if len(name) <= 44 else "…" + name[-43:]
        bar = plot_w * snr / SNR_CAP
        parts.append(
            f"<g><title>{html.escape(name)} ({html.escape(str(layer.get('op_type', '')))}): "
            f"{fmt(layer.get('snr_db'))} dB</title>"
            f'<text x="{label_w - 6}" y="{y + 14}" class="label">{html.escape(short)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{bar:.1f}" height="{row_h - 6}" fill="{_color(snr)}"/>'
            f'<text x="{label_w + bar + 4:.1f}" y="{y + 14}" class="value">'
            f"{fmt(layer.get('snr_db'), 1)}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def histogram_svg(name: str, data: Mapping, width: int = 400, height: int = 150) -> str:
    """Log-scale histogram of |x| with the chosen threshold (red) and the observed max (dashed)."""
    hist = [int(v) for v in data.get("hist", [])]
    hist_max = float(data.get("hist_max", 0.0)) or 1.0
    threshold, observed = float(data.get("threshold", 0.0)), float(data.get("observed_max", 0.0))
    left, bottom, top = 8, 22, 8
    plot_w, plot_h = width - 2 * left, height - bottom - top
    peak = max((math.log1p(v) for v in hist), default=1.0) or 1.0
    bar_w = plot_w / max(len(hist), 1)
    total = sum(hist) or 1
    width_bin = hist_max / max(len(hist), 1)
    above = sum(v for i, v in enumerate(hist) if i * width_bin >= threshold)  # bins wholly above the threshold
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="histogram of {html.escape(name)}">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="frame"/>',
    ]
    for i, v in enumerate(hist):
        if v:
            h = plot_h * math.log1p(v) / peak
            parts.append(
                f'<rect x="{left + i * bar_w:.2f}" y="{top + plot_h - h:.2f}" width="{max(bar_w, 0.6):.2f}" '
                f'height="{h:.2f}" fill="#4a7ab8"/>'
            )
    for value, cls in ((observed, "maxline"), (threshold, "threshold")):
        x = left + plot_w * min(value / hist_max, 1.0)
        parts.append(f'<line x1="{x:.2f}" y1="{top}" x2="{x:.2f}" y2="{top + plot_h}" class="{cls}"/>')
    parts.append(
        f'<text x="{left}" y="{height - 6}" class="tick">0</text>'
        f'<text x="{width - left}" y="{height - 6}" class="tick" text-anchor="end">{hist_max:.4g}</text>'
        f'<text x="{width / 2}" y="{height - 6}" class="tick" text-anchor="middle">|x| (log count); '
        f"{100 * above / total:.3f}% clipped</text></svg>"
    )
    return "".join(parts)
