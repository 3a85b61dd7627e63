"""What the judge is given and what it answers: inputs, scores, verdicts, failures, and its error."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tunesmith.errors import TunesmithError


class JudgeError(TunesmithError):
    """The judge cannot be used at all (unreachable, refused credentials, judging itself...).

    `partial` holds whatever results were complete when the run stopped (a RubricResult or a
    PairwiseResult), or None.
    """

    def __init__(self, message: str, hint: str = "", *, details: list[str] | None = None,
                 partial: RubricResult | PairwiseResult | None = None) -> None:
        super().__init__(message, hint, details=details)
        self.partial = partial


@dataclass(frozen=True)
class JudgeFailure:
    """An item the judge could not score: reported beside the scores, never counted as a zero."""

    item_id: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RubricInput:
    id: str
    prompt: str
    reference: str | None
    output: str


@dataclass
class RubricScore:
    id: str
    correctness: int
    format: int
    completeness: int
    notes: str
    #: Mean of the three criteria.
    overall: float = field(init=False)

    def __post_init__(self) -> None:
        self.overall = (self.correctness + self.format + self.completeness) / 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RubricResult:
    scores: list[RubricScore] = field(default_factory=list)
    failures: list[JudgeFailure] = field(default_factory=list)
    #: How many judge calls were answered from the cache.
    cache_hits: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"scores": [s.to_dict() for s in self.scores],
                "failures": [f.to_dict() for f in self.failures],
                "cache_hits": self.cache_hits}


@dataclass(frozen=True)
class PairInput:
    """One pairwise comparison: `a` is the base model's answer, `b` the tuned model's."""

    id: str
    prompt: str
    reference: str | None
    a: str
    b: str


@dataclass
class PairVerdict:
    id: str
    #: "a", "b" or "tie" (a verdict that flips with position is a tie).
    verdict: str
    #: Both orders gave the same verdict.
    consistent: bool
    #: The verdict (in a/b/tie terms) when a was shown first, and when b was shown first.
    a_first: str
    b_first: str
    reason_a_first: str = ""
    reason_b_first: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PairwiseResult:
    items: list[PairVerdict] = field(default_factory=list)
    failures: list[JudgeFailure] = field(default_factory=list)
    cache_hits: int = 0

    @property
    def judged(self) -> int:
        return len(self.items)

    @property
    def wins_a(self) -> int:
        return sum(1 for v in self.items if v.verdict == "a")

    @property
    def wins_b(self) -> int:
        return sum(1 for v in self.items if v.verdict == "b")

    @property
    def ties(self) -> int:
        return sum(1 for v in self.items if v.verdict == "tie")

    @property
    def consistent(self) -> int:
        return sum(1 for v in self.items if v.consistent)

    @property
    def position_consistency_rate(self) -> float | None:
        """Consistent items / judged items; None when nothing was judged."""
        return self.consistent / self.judged if self.judged else None

    def to_dict(self) -> dict[str, Any]:
        return {"items": [v.to_dict() for v in self.items],
                "failures": [f.to_dict() for f in self.failures],
                "judged": self.judged, "wins_a": self.wins_a, "wins_b": self.wins_b, "ties": self.ties,
                "position_consistency_rate": self.position_consistency_rate,
                "cache_hits": self.cache_hits}
