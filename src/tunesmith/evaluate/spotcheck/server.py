"""Serving a saved spot check on 127.0.0.1: the page at ``/``, answers.json kept up to date, never the key."""

from __future__ import annotations

import datetime as _dt
import json
import os
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tunesmith.errors import DataError
from tunesmith.evaluate.spotcheck.answers import ANSWERS_NAME, FIELDS, answers_mapping, check_answer
from tunesmith.evaluate.spotcheck.page import MANIFEST_NAME, PAGE_NAME
from tunesmith.io import write_json_atomic
from tunesmith.web_guard import allowed_hosts, check_request

_MAX_BODY = 1 << 20
_HOST = "127.0.0.1"


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
        self.answers: dict[str, dict[str, Any]] = {i: {f: None for f in FIELDS} for i in self.item_ids}
        if self.answers_path.is_file():  # resume an earlier session
            try:
                previous = answers_mapping(json.loads(self.answers_path.read_text(encoding="utf-8")))
                for k, v in previous.items():
                    if str(k) in self.answers:
                        self.answers[str(k)].update(check_answer(str(k), v))
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
            updates = answers_mapping(body)
        elif "id" in body:
            updates = {str(body["id"]): {k: v for k, v in body.items() if k != "id"}}
        else:
            raise DataError('expected {"id", "ship_A", "ship_B", "preference"} or {"answers": {...}}')
        checked = {}
        for item_id, ans in updates.items():
            if str(item_id) not in self.answers:
                raise DataError(f"unknown item id {item_id!r}")
            checked[str(item_id)] = check_answer(str(item_id), ans)
        with self.lock:
            for item_id, ans in checked.items():
                self.answers[item_id].update(ans)
            write_json_atomic(self.answers_path, self.document())
            self.posts += 1
            answered = sum(1 for a in self.answers.values() if all(a[f] is not None for f in FIELDS))
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
