"""Run records and the HTML/Markdown report built from them (`trtq report DIR`)."""

from trtq.report.records import histogram_summary, load_records, write_record
from trtq.report.render import Report, build_report, render_html, render_markdown, write_report

__all__ = [
    "Report",
    "build_report",
    "histogram_summary",
    "load_records",
    "render_html",
    "render_markdown",
    "write_record",
    "write_report",
]
