"""The blinded side-by-side spot check: read outputs yourself before you ship.

The guide: *sample twenty outputs from your fine-tuned model and twenty from the base model on the
same prompts; read them side by side, blinded; if the answer ("would I ship this?") is no for more
than two or three of the twenty, do not ship it.*

Three steps::

    sc = build_spotcheck(items, n=20, seed=0)      # items: [{id, prompt, base_output, tuned_output}]
    sc.save(run_dir / "spotcheck")                  # spotcheck.html, spotcheck.json, key.json
    server, url = serve_spotcheck(run_dir / "spotcheck")   # open url; answers.json is saved as you go
    ...
    server.close()
    result = unblind(sc.key, json.loads((run_dir / "spotcheck" / "answers.json").read_text()))
    print(result.summary)   # would ship 17/20 tuned vs 12/20 base, preferred tuned in 14/20 -> ship

The page never names the models: per item the two outputs are labelled A and B in a random order,
and the key ({item_id: {"A": "base"|"tuned", "B": ...}}) is kept out of the page (``key.json`` next
to it, never served by `serve_spotcheck`). The page is self-contained (inline CSS and JS, a
Content-Security-Policy that allows only its own script and same-origin requests).

Saving answers: served by `serve_spotcheck`, the page POSTs every change to ``/answers`` (one
item's full state: ``{"id", "ship_A", "ship_B", "preference"}``), and the server rewrites
``answers.json`` atomically each time. The server answers only to its own names and takes POSTs only
from its own page or a program, as JSON (`tunesmith.web_guard`: other web sites may not read or
write the answers). Opened from ``file://``, the page keeps answers in the browser's localStorage and
offers a "download answers" button that saves the same JSON. The page has no test hook, served or
opened as a file: only a person's clicks answer (browser tests inject their own).

``answers.json`` (and the downloaded file)::

    {"spotcheck": "<page id>", "updated": "<ISO time>",
     "answers": {item_id: {"ship_A": true|false|null, "ship_B": true|false|null,
                           "preference": "A"|"B"|"tie"|null}}}

The ship rule, scaled from 3-of-20 to any n: the tuned model fails the spot check when more than
15 % of its outputs are marked "would not ship" (n=20: 4 or more). With answers missing, the verdict
is "incomplete" unless the missing answers could not change it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import json
import os
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tunesmith.errors import DataError, UsageError
from tunesmith.io import write_json_atomic, write_text_atomic
from tunesmith.web_guard import allowed_hosts, check_request

__all__ = [
    "ANSWERS_NAME",
    "KEY_NAME",
    "MANIFEST_NAME",
    "PAGE_NAME",
    "Spotcheck",
    "SpotcheckResult",
    "SpotcheckServer",
    "build_spotcheck",
    "serve_spotcheck",
    "unblind",
]

PAGE_NAME = "spotcheck.html"
MANIFEST_NAME = "spotcheck.json"  # public: the page id and the item ids, in page order
KEY_NAME = "key.json"  # private: which of A/B is which model; never served
ANSWERS_NAME = "answers.json"

#: The guide's "more than two or three of the twenty", as a share: more than 15 % "would not ship" fails.
NOT_SHIP_NUMERATOR, NOT_SHIP_DENOMINATOR = 3, 20

_MODELS = ("base", "tuned")
_FIELDS = ("ship_A", "ship_B", "preference")
_PREFERENCES = ("A", "B", "tie")
_MAX_BODY = 1 << 20
_HOST = "127.0.0.1"


# ---------------------------------------------------------------------------------------------
# building the page
# ---------------------------------------------------------------------------------------------


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


_CSS = """
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d2430;margin:0 auto;
max-width:1200px;padding:20px 24px 80px}
h1{font-size:22px;margin:0 0 6px}h2{font-size:16px;margin:0 0 6px}h3{font-size:14px;margin:0 0 4px}
.intro{color:#4a5563;max-width:860px}
.bar{position:sticky;top:0;background:#fff;border-bottom:1px solid #d9dee5;padding:8px 0;margin:0 0 14px;z-index:1;
display:flex;gap:16px;align-items:center;flex-wrap:wrap}
.bar button{font:inherit;padding:4px 12px;border:1px solid #9aa3af;border-radius:4px;background:#f6f8fa;cursor:pointer}
#save-status{color:#4a5563;font-size:13px}
article.item{border:1px solid #d9dee5;border-radius:6px;padding:12px 14px;margin:0 0 16px}
article.item.done{border-left:4px solid #1b7f3b}
.prompt{background:#f1f4f8}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:14px;margin:10px 0}
@media (max-width:800px){.cols{grid-template-columns:1fr}}
.col{display:flex;flex-direction:column}.col pre,.col .empty{flex:1}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;border:1px solid #d9dee5;border-radius:4px;padding:8px;
margin:0;font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;max-height:480px;overflow:auto}
fieldset{border:1px solid #d9dee5;border-radius:4px;margin:8px 0 0;padding:6px 10px}
fieldset label{margin-right:18px;cursor:pointer;white-space:nowrap}
.empty,.note{color:#6b7280}
"""

_JS = r"""
(function () {
  "use strict";
  var root = document.getElementById("spotcheck");
  var pageId = root.getAttribute("data-spotcheck");
  var served = location.protocol === "http:" || location.protocol === "https:";
  var storeKey = "tunesmith-spotcheck:" + pageId;
  var articles = Array.prototype.slice.call(document.querySelectorAll("article.item"));
  var ids = articles.map(function (a) { return a.getAttribute("data-item-id"); });
  var state = {};
  ids.forEach(function (id) { state[id] = {ship_A: null, ship_B: null, preference: null}; });
  var statusEl = document.getElementById("save-status");
  function setStatus(t) { statusEl.textContent = t; }

  function apply(answers) {
    if (!answers || typeof answers !== "object") return;
    ids.forEach(function (id) {
      var a = answers[id];
      if (!a || typeof a !== "object") return;
      ["ship_A", "ship_B", "preference"].forEach(function (f) { if (f in a) state[id][f] = a[f]; });
    });
  }
  function render() {
    var done = 0;
    articles.forEach(function (art, idx) {
      var s = state[ids[idx]];
      art.querySelectorAll("input[type=radio]").forEach(function (inp) {
        var f = inp.getAttribute("data-field"), v = s[f];
        var want = f === "preference" ? v : (v === true ? "yes" : v === false ? "no" : null);
        inp.checked = want !== null && inp.value === want;
      });
      var complete = s.ship_A !== null && s.ship_B !== null && s.preference !== null;
      art.classList.toggle("done", complete);
      if (complete) done++;
    });
    document.getElementById("progress").textContent = done + " / " + ids.length + " answered";
  }
  function doc() {
    return {spotcheck: pageId, updated: new Date().toISOString(), answers: state};
  }
  function saveLocal() {
    try { localStorage.setItem(storeKey, JSON.stringify(doc())); } catch (e) { /* storage may be off */ }
  }
  var queue = Promise.resolve();
  function post(body) {
    queue = queue.then(function () {
      return fetch("/answers", {method: "POST", headers: {"Content-Type": "application/json"},
                                body: JSON.stringify(body), cache: "no-store"});
    }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      setStatus("saved to answers.json");
    }).catch(function (e) {
      setStatus("could not save to the server (" + e.message + "); answers are kept in this browser: use download");
    });
    return queue;
  }
  function onChange(ev) {
    var inp = ev.target;
    if (!inp || !inp.getAttribute) return;
    var f = inp.getAttribute("data-field");
    if (!f) return;
    var id = ids[+inp.getAttribute("data-idx")];
    state[id][f] = f === "preference" ? inp.value : inp.value === "yes";
    render();
    saveLocal();
    if (served) {
      var s = state[id];
      post({id: id, ship_A: s.ship_A, ship_B: s.ship_B, preference: s.preference});
    } else {
      setStatus("saved in this browser (download the answers when done)");
    }
  }
  root.addEventListener("change", onChange);
  document.getElementById("download").addEventListener("click", function () {
    var blob = new Blob([JSON.stringify(doc(), null, 2) + "\n"], {type: "application/json"});
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "answers.json";
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  });

  try { apply((JSON.parse(localStorage.getItem(storeKey) || "null") || {}).answers); } catch (e) { /* ignore */ }
  var ready = served
    ? fetch("/answers", {cache: "no-store"}).then(function (r) { return r.ok ? r.json() : null; })
        .then(function (d) {
          if (d) apply(d.answers);
          setStatus("answers are saved to the server as you go");
        })
        .catch(function () { setStatus("server not reachable; answers are kept in this browser"); })
    : Promise.resolve().then(function () {
        setStatus("opened as a file: answers are kept in this browser; use download when done");
      });
  ready.then(function () {
    render();
    document.body.setAttribute("data-rendered", "1");
  });
})();
"""


def _script_hash(script: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")


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
    csp = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; connect-src 'self'; "
        f"script-src '{_script_hash(_JS)}'; form-action 'none'"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n"
        f'<body><main id="spotcheck" data-spotcheck="{_e(page_id)}"><h1>{_e(title)}</h1>'
        '<p class="intro">Each prompt below has two outputs, A and B, from two different models. Which model wrote '
        "which is hidden, and the order is shuffled for every prompt: A is not the same model from one prompt to "
        "the next. For each output, decide whether you would ship it to a user exactly as it is; then say which of "
        "the two you prefer. Your answers are saved as you go.</p>"
        '<div class="bar"><strong id="progress"></strong><span id="save-status"></span>'
        '<button type="button" id="download">download answers</button></div>'
        f"{''.join(articles)}</main><script>{_JS}</script></body></html>\n"
    )


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


# ---------------------------------------------------------------------------------------------
# answers: validation (shared by the server and unblind)
# ---------------------------------------------------------------------------------------------


def _check_answer(item_id: str, answer: Any) -> dict[str, Any]:
    """One item's answer with only known fields, validated; raises DataError."""
    if not isinstance(answer, Mapping):
        raise DataError(f"answer for item {item_id!r}: expected an object, got {type(answer).__name__}")
    out: dict[str, Any] = {}
    for f in _FIELDS:
        if f not in answer:
            continue
        v = answer[f]
        if f == "preference":
            if v is not None and v not in _PREFERENCES:
                raise DataError(f"answer for item {item_id!r}: preference must be A, B, tie or null, got {v!r}")
        elif v is not None and not isinstance(v, bool):
            raise DataError(f"answer for item {item_id!r}: {f} must be true, false or null, got {v!r}")
        out[f] = v
    return out


def _answers_mapping(answers: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept the answers.json document or its ``answers`` mapping."""
    if not isinstance(answers, Mapping):
        raise DataError(f"answers: expected an object, got {type(answers).__name__}")
    inner = answers.get("answers") if "answers" in answers else answers
    if not isinstance(inner, Mapping):
        raise DataError("answers: 'answers' must be an object of item id -> answer")
    return inner


# ---------------------------------------------------------------------------------------------
# serving
# ---------------------------------------------------------------------------------------------


class SpotcheckServer(ThreadingHTTPServer):
    """Serves the page at ``/`` and keeps ``answers.json`` up to date; ``close()`` when done."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        page = directory / PAGE_NAME
        manifest = directory / MANIFEST_NAME
        if not page.is_file() or not manifest.is_file():
            raise DataError(
                f"{directory}: no spot check here (need {PAGE_NAME} and {MANIFEST_NAME})",
                hint="build one with build_spotcheck(...).save(directory)",
            )
        self.page = page.read_bytes()
        try:
            meta = json.loads(manifest.read_text(encoding="utf-8"))
            self.page_id = str(meta["spotcheck"])
            self.item_ids = [str(i) for i in meta["item_ids"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{manifest}: not a spot check manifest ({exc})") from exc
        self.answers_path = directory / ANSWERS_NAME
        self.lock = threading.Lock()
        self.answers: dict[str, dict[str, Any]] = {i: {f: None for f in _FIELDS} for i in self.item_ids}
        if self.answers_path.is_file():  # resume an earlier session
            try:
                previous = _answers_mapping(json.loads(self.answers_path.read_text(encoding="utf-8")))
                for k, v in previous.items():
                    if str(k) in self.answers:
                        self.answers[str(k)].update(_check_answer(str(k), v))
            except (ValueError, DataError) as exc:
                raise DataError(f"{self.answers_path}: cannot resume from it ({exc})",
                                hint="move it away to start over") from exc
        self.posts = 0
        self.allowed_hosts = allowed_hosts(_HOST)
        super().__init__((_HOST, port), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, name="tunesmith-spotcheck", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{_HOST}:{self.server_address[1]}/"

    def document(self) -> dict[str, Any]:
        return {
            "spotcheck": self.page_id,
            "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "answers": self.answers,
        }

    def record(self, body: Any) -> dict[str, Any]:
        """Merge a POST body (one item, or ``{"answers": {...}}``) and rewrite answers.json."""
        if not isinstance(body, Mapping):
            raise DataError("expected a JSON object")
        if "answers" in body:
            updates = _answers_mapping(body)
        elif "id" in body:
            updates = {str(body["id"]): {k: v for k, v in body.items() if k != "id"}}
        else:
            raise DataError('expected {"id", "ship_A", "ship_B", "preference"} or {"answers": {...}}')
        checked = {}
        for item_id, ans in updates.items():
            if str(item_id) not in self.answers:
                raise DataError(f"unknown item id {item_id!r}")
            checked[str(item_id)] = _check_answer(str(item_id), ans)
        with self.lock:
            for item_id, ans in checked.items():
                self.answers[item_id].update(ans)
            write_json_atomic(self.answers_path, self.document())
            self.posts += 1
            answered = sum(1 for a in self.answers.values() if all(a[f] is not None for f in _FIELDS))
        return {"ok": True, "answered": answered, "total": len(self.answers)}

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    server: SpotcheckServer
    server_version = "tunesmith-spotcheck"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _refused(self, *, json_body: bool) -> bool:
        """Answer with web_guard's refusal when another web site is behind the request (see there)."""
        refusal = check_request(method=self.command, host=self.headers.get("Host"), origin=self.headers.get("Origin"),
                                content_type=self.headers.get("Content-Type"), allowed=self.server.allowed_hosts,
                                json_body=json_body, more_hosts=None)
        if refusal is not None:
            self._json(refusal.status, {"error": refusal.message})
        return refusal is not None

    def do_GET(self) -> None:  # noqa: N802
        if self._refused(json_body=False):
            return
        path = urlsplit(self.path).path
        if path in ("/", f"/{PAGE_NAME}"):
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif path == "/answers":
            with self.server.lock:
                body = json.dumps(self.server.document(), ensure_ascii=False)
            self._send(200, body.encode("utf-8"), "application/json; charset=utf-8")
        else:  # nothing else in the directory is served: not the key, not the manifest
            self._json(404, {"error": "not found"})

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        if self._refused(json_body=True):  # /answers, the only POST route, reads JSON
            return
        if urlsplit(self.path).path != "/answers":
            self._json(404, {"error": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length <= 0 or length > _MAX_BODY:
            self._json(400 if length <= 0 else 413, {"error": "bad or missing body"})
            return
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw.decode("utf-8"))
            result = self.server.record(body)
        except (ValueError, DataError) as exc:
            self._json(400, {"error": str(exc)})
            return
        self._json(200, result)


def serve_spotcheck(directory: str | os.PathLike[str], port: int = 0) -> tuple[SpotcheckServer, str]:
    """Serve a saved spot check on 127.0.0.1 (`port` 0: any free port) in a background thread.

    Returns ``(server, url)``; open `url` in a browser. Every answer the page sends is merged into
    ``answers.json`` in `directory`, rewritten atomically. An existing answers.json is resumed.
    Call ``server.close()`` to stop. Only this server's own names (127.0.0.1, localhost) are answered,
    and only its own page or a program may post (see `tunesmith.web_guard`).
    """
    server = SpotcheckServer(Path(directory), port)
    server.thread.start()
    return server, server.url


# ---------------------------------------------------------------------------------------------
# unblinding
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpotcheckResult:
    n: int
    would_ship_tuned: int
    would_ship_base: int
    would_not_ship_tuned: int
    would_not_ship_base: int
    preferred_tuned: int
    preferred_base: int
    ties: int
    #: the most tuned "would not ship" answers the rule allows (3 for n=20)
    max_would_not_ship: int
    #: "ship", "do not ship", or "incomplete" (missing answers could still change the verdict)
    verdict: str
    summary: str
    unanswered_ship_tuned: int = 0
    unanswered_ship_base: int = 0
    unanswered_preference: int = 0
    #: item ids with at least one of the three answers missing
    unanswered: list[str] = field(default_factory=list)
    #: answered ids that are not in the key (ignored)
    unknown_ids: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unanswered

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load_key(key: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    if not isinstance(key, Mapping):
        raise DataError(f"spot check key: expected an object, got {type(key).__name__}")
    inner = key.get("key") if isinstance(key.get("key"), Mapping) else key  # key.json or the bare mapping
    out: dict[str, dict[str, str]] = {}
    for item_id, m in inner.items():
        if not isinstance(m, Mapping) or sorted((m.get("A"), m.get("B"))) != list(_MODELS):
            raise DataError(f"spot check key, item {item_id!r}: expected {{'A': 'base'|'tuned', 'B': the other}}")
        out[str(item_id)] = {"A": m["A"], "B": m["B"]}
    if not out:
        raise DataError("spot check key is empty")
    return out


def unblind(key: Mapping[str, Any], answers: Mapping[str, Any]) -> SpotcheckResult:
    """Map A/B answers back to base/tuned, count, and apply the guide's ship rule.

    `key`: `Spotcheck.key` (or the saved key.json). `answers`: the answers.json document (or its
    ``answers`` mapping). Items without an answer count as unanswered; they are never counted as
    "would not ship".
    """
    k = _load_key(key)
    given = {str(i): a for i, a in _answers_mapping(answers).items()}
    n = len(k)
    ship = {"base": 0, "tuned": 0}
    no_ship = {"base": 0, "tuned": 0}
    missing_ship = {"base": 0, "tuned": 0}
    prefer = {"base": 0, "tuned": 0, "tie": 0}
    missing_pref = 0
    unanswered: list[str] = []
    for item_id, letters in k.items():
        ans = _check_answer(item_id, given[item_id]) if item_id in given else {}
        incomplete = False
        for letter in ("A", "B"):
            model = letters[letter]
            v = ans.get(f"ship_{letter}")
            if v is True:
                ship[model] += 1
            elif v is False:
                no_ship[model] += 1
            else:
                missing_ship[model] += 1
                incomplete = True
        pref = ans.get("preference")
        if pref == "tie":
            prefer["tie"] += 1
        elif pref in ("A", "B"):
            prefer[letters[pref]] += 1
        else:
            missing_pref += 1
            incomplete = True
        if incomplete:
            unanswered.append(item_id)

    limit = (NOT_SHIP_NUMERATOR * n) // NOT_SHIP_DENOMINATOR  # "> 15 %" == "> limit" for whole counts
    if no_ship["tuned"] > limit:
        verdict = "do not ship"
    elif no_ship["tuned"] + missing_ship["tuned"] > limit:
        verdict = "incomplete"
    else:
        verdict = "ship"
    summary = (
        f"would ship {ship['tuned']}/{n} tuned vs {ship['base']}/{n} base, "
        f"preferred tuned in {prefer['tuned']}/{n}"
    )
    if unanswered:
        summary += f" ({len(unanswered)} of {n} not fully answered)"
    summary += f" -> {verdict}"
    return SpotcheckResult(
        n=n,
        would_ship_tuned=ship["tuned"],
        would_ship_base=ship["base"],
        would_not_ship_tuned=no_ship["tuned"],
        would_not_ship_base=no_ship["base"],
        preferred_tuned=prefer["tuned"],
        preferred_base=prefer["base"],
        ties=prefer["tie"],
        max_would_not_ship=limit,
        verdict=verdict,
        summary=summary,
        unanswered_ship_tuned=missing_ship["tuned"],
        unanswered_ship_base=missing_ship["base"],
        unanswered_preference=missing_pref,
        unanswered=unanswered,
        unknown_ids=sorted(set(given) - set(k)),
    )
