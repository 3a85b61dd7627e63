"""`EndpointBackend`: any OpenAI-compatible chat-completions server answering the chats."""

from __future__ import annotations

import threading
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.inference.backends import (
    Chat, OnResult, Progress, Results, check_settings, sha256_of, truncate_at_stop,
)
from tunesmith.inference.concurrent import run_concurrently
from tunesmith.inference.openai_client import (  # light: openai itself loads in ChatClient()
    ChatClient,
    EndpointRefused,
    RequestFailed,
    RetryPolicy,
)
from tunesmith.inference.types import DecodeSettings, Generation


class EndpointError(TunesmithError):
    """The OpenAI-compatible endpoint cannot be used at all (unreachable, refused the key, no such model)."""


class EndpointBackend:
    """An OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, Ollama, OpenAI, ...).

    Requests go through `tunesmith.inference.openai_client.ChatClient`, the retry policy the teacher
    and the judge share: connection errors, timeouts, 408/409/425/429, 5xx and unreadable replies are
    retried up to `max_retries` times, waiting what Retry-After says, else `backoff` x 2^attempt seconds.
    Up to `concurrency` requests are in flight at once. A prompt that still fails, or fails with
    another 4xx, becomes ``Generation(text="", finish_reason="error", error=...)`` and the others carry on.

    The first prompt is sent alone: when nothing answers at the URL (connection refused through every
    retry), `generate` raises `EndpointError` before anything else is sent. A refused key (401/403) or
    an unknown model (404) raises `EndpointError` on any prompt: every other request would fail the same way.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 8,
                 max_retries: int = 5, timeout: float = 120, *, backoff: float = 0.5) -> None:
        if concurrency < 1:
            raise EndpointError(f"endpoint concurrency must be at least 1, got {concurrency}",
                                "pass a concurrency of 1 or more")
        if max_retries < 0:
            raise EndpointError(f"max_retries must be 0 or more, got {max_retries}", "pass 0 or more retries")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff = backoff
        self.fingerprint = sha256_of("endpoint", self.base_url, model)
        # no request cache here: CachedBackend stores finished answers under this backend's fingerprint
        self.client = ChatClient(self.base_url, model, api_key=api_key, timeout=timeout,
                                 policy=RetryPolicy(max_retries=max_retries, backoff=backoff), what="endpoint")

    # -- one prompt ----------------------------------------------------------------------------

    def _request(self, chat: Chat, settings: DecodeSettings, stop: threading.Event | None = None) -> Generation:
        """One prompt's answer. Raises `EndpointError` on 401/403/404, `RequestFailed` when it failed for good."""
        params: dict[str, Any] = {"temperature": settings.temperature, "top_p": settings.top_p,
                                  "max_tokens": settings.max_new_tokens}
        if settings.seed is not None:
            params["seed"] = settings.seed
        try:
            reply = self.client.create(chat, stop=stop, stop_sequences=settings.stop, **params)
        except EndpointRefused as exc:
            raise self._refused(exc) from None
        text, stopped = truncate_at_stop(reply.content or "", settings.stop)
        reason = "length" if reply.finish_reason == "length" and not stopped else "stop"
        return Generation(text=text, finish_reason=reason, output_tokens=reply.completion_tokens)

    def _first(self, chat: Chat, settings: DecodeSettings) -> Generation:
        """The first prompt, sent alone: nothing listening at the URL stops the run before it starts."""
        try:
            return self._request(chat, settings)
        except RequestFailed as exc:
            if exc.unreachable:
                raise self._unreachable(exc.reason) from None
            return Generation("", "error", 0, error=exc.reason)

    def _one(self, chat: Chat, settings: DecodeSettings, stop: threading.Event) -> Generation:
        """A later prompt: its failure is its own error Generation, and the other prompts carry on."""
        try:
            return self._request(chat, settings, stop)
        except RequestFailed as exc:
            if stop.is_set():
                raise  # cut short because the run is stopping: no answer, rather than an error answer
            return Generation("", "error", 0, error=exc.reason)

    def _unreachable(self, reason: str) -> EndpointError:
        return EndpointError(f"{reason} (model {self.model!r})",
                             f"is the server running at {self.base_url}? --endpoint must be its "
                             "OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1)")

    def _refused(self, exc: EndpointRefused) -> EndpointError:
        where = f"{self.base_url} (model {self.model!r})"
        if exc.status in (401, 403):
            return EndpointError(f"the endpoint {where} refused the API key (HTTP {exc.status})",
                                 "set the key in OPENAI_API_KEY, or name the variable holding it with --api-key-env")
        return EndpointError(f"the endpoint {where} answered HTTP {exc.status}: {exc.server_message}",
                             f"check the model name (the server lists its models at {self.base_url}/models) and "
                             "that --endpoint is the OpenAI-compatible base URL (usually ending in /v1)")

    # -- many prompts --------------------------------------------------------------------------

    def generate(self, chats: list[Chat], settings: DecodeSettings, progress: Progress | None = None,
                 *, on_result: OnResult | None = None) -> list[Generation]:
        collector = Results(len(chats), progress, on_result)
        if not chats:
            return []
        check_settings(settings)
        collector.finish(0, self._first(chats[0], settings))
        rest = list(range(1, len(chats)))
        run_concurrently(rest, lambda i, stop: self._one(chats[i], settings, stop), concurrency=self.concurrency,
                         on_done=lambda k, gen: collector.finish(rest[k], gen))
        return collector.complete()
