"""Reading what a model wrote back."""

from __future__ import annotations

import re

# A whole reply inside one Markdown fence, with or without a language tag (```json ... ```).
_FENCE = re.compile(r"^```(?:[A-Za-z0-9_+-]+)?[ \t]*\n?(.*?)\n?```$", re.DOTALL)


def unfence(text: str) -> tuple[str, bool]:
    """The reply without a fence around all of it, and whether there was one; prose around a fence is
    not stripped (that reply is not the bare output asked for)."""
    m = _FENCE.match(text.strip())
    return (m.group(1).strip(), True) if m else (text, False)
