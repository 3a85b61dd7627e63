"""Building the blinded page: a seeded sample, a random A/B order per item, and the private key kept apart."""

from __future__ import annotations

import hashlib
import html
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import DataError, UsageError
from tunesmith.io import write_json_atomic, write_text_atomic
from tunesmith.web_page import asset, html_page

PAGE_NAME = "spotcheck.html"
MANIFEST_NAME = "spotcheck.json"  # public: the page id and the item ids, in page order
KEY_NAME = "key.json"  # private: which of A/B is which model; never served


@dataclass
class Spotcheck:
    """The page to show (`html`), the private `key`, and the item ids in page order."""

    html: str
    key: dict[str, dict[str, str]]
    item_ids: list[str]
    page_id: str
    seed: int

    @property
    def n(self) -> int:
        return len(self.item_ids)

    def manifest(self) -> dict[str, Any]:
        return {"spotcheck": self.page_id, "n": self.n, "item_ids": list(self.item_ids)}

    def save(self, directory: str | os.PathLike[str], *, key_path: str | os.PathLike[str] | None = None) -> Path:
        """Write the page, the public manifest and the key (default ``directory/key.json``); returns the page path.

        Share only the page (or serve the directory with `serve_spotcheck`, which never serves the key).
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        page = d / PAGE_NAME
        write_text_atomic(page, self.html)
        write_json_atomic(d / MANIFEST_NAME, self.manifest())
        write_json_atomic(
            Path(key_path) if key_path is not None else d / KEY_NAME,
            {"spotcheck": self.page_id, "seed": self.seed, "key": self.key},
        )
        return page


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _output_block(letter: str, text: str, idx: int) -> str:
    body = f'<pre class="output">{_e(text)}</pre>' if text.strip() else '<p class="empty">(empty output)</p>'
    name = f"ship_{letter}-{idx}"
    return (
        f'<div class="col" data-letter="{letter}"><h3>Output {letter}</h3>{body}'
        f'<fieldset class="ship"><legend>Would you ship output {letter}?</legend>'
        f'<label><input type="radio" name="{name}" value="yes" data-field="ship_{letter}" data-idx="{idx}"> '
        f"would ship</label>"
        f'<label><input type="radio" name="{name}" value="no" data-field="ship_{letter}" data-idx="{idx}"> '
        f"would not ship</label></fieldset></div>"
    )


def _render_page(title: str, page_id: str, rows: list[tuple[str, str, str, str]]) -> str:
    """rows: (item_id, prompt, output_A, output_B) in page order."""
    articles = []
    for idx, (item_id, prompt, out_a, out_b) in enumerate(rows):
        same = '<p class="note">The two outputs are identical.</p>' if out_a == out_b else ""
        pref = "".join(
            f'<label><input type="radio" name="pref-{idx}" value="{v}" data-field="preference" data-idx="{idx}"> '
            f"{label}</label>"
            for v, label in (("A", "prefer A"), ("B", "prefer B"), ("tie", "no preference"))
        )
        articles.append(
            f'<article class="item" id="item-{idx}" data-item-id="{_e(item_id)}">'
            f"<h2>{idx + 1} / {len(rows)} <span class=\"note\">(item {_e(item_id)})</span></h2>"
            f'<h3>Prompt</h3><pre class="prompt">{_e(prompt)}</pre>{same}'
            f'<div class="cols">{_output_block("A", out_a, idx)}{_output_block("B", out_b, idx)}</div>'
            f'<fieldset class="pref"><legend>Which output is better?</legend>{pref}</fieldset></article>'
        )
    body = (
        f'<main id="spotcheck" data-spotcheck="{_e(page_id)}"><h1>{_e(title)}</h1>'
        '<p class="intro">Each prompt below has two outputs, A and B, from two different models. Which model wrote '
        "which is hidden, and the order is shuffled for every prompt: A is not the same model from one prompt to "
        "the next. For each output, decide whether you would ship it to a user exactly as it is; then say which of "
        "the two you prefer. Your answers are saved as you go.</p>"
        '<div class="bar"><strong id="progress"></strong><span id="save-status"></span>'
        '<button type="button" id="download">download answers</button></div>'
        f"{''.join(articles)}</main>"
    )
    package = __package__ or "tunesmith.evaluate.spotcheck"
    # connect-src 'self': served, the page posts its answers back to the server that served it
    return html_page(title=title, css=asset(package, "page.css"), script=asset(package, "page.js"), body=body,
                     connect_self=True, base_uri=False)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def build_spotcheck(
    items: Sequence[Mapping[str, Any]], *, n: int = 20, seed: int = 0, title: str = "Blinded spot check"
) -> Spotcheck:
    """Pick `n` items at random (seeded), put each pair of outputs in a random A/B order.

    `items`: ``[{"id", "prompt", "base_output", "tuned_output"}, ...]``, ids unique. With fewer than
    `n` items, all of them are used. The returned `Spotcheck.key` says which letter is which model;
    it is not in `Spotcheck.html`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"spot check: n must be a positive whole number, got {n!r}")
    if not items:
        raise UsageError("spot check: no items to sample from", hint="generate outputs from both models first")
    seen: set[str] = set()
    for i, it in enumerate(items):
        if not isinstance(it, Mapping):
            raise DataError(f"spot check item {i}: expected an object, got {type(it).__name__}")
        missing = [k for k in ("id", "prompt", "base_output", "tuned_output") if k not in it]
        if missing:
            raise DataError(f"spot check item {i}: missing {', '.join(missing)}")
        sid = str(it["id"])
        if sid in seen:
            raise DataError(f"spot check: item id {sid!r} appears more than once", hint="item ids must be unique")
        seen.add(sid)

    rng = random.Random(seed)
    chosen = rng.sample(range(len(items)), min(n, len(items)))
    key: dict[str, dict[str, str]] = {}
    rows: list[tuple[str, str, str, str]] = []
    for i in chosen:
        it = items[i]
        sid = str(it["id"])
        a_model = "base" if rng.random() < 0.5 else "tuned"
        b_model = "tuned" if a_model == "base" else "base"
        key[sid] = {"A": a_model, "B": b_model}
        outputs = {"base": _text(it["base_output"]), "tuned": _text(it["tuned_output"])}
        rows.append((sid, _text(it["prompt"]), outputs[a_model], outputs[b_model]))
    ids = [r[0] for r in rows]
    page_id = hashlib.sha256("\x00".join(ids).encode("utf-8")).hexdigest()[:16]
    return Spotcheck(html=_render_page(title, page_id, rows), key=key, item_ids=ids, page_id=page_id, seed=seed)
