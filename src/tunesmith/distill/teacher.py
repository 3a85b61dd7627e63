"""The teacher model behind an OpenAI-compatible endpoint: requests, what they cost, and endpoint quirks.

Requests go through `ChatClient` (one retry policy, the request cache). On top of it the teacher
adapts to what an endpoint refuses: a 400 that names ``response_format`` (JSON Schema mode, then
JSON mode), ``max_tokens`` (newer OpenAI models want ``max_completion_tokens``) or ``temperature``
(reasoning models accept only the default) is answered by dropping or renaming that parameter, once
per run; what was learned is kept in the cache, so a re-run starts adapted and sends nothing twice.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tunesmith.distill.prices import Price
from tunesmith.errors import TunesmithError
from tunesmith.inference.openai_client import ChatClient, ChatReply, RequestFailed


#: max_tokens is never halved below this for a server that refuses a larger one
MIN_MAX_TOKENS = 256


class TeacherError(TunesmithError):
    """The teacher cannot be used at all (unreachable, refused the key, no such model, nothing generated)."""


@dataclass
class Usage:
    """Replies and their tokens."""

    replies: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, reply: ChatReply) -> None:
        self.replies += 1
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens


@dataclass
class Tally:
    """Requests, tokens and cost so far, and every problem met, by kind. Thread-safe."""

    price: Price | None = None
    #: what the endpoint answered in this run: what this run pays for
    sent: Usage = field(default_factory=Usage)
    #: replies from the request cache: paid for by an earlier run, not this one
    cached: Usage = field(default_factory=Usage)
    problems: Counter[str] = field(default_factory=Counter)
    #: the model names the endpoint answered as, when they differ from the one asked for
    other_models: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, reply: ChatReply) -> None:
        with self._lock:
            (self.cached if reply.cached else self.sent).add(reply)

    def answered_as(self, model: str) -> None:
        with self._lock:
            self.other_models[model] += 1

    def count(self, problem: str, n: int = 1) -> None:
        with self._lock:
            self.problems[problem] += n

    @property
    def cost(self) -> float | None:
        """US$ spent by this run (cached replies cost nothing now)."""
        return None if self.price is None else self.price.cost(self.sent.prompt_tokens, self.sent.completion_tokens)

    def to_dict(self) -> dict[str, Any]:
        cost = self.cost
        return {
            "requests_sent": self.sent.replies, "replies_from_cache": self.cached.replies,
            "prompt_tokens": self.sent.prompt_tokens, "completion_tokens": self.sent.completion_tokens,
            "cached_prompt_tokens": self.cached.prompt_tokens, "cached_completion_tokens": self.cached.completion_tokens,
            "cost_usd": None if cost is None else round(cost, 6),
            "price": None if self.price is None else {"input_per_1m": self.price.input_per_m,
                                                      "output_per_1m": self.price.output_per_m,
                                                      "source": self.price.source},
            "problems": dict(self.problems), "answered_as_other_models": dict(self.other_models),
        }


def _names_param(exc: RequestFailed, *words: str) -> bool:
    text = f"{exc.reason} {exc.server_message}".lower()
    return any(w in text for w in words)


_CONTEXT_WORDS = ("context length", "context window", "maximum context", "input tokens", "in the messages")


def _max_tokens(params: dict[str, Any]) -> int:
    return int(params.get("max_tokens") or params.get("max_completion_tokens") or 0)


def _number_after(exc: RequestFailed, words: str) -> int | None:
    m = re.search(words + r"\D{0,20}?(\d+)", f"{exc.reason} {exc.server_message}", re.IGNORECASE)
    return int(m.group(1)) if m else None


def _fit_context(exc: RequestFailed, sent: dict[str, Any]) -> int | None:
    """The max_tokens that fits a prompt too long for the server's context with the room asked for
    (OpenAI's and vLLM's wordings: "maximum context length is C ... N in the messages" / "your request
    has N input tokens"), else half of it; None when the refusal is something else or nothing fits."""
    asked = _max_tokens(sent)
    if not asked or not _names_param(exc, *_CONTEXT_WORDS):
        return None
    context = _number_after(exc, r"(?:maximum context length is|context window of|context length of)")
    prompt = _number_after(exc, r"(?:request has|\()") if context else None
    room = context - prompt - 8 if context and prompt and prompt < context else asked // 2
    return room if 16 <= room < asked else None


@dataclass
class Asked:
    """A reply, the content address of the request that got it, and the parameters as sent."""

    reply: ChatReply
    key: str
    params: dict[str, Any]

    @property
    def max_tokens(self) -> int:
        return _max_tokens(self.params)


class Teacher:
    """One teacher model at one endpoint: `ask` sends a chat and counts the reply."""

    def __init__(self, client: ChatClient, tally: Tally) -> None:
        self.client = client
        self.tally = tally
        self._lock = threading.Lock()
        self._note_key = f"quirks {client.base_url} {client.model}"
        saved = client.cache.note(self._note_key) if client.cache is not None else None
        self.quirks: dict[str, Any] = json.loads(saved) if saved else {}

    @property
    def model(self) -> str:
        return self.client.model

    def ask(self, messages: list[dict[str, str]], params: dict[str, Any], stop: threading.Event | None = None
            ) -> Asked:
        """The reply, the request's content address and the parameters as sent (adapted to the endpoint)."""
        fit_key = "fit " + self.client.request_key(messages, params)  # this request, as the caller made it
        fit = self._note_int(fit_key)
        for _ in range(10):  # one adaptation per refusable parameter, a few smaller max_tokens
            sent = self._adapted(params, fit)
            try:
                reply = self.client.create(messages, stop=stop, **sent)
            except RequestFailed as exc:
                if exc.status not in (400, 422):
                    raise
                if self._learn(exc, sent):
                    continue
                fit = _fit_context(exc, sent)
                if fit is None:
                    raise
                # this prompt is long for the server's context: less room for its answer, this request only
                self.tally.count("answer room reduced for a long prompt")
                if self.client.cache is not None:
                    self.client.cache.set_note(fit_key, str(fit))
                continue
            self.tally.add(reply)
            self._check_model(reply)
            return Asked(reply, self.client.request_key(messages, sent), sent)
        raise RequestFailed("the endpoint refused every variant of the request", status=400)

    def _note_int(self, key: str) -> int | None:
        saved = self.client.cache.note(key) if self.client.cache is not None else None
        return int(saved) if saved and saved.isdigit() else None

    def _adapted(self, params: dict[str, Any], fit: int | None = None) -> dict[str, Any]:
        out = dict(params)
        with self._lock:
            quirks = dict(self.quirks)
        rf = out.get("response_format")
        if rf is not None:
            level = quirks.get("response_format")  # "json_object": no JSON Schema mode; "none": no JSON mode
            if level == "none":
                out.pop("response_format")
            elif level == "json_object" and rf.get("type") == "json_schema":
                out["response_format"] = {"type": "json_object"}
        for cap in (quirks.get("max_tokens_cap"), fit):
            if cap and out.get("max_tokens", 0) > cap:
                out["max_tokens"] = cap
        if quirks.get("max_completion_tokens") and "max_tokens" in out:
            out["max_completion_tokens"] = out.pop("max_tokens")
        if quirks.get("no_temperature"):
            out.pop("temperature", None)
        return out

    def _learn(self, exc: RequestFailed, sent: dict[str, Any]) -> bool:
        """Remember what the endpoint refuses for every request; False when the refusal is not one of those
        (a prompt too long for the context is this request's own matter: `_fit_context`)."""
        change: tuple[str, Any] | None = None
        rf = sent.get("response_format")
        asked = _max_tokens(sent)
        if rf is not None and _names_param(exc, "response_format", "json_schema", "json_object", "structured output"):
            change = ("response_format", "json_object" if rf.get("type") == "json_schema" else "none")
        elif "max_tokens" in sent and _names_param(exc, "use 'max_completion_tokens'", "use max_completion_tokens",
                                                   "max_completion_tokens instead"):
            change = ("max_completion_tokens", True)
        elif (asked > MIN_MAX_TOKENS and _names_param(exc, "max_tokens", "max_completion_tokens")
              and not _names_param(exc, *_CONTEXT_WORDS)):
            stated = _number_after(exc, r"(?:limit(?: is| of)?|maximum(?: is| of)?|at most|less than or equal to|<=)")
            cap = stated if stated is not None and MIN_MAX_TOKENS <= stated < asked else max(MIN_MAX_TOKENS, asked // 2)
            change = ("max_tokens_cap", cap)
        elif "temperature" in sent and _names_param(exc, "temperature"):
            change = ("no_temperature", True)
        if change is None:
            return False
        with self._lock:
            self.quirks[change[0]] = change[1]
            snapshot = json.dumps(self.quirks, sort_keys=True)
        self.tally.count(f"endpoint refused a parameter ({change[0]})")
        if self.client.cache is not None:
            self.client.cache.set_note(self._note_key, snapshot)
        return True

    def _check_model(self, reply: ChatReply) -> None:
        said = (reply.model or "").strip().lower()
        asked = self.model.strip().lower().rsplit("/", 1)[-1]
        said_short = said.rsplit("/", 1)[-1]
        if said and said_short != asked and not said_short.startswith(asked + "-"):  # a dated snapshot is the same model
            self.tally.answered_as(reply.model or "")
