"""Run records and the HTML/Markdown report built from them (`trtq report DIR`)."""

from trtq.report.records import RunRecord, histogram_summary, load_records, record_path, write_record
from trtq.report.render import Report, build_report, render_html, render_markdown, write_report

__all__ = [
    "Report",
    "RunRecord",
    "build_report",
    "histogram_summary",
    "load_records",
    "record_path",
    "render_html",
    "render_markdown",
    "write_record",
    "write_report",
]
