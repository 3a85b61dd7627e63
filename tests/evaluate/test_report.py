"""The HTML report: rendered in Python, then checked in real headless Chromium (file:// URL, offline)."""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re

import pytest

from fixtures.browser import body_attribute, chromium_path, parse_html, render_dom, screenshot
from tunesmith.errors import UsageError
from tunesmith.evaluate.report import ReportData, format_estimate, render_report, write_report
from tunesmith.evaluate.report.data import Item
from tunesmith.evaluate.types import Estimate

INJECTED = "<script>alert(1)</script>"


def need_chromium() -> str:
    """Browser tests fail (never skip) without Chromium."""
    path = chromium_path()
    if path is None:
        pytest.fail("Chromium is not installed (/usr/bin/chromium): run `bash scripts/install-browser.sh` first")
    return path


def report_data() -> dict:
    train = [[s, 2.6 * math.exp(-s / 120) + 0.45 + 0.04 * math.sin(s / 7)] for s in range(0, 601, 5)]
    train.append([605, float("nan")])  # a diverged step must not break the chart
    evals = [[s, 2.5 * math.exp(-s / 130) + 0.6] for s in range(0, 601, 50)]
    return {
        "title": "pyfunc-json evaluation",
        "run_id": "20240601-121500-ab12",
        "created": "2024-06-01T12:15:00Z",
        "task": "Describe a Python function as a JSON spec",
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "loss_curve": {"train": train, "eval": evals},
        "metrics": [
            {"name": "exact_match", "base": Estimate(0.31, 0.22, 0.41, 90).to_dict(),
             "tuned": {"mean": 0.533, "lo": 0.44, "hi": 0.62, "n": 90},
             "diff": {"mean": 0.222, "lo": 0.12, "hi": 0.32, "n": 90}, "p_value": 0.0004, "verdict": "better"},
            {"name": "json_valid", "base": {"mean": 0.81, "lo": 0.72, "hi": 0.88, "n": 90},
             "tuned": {"mean": 0.97, "lo": 0.91, "hi": 0.99, "n": 90},
             "diff": {"mean": 0.16, "lo": 0.08, "hi": 0.24, "n": 90}, "p_value": 0.002, "verdict": "better"},
            {"name": "refusals", "base": {"mean": 0.02, "lo": 0.0, "hi": 0.08, "n": 90},
             "tuned": {"mean": 0.06, "lo": 0.02, "hi": 0.12, "n": 90},
             "diff": {"mean": 0.04, "lo": -0.01, "hi": 0.09, "n": 90}, "p_value": 0.18,
             "verdict": "no detectable difference"},
            {"name": "judge_only", "base": None, "tuned": None, "diff": None, "p_value": None, "verdict": None},
        ],
        "judge": {
            "rubric": {"base": {"correctness": {"mean": 3.1, "lo": 2.8, "hi": 3.4, "n": 90}, "format": 3.9},
                       "tuned": {"correctness": {"mean": 4.2, "lo": 4.0, "hi": 4.4, "n": 90}, "format": 4.7}},
            "pairwise": {"wins_base": 14, "wins_tuned": 61, "ties": 15, "position_consistency_rate": 0.87, "failures": 2},
        },
        "regression": {"passed": 48, "total": 50, "gate": "fail",
                       "flips": [{"id": "reg-7", "before": False, "after": True},
                                 {"id": "reg-12", "before": True, "after": False}]},
        "items": [
            {"id": "ex-pass-1", "prompt": "def add(a, b): return a + b", "expected": '{"name": "add"}',
             "base_output": "Sure! Here it is.", "tuned_output": '{"name": "add"}', "passed": True,
             "failures": [], "scores": {"exact_match": 1.0}},
            {"id": "ex-fail-1", "prompt": f"def f(x): ...  # {INJECTED}",
             "expected": '{"name": "f",\n "args": ["x"]}',
             "base_output": '<img src=x onerror="alert(2)">',
             "tuned_output": f'{{"name": "f",\n "args": ["y"]}}\n{INJECTED}',
             "passed": False, "failures": ["exact_match: output differs", f"json_valid: trailing text {INJECTED}"],
             "scores": {"exact_match": 0.0, "judge": 2}},
            {"id": "ex-pass-2", "prompt": "def g(): pass", "expected": '{"name": "g"}',
             "base_output": "g", "tuned_output": '{"name": "g"}', "passed": True, "failures": [], "scores": {}},
            {"id": "ex-fail-2", "prompt": "def h(y): ...", "expected": '{"name": "h"}', "base_output": "",
             "tuned_output": "</pre></div><script>document.title='pwned'</script>", "passed": False,
             "failures": ["json_valid: not JSON"], "scores": {}},
        ],
    }


# --- pure Python ------------------------------------------------------------------------------


def test_estimates_are_formatted_as_mean_interval_n() -> None:
    assert format_estimate({"mean": 0.533, "lo": 0.44, "hi": 0.62, "n": 90}) == "0.53 [0.44, 0.62] (n=90)"
    assert format_estimate(Estimate(0.05, -0.02, 0.12, 90), signed=True) == "+0.05 [-0.02, +0.12] (n=90)"
    assert format_estimate(None) == "—"


def test_untrusted_text_is_escaped_and_page_is_self_contained() -> None:
    page = render_report(report_data())
    assert INJECTED not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page
    assert page.count("<script") == 1  # the page's own script, nothing else
    # no external resources: the only URL is the SVG namespace (an identifier, never fetched)
    assert set(re.findall(r"(?:https?:)?//[\w.-]+[^\s\"'<>)]*", page)) <= {"http://www.w3.org/2000/svg"}
    assert "Content-Security-Policy" in page and "default-src 'none'" in html.unescape(page)


def test_write_report_is_atomic_and_minimal_data_renders(tmp_path) -> None:
    out = write_report(tmp_path / "sub" / "report.html", {"title": "t", "items": []})
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file left behind
    page = out.read_text(encoding="utf-8")
    assert "No loss curve recorded" in page and "No metrics." in page and "No regression set." in page


def test_malformed_data_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="metrics"):
        render_report({"metrics": {"exact_match": 1}})
    with pytest.raises(UsageError, match="loss_curve.train"):
        render_report({"loss_curve": {"train": [[1, 2, 3]]}})


def test_the_csp_allows_exactly_the_shipped_script_and_styles() -> None:
    from importlib.resources import files

    page = render_report(report_data())
    shipped = files("tunesmith.evaluate.report")
    script = re.search(r"<script>(.*?)</script>", page, flags=re.DOTALL).group(1)
    assert script == shipped.joinpath("page.js").read_text(encoding="utf-8")
    assert re.search(r"<style>(.*?)</style>", page, flags=re.DOTALL).group(1) == shipped.joinpath(
        "page.css").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    csp = html.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1))
    assert f"script-src 'sha256-{digest}'" in csp and "connect-src" not in csp


def test_typed_report_data_renders_the_same_page_as_its_dict() -> None:
    typed = ReportData.from_mapping(report_data())
    assert isinstance(typed.items[0], Item) and typed.judge.pairwise.wins_tuned == 61
    assert render_report(typed) == render_report(report_data())
    assert render_report(ReportData(items=[Item("x", tuned_output="y", passed=False)])).count('data-status="fail"') == 1


# --- real browser -----------------------------------------------------------------------------


def test_report_in_headless_chromium(tmp_path) -> None:
    need_chromium()
    data = report_data()
    path = write_report(tmp_path / "report.html", data)
    dom = render_dom(path.as_uri())
    assert body_attribute(dom, "data-rendered") == "1", "the inline script did not finish"
    doc = parse_html(dom)

    # no injected element: the only <script> is the page's own; the injected text is shown as text
    scripts = doc.find_all("script")
    assert len(scripts) == 1 and "alert" not in scripts[0].text()
    assert not doc.find_all("img")
    assert "pwned" not in (doc.find("title").text())
    assert INJECTED in doc.find(id="examples").text()

    # header
    header = doc.find(id="header").text()
    for s in ("Describe a Python function as a JSON spec", "20240601-121500-ab12",
              "HuggingFaceTB/SmolLM2-135M-Instruct", "2024-06-01T12:15:00Z"):
        assert s in header

    # loss chart: an SVG with one line per series, axes and a legend
    svg = doc.find("svg", id="loss-chart")
    assert svg is not None
    train = svg.find("polyline", cls="series-train")
    evals = svg.find("polyline", cls="series-eval")
    assert train is not None and evals is not None
    assert len(train.attrs["points"].split()) == 121  # the NaN step is left out
    assert len(evals.attrs["points"].split()) == 13
    for line in (train, evals):
        xy = [tuple(map(float, p.split(","))) for p in line.attrs["points"].split()]
        assert all(0 <= x <= 760 and 0 <= y <= 320 for x, y in xy)
    assert svg.find(id="loss-chart-x-axis") and svg.find(id="loss-chart-y-axis")
    legend = svg.find(id="loss-chart-legend").text()
    assert "train loss" in legend and "eval loss" in legend
    assert "step" in svg.find(id="loss-chart-x-axis").text()

    # metrics table: one row per metric, intervals formatted
    table = doc.find("table", id="metrics-table")
    rows = table.find("tbody").find_all("tr")
    assert [r.attrs["data-metric"] for r in rows] == ["exact_match", "json_valid", "refusals", "judge_only"]
    cells = [c.text() for c in rows[0].find_all("td")]
    assert cells == ["0.31 [0.22, 0.41] (n=90)", "0.53 [0.44, 0.62] (n=90)", "+0.22 [+0.12, +0.32] (n=90)",
                     "<0.001", "better"]
    assert [c.text() for c in rows[3].find_all("td")] == ["—"] * 5

    # judge and regression
    judge = doc.find(id="judge").text()
    assert "correctness" in judge and "4.20 [4.00, 4.40] (n=90)" in judge and "61 (68%)" in judge
    reg = doc.find(id="regression")
    assert "48 / 50" in reg.text() and reg.find(id="regression-gate").text() == "fail"
    flips = reg.find_all("tr", cls="flip")
    assert [f.find("td").text() for f in flips] == ["reg-12", "reg-7"]  # newly failing first
    assert "newly-failing" in flips[0].classes

    # examples: failures first, each with a line diff of expected vs tuned
    arts = doc.find(id="examples").find_all("article", cls="example")
    assert [a.attrs["data-item-id"] for a in arts] == ["ex-fail-1", "ex-fail-2", "ex-pass-1", "ex-pass-2"]
    assert [a.attrs["data-status"] for a in arts] == ["fail", "fail", "pass", "pass"]
    diff = arts[0].find(cls="line-diff")
    assert [d.text()[1:] for d in diff.find_all(cls="diff-del")] == [' "args": ["x"]}']
    assert [d.text()[1:] for d in diff.find_all(cls="diff-add")] == [' "args": ["y"]}', INJECTED]
    assert [d.text()[1:] for d in diff.find_all(cls="diff-same")] == ['{"name": "f",']
    assert not arts[2].find_all(cls="diff-del") and not arts[2].find_all(cls="diff-add")

    # a screenshot: the page really paints (chart, tables, examples)
    png = screenshot(path.as_uri(), tmp_path / "report.png", height=2200)
    data_png = png.read_bytes()
    assert data_png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data_png) > 10_000


def test_training_data_provenance_is_in_the_header_only_when_given() -> None:
    line = "480 of 520 rows generated by gpt-4o-mini: 50 reviewed (3 edited), 2 rejected and left out, 430 unreviewed"
    page = render_report({**report_data(), "training_data": line})
    assert "<dt>Training data</dt><dd>" + line + "</dd>" in page
    assert "Training data" not in render_report(report_data())


def test_the_test_seal_is_in_the_header_and_a_changed_one_is_a_warning() -> None:
    seal = {"scored_on": "35770bb9258b" + "0" * 52, "trained_on": "ebb50c729c4c" + "0" * 52,
            "warning": f"run r1 was trained on another test seal {INJECTED}"}
    page = render_report({**report_data(), "seal": seal})
    assert "<dt>Test set seal</dt><dd>35770bb9258b (trained on ebb50c729c4c)</dd>" in page
    assert '<p id="seal-warning" class="warning">run r1 was trained on another test seal &lt;script&gt;' in page
    same = render_report({**report_data(), "seal": {"scored_on": "ab" * 32, "trained_on": "ab" * 32, "warning": None}})
    assert "<dt>Test set seal</dt><dd>abababababab</dd>" in same and "seal-warning" not in same
    plain = render_report(report_data())
    assert "Test set seal" not in plain and "seal-warning" not in plain
    with pytest.raises(UsageError, match="seal"):
        render_report({**report_data(), "seal": "abc"})


def test_the_header_says_which_engine_and_file_answered() -> None:
    tuned = {"engine": "llamacpp", "quant": "f16", "file": "/p/runs/r1/export/model-f16.gguf", "sha256": "ab" * 32,
             "lora": None}
    base = {"engine": "llamacpp", "quant": "f16", "file": "/p/.tunesmith/gguf/tiny-0123456789-f16.gguf",
            "sha256": "cd" * 32, "lora": None}
    page = render_report({**report_data(), "engines": {"tuned": tuned, "base": base}})
    assert ("<dt>Answered by</dt><dd>tuned: llama.cpp, f16 (model-f16.gguf); "
            "base: llama.cpp, f16 (tiny-0123456789-f16.gguf)</dd>") in page
    adapter = {**base, "lora": '/p/runs/r1/export/adapter-f16"<img>.gguf'}  # file names are escaped too
    page = render_report({**report_data(), "engines": {"tuned": adapter, "base": base}})
    assert ("tuned: llama.cpp, f16 (tiny-0123456789-f16.gguf) with GGUF adapter "
            "adapter-f16&quot;&lt;img&gt;.gguf; base: llama.cpp") in page


def test_the_header_names_the_transformers_engine_and_its_dtype() -> None:
    engines = {"tuned": {"engine": "transformers", "dtype": "float32"},
               "base": {"engine": "transformers", "dtype": "float32"}}
    page = render_report({**report_data(), "engines": engines})
    assert "<dt>Answered by</dt><dd>tuned: transformers, float32; base: transformers, float32</dd>" in page
    # evaluations stored before the dtype was recorded, and hosted runs
    older = {"tuned": {"engine": "endpoint"}, "base": {"engine": "transformers"}}
    assert "<dd>tuned: endpoint; base: transformers</dd>" in render_report({**report_data(), "engines": older})
    assert "Answered by" not in render_report(report_data())
    with pytest.raises(UsageError, match="engines"):
        render_report({**report_data(), "engines": ["llamacpp"]})
