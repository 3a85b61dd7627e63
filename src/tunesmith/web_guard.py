"""The rules every tunesmith web server applies before it reads a request: other web sites may not use it.

A server on 127.0.0.1 is reachable from any page the user's browser opens. Two attacks follow:
- DNS rebinding: a page on evil.example re-points its name at 127.0.0.1 and then reads our answers as
  same-origin. The browser still sends `Host: evil.example`, so only known names are served.
- CSRF: a page posts to 127.0.0.1 directly. Browsers skip the CORS preflight for "simple" requests
  (form content types such as text/plain), so a state-changing request must come without an Origin
  (SDKs, curl) or from the server's own origin, and JSON routes accept only a JSON content type.

Framework-free on purpose: FastAPI (serve, review) and http.server (spot check) call the same function.
`WebGuard` is the pure-ASGI middleware the two FastAPI servers put in front of their routes; each gives it
its own checks and error format.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
#: methods a browser may send cross-site without asking first; everything else changes state
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    message: str


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """The host names a server bound to `bind_host` answers to; None when it listens on every
    interface (its names cannot be known, and such a server requires an API key instead)."""
    host = bind_host.strip("[]").lower()
    if host in ("", "0.0.0.0", "::"):
        return None
    # through host_name: an extra given with a port ("proxy.lan:8443") would otherwise never match
    names = {host, *(host_name(h) for h in extra if h)}
    if _is_loopback(host):
        names |= LOOPBACK_NAMES
    return frozenset(names)


def host_name(header: str | None) -> str:
    """`Host` without its port, lower-cased; IPv6 brackets removed."""
    value = (header or "").strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def check_request(*, method: str, host: str | None, origin: str | None, content_type: str | None,
                  allowed: frozenset[str] | None, json_body: bool,
                  more_hosts: str | None = "serve --allow-host NAME adds a name") -> Refusal | None:
    """None when the request may proceed, else the status and the sentence to answer with.

    `json_body`: the route reads a JSON body, so a form or text content type is a cross-site trick.
    `more_hosts`: how this server is told more names, for the refusal; None where it cannot be."""
    if allowed is not None and host_name(host) not in allowed:
        return Refusal(403, f"host {host_name(host) or '(none)'!r} is not served here; use one of "
                            f"{', '.join(sorted(allowed))}" + (f" ({more_hosts})" if more_hosts else ""))
    if method.upper() in SAFE_METHODS:
        return None
    if origin is not None and not same_origin(origin, host):
        return Refusal(403, f"cross-origin request from {origin!r} refused: a web page may not change this "
                            "server's state; call it from a program (no Origin header) or its own page")
    if json_body and (content_type or "").split(";", 1)[0].strip().lower() != "application/json":
        return Refusal(415, f"content type {content_type or '(none)'!r} is not accepted; "
                            "send the body as JSON with 'Content-Type: application/json'")
    return None


def same_origin(origin: str, host: str | None) -> bool:
    """An Origin matches when its host[:port] is the Host header the browser sent with it."""
    if origin == "null":  # sandboxed frames and file:// pages
        return False
    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc.lower() == (host or "").strip().lower()


#: an ASGI application; a Starlette response is one
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
#: (method, headers with lower-cased names, path) -> the response that refuses the request, or None
Problem = Callable[[str, dict[str, str], str], ASGIApp | None]


class WebGuard:
    """Pure ASGI middleware: `problem` sees every HTTP request before any route, and its response, when it
    gives one, is the answer. `headers` go on every response, refusals included.

    Pure ASGI because Starlette's BaseHTTPMiddleware would hide client disconnects from the routes."""

    def __init__(self, app: ASGIApp, *, problem: Problem, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self.app, self.problem, self.headers = app, problem, list(headers)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan, websocket: nothing a web page can abuse here
            await self.app(scope, receive, send)
            return
        # latin-1: any header byte decodes, so a malformed header reaches the checks instead of crashing them
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self.problem(scope["method"], headers, scope["path"])
        answer = send if not self.headers else self._adding_headers(send)
        await (refusal or self.app)(scope, receive, answer)

    def _adding_headers(self, send: Any) -> Any:
        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        return send_with_headers


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
