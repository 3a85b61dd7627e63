"""The evaluation report: one self-contained HTML page (inline CSS, inline JS, server-side SVG).

The page makes no network request of any kind (a Content-Security-Policy in the page forbids it),
so it can be mailed, archived with the run, or opened from a ``file://`` URL offline. Every piece
of text that comes from ``data`` is HTML-escaped: model outputs are untrusted. The CSP also allows
only the page's own inline script (by its SHA-256), so even a missed escape could not run a script.

``render_report(data) -> str`` builds the page; ``write_report(path, data)`` writes it atomically.

The input ``data`` (a plain dict; JSON-compatible) ::

    {
      "title":      str,                  # page title (default "Evaluation report")
      "run_id":     str,
      "created":    str | float,          # ISO 8601 text, or a Unix timestamp (shown in UTC)
      "task":       str,
      "base_model": str,
      "seal": {                           # or null / missing: no seal row
        "scored_on":  str | null,         # SHA-256 of the test seal this evaluation was scored on
        "trained_on": str | null,         # ... and of the one the run was trained with
        "warning":    str | null,         # shown above the metrics when the two differ
      },
      "loss_curve": {                     # or null / missing: "no loss curve" is shown
        "train": [[step, loss], ...],
        "eval":  [[step, loss], ...],
      },
      "metrics": [                        # one row per metric
        {
          "name":    str,
          "base":    {"mean", "lo", "hi", "n"} | null,   # an Estimate (or its to_dict())
          "tuned":   {"mean", "lo", "hi", "n"} | null,
          "diff":    {"mean", "lo", "hi", "n"} | null,   # tuned - base, paired
          "p_value": float | null,
          "verdict": "better" | "worse" | "no detectable difference" | null,
        }, ...
      ],
      "variants": {...} | null,           # constrained decoding side by side (`evaluate.report_variants`)
      "judge": {                          # or null
        "rubric":   {"base": {criterion: value, ...}, "tuned": {criterion: value, ...}} | null,
        "pairwise": {"wins_base": int, "wins_tuned": int, "ties": int,
                     "position_consistency_rate": float | null, "failures": int} | null,
      },
      "regression": {                     # or null
        "passed": int, "total": int,
        "flips": [{"id": str, "before": bool, "after": bool}, ...],   # before/after: passed?
        "gate": "pass" | "fail" | null,
      },
      "items": [
        {"id": str, "prompt": str, "expected": str | null,
         "base_output": str | null, "tuned_output": str | null,
         "passed": bool, "failures": [str, ...], "scores": {name: value, ...}}, ...
      ],
    }

A rubric value may be a number, an Estimate dict or any text. Missing sections render as
"not available"; wrong types raise `UsageError`.

Page structure (stable ids, used by tests and by anyone scripting against the page):
``#header`` (with ``#seal-warning`` when the run was trained on another test seal), ``#loss-chart`` (an
``<svg>`` with ``polyline.series-train`` / ``polyline.series-eval``, axes and a legend), ``#metrics-table``, ``#variants-table`` (only with variants), ``#judge``, ``#regression``, ``#examples`` (one
``article.example`` per item, failures first; the expected-vs-tuned ``.line-diff`` marks lines with
``diff-del`` / ``diff-add`` / ``diff-same``). The inline script sets ``data-rendered="1"`` on
``<body>`` once the chart interactions and filters are wired up.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import difflib
import hashlib
import html
import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunesmith.errors import UsageError
from tunesmith.io import write_text_atomic

__all__ = ["render_report", "write_report", "format_estimate"]

#: Loss curves longer than this are thinned (min and max kept per bucket, so spikes survive).
MAX_CHART_POINTS = 2000


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """Escape any value for HTML text or a double-quoted attribute."""
    if value is None:
        return ""
    return html.escape(str(value), quote=True)


def _finite(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: Any, *, signed: bool = False) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if not isinstance(x, numbers.Real):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    sign = "+" if signed else ""
    ax = abs(x)
    if isinstance(x, numbers.Integral):
        x = int(x)
    else:
        x = float(x)
    if isinstance(x, int) and ax < 10**6:
        return f"{x:{sign}d}"
    if ax >= 1000:
        return f"{x:{sign},.0f}"
    if ax >= 100:
        return f"{x:{sign}.1f}"
    return f"{x:{sign}.2f}"


def _as_estimate(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping) and "mean" in value:
        return {k: value.get(k) for k in ("mean", "lo", "hi", "n")}
    return None


def format_estimate(value: Any, *, signed: bool = False) -> str:
    """``0.53 [0.44, 0.62] (n=90)``; ``—`` for null. Accepts an Estimate or its dict."""
    est = _as_estimate(value)
    if est is None:
        return "—" if value is None else str(value)
    text = _num(est["mean"], signed=signed)
    if est.get("lo") is not None and est.get("hi") is not None:
        text += f" [{_num(est['lo'], signed=signed)}, {_num(est['hi'], signed=signed)}]"
    if est.get("n") is not None:
        text += f" (n={est['n']})"
    return text


def _format_p(p: Any) -> str:
    if p is None:
        return "—"
    if not _finite(p):
        return str(p)
    if p < 0.001:
        return "&lt;0.001"
    if p < 0.01:
        return f"{p:.3f}"
    return f"{p:.2f}"


def _format_created(created: Any) -> str:
    if created is None or created == "":
        return "—"
    if _finite(created):
        return _dt.datetime.fromtimestamp(float(created), tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return str(created)


def _value_text(value: Any) -> str:
    """A rubric / score value as text (escaped by the caller)."""
    est = _as_estimate(value)
    if est is not None:
        return format_estimate(est)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Real):
        return _num(value)
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return "—" if value is None else str(value)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise UsageError(f"report data: {message}", hint="see the schema in tunesmith.evaluate.report's docstring")


def _section(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = data.get(key)
    _require(value is None or isinstance(value, kind), f"{key!r} must be {what} or null, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------------------
# loss chart (server-side SVG)
# ---------------------------------------------------------------------------------------------


def _clean_points(raw: Any, name: str) -> list[tuple[float, float]]:
    if raw is None:
        return []
    _require(isinstance(raw, Sequence) and not isinstance(raw, str), f"loss_curve.{name} must be a list of [step, loss]")
    out: list[tuple[float, float]] = []
    for pt in raw:
        _require(
            isinstance(pt, Sequence) and not isinstance(pt, str) and len(pt) == 2,
            f"loss_curve.{name} entries must be [step, loss] pairs, got {pt!r}"[:200],
        )
        step, loss = pt
        if _finite(step) and _finite(loss):  # NaN / inf losses (a diverged step) are left out of the line
            out.append((float(step), float(loss)))
    out.sort(key=lambda p: p[0])
    return out


def _thin(points: list[tuple[float, float]], limit: int = MAX_CHART_POINTS) -> list[tuple[float, float]]:
    if len(points) <= limit:
        return points
    buckets = limit // 2
    size = len(points) / buckets
    out: list[tuple[float, float]] = []
    for b in range(buckets):
        chunk = points[int(b * size): int((b + 1) * size)]
        if not chunk:
            continue
        lo = min(chunk, key=lambda p: p[1])
        hi = max(chunk, key=lambda p: p[1])
        out.extend(sorted({lo, hi}, key=lambda p: p[0]))
    if out[-1] != points[-1]:
        out.append(points[-1])
    return out


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _tick_label(v: float, step: float) -> str:
    if step >= 1 and abs(v - round(v)) < 1e-9:
        return f"{int(round(v)):,}"
    decimals = 0
    while decimals < 6 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-9:
        decimals += 1
    return f"{v:.{decimals}f}"


def _loss_chart(curve: Mapping[str, Any] | None) -> str:
    train = _thin(_clean_points((curve or {}).get("train"), "train"))
    evals = _thin(_clean_points((curve or {}).get("eval"), "eval"))
    if not train and not evals:
        return '<p class="empty" id="loss-chart-empty">No loss curve recorded for this run.</p>'

    width, height = 760, 320
    ml, mr, mt, mb = 64, 20, 36, 48
    pw, ph = width - ml - mr, height - mt - mb
    allp = train + evals
    x0, x1 = min(p[0] for p in allp), max(p[0] for p in allp)
    y0, y1 = min(p[1] for p in allp), max(p[1] for p in allp)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    else:
        pad = (y1 - y0) * 0.05
        y0, y1 = y0 - pad, y1 + pad
    if y0 < 0 <= min(p[1] for p in allp):
        y0 = 0.0

    def sx(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return mt + (1 - (y - y0) / (y1 - y0)) * ph

    parts: list[str] = [
        f'<svg id="loss-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-labelledby="loss-chart-title" '
        f'data-x0="{x0!r}" data-x1="{x1!r}" data-y0="{y0!r}" data-y1="{y1!r}" '
        f'data-ml="{ml}" data-mt="{mt}" data-pw="{pw}" data-ph="{ph}">',
        '<title id="loss-chart-title">Training and evaluation loss by step</title>',
        f'<rect class="plot-bg" x="{ml}" y="{mt}" width="{pw}" height="{ph}"/>',
    ]
    # grid + axes
    xt = _nice_ticks(x0, x1, 6)
    yt = _nice_ticks(y0, y1, 6)
    xstep = xt[1] - xt[0] if len(xt) > 1 else 1.0
    ystep = yt[1] - yt[0] if len(yt) > 1 else 1.0
    parts.append('<g class="grid">')
    for t in yt:
        y = sy(t)
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}"/>')
    for t in xt:
        x = sx(t)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + ph}"/>')
    parts.append("</g>")
    parts.append(
        f'<g class="axis" id="loss-chart-x-axis"><line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}"/>'
    )
    for t in xt:
        x = sx(t)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt + ph}" y2="{mt + ph + 5}"/>'
            f'<text x="{x:.1f}" y="{mt + ph + 18}" text-anchor="middle">{_e(_tick_label(t, xstep))}</text>'
        )
    parts.append(f'<text class="axis-label" x="{ml + pw / 2:.1f}" y="{height - 8}" text-anchor="middle">step</text></g>')
    parts.append(f'<g class="axis" id="loss-chart-y-axis"><line x1="{ml}" x2="{ml}" y1="{mt}" y2="{mt + ph}"/>')
    for t in yt:
        y = sy(t)
        parts.append(
            f'<line x1="{ml - 5}" x2="{ml}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{ml - 8}" y="{y + 4:.1f}" text-anchor="end">{_e(_tick_label(t, ystep))}</text>'
        )
    parts.append(
        f'<text class="axis-label" x="16" y="{mt + ph / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 16 {mt + ph / 2:.1f})">loss</text></g>'
    )
    # series
    for name, pts in (("train", train), ("eval", evals)):
        if not pts:
            continue
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        data_pts = _e(json.dumps([[x, y] for x, y in pts], separators=(",", ":")))
        parts.append(
            f'<polyline id="loss-{name}" class="series series-{name}" fill="none" points="{coords}" '
            f'data-series="{name}" data-points="{data_pts}"/>'
        )
        if name == "eval" and len(pts) <= 200:
            parts.append('<g class="markers series-eval">')
            parts.extend(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3"><title>eval step {_e(_num(x))}: {_e(f"{y:.4f}")}</title></circle>'
                for x, y in pts
            )
            parts.append("</g>")
    # legend
    lx = ml + pw - 190
    parts.append(f'<g class="legend" id="loss-chart-legend" transform="translate({lx},{mt - 26})">')
    for i, (name, label, pts) in enumerate((("train", "train loss", train), ("eval", "eval loss", evals))):
        if not pts:
            continue
        x = i * 96
        parts.append(
            f'<line class="series series-{name}" x1="{x}" x2="{x + 22}" y1="8" y2="8"/>'
            f'<text x="{x + 28}" y="12">{label}</text>'
        )
    parts.append("</g>")
    # hover read-out, filled in by the inline script
    parts.append(
        f'<g id="loss-chart-hover" class="hover" visibility="hidden"><line x1="0" x2="0" y1="{mt}" y2="{mt + ph}"/>'
        f'<text x="0" y="{mt + 14}"></text></g>'
    )
    parts.append("</svg>")
    notes = []
    if not train:
        notes.append("no training loss recorded")
    if not evals:
        notes.append("no evaluation loss recorded")
    note = f'<p class="note">{_e("; ".join(notes))}.</p>' if notes else ""
    return "".join(parts) + note


# ---------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------


def _header(data: Mapping[str, Any]) -> str:
    rows = [
        ("Task", data.get("task")),
        ("Run", data.get("run_id")),
        ("Base model", data.get("base_model")),
        ("Date", _format_created(data.get("created"))),
    ]
    if data.get("training_data"):  # only runs trained on teacher-generated rows say where they came from
        rows.insert(3, ("Training data", data["training_data"]))
    seal = data.get("seal") or {}
    if seal.get("scored_on"):
        scored, trained = str(seal["scored_on"]), seal.get("trained_on")
        other = f" (trained on {str(trained)[:12]})" if trained and trained != scored else ""
        rows.append(("Test set seal", scored[:12] + other))
    cells = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v) if v not in (None, '') else '—'}</dd>" for k, v in rows)
    title = data.get("title") or "Evaluation report"
    warning = f'<p id="seal-warning" class="warning">{_e(seal["warning"])}</p>' if seal.get("warning") else ""
    return f'<header id="header"><h1>{_e(title)}</h1><dl class="meta">{cells}</dl>{warning}</header>'


_VERDICT_CLASS = {"better": "good", "worse": "bad", "no detectable difference": "neutral"}


def _metrics(metrics: list[Any] | None) -> str:
    if not metrics:
        return '<p class="empty">No metrics.</p>'
    rows = []
    for m in metrics:
        _require(isinstance(m, Mapping), f"each metrics entry must be an object, got {type(m).__name__}")
        verdict = m.get("verdict")
        vclass = _VERDICT_CLASS.get(str(verdict), "neutral") if verdict else "none"
        rows.append(
            f'<tr class="metric" data-metric="{_e(m.get("name"))}">'
            f'<th scope="row">{_e(m.get("name"))}</th>'
            f'<td class="est base">{_e(format_estimate(m.get("base")))}</td>'
            f'<td class="est tuned">{_e(format_estimate(m.get("tuned")))}</td>'
            f'<td class="est diff">{_e(format_estimate(m.get("diff"), signed=True))}</td>'
            f'<td class="p">{_format_p(m.get("p_value"))}</td>'
            f'<td class="verdict"><span class="badge {vclass}">{_e(verdict) if verdict else "—"}</span></td></tr>'
        )
    return (
        '<table id="metrics-table" class="data"><thead><tr><th scope="col">metric</th>'
        '<th scope="col">base</th><th scope="col">tuned</th><th scope="col">diff (tuned − base)</th>'
        '<th scope="col">p</th><th scope="col">verdict</th></tr></thead><tbody>'
        + "".join(rows)
        + '</tbody></table><p class="note">Mean [95 % interval] (n = examples).</p>'
    )


def _judge(judge: Mapping[str, Any] | None) -> str:
    if not judge:
        return '<p class="empty">No LLM-judge results.</p>'
    out = []
    rubric = judge.get("rubric")
    if rubric:
        _require(isinstance(rubric, Mapping), "judge.rubric must be an object with 'base' and 'tuned'")
        base = rubric.get("base") or {}
        tuned = rubric.get("tuned") or {}
        _require(isinstance(base, Mapping) and isinstance(tuned, Mapping), "judge.rubric.base/tuned must be objects")
        names = list(dict.fromkeys([*base.keys(), *tuned.keys()]))
        rows = "".join(
            f'<tr><th scope="row">{_e(k)}</th><td>{_e(_value_text(base.get(k)))}</td>'
            f"<td>{_e(_value_text(tuned.get(k)))}</td></tr>"
            for k in names
        )
        out.append(
            '<h3>Rubric scores</h3><table id="judge-rubric" class="data"><thead><tr><th scope="col">criterion</th>'
            f'<th scope="col">base</th><th scope="col">tuned</th></tr></thead><tbody>{rows}</tbody></table>'
        )
    pw = judge.get("pairwise")
    if pw:
        _require(isinstance(pw, Mapping), "judge.pairwise must be an object")
        wb, wt, ti = (int(pw.get(k) or 0) for k in ("wins_base", "wins_tuned", "ties"))
        total = wb + wt + ti
        bar = ""
        if total:
            segs, x = [], 0.0
            for cls, label, v in (("tuned", "tuned wins", wt), ("tie", "ties", ti), ("base", "base wins", wb)):
                w = 600 * v / total
                if v:
                    segs.append(
                        f'<rect class="seg-{cls}" x="{x:.1f}" y="0" width="{w:.1f}" height="22">'
                        f"<title>{label}: {v}</title></rect>"
                    )
                x += w
            bar = (
                '<svg id="judge-pairwise-bar" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 600 22" width="600" '
                f'height="22" role="img" aria-label="pairwise outcomes">{"".join(segs)}</svg>'
            )
        pcr = pw.get("position_consistency_rate")
        items = [
            ("tuned wins", f"{wt}" + (f" ({wt / total:.0%})" if total else "")),
            ("base wins", f"{wb}" + (f" ({wb / total:.0%})" if total else "")),
            ("ties", f"{ti}" + (f" ({ti / total:.0%})" if total else "")),
            ("position consistency", "—" if pcr is None else (f"{pcr:.0%}" if _finite(pcr) else str(pcr))),
            ("judge failures", _num(pw.get("failures"))),
        ]
        dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
        out.append(f'<h3>Pairwise (judge, both orders)</h3><div id="judge-pairwise">{bar}<dl class="meta">{dl}</dl></div>')
    return "".join(out) or '<p class="empty">No LLM-judge results.</p>'


def _regression(reg: Mapping[str, Any] | None) -> str:
    if not reg:
        return '<p class="empty">No regression set.</p>'
    gate = reg.get("gate")
    gclass = {"pass": "good", "fail": "bad"}.get(str(gate), "none")
    flips = reg.get("flips") or []
    _require(
        isinstance(flips, list) and all(isinstance(f, Mapping) for f in flips),
        "regression.flips must be a list of {id, before, after} objects",
    )
    broke = [f for f in flips if f.get("before") and not f.get("after")]
    fixed = [f for f in flips if not f.get("before") and f.get("after")]
    other = [f for f in flips if bool(f.get("before")) == bool(f.get("after"))]
    head = (
        f'<p class="summary"><strong>{_e(_num(reg.get("passed")))} / {_e(_num(reg.get("total")))}</strong> regression '
        f'cases pass. Gate: <span class="badge {gclass}" id="regression-gate">{_e(gate) if gate else "—"}</span>. '
        f"{len(broke)} newly failing, {len(fixed)} newly passing.</p>"
    )
    if not flips:
        return head + '<p class="empty">No case changed outcome.</p>'

    def row(f: Mapping[str, Any], kind: str) -> str:
        def pf(v: Any) -> str:
            return "pass" if v else "fail"

        return (
            f'<tr class="flip {kind}"><td>{_e(f.get("id"))}</td><td class="{pf(f.get("before"))}">{pf(f.get("before"))}</td>'
            f'<td class="{pf(f.get("after"))}">{pf(f.get("after"))}</td><td>{_e(kind.replace("-", " "))}</td></tr>'
        )

    rows = [row(f, "newly-failing") for f in broke] + [row(f, "newly-passing") for f in fixed]
    rows += [row(f, "unchanged") for f in other]
    return head + (
        '<table class="data" id="regression-flips"><thead><tr><th scope="col">case</th><th scope="col">before</th>'
        f'<th scope="col">after</th><th scope="col">change</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _line_diff(expected: str, actual: str) -> str:
    """Line diff (difflib.ndiff) of expected vs tuned output; ``?`` hint lines are dropped."""
    rows = []
    for line in difflib.ndiff(expected.splitlines(), actual.splitlines()):
        tag, text = line[:2], line[2:]
        if tag == "- ":
            rows.append(f'<div class="diff-del"><span class="mark">−</span>{_e(text)}</div>')
        elif tag == "+ ":
            rows.append(f'<div class="diff-add"><span class="mark">+</span>{_e(text)}</div>')
        elif tag == "  ":
            rows.append(f'<div class="diff-same"><span class="mark"> </span>{_e(text)}</div>')
    return f'<div class="line-diff" role="group" aria-label="expected vs tuned output">{"".join(rows)}</div>'


def _pre(text: Any, cls: str) -> str:
    if text is None:
        return f'<p class="empty {cls}">(none)</p>'
    return f'<pre class="{cls}">{_e(text)}</pre>'


def _examples(items: list[Any] | None) -> str:
    if not items:
        return '<p class="empty">No per-example results.</p>'
    for it in items:
        _require(isinstance(it, Mapping), f"each items entry must be an object, got {type(it).__name__}")
    rank = {False: 0, None: 1, True: 2}
    ordered = sorted(items, key=lambda it: rank.get(it.get("passed") if isinstance(it.get("passed"), bool) else None, 1))
    n_fail = sum(1 for it in items if it.get("passed") is False)
    out = [
        f'<div class="filters" role="group" aria-label="filter examples">'
        f'<button type="button" data-filter="all" class="active">all ({len(items)})</button>'
        f'<button type="button" data-filter="fail">failures ({n_fail})</button>'
        f'<button type="button" data-filter="pass">passes ({len(items) - n_fail})</button></div>'
    ]
    for i, it in enumerate(ordered):
        passed = it.get("passed")
        status = "pass" if passed is True else "fail" if passed is False else "unknown"
        failures = it.get("failures") or []
        scores = it.get("scores") or {}
        fail_html = (
            '<ul class="failures">' + "".join(f"<li>{_e(f)}</li>" for f in failures) + "</ul>" if failures else ""
        )
        score_html = ""
        if isinstance(scores, Mapping) and scores:
            score_html = '<dl class="scores">' + "".join(
                f"<dt>{_e(k)}</dt><dd>{_e(_value_text(v))}</dd>" for k, v in scores.items()
            ) + "</dl>"
        expected, tuned = it.get("expected"), it.get("tuned_output")
        if expected is not None and tuned is not None:
            diff = "<h4>Expected vs tuned output</h4>" + _line_diff(str(expected), str(tuned))
        else:
            diff = "<h4>Tuned output</h4>" + _pre(tuned, "tuned-output") + (
                '<p class="note">No expected output to diff against.</p>' if expected is None else ""
            )
        open_attr = " open" if status != "pass" else ""
        out.append(
            f'<article class="example {status}" id="example-{i}" data-item-id="{_e(it.get("id"))}" data-status="{status}">'
            f'<details{open_attr}><summary><span class="badge {"good" if status == "pass" else "bad" if status == "fail" else "none"}">'
            f'{status}</span> <code class="item-id">{_e(it.get("id"))}</code></summary>'
            f"{fail_html}{score_html}<h4>Prompt</h4>{_pre(it.get('prompt'), 'prompt')}{diff}"
            f"<details class=\"outputs\"><summary>raw outputs</summary><h4>Expected</h4>{_pre(expected, 'expected')}"
            f"<h4>Tuned output</h4>{_pre(tuned, 'tuned-output')}<h4>Base output</h4>{_pre(it.get('base_output'), 'base-output')}"
            "</details></details></article>"
        )
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# page
# ---------------------------------------------------------------------------------------------

_CSS = """
:root{--fg:#1d2430;--muted:#5b6573;--bg:#fff;--line:#d9dee5;--train:#2f6fdb;--eval:#e0731a;
--good:#1b7f3b;--bad:#b3261e;--neutral:#6b7280;--add:#e6f6ea;--del:#fdeaea}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);
background:var(--bg);margin:0 auto;max-width:1100px;padding:24px}
h1{font-size:24px;margin:0 0 8px}h2{font-size:18px;margin:32px 0 10px;border-bottom:1px solid var(--line);
padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}h4{font-size:13px;margin:12px 0 4px;color:var(--muted)}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}
dl.meta dt{color:var(--muted)}dl.meta dd{margin:0}
table.data{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
table.data th,table.data td{border-bottom:1px solid var(--line);padding:6px 8px;text-align:left;vertical-align:top}
table.data thead th{background:#f4f6f9;font-weight:600}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;background:#eef0f3;color:var(--neutral)}
.badge.good{background:#e3f4e8;color:var(--good)}.badge.bad{background:#fbe4e2;color:var(--bad)}
td.fail{color:var(--bad)}td.pass{color:var(--good)}tr.newly-failing td:first-child{font-weight:600}
.empty,.note{color:var(--muted)}.note{font-size:12px}
p.warning{background:#fbe4e2;color:var(--bad);padding:6px 10px;border-radius:4px}
#loss-chart{max-width:100%;height:auto;font-size:11px}
#loss-chart .plot-bg{fill:#fbfcfd}#loss-chart .grid line{stroke:#eceff3}
#loss-chart .axis line{stroke:#8a94a3}#loss-chart text{fill:#4a5563}#loss-chart .axis-label{font-size:12px}
.series{fill:none;stroke-width:2}.series-train{stroke:var(--train)}.series-eval{stroke:var(--eval)}
.markers circle{fill:var(--eval);stroke:#fff;stroke-width:1}
#loss-chart .hover line{stroke:#9aa3af;stroke-dasharray:3 3}#loss-chart .hover text{fill:var(--fg);font-size:12px}
#judge-pairwise-bar{max-width:100%;height:auto;display:block;margin:4px 0 8px}
.seg-tuned{fill:var(--good)}.seg-tie{fill:#c7ccd4}.seg-base{fill:var(--neutral)}
.filters{margin:0 0 10px}.filters button{font:inherit;border:1px solid var(--line);background:#fff;padding:3px 10px;
border-radius:12px;cursor:pointer;margin-right:6px}.filters button.active{background:var(--fg);color:#fff}
article.example{border:1px solid var(--line);border-left:4px solid var(--line);border-radius:4px;margin:0 0 8px;padding:6px 10px}
article.example.fail{border-left-color:var(--bad)}article.example.pass{border-left-color:var(--good)}
article.example summary{cursor:pointer}article.example.hidden{display:none}
ul.failures{color:var(--bad);margin:6px 0;padding-left:20px}
dl.scores{display:flex;flex-wrap:wrap;gap:2px 14px;margin:6px 0}dl.scores dt{color:var(--muted)}
dl.scores dd{margin:0 8px 0 0}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;border:1px solid var(--line);border-radius:4px;
padding:8px;margin:0;font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;
max-height:420px;overflow:auto}
.line-diff{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;border:1px solid var(--line);
border-radius:4px;overflow:auto;max-height:420px}
.line-diff div{white-space:pre-wrap;word-break:break-word;padding:0 8px}.line-diff .mark{display:inline-block;width:1.4em;color:var(--muted)}
.diff-add{background:var(--add)}.diff-del{background:var(--del)}
@media print{.filters{display:none}details{display:block}}
"""

_JS = r"""
(function () {
  "use strict";
  function chart() {
    var svg = document.getElementById("loss-chart");
    if (!svg) return;
    var d = svg.dataset, x0 = +d.x0, x1 = +d.x1, y0 = +d.y0, y1 = +d.y1;
    var ml = +d.ml, mt = +d.mt, pw = +d.pw, ph = +d.ph;
    var series = [];
    svg.querySelectorAll("polyline[data-points]").forEach(function (el) {
      try { series.push({name: el.getAttribute("data-series"), pts: JSON.parse(el.getAttribute("data-points"))}); }
      catch (e) { /* leave the static chart as it is */ }
    });
    var hover = document.getElementById("loss-chart-hover");
    if (!hover || !series.length) return;
    var line = hover.querySelector("line"), label = hover.querySelector("text");
    function nearest(pts, step) {
      var best = null;
      for (var i = 0; i < pts.length; i++) {
        if (best === null || Math.abs(pts[i][0] - step) < Math.abs(best[0] - step)) best = pts[i];
      }
      return best;
    }
    svg.addEventListener("mousemove", function (ev) {
      var r = svg.getBoundingClientRect();
      var px = (ev.clientX - r.left) * (svg.viewBox.baseVal.width / r.width);
      if (px < ml || px > ml + pw) { hover.setAttribute("visibility", "hidden"); return; }
      var step = x0 + (px - ml) / pw * (x1 - x0);
      var parts = [];
      series.forEach(function (s) {
        var p = nearest(s.pts, step);
        if (p) parts.push(s.name + " " + p[1].toFixed(4) + " @ " + p[0]);
      });
      line.setAttribute("x1", px); line.setAttribute("x2", px);
      label.setAttribute("x", Math.min(px + 6, ml + pw - 220));
      label.textContent = parts.join("   ");
      hover.setAttribute("visibility", "visible");
    });
    svg.addEventListener("mouseleave", function () { hover.setAttribute("visibility", "hidden"); });
  }
  function filters() {
    var buttons = document.querySelectorAll(".filters button");
    buttons.forEach(function (b) {
      b.addEventListener("click", function () {
        var f = b.getAttribute("data-filter");
        buttons.forEach(function (o) { o.classList.toggle("active", o === b); });
        document.querySelectorAll("article.example").forEach(function (a) {
          var s = a.getAttribute("data-status");
          a.classList.toggle("hidden", !(f === "all" || s === f || (f === "fail" && s === "unknown")));
        });
      });
    });
  }
  try { chart(); filters(); } finally { document.body.setAttribute("data-rendered", "1"); }
})();
"""


def _variants_section(variants: Mapping[str, Any] | None) -> str:
    if not variants:
        return ""  # no constrained evaluation: the page stays as it was
    from tunesmith.evaluate.report_variants import render_variants

    return '</section><section id="constrained"><h2>Constrained decoding</h2>' + render_variants(variants)


def _script_hash(script: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")


def render_report(data: Mapping[str, Any]) -> str:
    """Render ``data`` (schema in this module's docstring) as one self-contained HTML page."""
    _require(isinstance(data, Mapping), f"expected an object, got {type(data).__name__}")
    curve = _section(data, "loss_curve", Mapping, "an object")
    _section(data, "seal", Mapping, "an object")
    metrics = _section(data, "metrics", list, "a list")
    variants = _section(data, "variants", Mapping, "an object")
    judge = _section(data, "judge", Mapping, "an object")
    regression = _section(data, "regression", Mapping, "an object")
    items = _section(data, "items", list, "a list")

    title = data.get("title") or "Evaluation report"
    csp = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src '{_script_hash(_JS)}'; base-uri 'none'; form-action 'none'"
    )
    body = "".join(
        [
            _header(data),
            '<main><section id="loss"><h2>Loss</h2>',
            _loss_chart(curve),
            '</section><section id="metrics"><h2>Metrics: base vs tuned</h2>',
            _metrics(metrics),
            _variants_section(variants),
            '</section><section id="judge"><h2>LLM judge</h2>',
            _judge(judge),
            '</section><section id="regression"><h2>Regression set</h2>',
            _regression(regression),
            '</section><section id="examples"><h2>Examples (failures first)</h2>',
            _examples(items),
            "</section></main>",
        ]
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="tunesmith">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n"
        f"<body>{body}<script>{_JS}</script></body></html>\n"
    )


def write_report(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Render and write the report atomically (never a half-written page); returns the path."""
    target = Path(path)
    write_text_atomic(target, render_report(data))
    return target
