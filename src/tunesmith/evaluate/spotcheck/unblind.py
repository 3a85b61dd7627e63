"""Unblinding: A/B answers back to base/tuned, counted, and the guide's ship rule applied."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tunesmith.errors import DataError
from tunesmith.evaluate.spotcheck.answers import answers_mapping, check_answer

#: The guide's "more than two or three of the twenty", as a share: more than 15 % "would not ship" fails.
NOT_SHIP_NUMERATOR, NOT_SHIP_DENOMINATOR = 3, 20

_MODELS = ("base", "tuned")


@dataclass(frozen=True)
class SpotcheckResult:
    n: int
    would_ship_tuned: int
    would_ship_base: int
    would_not_ship_tuned: int
    would_not_ship_base: int
    preferred_tuned: int
    preferred_base: int
    ties: int
    #: the most tuned "would not ship" answers the rule allows (3 for n=20)
    max_would_not_ship: int
    #: "ship", "do not ship", or "incomplete" (missing answers could still change the verdict)
    verdict: str
    summary: str
    unanswered_ship_tuned: int = 0
    unanswered_ship_base: int = 0
    unanswered_preference: int = 0
    #: item ids with at least one of the three answers missing
    unanswered: list[str] = field(default_factory=list)
    #: answered ids that are not in the key (ignored)
    unknown_ids: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unanswered

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load_key(key: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    if not isinstance(key, Mapping):
        raise DataError(f"spot check key: expected an object, got {type(key).__name__}")
    inner = key.get("key") if isinstance(key.get("key"), Mapping) else key  # key.json or the bare mapping
    out: dict[str, dict[str, str]] = {}
    for item_id, m in inner.items():
        if not isinstance(m, Mapping) or sorted((m.get("A"), m.get("B"))) != list(_MODELS):
            raise DataError(f"spot check key, item {item_id!r}: expected {{'A': 'base'|'tuned', 'B': the other}}")
        out[str(item_id)] = {"A": m["A"], "B": m["B"]}
    if not out:
        raise DataError("spot check key is empty")
    return out


def unblind(key: Mapping[str, Any], answers: Mapping[str, Any]) -> SpotcheckResult:
    """Map A/B answers back to base/tuned, count, and apply the guide's ship rule.

    `key`: `Spotcheck.key` (or the saved key.json). `answers`: the answers.json document (or its
    ``answers`` mapping). Items without an answer count as unanswered; they are never counted as
    "would not ship".
    """
    k = _load_key(key)
    given = {str(i): a for i, a in answers_mapping(answers).items()}
    n = len(k)
    ship = {"base": 0, "tuned": 0}
    no_ship = {"base": 0, "tuned": 0}
    missing_ship = {"base": 0, "tuned": 0}
    prefer = {"base": 0, "tuned": 0, "tie": 0}
    missing_pref = 0
    unanswered: list[str] = []
    for item_id, letters in k.items():
        ans = check_answer(item_id, given[item_id]) if item_id in given else {}
        incomplete = False
        for letter in ("A", "B"):
            model = letters[letter]
            v = ans.get(f"ship_{letter}")
            if v is True:
                ship[model] += 1
            elif v is False:
                no_ship[model] += 1
            else:
                missing_ship[model] += 1
                incomplete = True
        pref = ans.get("preference")
        if pref == "tie":
            prefer["tie"] += 1
        elif pref in ("A", "B"):
            prefer[letters[pref]] += 1
        else:
            missing_pref += 1
            incomplete = True
        if incomplete:
            unanswered.append(item_id)

    limit = (NOT_SHIP_NUMERATOR * n) // NOT_SHIP_DENOMINATOR  # "> 15 %" == "> limit" for whole counts
    if no_ship["tuned"] > limit:
        verdict = "do not ship"
    elif no_ship["tuned"] + missing_ship["tuned"] > limit:
        verdict = "incomplete"
    else:
        verdict = "ship"
    summary = (
        f"would ship {ship['tuned']}/{n} tuned vs {ship['base']}/{n} base, "
        f"preferred tuned in {prefer['tuned']}/{n}"
    )
    if unanswered:
        summary += f" ({len(unanswered)} of {n} not fully answered)"
    summary += f" -> {verdict}"
    return SpotcheckResult(
        n=n,
        would_ship_tuned=ship["tuned"],
        would_ship_base=ship["base"],
        would_not_ship_tuned=no_ship["tuned"],
        would_not_ship_base=no_ship["base"],
        preferred_tuned=prefer["tuned"],
        preferred_base=prefer["base"],
        ties=prefer["tie"],
        max_would_not_ship=limit,
        verdict=verdict,
        summary=summary,
        unanswered_ship_tuned=missing_ship["tuned"],
        unanswered_ship_base=missing_ship["base"],
        unanswered_preference=missing_pref,
        unanswered=unanswered,
        unknown_ids=sorted(set(given) - set(k)),
    )
