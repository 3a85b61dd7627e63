"""Inputs for the teacher to answer: a user's unlabelled file, and the dedup every input goes through.

New inputs that are exact or near duplicates of each other, of the training split or of the sealed
test set are dropped with `check`'s own MinHash index (`NearIndex`: character 5-grams, boilerplate
left out, exact Jaccard on every candidate), so generated data never leaks the test set.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.checks.near import MAIN, REFERENCE, NearIndex
from tunesmith.data.formats import Example, normalize_text, parse_record
from tunesmith.data.reader import iter_raw_lines, open_checked
from tunesmith.errors import DataError

Chat = list[dict[str, str]]


@dataclass
class Prompt:
    """One input to answer: the chat up to the user's last turn (no system turn: the project's is used)."""

    chat: Chat
    #: where it came from: "generated" or "FILE:LINE"
    origin: str

    @property
    def text(self) -> str:
        """What dedup compares: the user turns."""
        return "\n".join(m["content"] for m in self.chat if m["role"] == "user")


def user_text(ex: Example) -> str:
    return "\n".join(m.content for m in ex.messages if m.role == "user")


def read_inputs(path: Path) -> list[Prompt]:
    """`--inputs FILE`: JSONL chats without an assistant answer, or one text per line. Every bad line is
    reported at once."""
    path = open_checked(path)  # a stream is read once, into a temporary copy
    prompts: list[Prompt] = []
    problems: list[str] = []
    for line, raw in iter_raw_lines(path):
        text = raw.decode("utf-8", errors="replace").strip()
        if line == 1:
            text = text.lstrip("\ufeff")
        if not text:
            continue
        prompt, problem = _parse_line(text, f"{path.name}:{line}")
        if problem:
            problems.append(f"{path}:{line}: {problem}")
        elif prompt is not None:
            prompts.append(prompt)
    if problems:
        raise DataError(f"{path}: {len(problems)} line(s) are not an input", "each line is a text, a JSON string, "
                        "or a chat {\"messages\": [...]} that ends with a user turn", details=problems[:50])
    if not prompts:
        raise DataError(f"{path}: no inputs in the file", "put one input per line (text or JSONL chats)")
    return prompts


def _parse_line(text: str, origin: str) -> tuple[Prompt | None, str]:
    if text[0] not in "{[\"":
        return Prompt([{"role": "user", "content": text}], origin), ""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return Prompt([{"role": "user", "content": text}], origin), ""  # text that merely starts with { or "
    if isinstance(value, str):
        return (Prompt([{"role": "user", "content": value}], origin), "") if value.strip() else (None, "empty text")
    if not isinstance(value, dict):  # a line such as [1, 2] is a text that happens to parse
        return Prompt([{"role": "user", "content": text}], origin), ""
    if "messages" in value or "conversations" in value:
        return _chat(value, origin)
    if isinstance(value.get("instruction"), str):
        extra = value.get("input")
        text = f"{value['instruction']}\n\n{extra}" if isinstance(extra, str) and extra.strip() else value["instruction"]
        return Prompt([{"role": "user", "content": text}], origin), ""
    for key in ("prompt", "input", "text", "question"):
        if isinstance(value.get(key), str) and value[key].strip():
            return Prompt([{"role": "user", "content": value[key]}], origin), ""
    keys = ", ".join(sorted(map(str, value))[:6]) or "no keys"
    return None, f"an object with {keys}: expected messages, or a text under prompt/input/text/question/instruction"


def _chat(value: dict, origin: str) -> tuple[Prompt | None, str]:
    ex = parse_record(value, 0)
    problems = [p for p in ex.problems if p.check != "missing_assistant"]
    if problems:
        return None, "; ".join(p.message for p in problems)
    turns = [{"role": m.role, "content": m.content} for m in ex.messages if m.role != "system"]
    if not turns:
        return None, "no user turn"
    if turns[-1]["role"] != "user":
        return None, "the chat ends with an assistant turn: give chats that end with the user's turn to answer"
    return Prompt(turns, origin), ""


@dataclass
class DedupReport:
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, int]:
        return {"kept": self.kept, **{f"duplicate_of_{k}": v for k, v in sorted(self.dropped.items())}}


class InputFilter:
    """Keeps new inputs that are neither exact nor near duplicates of each other or of the references.

    References are named ("train", "test"); inputs kept by `keep` become references for later calls
    ("earlier"), so rounds of generation never repeat one another.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._refs: list[tuple[str, str]] = []  # (text, name)
        self._exact: dict[str, str] = {}

    def add_reference(self, texts: list[str], name: str) -> None:
        for t in texts:
            self._refs.append((t, name))
            self._exact.setdefault(normalize_text(t).lower(), name)

    def keep(self, prompts: list[Prompt], report: DedupReport, limit: int | None = None) -> list[Prompt]:
        """The prompts to keep, in order (at most `limit`); the others are counted in `report` by why."""
        fresh: list[Prompt] = []
        seen: dict[str, int] = {}
        for p in prompts:
            key = normalize_text(p.text).lower()
            if not key:
                report.dropped["empty"] += 1
            elif key in self._exact:
                report.dropped[self._exact[key]] += 1
            elif key in seen:
                report.dropped["each_other"] += 1
            else:
                seen[key] = len(fresh)
                fresh.append(p)
        near = self._near(fresh)
        kept: list[Prompt] = []
        for i, p in enumerate(fresh):
            if i in near:
                report.dropped[near[i]] += 1
            elif limit is not None and len(kept) >= limit:
                break
            else:
                kept.append(p)
        self.add_reference([p.text for p in kept], "earlier")
        report.kept += len(kept)
        return kept

    def _near(self, fresh: list[Prompt]) -> dict[int, str]:
        """Index of a new prompt -> what it nearly duplicates (a reference's name, or "each_other" for the
        later one of two new prompts)."""
        if not fresh:
            return {}
        index = NearIndex(self.threshold)
        texts = [t for t, _ in self._refs] + [p.text for p in fresh]
        n_refs = len(self._refs)
        for doc, text in enumerate(texts):
            index.add(text, doc, 0, REFERENCE if doc < n_refs else MAIN)
        out: dict[int, str] = {}
        for i, j, _sim in index.verified_pairs(text_of=texts.__getitem__):
            a, b = min(i, j), max(i, j)
            if a < n_refs:  # a new prompt near a reference (reference pairs are never returned)
                out.setdefault(b - n_refs, self._refs[a][1])
            else:  # two new prompts: the later one goes
                out.setdefault(b - n_refs, "each_other")
        return out
