"""The review page itself: one self-contained HTML document rendered through the shared page shell
(`tunesmith.web_page`) in the spot-check page's style. Its stylesheet and script ship beside this module
(``review.css``, ``review.js``); the Content-Security-Policy allows only that script, by hash, and requests
to its own origin.

`review_app` serves it; the script talks to the routes documented there.
"""

from __future__ import annotations

from functools import cache

from tunesmith.web_page import asset, content_security_policy, html_page

_BODY = (
    '<main id="review"><h1>Review <span id="file"></span></h1>'
    '<p class="intro">Read each example and decide: accept it as it is, edit the answer (it is checked against the '
    "output contract as you type and cannot be saved while it breaks it), or reject it, with a reason if you like. "
    "The most diverse examples come first; the review target is the first max(50, 10 %). Every decision is saved to "
    "the file at once. Keys: <kbd>a</kbd> accept, <kbd>e</kbd> edit (<kbd>Ctrl</kbd>+<kbd>Enter</kbd> saves, "
    "<kbd>Esc</kbd> cancels), <kbd>r</kbd> reject (<kbd>Enter</kbd> confirms), <kbd>u</kbd> undo, "
    "<kbd>j</kbd>/<kbd>k</kbd> or arrows next/previous, <kbd>n</kbd> next undecided.</p>"
    '<div class="bar"><strong id="progress"></strong><span id="total" class="note"></span>'
    '<span id="contract" class="note"></span><span id="save-status"></span></div>'
    '<div id="conflict" hidden><span id="conflict-text"></span> '
    '<button type="button" id="reload">reload from disk</button></div>'
    '<div id="rows"></div></main>'
)


@cache
def review_page() -> tuple[str, str]:
    """(the HTML, its Content-Security-Policy), read from the package files on first use."""
    package = __package__ or "tunesmith.distill"
    script = asset(package, "review.js")
    html = html_page(title="tunesmith review", css=asset(package, "review.css"), script=script, body=_BODY,
                     connect_self=True)
    return html, content_security_policy(script, connect_self=True)
