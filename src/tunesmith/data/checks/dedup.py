"""Exact duplicates and contradictions: one dict lookup per example."""

from __future__ import annotations

import hashlib
import json

from tunesmith.data.checks.base import CheckContext, Finding, finding
from tunesmith.data.formats import Example, normalize_text


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def example_key(ex: Example) -> int:
    """Identity of a whole example, whatever format it was written in."""
    return _h("\x1e".join(f"{m.role}\x1f{m.content}\x1f{m.weight}" for m in ex.messages))


def input_key(ex: Example) -> int:
    """Identity of what the model is given: every turn before the last trained assistant turn, with
    its role, normalised. Earlier assistant turns (weight 0 ones included) are part of the input: two
    conversations that differ only there ask different questions."""
    trained = [i for i, m in enumerate(ex.messages) if m.role == "assistant" and m.weight != 0]
    end = trained[-1] if trained else len(ex.messages)
    return _h("\x1e".join(f"{m.role}\x1f{normalize_text(m.content)}" for m in ex.messages[:end]))


def split_key(ex: Example) -> int:
    """Where `split` places an example: its system and user turns. Every seal so far was drawn with
    this key, so it stays as it is (a finer key would move rows of existing seals); rows it puts
    together merely share a side."""
    return _h("\x1e".join(normalize_text(m.content) for m in ex.messages if m.role in ("system", "user")))


def output_key(ex: Example) -> int:
    """Identity of the answer: JSON compared by value (key order and spacing do not matter)."""
    parts = []
    for out in ex.outputs():
        try:
            parts.append(json.dumps(json.loads(out), sort_keys=True, separators=(",", ":")))
        except (ValueError, RecursionError):
            parts.append(normalize_text(out))
    return _h("\x1e".join(parts))


class ExactDuplicates:
    def __init__(self) -> None:
        self._first: dict[int, int] = {}
        self._groups: dict[int, list[int]] = {}

    def is_duplicate(self, ex: Example) -> bool:
        """Observe and say whether this example repeats an earlier one (the engine skips near-dup indexing)."""
        key = example_key(ex)
        first = self._first.setdefault(key, ex.line)
        if first == ex.line:
            return False
        self._groups.setdefault(key, [first]).append(ex.line)
        return True

    def observe(self, ex: Example) -> None:
        self.is_duplicate(ex)

    def finish(self, ctx: CheckContext) -> list[Finding]:
        ctx.stats["exact_duplicates"] = sum(len(g) - 1 for g in self._groups.values())
        return [
            finding("exact_duplicate", g, f"{len(g)} identical examples (line {g[0]} and {len(g) - 1} more)")
            for g in self._groups.values()
        ]


class Contradictions:
    def __init__(self) -> None:
        # input key -> (first line, output key); promoted to a group when a second line arrives
        self._first: dict[int, tuple[int, int]] = {}
        self._groups: dict[int, dict[int, list[int]]] = {}

    def observe(self, ex: Example) -> None:
        ik, ok = input_key(ex), output_key(ex)
        first = self._first.get(ik)
        if first is None:
            self._first[ik] = (ex.line, ok)
            return
        group = self._groups.setdefault(ik, {first[1]: [first[0]]})
        group.setdefault(ok, []).append(ex.line)

    def finish(self, ctx: CheckContext) -> list[Finding]:
        out = []
        for by_output in self._groups.values():
            if len(by_output) < 2:
                continue
            lines = [ln for lines in by_output.values() for ln in lines]
            out.append(finding(
                "contradiction", lines,
                f"{len(lines)} examples share the same input but give {len(by_output)} different outputs",
            ))
        ctx.stats["contradictions"] = len(out)
        return out
