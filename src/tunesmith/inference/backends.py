"""What every generation backend shares: the `Backend` protocol, settings checks, result collection.

A backend turns chats into answers and says exactly which model answered: ``fingerprint`` (what
`tunesmith.evaluate.cache` keys answers on) and ``generate(chats, settings, progress=None) ->
list[Generation]`` in the order of `chats`. ``progress(n)`` is called with the number of prompts
answered so far. The backends also accept ``on_result(index, generation)``, called once per prompt as
soon as its answer exists, which is how `CachedBackend` stores finished work before the call returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from tunesmith.errors import UsageError
from tunesmith.inference.types import DecodeSettings, Generation

Chat = list[dict[str, str]]
Progress = Callable[[int], None]
OnResult = Callable[[int, Generation], None]


@runtime_checkable
class Backend(Protocol):
    """Answers chats. `fingerprint` identifies the model exactly (a cache key component)."""

    fingerprint: str

    def generate(self, chats: list[Chat], settings: DecodeSettings,
                 progress: Progress | None = None) -> list[Generation]: ...


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` cut at the earliest occurrence of any stop string (excluded); whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def sha256_of(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_settings(settings: DecodeSettings) -> None:
    if settings.max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be at least 1, got {settings.max_new_tokens}",
                         "pass --max-new-tokens 1 or more")
    if settings.temperature < 0:
        raise UsageError(f"temperature must be 0 (greedy) or more, got {settings.temperature}",
                         "use temperature 0 for a repeatable evaluation")
    if not 0 < settings.top_p <= 1:
        raise UsageError(f"top_p must be in (0, 1], got {settings.top_p}", "use top_p 1 to turn it off")


class Results:
    """Answers by prompt index as they arrive, reported to the progress and on_result callbacks."""

    def __init__(self, n: int, progress: Progress | None, on_result: OnResult | None) -> None:
        self.results: list[Generation | None] = [None] * n
        self.done = 0
        self.progress, self.on_result = progress, on_result

    def finish(self, index: int, gen: Generation) -> None:
        self.results[index] = gen
        self.done += 1
        if self.on_result is not None:
            self.on_result(index, gen)
        if self.progress is not None:
            self.progress(self.done)

    def complete(self) -> list[Generation]:
        results = self.results
        missing = sum(r is None for r in results)
        if missing:  # pragma: no cover - defensive
            raise RuntimeError(f"internal error: {missing} prompts got no answer")
        return [r for r in results if r is not None]
