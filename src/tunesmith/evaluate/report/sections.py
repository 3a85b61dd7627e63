"""The report's sections, each from its part of `ReportData`; every text from the data is escaped (outputs are untrusted)."""

from __future__ import annotations

import difflib
from typing import Any

from tunesmith.evaluate.report.data import Flip, Item, Judge, MetricRow, Regression, ReportData
from tunesmith.evaluate.report.format import (
    engine_text, esc, finite, format_created, format_estimate, format_p, num, value_text,
)


def header(data: ReportData) -> str:
    rows = [
        ("Task", data.task),
        ("Run", data.run_id),
        ("Base model", data.base_model),
        ("Date", format_created(data.created)),
    ]
    if data.training_data:  # only runs trained on teacher-generated rows say where they came from
        rows.insert(3, ("Training data", data.training_data))
    seal = data.seal
    if seal and seal.scored_on:
        scored, trained = str(seal.scored_on), seal.trained_on
        other = f" (trained on {str(trained)[:12]})" if trained and trained != scored else ""
        rows.append(("Test set seal", scored[:12] + other))
    if data.engines:
        rows.append(("Answered by", "; ".join(f"{role}: {engine_text(e)}" for role, e in data.engines.items())))
    cells = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v) if v not in (None, '') else '—'}</dd>" for k, v in rows)
    warning = f'<p id="seal-warning" class="warning">{esc(seal.warning)}</p>' if seal and seal.warning else ""
    return f'<header id="header"><h1>{esc(data.title)}</h1><dl class="meta">{cells}</dl>{warning}</header>'


_VERDICT_CLASS = {"better": "good", "worse": "bad", "no detectable difference": "neutral"}


def metrics_table(metrics: list[MetricRow]) -> str:
    if not metrics:
        return '<p class="empty">No metrics.</p>'
    rows = []
    for m in metrics:
        verdict = m.verdict
        vclass = _VERDICT_CLASS.get(str(verdict), "neutral") if verdict else "none"
        rows.append(
            f'<tr class="metric" data-metric="{esc(m.name)}">'
            f'<th scope="row">{esc(m.name)}</th>'
            f'<td class="est base">{esc(format_estimate(m.base))}</td>'
            f'<td class="est tuned">{esc(format_estimate(m.tuned))}</td>'
            f'<td class="est diff">{esc(format_estimate(m.diff, signed=True))}</td>'
            f'<td class="p">{format_p(m.p_value)}</td>'
            f'<td class="verdict"><span class="badge {vclass}">{esc(verdict) if verdict else "—"}</span></td></tr>'
        )
    return (
        '<table id="metrics-table" class="data"><thead><tr><th scope="col">metric</th>'
        '<th scope="col">base</th><th scope="col">tuned</th><th scope="col">diff (tuned − base)</th>'
        '<th scope="col">p</th><th scope="col">verdict</th></tr></thead><tbody>'
        + "".join(rows)
        + '</tbody></table><p class="note">Mean [95 % interval] (n = examples).</p>'
    )


def judge_section(judge: Judge | None) -> str:
    if not judge:
        return '<p class="empty">No LLM-judge results.</p>'
    out = []
    if judge.rubric:
        base, tuned = judge.rubric.base, judge.rubric.tuned
        names = list(dict.fromkeys([*base.keys(), *tuned.keys()]))
        rows = "".join(
            f'<tr><th scope="row">{esc(k)}</th><td>{esc(value_text(base.get(k)))}</td>'
            f"<td>{esc(value_text(tuned.get(k)))}</td></tr>"
            for k in names
        )
        out.append(
            '<h3>Rubric scores</h3><table id="judge-rubric" class="data"><thead><tr><th scope="col">criterion</th>'
            f'<th scope="col">base</th><th scope="col">tuned</th></tr></thead><tbody>{rows}</tbody></table>'
        )
    pw = judge.pairwise
    if pw:
        wb, wt, ti = pw.wins_base, pw.wins_tuned, pw.ties
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
        pcr = pw.position_consistency_rate
        items = [
            ("tuned wins", f"{wt}" + (f" ({wt / total:.0%})" if total else "")),
            ("base wins", f"{wb}" + (f" ({wb / total:.0%})" if total else "")),
            ("ties", f"{ti}" + (f" ({ti / total:.0%})" if total else "")),
            ("position consistency", "—" if pcr is None else (f"{pcr:.0%}" if finite(pcr) else str(pcr))),
            ("judge failures", num(pw.failures)),
        ]
        dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items)
        out.append(f'<h3>Pairwise (judge, both orders)</h3><div id="judge-pairwise">{bar}<dl class="meta">{dl}</dl></div>')
    return "".join(out) or '<p class="empty">No LLM-judge results.</p>'


def regression_section(reg: Regression | None) -> str:
    if not reg:
        return '<p class="empty">No regression set.</p>'
    gate = reg.gate
    gclass = {"pass": "good", "fail": "bad"}.get(str(gate), "none")
    flips = reg.flips
    broke = [f for f in flips if f.before and not f.after]
    fixed = [f for f in flips if not f.before and f.after]
    other = [f for f in flips if f.before == f.after]
    head = (
        f'<p class="summary"><strong>{esc(num(reg.passed))} / {esc(num(reg.total))}</strong> regression '
        f'cases pass. Gate: <span class="badge {gclass}" id="regression-gate">{esc(gate) if gate else "—"}</span>. '
        f"{len(broke)} newly failing, {len(fixed)} newly passing.</p>"
    )
    if not flips:
        return head + '<p class="empty">No case changed outcome.</p>'

    def row(f: Flip, kind: str) -> str:
        def pf(v: Any) -> str:
            return "pass" if v else "fail"

        return (
            f'<tr class="flip {kind}"><td>{esc(f.id)}</td><td class="{pf(f.before)}">{pf(f.before)}</td>'
            f'<td class="{pf(f.after)}">{pf(f.after)}</td><td>{esc(kind.replace("-", " "))}</td></tr>'
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
            rows.append(f'<div class="diff-del"><span class="mark">−</span>{esc(text)}</div>')
        elif tag == "+ ":
            rows.append(f'<div class="diff-add"><span class="mark">+</span>{esc(text)}</div>')
        elif tag == "  ":
            rows.append(f'<div class="diff-same"><span class="mark"> </span>{esc(text)}</div>')
    return f'<div class="line-diff" role="group" aria-label="expected vs tuned output">{"".join(rows)}</div>'


def _pre(text: Any, cls: str) -> str:
    if text is None:
        return f'<p class="empty {cls}">(none)</p>'
    return f'<pre class="{cls}">{esc(text)}</pre>'


def examples(items: list[Item]) -> str:
    if not items:
        return '<p class="empty">No per-example results.</p>'
    rank = {False: 0, None: 1, True: 2}
    ordered = sorted(items, key=lambda it: rank[it.passed])
    n_fail = sum(1 for it in items if it.passed is False)
    out = [
        f'<div class="filters" role="group" aria-label="filter examples">'
        f'<button type="button" data-filter="all" class="active">all ({len(items)})</button>'
        f'<button type="button" data-filter="fail">failures ({n_fail})</button>'
        f'<button type="button" data-filter="pass">passes ({len(items) - n_fail})</button></div>'
    ]
    for i, it in enumerate(ordered):
        passed = it.passed
        status = "pass" if passed is True else "fail" if passed is False else "unknown"
        failures, scores = it.failures, it.scores
        fail_html = (
            '<ul class="failures">' + "".join(f"<li>{esc(f)}</li>" for f in failures) + "</ul>" if failures else ""
        )
        score_html = ""
        if scores:
            score_html = '<dl class="scores">' + "".join(
                f"<dt>{esc(k)}</dt><dd>{esc(value_text(v))}</dd>" for k, v in scores.items()
            ) + "</dl>"
        expected, tuned = it.expected, it.tuned_output
        if expected is not None and tuned is not None:
            diff = "<h4>Expected vs tuned output</h4>" + _line_diff(str(expected), str(tuned))
        else:
            diff = "<h4>Tuned output</h4>" + _pre(tuned, "tuned-output") + (
                '<p class="note">No expected output to diff against.</p>' if expected is None else ""
            )
        open_attr = " open" if status != "pass" else ""
        out.append(
            f'<article class="example {status}" id="example-{i}" data-item-id="{esc(it.id)}" data-status="{status}">'
            f'<details{open_attr}><summary><span class="badge {"good" if status == "pass" else "bad" if status == "fail" else "none"}">'
            f'{status}</span> <code class="item-id">{esc(it.id)}</code></summary>'
            f"{fail_html}{score_html}<h4>Prompt</h4>{_pre(it.prompt, 'prompt')}{diff}"
            f"<details class=\"outputs\"><summary>raw outputs</summary><h4>Expected</h4>{_pre(expected, 'expected')}"
            f"<h4>Tuned output</h4>{_pre(tuned, 'tuned-output')}<h4>Base output</h4>{_pre(it.base_output, 'base-output')}"
            "</details></details></article>"
        )
    return "".join(out)
