"""JSON integers too long for Python's int() (sys.get_int_max_str_digits): json.loads refuses the whole text
with a bare ValueError; `huge_number` says which field holds the number and how long it is."""

from __future__ import annotations

import json
import re
import sys


class _HugeInt(str):
    """A JSON integer too long for int(), kept as its digits so the walk below can find it."""


def huge_number(text: str, why: str = "no example needs one that long") -> str:
    """Describe the first integer in a JSON text that is too long for Python to convert, and where it is."""
    limit = sys.get_int_max_str_digits()

    def parse_int(digits: str) -> object:
        return _HugeInt(digits) if limit and len(digits.lstrip("-")) > limit else int(digits)

    try:
        value = json.loads(text, parse_int=parse_int)
    except (ValueError, RecursionError):
        value = None
    where, digits = _find_huge(value) or ("a number", "")
    if not digits:  # not found by the walk: fall back on the longest run of digits in the text
        digits = max(re.findall(r"\d+", text), key=len, default="")
    return f"{where} is a number {len(digits.lstrip('-')):,} digits long; {why}"


def _find_huge(value: object) -> tuple[str, str] | None:
    stack: list[tuple[str, object]] = [("", value)]
    while stack:  # iterative: a JSON text can be nested hundreds deep
        path, item = stack.pop()
        if isinstance(item, _HugeInt):
            return (f"field {path}" if path else "the line"), str(item)
        if isinstance(item, dict):
            stack.extend((f"{path}.{k}" if path else k, v) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(item))))
    return None
