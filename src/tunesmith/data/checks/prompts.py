"""System prompts: do the examples agree with each other, and with the project?"""

from __future__ import annotations

from collections import Counter

from tunesmith.data.checks.base import CheckContext, Finding, finding, quote
from tunesmith.data.formats import Example, normalize_text

NONE = "<no system prompt>"


class SystemPrompts:
    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lines: dict[str, list[int]] = {}
        self._raw: dict[str, str] = {}

    def observe(self, ex: Example) -> None:
        raw = ex.system
        key = normalize_text(raw) if raw is not None else NONE
        self._counts[key] += 1
        self._lines.setdefault(key, []).append(ex.line)
        self._raw.setdefault(key, raw or NONE)

    def finish(self, ctx: CheckContext) -> list[Finding]:
        ctx.stats["system_prompts"] = [
            {"prompt": "<sealed>" if ctx.sealed and k != NONE else self._raw[k], "count": c}
            for k, c in self._counts.most_common(20)
        ]
        out: list[Finding] = []
        if len(self._counts) > 1:
            (top, top_n), *rest = self._counts.most_common()
            lines = [ln for k, _ in rest for ln in self._lines[k]]
            out.append(finding(
                "system_prompt_inconsistent", lines,
                f"{len(self._counts)} different system prompts; {top_n} examples use "
                f"{quote(self._raw[top], ctx) if top != NONE else 'none'} and {len(lines)} use another",
            ))
        if ctx.system_prompt is not None:
            want = normalize_text(ctx.system_prompt)
            lines = [ln for k, ls in self._lines.items() if k not in (want, NONE) for ln in ls]
            if lines:
                out.append(finding(
                    "system_prompt_mismatch", lines,
                    f"{len(lines)} examples carry a system prompt that differs from the project's system_prompt",
                ))
        return out
