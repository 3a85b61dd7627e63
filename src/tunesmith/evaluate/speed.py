"""Tokens per second of one evaluation variant, from the generation cache's counters.

Only answers generated during the measurement count: output tokens of fresh answers over the wall
seconds the model spent making them. Answers taken from the cache cost nothing, so when every answer
came from it there is no speed to report ("cached"), rather than a number that would look fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_COUNTERS = ("answered", "cached", "generated_tokens", "generate_seconds")


def _read(backend: Any) -> tuple[float, ...] | None:
    if not all(hasattr(backend, c) for c in _COUNTERS):
        return None  # a bare backend (no cache in front): nothing counts its answers
    return tuple(float(getattr(backend, c)) for c in _COUNTERS)


@dataclass
class SpeedMeter:
    """`SpeedMeter(backend)` before generating, `.result()` after: what that stretch cost."""

    backend: Any

    def __post_init__(self) -> None:
        self._start = _read(self.backend)

    def result(self) -> dict[str, Any]:
        end = _read(self.backend)
        if self._start is None or end is None:
            return speed_dict(None, None, None, None)
        answered, cached, tokens, seconds = (b - a for a, b in zip(self._start, end))
        return speed_dict(int(answered), int(cached), int(tokens), seconds)


def speed_dict(answered: int | None, cached: int | None, tokens: int | None, seconds: float | None) -> dict[str, Any]:
    generated = None if answered is None or cached is None else answered - cached
    rate = tokens / seconds if generated and tokens is not None and seconds else None
    return {"tokens_per_s": None if rate is None else round(rate, 2), "answers": answered,
            "generated": generated, "output_tokens": tokens,
            "seconds": None if seconds is None else round(seconds, 3),
            # every answer from the cache: the model did not run, so there is no speed to show
            "cached": bool(answered) and generated == 0}


def speed_text(speed: dict[str, Any] | None) -> str:
    """"123.4" tokens/s, "cached" when nothing was generated, "-" when unknown."""
    if not speed:
        return "-"
    if speed.get("cached"):
        return "cached"
    rate = speed.get("tokens_per_s")
    return "-" if rate is None else f"{rate:.1f}"
