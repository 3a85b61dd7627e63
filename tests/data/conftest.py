"""Shared builders for the data-check tests: varied clean JSONL examples written to real files."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from tunesmith.data.checks import CheckContext, run_check

_CONS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def _vocabulary(n: int = 600, seed: int = 1234) -> list[str]:
    """Pronounceable pseudo-words: lower-case letters only (no digits, '@', '-' or '_'), so the
    filler can never look like a secret, PII, JSON or a phone number."""
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(_CONS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 4))))
    return sorted(words)


VOCAB = _vocabulary()


class Data:
    """Builds clean examples and writes them (plus planted problems) to JSONL files."""

    vocab = VOCAB

    @staticmethod
    def words(rng: random.Random, lo: int, hi: int) -> str:
        return " ".join(rng.choice(VOCAB) for _ in range(rng.randint(lo, hi)))

    @staticmethod
    def long_text(seed: int, n: int = 45) -> str:
        """n random vocabulary words from a seeded RNG."""
        rng = random.Random(seed)
        return " ".join(rng.choice(VOCAB) for _ in range(n))

    @classmethod
    def clean(
        cls,
        n: int = 70,
        *,
        seed: int = 0,
        system: str | None = None,
        json_outputs: bool = False,
    ) -> list[dict[str, Any]]:
        """n distinct, varied, well-formed messages-format examples (no check fires on them)."""
        rng = random.Random(seed)
        out = []
        for i in range(n):
            user = f"{cls.words(rng, 18, 30)}"
            if json_outputs:
                answer = json.dumps({"label": rng.choice(VOCAB), "summary_text": cls.words(rng, 4, 8)})
            else:
                answer = cls.words(rng, 8, 16)
            turns = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
            if system is not None:
                turns.insert(0, {"role": "system", "content": system})
            out.append({"messages": turns})
        return out

    @staticmethod
    def dumps(item: Any) -> bytes:
        if isinstance(item, bytes):
            return item
        if isinstance(item, str):
            return item.encode("utf-8")
        return json.dumps(item).encode("utf-8")

    @classmethod
    def write(cls, path: Path, items: Iterable[Any], *, newline: bytes = b"\n", prefix: bytes = b"") -> Path:
        """Write one item per line: dicts/lists as JSON, str as raw text, bytes as raw bytes."""
        path.write_bytes(prefix + b"".join(cls.dumps(it) + newline for it in items))
        return path

    @classmethod
    def planted(cls, plants: dict[int, Any], n: int = 70, **clean_kwargs: Any) -> list[Any]:
        """Clean examples with the item at each 1-based line number replaced by a planted one."""
        items: list[Any] = list(cls.clean(n, **clean_kwargs))
        for line, item in plants.items():
            items[line - 1] = item
        return items

    @staticmethod
    def msgs(user: str, assistant: str, system: str | None = None) -> dict[str, Any]:
        turns = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        if system is not None:
            turns.insert(0, {"role": "system", "content": system})
        return {"messages": turns}


@pytest.fixture(scope="session")
def data() -> type[Data]:
    return Data


@pytest.fixture
def check(tmp_path: Path) -> Callable[..., Any]:
    """check(items_or_path, **context) -> CheckReport; items are written to tmp_path/train.jsonl."""

    def _check(items: Iterable[Any] | Path, name: str = "train.jsonl", **ctx: Any):
        path = items if isinstance(items, Path) else Data.write(tmp_path / name, items)
        return run_check(CheckContext(file=path, **ctx))

    return _check
