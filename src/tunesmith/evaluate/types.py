"""The small value types every evaluation module shares."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# defined beside the backends that take and return them; every evaluation module imports them from here
from tunesmith.inference.types import DecodeSettings, Generation

__all__ = ["DecodeSettings", "EvalItem", "Estimate", "Generation"]


@dataclass
class EvalItem:
    """One prompt to evaluate: the chat up to (not including) the answer, and what is expected."""

    id: str
    chat: list[dict[str, str]]
    expected: str | None = None
    assertions: list[dict[str, Any]] = field(default_factory=list)
    line: int = 0

    def prompt_text(self) -> str:
        return "\n".join(t["content"] for t in self.chat if t["role"] == "user")


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95 % interval and the n it was computed on."""

    mean: float
    lo: float
    hi: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
