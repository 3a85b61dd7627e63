"""The evaluation report: typed data (`data`), one self-contained HTML page (`page`, `page.css`, `page.js`).

`shell` is the page shell (head, Content-Security-Policy, styles) the spot check shares.
"""

from tunesmith.evaluate.report.data import ReportData
from tunesmith.evaluate.report.format import format_estimate
from tunesmith.evaluate.report.page import render_report, write_report

__all__ = ["ReportData", "format_estimate", "render_report", "write_report"]
