"""The evaluation report: one self-contained HTML page (inline CSS and JS from this package, server-side SVG).

The page makes no network request of any kind (its Content-Security-Policy forbids it), so it can be
mailed, archived with the run, or opened from a ``file://`` URL offline.

Page structure (stable ids, used by tests and by anyone scripting against the page):
``#header`` (with ``#seal-warning`` when the run was trained on another test seal), ``#loss-chart`` (an
``<svg>`` with ``polyline.series-train`` / ``polyline.series-eval``, axes and a legend), ``#metrics-table``,
``#variants-table`` (only with variants), ``#judge``, ``#regression``, ``#examples`` (one
``article.example`` per item, failures first; the expected-vs-tuned ``.line-diff`` marks lines with
``diff-del`` / ``diff-add`` / ``diff-same``). The inline script sets ``data-rendered="1"`` on
``<body>`` once the chart interactions and filters are wired up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunesmith.evaluate.report.chart import loss_chart
from tunesmith.evaluate.report.data import ReportData
from tunesmith.evaluate.report.sections import examples, header, judge_section, metrics_table, regression_section
from tunesmith.io import write_text_atomic
from tunesmith.web_page import asset, html_page


def _variants_section(variants: Mapping[str, Any] | None) -> str:
    if not variants:
        return ""  # no constrained evaluation: the page stays as it was
    from tunesmith.evaluate.report.variants import render_variants

    return '</section><section id="constrained"><h2>Constrained decoding</h2>' + render_variants(variants)


def render_report(data: ReportData | Mapping[str, Any]) -> str:
    """Render `data` (a `ReportData`, or a dict read by `ReportData.from_mapping`) as one HTML page."""
    report = data if isinstance(data, ReportData) else ReportData.from_mapping(data)
    body = "".join(
        [
            header(report),
            '<main><section id="loss"><h2>Loss</h2>',
            loss_chart(report.loss_curve),
            '</section><section id="metrics"><h2>Metrics: base vs tuned</h2>',
            metrics_table(report.metrics),
            _variants_section(report.variants),
            '</section><section id="judge"><h2>LLM judge</h2>',
            judge_section(report.judge),
            '</section><section id="regression"><h2>Regression set</h2>',
            regression_section(report.regression),
            '</section><section id="examples"><h2>Examples (failures first)</h2>',
            examples(report.items),
            "</section></main>",
        ]
    )
    package = __package__ or "tunesmith.evaluate.report"
    return html_page(title=report.title, css=asset(package, "page.css"), script=asset(package, "page.js"), body=body)


def write_report(path: str | os.PathLike[str], data: ReportData | Mapping[str, Any]) -> Path:
    """Render and write the report atomically (never a half-written page); returns the path."""
    target = Path(path)
    write_text_atomic(target, render_report(data))
    return target
