"""Strict parsing of judge replies: the JSON object asked for, or a `JudgeParseError` saying what is wrong."""

from __future__ import annotations

import json
from typing import Any

from tunesmith.inference.replies import unfence

RUBRIC_KEYS = ("correctness", "format", "completeness")


class JudgeParseError(ValueError):
    """A judge reply that is not the JSON object asked for; the message says what is wrong."""


def _load_object(text: str | None) -> dict[str, Any]:
    if text is None or not text.strip():
        raise JudgeParseError("the reply was empty")
    body = text.strip()
    body, _ = unfence(body)  # a whole-reply ```json fence is tolerated; prose around it is not

    def _no_constants(c: str) -> Any:
        raise JudgeParseError(f"{c} is not valid JSON")

    try:
        obj = json.loads(body, parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        raise JudgeParseError(f"the reply is not a JSON object ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(obj, dict):
        raise JudgeParseError(f"the reply is JSON but a {type(obj).__name__}, not an object")
    return obj


def parse_rubric_reply(text: str | None) -> dict[str, Any]:
    """Strictly parse a rubric reply: all keys, integer scores in 1..5, string notes. Extra keys are ignored."""
    obj = _load_object(text)
    missing = [k for k in (*RUBRIC_KEYS, "notes") if k not in obj]
    if missing:
        raise JudgeParseError(f"missing key(s) {', '.join(missing)}")
    out: dict[str, Any] = {}
    for k in RUBRIC_KEYS:
        v = obj[k]
        if isinstance(v, bool) or not isinstance(v, int):
            raise JudgeParseError(f"{k!r} must be an integer from 1 to 5, got {json.dumps(v)}")
        if not 1 <= v <= 5:
            raise JudgeParseError(f"{k!r} must be from 1 to 5, got {v}")
        out[k] = v
    if not isinstance(obj["notes"], str):
        raise JudgeParseError(f"'notes' must be a string, got {json.dumps(obj['notes'])}")
    out["notes"] = obj["notes"]
    return out


def parse_pairwise_reply(text: str | None) -> dict[str, Any]:
    """Strictly parse a pairwise reply: winner in first/second/tie, string reason."""
    obj = _load_object(text)
    missing = [k for k in ("winner", "reason") if k not in obj]
    if missing:
        raise JudgeParseError(f"missing key(s) {', '.join(missing)}")
    winner = obj["winner"]
    if not isinstance(winner, str) or winner.strip().lower() not in ("first", "second", "tie"):
        raise JudgeParseError(f"'winner' must be \"first\", \"second\" or \"tie\", got {json.dumps(winner)}")
    if not isinstance(obj["reason"], str):
        raise JudgeParseError(f"'reason' must be a string, got {json.dumps(obj['reason'])}")
    return {"winner": winner.strip().lower(), "reason": obj["reason"]}
