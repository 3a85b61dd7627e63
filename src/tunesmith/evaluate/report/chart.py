"""The loss chart: server-side SVG, so the page needs no chart library; the page's script adds the hover read-out."""

from __future__ import annotations

import json
import math

from tunesmith.evaluate.report.data import LossCurve
from tunesmith.evaluate.report.format import esc, num

#: Loss curves longer than this are thinned (min and max kept per bucket, so spikes survive).
MAX_CHART_POINTS = 2000


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


def loss_chart(curve: LossCurve | None) -> str:
    train = _thin(curve.train if curve else [])
    evals = _thin(curve.eval if curve else [])
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
            f'<text x="{x:.1f}" y="{mt + ph + 18}" text-anchor="middle">{esc(_tick_label(t, xstep))}</text>'
        )
    parts.append(f'<text class="axis-label" x="{ml + pw / 2:.1f}" y="{height - 8}" text-anchor="middle">step</text></g>')
    parts.append(f'<g class="axis" id="loss-chart-y-axis"><line x1="{ml}" x2="{ml}" y1="{mt}" y2="{mt + ph}"/>')
    for t in yt:
        y = sy(t)
        parts.append(
            f'<line x1="{ml - 5}" x2="{ml}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{ml - 8}" y="{y + 4:.1f}" text-anchor="end">{esc(_tick_label(t, ystep))}</text>'
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
        data_pts = esc(json.dumps([[x, y] for x, y in pts], separators=(",", ":")))
        parts.append(
            f'<polyline id="loss-{name}" class="series series-{name}" fill="none" points="{coords}" '
            f'data-series="{name}" data-points="{data_pts}"/>'
        )
        if name == "eval" and len(pts) <= 200:
            parts.append('<g class="markers series-eval">')
            parts.extend(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3"><title>eval step {esc(num(x))}: {esc(f"{y:.4f}")}</title></circle>'
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
    note = f'<p class="note">{esc("; ".join(notes))}.</p>' if notes else ""
    return "".join(parts) + note
