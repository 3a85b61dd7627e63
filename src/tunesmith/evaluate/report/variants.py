"""The report's "constrained decoding" section: base, base + constrained, tuned, tuned + constrained.

``ReportData.variants`` (what `evaluate.constrained.variants_table` returns) ::

    {"title": str,                                            # the CLI table's title (the page's heading is its own)
     "columns": [str, ...],                                   # e.g. "base", "base + constrained", ...
     "rows": [{"name": str, "values": [estimate | null, ...]}, ...],   # one value per column
     "tokens_per_s": [str | number | null, ...]}              # "cached" when nothing was generated

Same rules as the rest of the page (`evaluate.report`): every value is escaped, a wrong type is a
`UsageError` naming the field.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from tunesmith.evaluate.report.format import esc, format_estimate, num, require


def render_variants(variants: Mapping[str, Any]) -> str:
    columns = variants.get("columns")
    require(isinstance(columns, list) and all(isinstance(c, str) for c in columns),
             "variants.columns must be a list of labels")
    rows = variants.get("rows") or []
    require(isinstance(rows, list), "variants.rows must be a list of {name, values} objects")
    speed = variants.get("tokens_per_s") or [None] * len(columns)
    require(isinstance(speed, list) and len(speed) == len(columns),
             "variants.tokens_per_s must be a list with one entry per column")
    head = "".join(f'<th scope="col">{esc(c)}</th>' for c in columns)
    body = []
    for row in rows:
        require(isinstance(row, Mapping) and isinstance(row.get("values"), list)
                 and len(row["values"]) == len(columns),
                 "each variants.rows entry must be {name, values} with one value per column")
        cells = "".join(f'<td class="est">{esc(format_estimate(v))}</td>' for v in row["values"])
        body.append(f'<tr class="metric" data-metric="{esc(row.get("name"))}"><th scope="row">{esc(row.get("name"))}</th>'
                    f"{cells}</tr>")
    cells = "".join(f'<td class="speed">{esc(_speed(v))}</td>' for v in speed)
    body.append(f'<tr class="speed"><th scope="row">tokens/s</th>{cells}</tr>')
    return (f'<table id="variants-table" class="data"><thead><tr><th scope="col">metric</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>'
            '<p class="note">Constrained answers are decoded under a grammar built from the output contract '
            "(they cannot break it); only the sealed test set is answered constrained. Mean [95 % interval] "
            "(n = examples); tokens/s counts answers generated in this evaluation (cached: none were).</p>")


def _speed(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return num(value)
    return str(value)
