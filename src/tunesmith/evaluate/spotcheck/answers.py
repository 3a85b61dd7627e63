"""The answers.json format, checked the same way by the server (each POST) and by `unblind`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunesmith.errors import DataError

ANSWERS_NAME = "answers.json"
FIELDS = ("ship_A", "ship_B", "preference")
PREFERENCES = ("A", "B", "tie")


def check_answer(item_id: str, answer: Any) -> dict[str, Any]:
    """One item's answer with only known fields, validated; raises DataError."""
    if not isinstance(answer, Mapping):
        raise DataError(f"answer for item {item_id!r}: expected an object, got {type(answer).__name__}")
    out: dict[str, Any] = {}
    for f in FIELDS:
        if f not in answer:
            continue
        v = answer[f]
        if f == "preference":
            if v is not None and v not in PREFERENCES:
                raise DataError(f"answer for item {item_id!r}: preference must be A, B, tie or null, got {v!r}")
        elif v is not None and not isinstance(v, bool):
            raise DataError(f"answer for item {item_id!r}: {f} must be true, false or null, got {v!r}")
        out[f] = v
    return out


def answers_mapping(answers: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept the answers.json document or its ``answers`` mapping."""
    if not isinstance(answers, Mapping):
        raise DataError(f"answers: expected an object, got {type(answers).__name__}")
    inner = answers.get("answers") if "answers" in answers else answers
    if not isinstance(inner, Mapping):
        raise DataError("answers: 'answers' must be an object of item id -> answer")
    return inner
