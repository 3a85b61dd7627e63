"""The page shell every tunesmith HTML page renders through (report, spot check, review page)."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import tomllib
from pathlib import Path

from tunesmith.web_page import asset, content_security_policy, html_page

ROOT = Path(__file__).resolve().parents[1]


def test_the_csp_allows_only_the_given_script_by_its_hash():
    script = "document.body.dataset.x = '1';"
    digest = "sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    page = html_page(title="a <b>", css="p{}", script=script, body="<p>hi</p>", connect_self=True)
    csp = html.unescape(re.search(r'Content-Security-Policy" content="([^"]+)"', page)[1])
    assert csp == content_security_policy(script, connect_self=True)
    assert f"script-src '{digest}'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
    assert "<title>a &lt;b&gt;</title>" in page and f"<script>{script}</script>" in page


def test_every_shipped_stylesheet_and_script_is_package_data():
    # an editable install reads them from src/ either way; a wheel holds only what package-data lists
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tunesmith"])
    package = ROOT / "src" / "tunesmith"
    shipped = {p.relative_to(package).as_posix() for ext in ("css", "js") for p in package.rglob(f"*.{ext}")}
    assert {"distill/review.css", "distill/review.js", "evaluate/report/page.js"} <= shipped
    assert shipped - listed == set()
    assert asset("tunesmith.distill", "review.js").startswith("(function")
