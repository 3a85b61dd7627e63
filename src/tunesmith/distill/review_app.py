"""The review page on 127.0.0.1: a FastAPI app over a `ReviewStore`, the page itself, and the runner.

Routes (JSON bodies only, ``Content-Type: application/json``)::

    GET  /               the page (`review_page`: inline CSS and JS, a CSP allowing only its own script)
    GET  /api/state      rows in review order, decisions, progress, the contract, the file's version
    POST /api/validate   {"answer"} -> {"ok", "problems"}: the contract's own check, as the person types
    POST /api/decision   {"id", "action": accept|edit|reject|undo, "answer"?, "reason"?, "version"}
                         -> {"version", "progress", "row"}; 409 when the file changed on disk or the
                         version is stale (nothing written), 422 when an edit breaks the contract
    POST /api/reload     {} -> the state, read again from disk (after a hand edit)

The page trusts nobody else, by `tunesmith.web_guard`'s rules: the Host header must name this server
(127.0.0.1 or localhost; DNS rebinding) or every route answers 403, a POST from another origin is
refused (403), a POST that is not JSON is refused (415), and bodies are capped (413).
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations (Request, imported
# inside create_app so that the module imports without the `serve` extra) when they are defined.
import json
import threading
import time
from typing import Any

from tunesmith.distill.review import (
    ACTIONS,
    InvalidAnswer,
    ReviewConflict,
    ReviewStore,
    UnknownRow,
)
from tunesmith.distill.review_page import review_page
from tunesmith.errors import OutputError, TunesmithError, UsageError
from tunesmith.web_guard import WebGuard, allowed_hosts, check_request

MAX_BODY = 1 << 20
HOST = "127.0.0.1"


def require_web_libraries() -> None:
    """FastAPI and uvicorn, or the message that says how to get them."""
    from tunesmith.serve.api import require_serving_libraries

    require_serving_libraries("the review page")


# ---------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------

_COMMON_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"),
                   (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]


_REFUSAL_HINTS = {403: "open the page at the address `tunesmith review` printed (a program may call the API "
                       "without an Origin header)",
                  415: "send a JSON object"}


def _guard(app: Any, max_body: int) -> WebGuard:
    """Host, origin, content type and body size, checked before any route."""
    hosts = allowed_hosts(HOST)

    def problem(method: str, headers: dict[str, str], _path: str) -> Any:
        found = _problem(method, headers, hosts, max_body)
        if found is None:
            return None
        from starlette.responses import JSONResponse

        status, message, hint = found
        return JSONResponse({"error": {"message": message, "hint": hint}}, status_code=status)

    return WebGuard(app, problem=problem, headers=_COMMON_HEADERS)


def _problem(method: str, headers: dict[str, str], hosts: frozenset[str] | None,
             max_body: int) -> tuple[int, str, str] | None:
    # every POST route reads a JSON body
    refusal = check_request(method=method, host=headers.get("host"), origin=headers.get("origin"),
                            content_type=headers.get("content-type"), allowed=hosts, json_body=True, more_hosts=None)
    if refusal is not None:
        return refusal.status, refusal.message, _REFUSAL_HINTS[refusal.status]
    if method in ("GET", "HEAD"):
        return None
    # a second opinion from browsers that send it: Origin alone already decides for them
    if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return 403, "cross-origin request refused", "only the review page itself may save decisions"
    length = headers.get("content-length", "")
    if length.isdigit() and int(length) > max_body:
        return 413, f"request body over the limit of {max_body} bytes", "send a smaller answer"
    return None


def _error(status: int, exc: TunesmithError, **extra: Any) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": exc.message, "hint": exc.hint, "details": exc.details, **extra}},
                        status_code=status)


async def _read_json(request: Any, limit: int) -> dict[str, Any]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _BadRequest(413, f"request body over the limit of {limit} bytes")
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _BadRequest(400, "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise _BadRequest(400, "the body must be a JSON object")
    return value


class _BadRequest(UsageError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, "send what the review page sends")
        self.status = status


def _decision_args(body: dict[str, Any]) -> tuple[int, str, str, str | None, str | None]:
    line, action, version = body.get("id"), body.get("action"), body.get("version")
    answer, reason = body.get("answer"), body.get("reason")
    if not isinstance(line, int) or isinstance(line, bool):
        raise _BadRequest(400, '"id" must be the row\'s line number')
    if action not in ACTIONS:
        raise _BadRequest(400, '"action" must be one of ' + ", ".join(ACTIONS))
    if not isinstance(version, str):
        raise _BadRequest(400, '"version" must be the version the page read')
    if (answer is not None and not isinstance(answer, str)) or (action == "edit" and answer is None):
        raise _BadRequest(400, '"answer" must be a string (and an edit needs one)')
    if reason is not None and not isinstance(reason, str):
        raise _BadRequest(400, '"reason" must be a string')
    return line, action, version, answer, reason


def create_app(store: ReviewStore, *, max_body: int = MAX_BODY) -> Any:
    """The review app for `store`, answering only to 127.0.0.1 and localhost (any port: the name is what
    DNS rebinding changes)."""
    from fastapi import FastAPI, Request
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import HTMLResponse, JSONResponse

    app = FastAPI(title="tunesmith review", docs_url=None, redoc_url=None, openapi_url=None)

    async def guarded(call: Any) -> Any:
        try:
            return await call()
        except _BadRequest as exc:
            return _error(exc.status, exc)
        except ReviewConflict as exc:
            return _error(409, exc, conflict=exc.kind)
        except InvalidAnswer as exc:
            return JSONResponse({"error": {"message": exc.message, "hint": exc.hint}, "problems": exc.problems},
                                status_code=422)
        except UnknownRow as exc:
            return _error(404, exc)
        except OutputError as exc:
            return _error(500, exc)
        except TunesmithError as exc:  # e.g. a reload of a file a hand edit broke
            return _error(422, exc)

    @app.get("/")
    async def page() -> Any:
        html, csp = review_page()
        return HTMLResponse(html, headers={"Content-Security-Policy": csp + "; frame-ancestors 'none'"})

    @app.get("/api/state")
    async def state() -> Any:
        return JSONResponse(await run_in_threadpool(store.state))

    @app.post("/api/validate")
    async def validate(request: Request) -> Any:
        async def call() -> Any:
            answer = (await _read_json(request, max_body)).get("answer")
            if not isinstance(answer, str):
                raise _BadRequest(400, '"answer" must be a string')
            problems = await run_in_threadpool(store.validate, answer)
            return JSONResponse({"ok": not problems, "problems": problems})
        return await guarded(call)

    @app.post("/api/decision")
    async def decision(request: Request) -> Any:
        async def call() -> Any:
            line, action, version, answer, reason = _decision_args(await _read_json(request, max_body))
            saved = await run_in_threadpool(lambda: store.decide(line, action, version, answer=answer, reason=reason))
            return JSONResponse(saved)
        return await guarded(call)

    @app.post("/api/reload")
    async def reload(request: Request) -> Any:
        async def call() -> Any:
            await _read_json(request, max_body)
            await run_in_threadpool(store.reload)
            return JSONResponse(await run_in_threadpool(store.state))
        return await guarded(call)

    return _guard(app, max_body)


# ---------------------------------------------------------------------------------------------
# running it
# ---------------------------------------------------------------------------------------------


class ReviewServer:
    """uvicorn on 127.0.0.1:PORT (0: any free port). `run()` blocks until Ctrl-C; `start()`/`stop()`
    serve from a background thread (tests)."""

    def __init__(self, store: ReviewStore, port: int = 0, *, max_body: int = MAX_BODY) -> None:
        require_web_libraries()
        import uvicorn

        from tunesmith.serve.api import bind_socket

        self.store = store
        self.sock = bind_socket(HOST, port)
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(create_app(store, max_body=max_body), host=HOST, port=self.port,
                                log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.sock.close()

    def start(self, timeout: float = 30.0) -> "ReviewServer":
        self.thread = threading.Thread(target=self.run, name="tunesmith-review", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise UsageError("the review page's server did not start", "run with TUNESMITH_DEBUG=1 to see why")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
