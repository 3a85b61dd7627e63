"""The one layer between tunesmith and any OpenAI-compatible chat endpoint.

The teacher (`tunesmith generate`), the LLM judge and `eval --endpoint` all send their requests
through `ChatClient`, so they share one retry policy:

* retried, with exponential backoff (or what ``Retry-After-Ms`` / ``Retry-After`` says, in seconds or
  as an HTTP date): connection errors, timeouts, HTTP 408/409/425/429, every 5xx, and replies the
  client cannot read (not JSON, no choices);
* fatal at once, for every request of the run: HTTP 401/403 (the key) and 404 (the model or the
  URL): `EndpointRefused`;
* anything else (400, 422, ...): `RequestFailed` for that request alone, never retried.

A ``Retry-After`` longer than `RetryPolicy.max_retry_after` is not waited for: the request fails
with the reason (a daily quota does not hang a run for a day).

`RequestCache` (SQLite, content-addressed: the hash of the endpoint, model, messages and every
parameter) stores each reply as it arrives, so a run killed half-way pays for nothing twice.
`inference.concurrent.run_concurrently` runs many of them with bounded concurrency and stops them all on
a fatal error.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import os
import random
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tunesmith.errors import TunesmithError

__all__ = [
    "ChatClient",
    "ChatReply",
    "EndpointRefused",
    "RequestCache",
    "RequestFailed",
    "RetryPolicy",
    "api_key_from",
    "call_with_retries",
    "endpoint_host",
    "resolve_base_url",
    "retry_after_seconds",
]

#: Worth another try: request timeout, conflict, too early, rate limit (and every 5xx).
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
#: Every later request would fail the same way: the run stops.
FATAL_STATUS = {401: "refused the API key", 403: "refused access",
                404: "does not know the model (or the URL is not an OpenAI-compatible /v1 base URL)"}


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one request is tried. Delays double from `backoff` up to `max_backoff`, less up to 25 % jitter."""

    max_retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise TunesmithError(f"max_retries must be 0 or more, got {self.max_retries}", "pass 0 to disable retries")

    def delay(self, attempt: int) -> float:
        return min(self.backoff * (2.0 ** attempt), self.max_backoff) * (1 - 0.25 * random.random())


class EndpointRefused(TunesmithError):
    """401, 403 or 404: the key, the access or the model/URL is wrong, for this and every other request."""

    def __init__(self, message: str, hint: str = "", *, status: int, server_message: str = "") -> None:
        super().__init__(message, hint)
        self.status = status
        self.server_message = server_message


class RequestFailed(Exception):
    """One request failed for good (retries spent, or an error that retrying cannot fix)."""

    def __init__(self, reason: str, *, status: int | None = None, unreachable: bool = False,
                 server_message: str = "", kind: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        #: what went wrong, for tallies: "timeout", "connection", "unreadable", "HTTP 429", ...
        self.kind = kind or (f"HTTP {status}" if status is not None else "error")
        self.status = status
        #: no attempt got anything back (connections refused, or no answer within the timeout)
        self.unreachable = unreachable
        self.server_message = server_message


@dataclass
class ChatReply:
    """The parts of a chat completion tunesmith uses (the first choice), plain data so it can be cached."""

    content: str | None
    finish_reason: str | None
    #: the model the endpoint says answered (may name a dated snapshot of the one asked for)
    model: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: when the reply arrived (ISO 8601, UTC); kept with the cached reply
    created: str = ""
    cached: bool = field(default=False, compare=False)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("cached")
        return json.dumps(data, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ChatReply:
        data = json.loads(text)
        return cls(**{k: data.get(k) for k in ("content", "finish_reason", "model")},
                   prompt_tokens=int(data.get("prompt_tokens") or 0),
                   completion_tokens=int(data.get("completion_tokens") or 0),
                   created=str(data.get("created") or ""), cached=True)


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """What the server asked us to wait: Retry-After-Ms, else Retry-After in seconds or as an HTTP date."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if math.isfinite(value):
                return max(0.0, value)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def resolve_base_url(base_url: str | None) -> str:
    """The base URL a request goes to: the one given, else OPENAI_BASE_URL, else OpenAI's (as the openai client does)."""
    return (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")


_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")


def model_family(model: str) -> str:
    """A model's name without a provider prefix or snapshot date, lower case: "openai/gpt-4o-mini-2024-07-18"
    and "gpt-3.5-turbo-0125" are "gpt-4o-mini" and "gpt-3.5-turbo" (what price tables are keyed by)."""
    return _SNAPSHOT.sub("", model.strip().lower().rsplit("/", 1)[-1])


def endpoint_host(base_url: str) -> str:
    """The host (and port) of a base URL, as provenance records it: never a path or a key."""
    parts = urlsplit(base_url)
    return parts.netloc.rsplit("@", 1)[-1] or base_url


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def _status_message(exc: Any) -> str:
    """The server's own words for an HTTP error: {"error": {"message", "param"?}} when it sent that shape
    (the parameter it names, if any, is kept: it tells a caller what to leave out)."""
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            param = inner.get("param")
            return _first_line(inner["message"]) + (f" (param: {param})" if isinstance(param, str) and param else "")
        if isinstance(inner, str):
            return _first_line(inner)
    return _first_line(getattr(exc, "message", "") or str(exc))


def _error_code(exc: Any) -> str:
    """The machine-readable code of an HTTP error ({"error": {"code"}} or its type), or ""."""
    body = getattr(exc, "body", None)
    inner = body.get("error", body) if isinstance(body, Mapping) else None
    if isinstance(inner, Mapping):
        for key in ("code", "type"):
            if isinstance(inner.get(key), str):
                return inner[key]
    return ""


def api_key_from(env_name: str) -> str | None:
    """The key in the environment variable `env_name`. When that variable is unset and is not
    OPENAI_API_KEY, "none": the client would otherwise fall back to OPENAI_API_KEY and send an OpenAI
    key to another provider's URL."""
    value = os.environ.get(env_name)
    if value:
        return value
    return None if env_name == "OPENAI_API_KEY" else "none"


T = TypeVar("T")


def call_with_retries(call: Callable[[], T], *, policy: RetryPolicy, what: str, base_url: str, model: str = "",
                      timeout: float = 60.0, stop: threading.Event | None = None,
                      on_retry: Callable[[str], None] | None = None) -> T:
    """`call()` (any request of the official openai client) under the one retry policy (module docstring).

    Raises `EndpointRefused` (401/403/404, a 429 out of quota) or `RequestFailed`; `on_retry(kind)` is
    told of every retry. `stop`, when set, ends the waiting between attempts ("cancelled").
    """
    import openai as oa

    attempts = policy.max_retries + 1
    failure = RequestFailed("no attempt made")
    heard = False  # any attempt got something back (an HTTP error, a broken reply, a hang-up)
    for attempt in range(attempts):
        if stop is not None and stop.is_set():
            raise RequestFailed("cancelled")
        wait_s: float | None = None
        try:
            return call()
        except oa.APITimeoutError:
            failure = RequestFailed(f"the {what} at {base_url} did not answer within {timeout:g} s", kind="timeout")
        except oa.APIConnectionError as exc:
            cause = exc.__cause__
            said = _first_line(str(cause)) if cause is not None else ""
            if type(cause).__name__ == "ConnectError":  # httpx's: nothing accepted the connection
                failure = RequestFailed(f"cannot reach the {what} at {base_url}: {said or 'connection refused'}",
                                        unreachable=True, kind="connection refused")
            else:  # it connected, then the connection broke (the server hung up, a proxy reset it)
                heard = True
                failure = RequestFailed(f"the connection to the {what} at {base_url} broke: "
                                        f"{said or type(cause).__name__ if cause else 'connection error'}",
                                        kind="connection broken")
        except oa.APIStatusError as exc:
            heard = True
            status, said = exc.status_code, _status_message(exc)
            if status in FATAL_STATUS:
                where = f"{base_url} (model {model!r})" if model else base_url
                raise EndpointRefused(f"the {what} at {where} {FATAL_STATUS[status]} (HTTP {status}: {said})",
                                      "check the base URL, the model name and the API key (OPENAI_API_KEY)",
                                      status=status, server_message=said) from None
            if status == 429 and _error_code(exc) == "insufficient_quota":
                raise EndpointRefused(  # a 429 that waiting does not cure
                    f"the {what} at {base_url} says the account has no quota left (HTTP 429: {said})",
                    "add credit or raise the limit on the provider's billing page, then run the same command "
                    "again: nothing already answered is lost", status=status, server_message=said) from None
            failure = RequestFailed(f"HTTP {status}: {said}", status=status, server_message=said)
            if status not in RETRYABLE_STATUS and status < 500:
                raise failure from None
            wait_s = retry_after_seconds(exc.response.headers)
            if wait_s is not None and wait_s > policy.max_retry_after:
                raise RequestFailed(f"{failure.reason} (the server asks to wait {wait_s:g} s, more than "
                                    f"{policy.max_retry_after:g} s)", status=status, server_message=said) from None
        except (oa.OpenAIError, _Unreadable, ValueError, TypeError, AttributeError) as exc:
            # a 200 whose body is not what was asked for: a glitch of the server or a proxy
            heard = True
            failure = RequestFailed(f"unreadable reply from the {what}: {_first_line(str(exc)) or type(exc).__name__}",
                                    kind="unreadable reply")
        if attempt < attempts - 1:
            if on_retry is not None:
                on_retry(failure.kind)
            delay = policy.delay(attempt) if wait_s is None else wait_s
            if stop is not None:
                if stop.wait(delay):
                    raise RequestFailed("cancelled")
            else:
                time.sleep(delay)
    failure.unreachable = not heard  # refused or timed out every time: nothing answers there
    if attempts > 1:
        failure.reason += f" (after {attempts} attempts)"
        failure.args = (failure.reason,)
    raise failure


def sdk_client(base_url: str, api_key: str | None, timeout: float) -> Any:
    """The official openai client every tunesmith call goes through: the key given, else OPENAI_API_KEY,
    else "none" (local servers ignore it); no retries of its own (`call_with_retries` is the policy)."""
    import openai  # deferred: `import tunesmith` stays light

    return openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none",
                         timeout=timeout, max_retries=0)


class ChatClient:
    """Chat completions at one endpoint and model, with the retry policy above and an optional cache.

    `what` names the caller in messages ("teacher", "judge", "endpoint"). The api key is `api_key`,
    else OPENAI_API_KEY, else "none" (local servers ignore it); the base URL is `base_url`, else
    OPENAI_BASE_URL, as the openai client itself reads them.
    """

    def __init__(self, base_url: str | None, model: str, *, api_key: str | None = None, timeout: float = 60.0,
                 policy: RetryPolicy | None = None, cache: RequestCache | None = None, what: str = "endpoint") -> None:
        self.base_url = resolve_base_url(base_url)
        self.model = model
        self.timeout = timeout
        self.policy = policy or RetryPolicy()
        self.cache = cache
        self.what = what
        self._client = sdk_client(self.base_url, api_key, timeout)
        #: HTTP requests actually sent (cache hits not counted), and the retries by what caused them
        self.requests_sent = 0
        self.retries: Counter[str] = Counter()
        self._count_lock = threading.Lock()

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request ----------------------------------------------------------------------------

    def request_key(self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> str:
        """Content address of a request: endpoint, model, messages and every parameter."""
        blob = json.dumps({"base_url": self.base_url, "model": self.model, "messages": list(messages),
                           "params": dict(params)}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def create(self, messages: Sequence[Mapping[str, Any]], *, stop: threading.Event | None = None,
               stop_sequences: Sequence[str] | None = None, refresh: bool = False, **params: Any) -> ChatReply:
        """One chat completion (the cache first, when there is one), retried as the policy says.

        Raises `EndpointRefused` (401/403/404) or `RequestFailed`. `stop`, when set, ends the
        waiting between attempts: the request fails with reason "cancelled". `stop` being taken,
        the API's own ``stop`` (strings that end the answer) is passed as `stop_sequences`.
        `refresh` sends the request even when the cache holds a reply (one the caller could not
        use, say); the new reply replaces it.
        """
        if stop_sequences:
            params["stop"] = list(stop_sequences)
        key = self.request_key(messages, params) if self.cache is not None else ""
        if self.cache is not None and not refresh:
            hit = self.cache.get(key)
            if hit is not None:
                return hit
        reply = self._with_retries(messages, params, stop)
        if self.cache is not None:
            self.cache.put(key, self.model, reply)
        return reply

    def _with_retries(self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any],
                      stop: threading.Event | None) -> ChatReply:
        def count(kind: str) -> None:
            with self._count_lock:
                self.retries[kind] += 1

        return call_with_retries(lambda: self._send(messages, params), policy=self.policy, what=self.what,
                                 base_url=self.base_url, model=self.model, timeout=self.timeout, stop=stop,
                                 on_retry=count)

    def _send(self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> ChatReply:
        with self._count_lock:
            self.requests_sent += 1
        resp = self._client.chat.completions.create(model=self.model, messages=list(messages), **params)  # type: ignore[arg-type]
        choices = getattr(resp, "choices", None)
        if isinstance(resp, (str, bytes)) or choices is None:
            raise _Unreadable("the body is not a chat completion")
        if not choices:
            raise _Unreadable("the reply holds no choices")
        choice = choices[0]
        message = getattr(choice, "message", None)
        usage = getattr(resp, "usage", None)
        return ChatReply(
            content=getattr(message, "content", None) if message is not None else None,
            finish_reason=getattr(choice, "finish_reason", None),
            model=getattr(resp, "model", None),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0) if usage is not None else 0,
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0) if usage is not None else 0,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )



class _Unreadable(Exception):
    pass


# --- the request cache ----------------------------------------------------------------------------


class RequestCache:
    """Replies by request key, in SQLite: thread-safe, each reply committed as it arrives."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
            with self._db:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
                                 "reply TEXT NOT NULL, stored REAL NOT NULL)")
                self._db.execute("CREATE TABLE IF NOT EXISTS notes (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        except (OSError, sqlite3.Error) as exc:
            raise TunesmithError(f"cannot open the request cache {self.path}: {exc}",
                                 "make its folder writable, or delete the file if it is damaged") from None

    def get(self, key: str) -> ChatReply | None:
        with self._lock:
            try:
                row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error:
                return None
            if row is None:
                return None
            try:
                reply = ChatReply.from_json(row[0])
            except (ValueError, TypeError):
                return None
            return reply

    def put(self, key: str, model: str, reply: ChatReply) -> None:
        with self._lock:
            try:
                with self._db:
                    self._db.execute("INSERT OR REPLACE INTO replies (key, model, reply, stored) VALUES (?, ?, ?, ?)",
                                     (key, model, reply.to_json(), time.time()))
            except sqlite3.Error as exc:
                raise TunesmithError(f"cannot write the request cache {self.path}: {exc}",
                                     "free disk space or make the file writable; nothing already cached is lost") from None

    def note(self, key: str) -> str | None:
        """What a caller learned about an endpoint (e.g. a parameter it refuses), kept with its replies."""
        with self._lock:
            try:
                row = self._db.execute("SELECT value FROM notes WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error:
                return None
        return row[0] if row else None

    def set_note(self, key: str, value: str) -> None:
        with self._lock:
            try:
                with self._db:
                    self._db.execute("INSERT OR REPLACE INTO notes (key, value) VALUES (?, ?)", (key, value))
            except sqlite3.Error:
                pass  # a note only saves one refused request on the next run

    def close(self) -> None:
        with self._lock:
            self._db.close()

