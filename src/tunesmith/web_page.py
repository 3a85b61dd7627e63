"""The HTML page shell every tunesmith page renders through (the report, the spot check, the review page):
head, Content-Security-Policy, styles, script.

Pages are self-contained files: their CSS and JS ship as package files (beside the module that renders
them, listed in pyproject's package-data) and are inlined here. The CSP allows only the inlined script,
by the SHA-256 of the very text shipped, so even a missed escape in the body could not run a script.
"""

from __future__ import annotations

import base64
import hashlib
import html
from importlib.resources import files


def asset(package: str, name: str) -> str:
    """A text file shipped inside `package` (listed in pyproject's package-data)."""
    return files(package).joinpath(name).read_text(encoding="utf-8")


def script_hash(script: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")


def content_security_policy(script: str, *, connect_self: bool = False, base_uri: bool = True) -> str:
    """No network access at all, or (`connect_self`) only to the server that served the page.

    `base_uri=False` leaves out ``base-uri 'none'`` for the blinded spot check, whose page must not hold
    the word "base" anywhere (connect-src 'self' still keeps its requests on its own server).
    """
    connect = "connect-src 'self'; " if connect_self else ""
    base = "base-uri 'none'; " if base_uri else ""
    return (
        f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; {connect}"
        f"script-src '{script_hash(script)}'; {base}form-action 'none'"
    )


def html_page(*, title: str, css: str, script: str, body: str, connect_self: bool = False,
              base_uri: bool = True) -> str:
    """One complete page: `body` is already-escaped HTML; `title` is escaped here."""
    csp = content_security_policy(script, connect_self=connect_self, base_uri=base_uri)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(csp, quote=True)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="tunesmith">'
        f"<title>{html.escape(title, quote=True)}</title><style>{css}</style></head>\n"
        f"<body>{body}<script>{script}</script></body></html>\n"
    )
