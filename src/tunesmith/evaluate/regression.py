"""The regression suite: 20-50 fixed prompts with assertions, checked after every run.

File format (JSONL, one prompt per line):

    {"id": "async_function_01",
     "messages": [{"role": "user", "content": "..."}],        # or "prompt": "..."
     "expected": {...} | "...",                                # optional: shown in reports, used by judges
     "assertions": [{"type": "json_schema"},
                    {"type": "json_field", "path": "is_async", "equals": true},
                    {"type": "contains", "value": "async"}]}

Assertion types (a closed registry): equals, contains, not_contains, regex, json_schema, json_field,
judge_min, scorer. A suite with an unknown type or a missing parameter is rejected with every problem
(line and name) at once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunesmith.data.reader import iter_raw
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.types import EvalItem
from tunesmith.io import loads_strict_json
from tunesmith.paths import link_hint, symlink_problem


class RegressionError(TunesmithError):
    """The regression suite file is malformed."""


#: assertion type -> required parameters
ASSERTIONS: dict[str, tuple[str, ...]] = {
    "equals": ("value",),
    "contains": ("value",),
    "not_contains": ("value",),
    "regex": ("pattern",),
    "json_schema": (),
    "json_field": ("path",),
    "judge_min": ("min",),
    "scorer": ("name",),
}
MIN_PROMPTS, MAX_PROMPTS = 20, 50


def load_suite(path: Path, system_prompt: str | None = None) -> tuple[list[EvalItem], list[str]]:
    """The suite's items (with the project's system prompt) and warnings; all errors raised at once."""
    from tunesmith.data.formats import Message, parse_record
    from tunesmith.models.chat import to_chat

    link = symlink_problem(path)
    if link is not None:
        raise RegressionError(link, link_hint(path))
    if not path.exists():
        raise RegressionError(f"{path}: no regression suite", "write 20-50 prompts with assertions (see `tunesmith eval --help`)")
    problems: list[str] = []
    items: list[EvalItem] = []
    seen: set[str] = set()
    for raw in iter_raw(path):
        where = f"{path.name}:{raw.line}"
        if raw.error is not None:
            problems.append(f"{where}: {raw.error[1]}")
            continue
        rec = raw.value
        if not isinstance(rec, dict):
            problems.append(f"{where}: expected an object")
            continue
        raw_id = rec.get("id", f"line-{raw.line}")
        if isinstance(raw_id, (dict, list)) or raw_id is None:
            problems.append(f"{where}: id is {_kind(raw_id)}; it must be a string (or a number)")
        item_id = str(raw_id)
        if item_id in seen:
            problems.append(f"{where}: duplicate id {item_id!r}")
        seen.add(item_id)
        if "prompt" in rec and "messages" not in rec:
            if not isinstance(rec["prompt"], str):
                problems.append(f"{where}: prompt is {_kind(rec['prompt'])}; it must be a string")
                continue
            messages = [Message("user", rec["prompt"])]
        else:
            ex = parse_record({"messages": rec.get("messages")}, raw.line) if "messages" in rec else None
            wrong = [p for p in ex.problems if p.check != "missing_assistant"] if ex is not None else []
            if wrong:  # the field and what is wrong with it, e.g. "messages[0].content is a list"
                problems.append(f"{where}: {wrong[0].message}")
                continue
            if ex is None or not ex.messages:
                problems.append(f"{where}: needs 'messages' (user turns) or 'prompt'")
                continue
            messages = [m for m in ex.messages if m.role != "assistant" or m is not ex.messages[-1]]
        assertions = rec.get("assertions", [])
        if not isinstance(assertions, list) or not assertions:
            problems.append(f"{where}: 'assertions' must be a non-empty list")
            assertions = []
        for i, a in enumerate(assertions):
            problems.extend(f"{where}: {p}" for p in _assertion_problems(i, a))
        expected = rec.get("expected")
        if expected is not None and not isinstance(expected, str):
            expected = json.dumps(expected, ensure_ascii=False, separators=(",", ":"))
        items.append(EvalItem(item_id, to_chat(messages, system_prompt), expected, assertions, raw.line))
    if problems:
        raise RegressionError(f"{path}: {len(problems)} problem(s) in the regression suite",
                              "fix the lines named above", details=problems)
    warnings = []
    if not MIN_PROMPTS <= len(items) <= MAX_PROMPTS:
        warnings.append(f"{path.name} has {len(items)} prompts; {MIN_PROMPTS}-{MAX_PROMPTS} cover the important cases without noise")
    return items, warnings


#: the parameters each assertion reads, by the JSON type they must have
_PARAM_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "pattern": ((str,), "a string"), "path": ((str,), "a string"), "name": ((str,), "a string"),
    "criterion": ((str,), "a string"), "min": ((int, float), "a number"),
}


def _kind(value: object) -> str:
    """A JSON value's kind, as a message names it."""
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), "a number")


def _assertion_problems(i: int, a: object) -> list[str]:
    """What is wrong with assertions[i]: its type, a missing parameter, a parameter of the wrong kind."""
    if not isinstance(a, dict):
        return [f"assertions[{i}] is {_kind(a)}; it must be an object with a type"]
    kind = a.get("type")
    if isinstance(kind, (dict, list)):
        return [f"assertions[{i}].type is {_kind(kind)}; it must be one of {', '.join(ASSERTIONS)}"]
    if kind not in ASSERTIONS:
        return [f"assertions[{i}] has unknown type {kind!r} (known: {', '.join(ASSERTIONS)})"]
    missing = [p for p in ASSERTIONS[kind] if p not in a]
    if missing:
        return [f"assertions[{i}] ({kind}) needs {', '.join(missing)}"]
    problems = []
    for param, value in a.items():
        types, what = _PARAM_TYPES.get(param, ((), ""))
        if types and (isinstance(value, bool) or not isinstance(value, types)):
            problems.append(f"assertions[{i}].{param} is {_kind(value)}; it must be {what}")
    value = a.get("value")
    if kind in ("equals", "contains", "not_contains") and (isinstance(value, (dict, list)) or value is None):
        problems.append(f"assertions[{i}].value is {_kind(value)}; it must be a string (use json_field for a JSON value)")
    if kind == "regex" and isinstance(a["pattern"], str):
        try:
            re.compile(a["pattern"])
        except re.error as exc:
            problems.append(f"assertions[{i}] regex does not compile: {exc}")
    return problems


@dataclass
class AssertionResult:
    passed: bool
    failures: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # judge_min without a judge


def _field(value: Any, path: str) -> tuple[bool, Any]:
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            idx = int(part[1:-1])
            if not isinstance(value, list) or idx >= len(value):
                return False, None
            value = value[idx]
        else:
            if not isinstance(value, dict) or part not in value:
                return False, None
            value = value[part]
    return True, value


def check_assertions(item: EvalItem, output: str, *, validator: Any = None,
                     judge_scores: dict[str, float] | None = None,
                     scorers: dict[str, Callable[..., Any]] | None = None) -> AssertionResult:
    """Every assertion of one regression prompt against one output."""
    failures: list[str] = []
    pending: list[str] = []
    parsed: Any = None
    parse_ok = False
    try:
        parsed, parse_ok = loads_strict_json(output), True
    except (ValueError, RecursionError):
        pass
    for a in item.assertions:
        kind = a["type"]
        if kind == "equals" and output.strip() != str(a["value"]).strip():
            failures.append("equals: output differs")
        elif kind == "contains" and str(a["value"]) not in output:
            failures.append(f"contains: {a['value']!r} missing")
        elif kind == "not_contains" and str(a["value"]) in output:
            failures.append(f"not_contains: {a['value']!r} present")
        elif kind == "regex" and not re.search(a["pattern"], output, re.DOTALL):
            failures.append(f"regex: {a['pattern']!r} does not match")
        elif kind == "json_schema":
            if not parse_ok:
                failures.append("json_schema: output is not JSON")
            elif validator is not None:
                err = next(iter(validator.iter_errors(parsed)), None)
                if err is not None:
                    failures.append(f"json_schema: {err.message[:120]}")
        elif kind == "json_field":
            found, value = _field(parsed, a["path"]) if parse_ok else (False, None)
            if not found:
                failures.append(f"json_field: {a['path']} missing")
            elif "equals" in a and value != a["equals"]:
                failures.append(f"json_field: {a['path']} is {json.dumps(value)[:60]}, expected {json.dumps(a['equals'])[:60]}")
        elif kind == "judge_min":
            criterion = a.get("criterion", "overall")
            if judge_scores is None or criterion not in judge_scores:
                pending.append(f"judge_min: no judge score for {criterion}")
            elif judge_scores[criterion] < a["min"]:
                failures.append(f"judge_min: {criterion} {judge_scores[criterion]:.1f} < {a['min']}")
        elif kind == "scorer":
            fn = (scorers or {}).get(a["name"])
            if fn is None:
                pending.append(f"scorer: {a['name']} not loaded")
                continue
            from tunesmith.evaluate.metrics import ScorerInput

            try:
                value = float(fn(ScorerInput(item.id, item.prompt_text(), output, item.expected)))
            except Exception as exc:  # noqa: BLE001 - a user scorer's failure is this prompt's failure
                failures.append(f"scorer: {a['name']} raised {type(exc).__name__}: {exc}")
                continue
            if value < float(a.get("min", 1.0)):
                failures.append(f"scorer: {a['name']} = {value:.3f} < {a.get('min', 1.0)}")
    return AssertionResult(not failures and not pending, failures, pending)


def new_failures(before: dict[str, bool | None], after: dict[str, bool | None]) -> list[str]:
    """Prompts the baseline passed and the candidate fails: what the gate counts."""
    return sorted(k for k, ok in after.items() if ok is False and before.get(k) is True)


def flips(before: dict[str, bool | None], after: dict[str, bool | None]) -> list[dict[str, Any]]:
    return [{"id": k, "before": before.get(k), "after": after.get(k)}
            for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
