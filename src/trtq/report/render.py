"""`trtq report DIR`: one self-contained HTML file (inline CSS and SVG, no scripts) and a Markdown twin.

Sections, each present when a record supplies it: run settings; metrics FP32 vs INT8 vs mixed;
how `--method auto` chose the ranges (tables scored, per-tensor winner, share clipped); per-layer
sensitivity bar chart; histograms of the most sensitive tensors with the chosen thresholds;
excluded layers; what a real TensorRT-RTX build runs each quantized layer in (`trtq verify`);
exact build commands.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from trtq._format import fmt, number
from trtq._io import write_files_atomically
from trtq.report.charts import histogram_svg, sensitivity_svg
from trtq.report.records import load_records

MAX_HISTOGRAMS = 6
MAX_CHART_LAYERS = 40
"""The bar chart shows at most this many layers; the Markdown table lists all."""
MAX_RANGE_ROWS = 40
"""The HTML ranges table shows this many tensors (the most clipped first); the Markdown table lists all."""


@dataclass(frozen=True)
class MetricsRow:
    """One line of the metrics table."""

    variant: str
    task: dict[str, float]
    snr_db: float | None
    cosine: float | None
    top1_agreement: float | None
    source: str


@dataclass(frozen=True)
class Report:
    """Everything the report shows, gathered from the records of one folder."""

    directory: str
    title: str
    settings: tuple[tuple[str, str], ...]
    task_label: str | None
    metrics: tuple[MetricsRow, ...]
    notes: tuple[str, ...]
    """What the task metrics were scored against, their warnings, and output parts measured apart."""
    sensitivity: dict | None
    histograms: dict
    excluded: tuple[dict, ...]
    exclude_nodes: tuple[str, ...]
    commands: tuple[tuple[str, str], ...]
    records: tuple[tuple[str, str, str], ...]  # kind, created, command
    ranges: tuple[tuple[str, dict], ...] = ()
    """(tensor, choice) of `--method auto`, the most clipped first."""
    range_table: str | None = None
    table_scores: tuple[tuple[str, float], ...] = ()
    verification: dict | None = None
    """The result of `trtq verify` (a VerifyResult's dict)."""


def _lowest(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _evaluation_row(variant: str, evaluation: Mapping, source: str) -> MetricsRow:
    outputs = evaluation.get("outputs", [])
    snrs = [number(o.get("snr_db")) for o in outputs]
    cosines = [number(o.get("cosine")) for o in outputs]
    top1 = [number(o.get("top1_agreement")) for o in outputs if o.get("top1_agreement") is not None]
    task = evaluation.get("task") or {}
    return MetricsRow(
        variant,
        {k: float(v) for k, v in task.get("values", {}).items()},
        _lowest(snrs),
        _lowest(cosines),
        _lowest(top1),
        source,
    )


def build_report(directory: str | Path) -> Report:
    """Gather the records of `directory` into a Report."""
    records = load_records(directory)
    quantize, compare, sensitivity = records.get("quantize"), records.get("compare"), records.get("sensitivity")
    verify = records.get("verify")
    model = next(
        (
            str(r.settings.get("model") or r.result.get("model") or "")
            for r in records.values()
            if r.settings.get("model") or r.result.get("model")
        ),
        "",
    )
    settings: list[tuple[str, str]] = []
    for record in (quantize, sensitivity, compare, verify):
        if record is None:
            continue
        for key, value in record.settings.items():
            if value in (None, "", [], {}):
                continue
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            settings.append((f"{record.kind}: {key}", text))
    metrics: list[MetricsRow] = []
    task_label = None
    mixed = quantize.result.get("mixed") if quantize is not None else None  # QuantizeResult.mixed's JSON view
    if mixed:
        reference = mixed.get("reference")
        if reference:
            metrics.append(
                MetricsRow("FP32", dict(reference.get("values", {})), math.inf, 1.0, 1.0, "quantize --target")
            )
            task_label = _task_label(reference)
        metrics.append(_evaluation_row("INT8 (all layers)", mixed["int8"], "quantize --target"))
        if mixed.get("excluded"):
            metrics.append(
                _evaluation_row(
                    f"mixed ({len(mixed['excluded'])} layers kept high precision)", mixed["final"], "quantize --target"
                )
            )
    notes: list[str] = []
    if mixed and mixed.get("reference"):
        notes += _task_notes("quantize --target", mixed["reference"], ())
    if mixed and mixed.get("measured_on", "the Q/DQ model") != "the Q/DQ model":
        notes.append(f"quantize --target: its rows were measured on {mixed['measured_on']}.")
    if mixed and mixed.get("all_excluded"):
        notes.append("quantize --target: the target held only with every quantizable layer kept out of INT8, so the "
                     "written model runs nothing in INT8.")
    if compare:
        task = compare.result.get("task")
        if task and not any(row.variant == "FP32" for row in metrics):
            metrics.append(MetricsRow("FP32", dict(task["reference"]["values"]), math.inf, 1.0, 1.0, "compare"))
            task_label = task_label or _task_label(task["reference"])
        evaluation = {"outputs": compare.result.get("outputs", []), "task": task["candidate"] if task else None}
        name = Path(str(compare.result.get("candidate", "candidate"))).name
        metrics.append(_evaluation_row(name, evaluation, "compare"))
        if task:
            notes += _task_notes("compare", task["candidate"], task["candidate"].get("parts", ()))
    for source, result in (("quantize --target", mixed), ("compare", compare.result if compare else None),
                           ("sensitivity", sensitivity.result if sensitivity else None)):
        if result and result.get("mask"):
            notes.append(f"{source}: {result['mask'].get('sentence', '')}.")
    if sensitivity and sensitivity.result.get("scored_against"):
        notes += _task_notes("sensitivity", {"task": sensitivity.result.get("task_metric"),
                                             "scored_against": sensitivity.result["scored_against"]}, ())
    histograms = dict(sensitivity.histograms) if sensitivity else {}
    if quantize and quantize.histograms:
        histograms = {**quantize.histograms, **histograms}
    commands = tuple((str(k), str(v)) for k, v in (quantize.result.get("commands", {}) if quantize else {}).items())
    excluded = tuple(mixed.get("excluded", [])) if mixed else ()
    exclude_nodes = tuple(mixed.get("exclude_nodes", [])) if mixed else ()
    result = quantize.result if quantize else {}
    choices = dict(result.get("choices") or {})
    ranges = tuple(sorted(choices.items(), key=lambda item: (number(item[1].get("amax_over_max")) or 1.0, item[0])))
    scores = dict(result.get("table_scores") or {})
    return Report(
        ranges=ranges,
        range_table=result.get("range_table"),
        table_scores=tuple(sorted(((k, float(v)) for k, v in scores.items()), key=lambda kv: -kv[1])),
        directory=str(directory),
        title=f"trtq report: {Path(model).name or Path(directory).name}",
        settings=tuple(settings),
        task_label=task_label,
        metrics=tuple(metrics),
        notes=tuple(dict.fromkeys(notes)),
        sensitivity=sensitivity.result if sensitivity else None,
        histograms=histograms,
        excluded=excluded,
        exclude_nodes=exclude_nodes,
        commands=commands,
        records=tuple((r.kind, r.created, r.command) for r in records.values()),
        verification=verify.result if verify else None,
    )


def _task_notes(source: str, scores: Mapping, parts: Sequence[Mapping]) -> list[str]:
    """Lines saying what a run's task metric was scored against (and its warning), and the SNR of
    output parts measured apart."""
    notes = []
    scored = scores.get("scored_against")
    if scored:
        notes.append(f"{source}: {scores.get('task', 'task')} metrics {scored.get('sentence', '')}.")
        if scored.get("warning"):
            notes.append(f"warning ({source}): {scored['warning']}")
    if parts:
        notes.append(f"{source}: SNR of output parts measured apart: "
                     + ", ".join(f"{p.get('name')} {_fmt(number(p.get('snr_db')))} dB" for p in parts) + ".")
    return notes


def _task_label(scores: Mapping) -> str:
    against = "labels" if scores.get("against") == "labels" else "the FP32 model's outputs (no labels: agreement)"
    return f"{scores.get('task', 'task')} metrics against {against}"


def _fmt(value: object, digits: int = 2, percent: bool = False) -> str:
    return fmt(value, digits, scale=100.0 if percent else 1.0, suffix="%" if percent else "")


def _metric_columns(rows: Sequence[MetricsRow]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row.task))


def _metric_table(rows: Sequence[MetricsRow]) -> tuple[list[str], list[list[str]]]:
    keys = _metric_columns(rows)
    header = ["model", *keys, "SNR dB (worst output)", "cosine", "top-1 agreement", "from"]
    body = [
        [
            row.variant,
            *(_fmt(row.task.get(k)) for k in keys),
            _fmt(row.snr_db),
            _fmt(row.cosine, 5),
            _fmt(row.top1_agreement, 1, percent=True),
            row.source,
        ]
        for row in rows
    ]
    return header, body


def _ranges_table(report: Report, limit: int | None = None) -> tuple[list[str], list[list[str]]]:
    header = ["tensor", "range from", "amax / max", "values clipped", "layer SNR dB", "layer SNR dB with max"]
    body = [
        [
            name,
            str(c.get("method")) + (f", the range of {c.get('shared_with')}" if c.get("shared_with") else ""),
            _fmt(number(c.get("amax_over_max")), 3),
            _fmt(number(c.get("clipped")), 4, percent=True),
            _fmt(number(c.get("snr_db")), 1),
            _fmt(number(c.get("max_snr_db")), 1),
        ]
        for name, c in report.ranges[:limit]
    ]
    return header, body


def _ranges_intro(report: Report) -> str:
    scores = ", ".join(f"{name} {value:.2f} dB" for name, value in report.table_scores)
    return (f"--method auto kept the {report.range_table} table. Output SNR of each candidate table on the "
            f"samples it was checked on: {scores}. Per tensor: where its range came from, its range against the largest "
            "value seen, the share of calibration values beyond it, and the output SNR of the layers reading it "
            "with that range and with the full range (on the judging samples).")


def _layers(report: Report) -> list[dict]:
    return list(report.sensitivity.get("layers", [])) if report.sensitivity else []


def _excluded_table(report: Report) -> tuple[list[str], list[list[str]]]:
    header = ["layer (ONNX node)", "op", "SNR dB in the ranking", "target metric with it in INT8", "share of INT8 MACs"]
    body = [
        [
            str(e.get("node")),
            str(e.get("op_type")),
            _fmt(number(e.get("sensitivity_snr_db"))),
            _fmt(number(e.get("metric_with_layer_int8")), 3),
            _fmt(number(e.get("macs_share")), 1, percent=True),
        ]
        for e in report.excluded
    ]
    return header, body


def _verify_summary(verification: Mapping) -> str:
    builder = str(verification.get("builder", "TensorRT-RTX"))
    targets = ", ".join(verification.get("compute_capabilities") or []) or "8.0, 8.6, 8.9 and 12.x (the portable default)"
    return (f"{verification.get('summary', '')} ({builder}, built ahead of time for compute capability {targets} in "
            f"{_fmt(number(verification.get('build_seconds')), 1)} s; {verification.get('engine_low_precision_compute_layers')}"
            f" of {verification.get('engine_compute_layers')} convolution/GEMM engine layers read "
            f"{verification.get('precision', 'INT8')} inputs).")


def _verify_float_table(verification: Mapping) -> tuple[list[str], list[list[str]]]:
    header = ["quantized layer (ONNX node)", "op", "runs in", "engine layer", "why"]
    body = [[str(v.get("node")), str(v.get("op_type")), str(v.get("runs_in")),
             f"{v.get('engine_layer') or '-'} ({v.get('engine_layer_type') or '-'})", str(v.get("reason") or "")]
            for v in verification.get("layers", []) if not v.get("ok")]
    return header, body


def _verify_pairs_table(verification: Mapping) -> tuple[list[str], list[list[str]]]:
    header = ["quantized tensor", "kind", "why it did not fuse"]
    body = [[str(p.get("tensor")), str(p.get("kind")), str(p.get("reason") or "")]
            for p in verification.get("pairs", []) if not p.get("fused")]
    return header, body


def _verify_all_table(verification: Mapping) -> tuple[list[str], list[list[str]]]:
    header = ["quantized layer (ONNX node)", "op", "expected", "runs in", "engine layer", "engine inputs"]
    body = [[str(v.get("node")), str(v.get("op_type")), str(v.get("expected")), str(v.get("runs_in")),
             f"{v.get('engine_layer') or '-'} ({v.get('engine_layer_type') or '-'})",
             ", ".join(v.get("input_types") or [])] for v in verification.get("layers", [])]
    return header, body


_CSS = """
body{font:14px/1.45 -apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:24px auto;max-width:1100px;
color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f3f5f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font-family:'DejaVu Sans Mono',Menlo,monospace;font-size:12.5px}pre{background:#f6f8fa;padding:8px 10px;
overflow-x:auto;white-space:pre-wrap;word-break:break-all}.muted{color:#666}.warning{color:#a94442;font-weight:600}
.grid{stroke:#e4e4e4}.tick{font-size:10px;fill:#666}.axis{font-size:11px;fill:#444}.label{font-size:11px;
text-anchor:end;fill:#222}.value{font-size:10px;fill:#444}.frame{fill:none;stroke:#bbb}
.threshold{stroke:#d9534f;stroke-width:2}.maxline{stroke:#555;stroke-dasharray:4 3}
.hists{display:flex;flex-wrap:wrap;gap:14px}.hist{border:1px solid #e3e3e3;padding:6px}.hist div{font-size:12px}
"""


def _html_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = []
    for row in body:
        cells = []
        for cell in row:
            numeric = cell.replace(".", "", 1).replace("%", "").replace("-", "", 1).isdigit() or cell in ("inf", "-")
            cells.append(f'<td class="num">{html.escape(cell)}</td>' if numeric else f"<td>{html.escape(cell)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _histogram_items(report: Report) -> list[tuple[str, dict]]:
    order = [t for layer in _layers(report) for t in layer.get("tensors", [])]
    names = [t for t in dict.fromkeys(order) if t in report.histograms] or list(report.histograms)
    return [(name, report.histograms[name]) for name in names[:MAX_HISTOGRAMS]]


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page."""
    e = html.escape
    out = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(report.title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{e(report.title)}</h1>"
        f'<div class="muted">from {e(report.directory)}</div>'
    ]
    if report.settings:
        out.append("<h2>Settings</h2>" + _html_table(["setting", "value"], [list(s) for s in report.settings]))
    if report.metrics:
        header, body = _metric_table(report.metrics)
        label = f'<p class="muted">Task metrics in percent: {e(report.task_label)}.</p>' if report.task_label else ""
        notes = "".join(f'<p class="{"warning" if n.startswith("warning") else "muted"}">{e(n)}</p>'
                        for n in report.notes)
        out.append("<h2>Metrics: FP32 vs INT8 vs mixed</h2>" + label + _html_table(header, body) + notes)
    elif report.notes:
        out.append("<h2>Task metrics</h2>" + "".join(
            f'<p class="{"warning" if n.startswith("warning") else "muted"}">{e(n)}</p>' for n in report.notes))
    if report.ranges:
        header, body = _ranges_table(report, MAX_RANGE_ROWS)
        shown = f" (the {MAX_RANGE_ROWS} most clipped of {len(report.ranges)})" if len(report.ranges) > MAX_RANGE_ROWS else ""
        out.append(f"<h2>Ranges{shown}</h2><p>{e(_ranges_intro(report))}</p>" + _html_table(header, body))
    layers = _layers(report)
    if layers:
        method = report.sensitivity.get("method", "") if report.sensitivity else ""
        shown = f"the {MAX_CHART_LAYERS} most sensitive of " if len(layers) > MAX_CHART_LAYERS else ""
        out.append(
            f"<h2>Per-layer sensitivity ({e(str(method))}, {shown}{len(layers)} layers, most sensitive first)</h2>"
            + sensitivity_svg(layers[:MAX_CHART_LAYERS])
        )
    items = _histogram_items(report)
    if items:
        cells = []
        for name, data in items:
            cells.append(
                f'<div class="hist"><div><code>{e(name)}</code></div><div class="muted">{e(str(data.get("method")))}'
                f" threshold {fmt(data.get('threshold', 0), 4, spec='g')} (red), observed max "
                f"{fmt(data.get('observed_max', 0), 4, spec='g')} (dashed)</div>{histogram_svg(name, data)}</div>"
            )
        out.append('<h2>Histograms of the most sensitive tensors</h2><div class="hists">' + "".join(cells) + "</div>")
    if report.excluded:
        header, body = _excluded_table(report)
        flags = " ".join(f"--exclude-nodes '{p}'" for p in report.exclude_nodes)
        out.append(
            "<h2>Layers kept in high precision</h2>"
            + _html_table(header, body)
            + f"<p>Reuse without searching again:</p><pre>{e(flags)}</pre>"
        )
    if report.verification:
        v = report.verification
        parts = [f"<h2>Checked by a real builder: per-layer precision in TensorRT-RTX</h2><p><b>{e(_verify_summary(v))}"
                 "</b></p>"]
        header, body = _verify_float_table(v)
        if body:
            parts.append(f"<p>Quantized layers not run in {e(str(v.get('precision', 'INT8')))}:</p>"
                         + _html_table(header, body))
        header, body = _verify_pairs_table(v)
        if body:
            parts.append("<p>Q/DQ pairs that did not fuse (quantized and dequantized in float):</p>"
                         + _html_table(header, body))
        header, body = _verify_all_table(v)
        parts.append(f"<details><summary>all {len(body)} quantized layers</summary>{_html_table(header, body)}</details>")
        out.append("".join(parts))
    if report.commands:
        out.append(
            "<h2>Build commands</h2>"
            + "".join(f"<p>{e(label)}</p><pre>{e(cmd)}</pre>" for label, cmd in report.commands)
        )
    out.append("<h2>Runs</h2>" + _html_table(["record", "created", "command"], [list(r) for r in report.records]))
    out.append("</body></html>\n")
    return "".join(out)


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([row(header), row(["---"] * len(header)), *(row(r) for r in body)])


def render_markdown(report: Report) -> str:
    """The report as Markdown (tables; the charts are in the HTML twin)."""
    out = [f"# {report.title}", "", f"From `{report.directory}`."]
    if report.settings:
        out += ["", "## Settings", "", _md_table(["setting", "value"], [list(s) for s in report.settings])]
    if report.metrics:
        header, body = _metric_table(report.metrics)
        out += ["", "## Metrics: FP32 vs INT8 vs mixed", ""]
        if report.task_label:
            out += [f"Task metrics in percent: {report.task_label}.", ""]
        out.append(_md_table(header, body))
    if report.notes:
        if not report.metrics:
            out += ["", "## Task metrics"]
        out += ["", *(f"- {'**' + n + '**' if n.startswith('warning') else n}" for n in report.notes)]
    if report.ranges:
        header, body = _ranges_table(report)
        out += ["", "## Ranges", "", _ranges_intro(report), "", _md_table(header, body)]
    layers = _layers(report)
    if layers:
        out += [
            "",
            f"## Per-layer sensitivity ({(report.sensitivity or {}).get('method')}, most sensitive first)",
            "",
            _md_table(
                ["rank", "layer (ONNX node)", "op", "SNR dB", "task drop"],
                [
                    [
                        str(i + 1),
                        str(layer.get("node")),
                        str(layer.get("op_type")),
                        _fmt(number(layer.get("snr_db"))),
                        _fmt(number(layer.get("task_drop"))),
                    ]
                    for i, layer in enumerate(layers)
                ],
            ),
        ]
    items = _histogram_items(report)
    if items:
        out += [
            "",
            "## Thresholds of the most sensitive tensors",
            "",
            _md_table(
                ["tensor", "method", "threshold", "observed max"],
                [
                    [
                        name,
                        str(d.get("method")),
                        fmt(d.get('threshold', 0), 4, spec='g'),
                        fmt(d.get('observed_max', 0), 4, spec='g'),
                    ]
                    for name, d in items
                ],
            ),
        ]
    if report.excluded:
        header, body = _excluded_table(report)
        out += [
            "",
            "## Layers kept in high precision",
            "",
            _md_table(header, body),
            "",
            "```",
            " ".join(f"--exclude-nodes '{p}'" for p in report.exclude_nodes),
            "```",
        ]
    if report.verification:
        v = report.verification
        out += ["", "## Checked by a real builder: per-layer precision in TensorRT-RTX", "", f"**{_verify_summary(v)}**"]
        for title, (header, body) in (
            (f"Quantized layers not run in {v.get('precision', 'INT8')}:", _verify_float_table(v)),
            ("Q/DQ pairs that did not fuse (quantized and dequantized in float):", _verify_pairs_table(v)),
            ("All quantized layers:", _verify_all_table(v)),
        ):
            if body:
                out += ["", title, "", _md_table(header, body)]
    if report.commands:
        out += ["", "## Build commands"]
        for label, cmd in report.commands:
            out += ["", label, "", "```", cmd, "```"]
    out += ["", "## Runs", "", _md_table(["record", "created", "command"], [list(r) for r in report.records]), ""]
    return "\n".join(out)


def write_report(directory: str | Path, output: str | Path | None = None) -> tuple[Path, Path]:
    """Write `trtq-report.html` and `trtq-report.md` (into `output`, default `directory`)."""
    report = build_report(directory)
    target = Path(output) if output else Path(directory)
    html_path, md_path = target / "trtq-report.html", target / "trtq-report.md"
    write_files_atomically({html_path: render_html(report).encode("utf-8"),
                            md_path: render_markdown(report).encode("utf-8")})
    return html_path, md_path
