"""The evaluation report: typed data (`data`), one self-contained HTML page (`page`, `page.css`, `page.js`)
rendered through the shared page shell, `tunesmith.web_page`.
"""

from tunesmith.evaluate.report.data import ReportData
from tunesmith.evaluate.report.format import format_estimate
from tunesmith.evaluate.report.page import render_report, write_report

__all__ = ["ReportData", "format_estimate", "render_report", "write_report"]
