"""A persistent cache of generations, so an evaluation never asks a model the same question twice.

An answer is keyed by sha256 over (the backend's fingerprint, the chat as JSON, the decode settings'
key): the same model, prompt and settings give the same answer (greedy decoding, or sampling with a
seed), so it is taken from the cache. `CachedBackend` wraps any backend: it looks every prompt up,
sends only the misses to the backend in one call and stores each answer the moment it exists, so an
interrupted evaluation keeps everything it finished. Failed answers (finish_reason "error") are
never stored, and neither is sampling without a seed (it is not meant to repeat).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.evaluate.types import DecodeSettings, Generation

Chat = list[dict[str, str]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL
)
"""
_LOOKUP_CHUNK = 500  # keys per SELECT (SQLite caps the number of bound parameters)


class CacheError(TunesmithError):
    """The generation cache file cannot be opened or written."""


def cache_key(fingerprint: str, chat: Chat, settings: DecodeSettings) -> str:
    blob = json.dumps([fingerprint, chat, settings.key()], ensure_ascii=False, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def cacheable(gen: Generation, settings: DecodeSettings) -> bool:
    """Errors are retried next time; unseeded sampling is not meant to repeat."""
    if gen.finish_reason == "error":
        return False
    return settings.temperature <= 0 or settings.seed is not None


class GenerationCache:
    """SQLite (WAL journal) table key -> Generation JSON; safe to share between threads and processes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._db:
                self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise CacheError(f"cannot open the generation cache {self.path}: {exc}",
                             "check that the directory is writable, or delete the file to start a fresh cache") from exc

    def get_many(self, keys: Iterable[str]) -> dict[str, Generation]:
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Generation] = {}
        with self._lock:
            for start in range(0, len(wanted), _LOOKUP_CHUNK):
                chunk = wanted[start:start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                try:
                    rows = self._db.execute(f"SELECT key, value FROM generations WHERE key IN ({marks})",
                                            chunk).fetchall()
                except sqlite3.Error as exc:
                    raise CacheError(f"cannot read the generation cache {self.path}: {exc}",
                                     "delete the file to start a fresh cache") from exc
                for key, value in rows:
                    gen = _decode(value)
                    if gen is not None:
                        found[key] = gen
        return found

    def get(self, key: str) -> Generation | None:
        return self.get_many([key]).get(key)

    def put(self, key: str, fingerprint: str, gen: Generation) -> None:
        value = json.dumps(gen.to_dict(), ensure_ascii=False)
        with self._lock:
            try:
                with self._db:
                    self._db.execute("INSERT OR REPLACE INTO generations (key, fingerprint, value, created) "
                                     "VALUES (?, ?, ?, ?)", (key, fingerprint, value, time.time()))
            except sqlite3.Error as exc:
                raise CacheError(f"cannot write to the generation cache {self.path}: {exc}",
                                 "check free disk space and that the file is writable") from exc

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM generations").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _decode(value: str) -> Generation | None:
    try:
        data = json.loads(value)
        return Generation(text=data["text"], finish_reason=data["finish_reason"],
                          output_tokens=int(data.get("output_tokens", 0)), error=data.get("error"))
    except (ValueError, KeyError, TypeError):
        return None  # unreadable row: generate again


class CachedBackend:
    """A backend answering from `cache` where it can; misses go to `backend` in one `generate` call.

    When the backend accepts ``on_result`` (the backends in `tunesmith.evaluate.generate` do), every
    answer is stored the moment it exists; otherwise all of them are stored when the call returns.
    `hits` and `misses` count the prompts of the last call. `answered`, `cached`, `generated_tokens`
    and `generate_seconds` add up over every call (`evaluate.speed` measures tokens/s from them: only
    answers generated now count, so a cached answer never passes for a fast one).
    """

    def __init__(self, backend: Any, cache: GenerationCache) -> None:
        self.backend = backend
        self.cache = cache
        self.hits = 0
        self.misses = 0
        self.answered = 0
        self.cached = 0
        self.generated_tokens = 0
        self.generate_seconds = 0.0

    @property
    def fingerprint(self) -> str:
        return self.backend.fingerprint

    @property
    def honours_contract(self) -> bool:
        return getattr(self.backend, "honours_contract", False)

    @property
    def honours_constraint(self) -> bool:
        return getattr(self.backend, "honours_constraint", False)

    def check_constraint(self, settings: DecodeSettings) -> None:
        """The wrapped backend's check (raises when it cannot enforce `settings.constraint`)."""
        check = getattr(self.backend, "check_constraint", None)
        if check is not None:
            check(settings)

    def generate(self, chats: list[Chat], settings: DecodeSettings,
                 progress: Callable[[int], None] | None = None,
                 *, on_result: Callable[[int, Generation], None] | None = None) -> list[Generation]:
        fingerprint = self.fingerprint
        keys = [cache_key(fingerprint, chat, settings) for chat in chats]
        found = self.cache.get_many(keys)
        results: list[Generation | None] = [found.get(k) for k in keys]
        misses = [i for i, r in enumerate(results) if r is None]
        self.hits, self.misses = len(chats) - len(misses), len(misses)
        self.answered += len(chats)
        self.cached += self.hits
        if on_result is not None:
            for i, r in enumerate(results):
                if r is not None:
                    on_result(i, r)
        if progress is not None and self.hits:
            progress(self.hits)
        if not misses:
            return [r for r in results if r is not None]

        stored: set[int] = set()

        def store(j: int, gen: Generation) -> None:
            i = misses[j]
            results[i] = gen
            if cacheable(gen, settings):
                self.cache.put(keys[i], fingerprint, gen)
            stored.add(j)
            if on_result is not None:
                on_result(i, gen)

        inner_progress = None if progress is None else (lambda n: progress(self.hits + n))
        miss_chats = [chats[i] for i in misses]
        started = time.perf_counter()
        if _accepts_on_result(self.backend):
            gens = self.backend.generate(miss_chats, settings, inner_progress, on_result=store)
        else:
            gens = self.backend.generate(miss_chats, settings, inner_progress)
        self.generate_seconds += time.perf_counter() - started
        self.generated_tokens += sum(g.output_tokens for g in gens)
        if len(gens) != len(misses):
            raise TunesmithError(f"the generation backend returned {len(gens)} answers for {len(misses)} prompts",
                                 "this is a bug in the backend")
        for j, gen in enumerate(gens):
            if j not in stored:
                store(j, gen)
        return [r for r in results if r is not None]


def _accepts_on_result(backend: Any) -> bool:
    try:
        params = inspect.signature(backend.generate).parameters
    except (TypeError, ValueError):
        return False
    return "on_result" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
