"""The four JSONL formats tunesmith reads and writes, detected per line.

Every format is parsed into one canonical `Example` (a list of role/content messages), so the
checks, the splitter and training never care which format a line came in. One small class per
format, mlx-lm style; `FORMATS` is the closed registry.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

ROLES = ("system", "user", "assistant")


@dataclass(slots=True)
class Message:
    role: str
    content: str
    weight: float | None = None  # only on assistant turns; 0 means "do not train on this turn"


@dataclass(slots=True)
class Problem:
    """A structural problem in one record: a check id, a message and optionally the field path."""

    check: str
    message: str
    where: str = ""


@dataclass(slots=True)
class Example:
    line: int
    format: str
    messages: list[Message]
    offset: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def system(self) -> str | None:
        for m in self.messages:
            if m.role == "system":
                return m.content
        return None

    def input_text(self) -> str:
        """System + user turns: what the model is given."""
        return "\n".join(m.content for m in self.messages if m.role in ("system", "user"))

    def outputs(self) -> list[str]:
        """Assistant turns the model is trained on (weight 0 excluded)."""
        return [m.content for m in self.messages if m.role == "assistant" and m.weight != 0]

    def dialogue_text(self) -> str:
        """User + assistant turns (system prompt excluded): what near-duplicate detection compares."""
        return "\n".join(m.content for m in self.messages if m.role != "system")


_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Unicode NFC and collapsed whitespace: the form used to compare inputs and prompts."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


class Format:
    name: ClassVar[str]

    @classmethod
    def matches(cls, obj: dict) -> bool:
        raise NotImplementedError

    @classmethod
    def parse(cls, obj: dict, problems: list[Problem]) -> list[Message]:
        raise NotImplementedError

    @classmethod
    def dump(cls, messages: list[Message]) -> tuple[dict | None, str]:
        """Return (record, "") or (None, reason it cannot be held in this format)."""
        raise NotImplementedError


def _content(value: object, where: str, problems: list[Problem]) -> str | None:
    """Accept a string, or OpenAI-style text parts; anything else is a content_type problem."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value
    ):
        return "".join(p["text"] for p in value)
    if value is None:
        problems.append(Problem("content_type", f"{where} has no content", where))
    else:
        problems.append(Problem(
            "content_type", f"{where} is a {type(value).__name__}, expected a string", where,
        ))
    return None


class MessagesFormat(Format):
    """OpenAI chat: {"messages": [{"role", "content", "weight"?}, ...]}."""

    name = "messages"

    @classmethod
    def matches(cls, obj: dict) -> bool:
        return "messages" in obj

    @classmethod
    def parse(cls, obj: dict, problems: list[Problem]) -> list[Message]:
        turns = obj["messages"]
        if not isinstance(turns, list):
            problems.append(Problem(
                "unknown_format",
                f"'messages' is a {type(turns).__name__}, expected a list of {{role, content}} objects",
                "messages",
            ))
            return []
        out: list[Message] = []
        for i, turn in enumerate(turns):
            where = f"messages[{i}]"
            if not isinstance(turn, dict):
                problems.append(Problem(
                    "unknown_format", f"{where} is a {type(turn).__name__}, expected an object with role and content", where,
                ))
                continue
            role = turn.get("role")
            if role not in ROLES:
                problems.append(Problem(
                    "unknown_role", f"{where}.role is {role!r}; expected one of {', '.join(ROLES)}", f"{where}.role",
                ))
                continue
            content = _content(turn.get("content"), f"{where}.content", problems)
            if content is None:
                continue
            weight = turn.get("weight")
            if weight is not None and (role != "assistant" or isinstance(weight, bool) or weight not in (0, 1)):
                problems.append(Problem(
                    "content_type", f"{where}.weight must be 0 or 1 and only on assistant turns, got {weight!r}", f"{where}.weight",
                ))
                weight = None
            out.append(Message(role, content, weight))
        return out

    @classmethod
    def dump(cls, messages: list[Message]) -> tuple[dict | None, str]:
        turns = []
        for m in messages:
            turn: dict = {"role": m.role, "content": m.content}
            if m.weight is not None:
                turn["weight"] = m.weight
            turns.append(turn)
        return {"messages": turns}, ""


_SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "bot": "assistant",
}


class ShareGPTFormat(Format):
    """ShareGPT: {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}."""

    name = "sharegpt"

    @classmethod
    def matches(cls, obj: dict) -> bool:
        return "conversations" in obj

    @classmethod
    def parse(cls, obj: dict, problems: list[Problem]) -> list[Message]:
        turns = obj["conversations"]
        if not isinstance(turns, list):
            problems.append(Problem(
                "unknown_format",
                f"'conversations' is a {type(turns).__name__}, expected a list of {{from, value}} objects",
                "conversations",
            ))
            return []
        out: list[Message] = []
        for i, turn in enumerate(turns):
            where = f"conversations[{i}]"
            if not isinstance(turn, dict):
                problems.append(Problem(
                    "unknown_format", f"{where} is a {type(turn).__name__}, expected an object with from and value", where,
                ))
                continue
            speaker = turn.get("from")
            role = _SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
            if role is None:
                problems.append(Problem(
                    "unknown_role", f"{where}.from is {speaker!r}; expected human, gpt or system", f"{where}.from",
                ))
                continue
            content = _content(turn.get("value"), f"{where}.value", problems)
            if content is not None:
                out.append(Message(role, content))
        return out

    @classmethod
    def dump(cls, messages: list[Message]) -> tuple[dict | None, str]:
        if any(m.weight == 0 for m in messages):
            return None, "ShareGPT cannot hold an assistant turn with weight 0"
        back = {"system": "system", "user": "human", "assistant": "gpt"}
        return {"conversations": [{"from": back[m.role], "value": m.content} for m in messages]}, ""


def _single_turn(messages: list[Message]) -> tuple[str | None, str, str] | str:
    """(system, user, assistant) for a single-turn example, or the reason it is not one."""
    roles = [m.role for m in messages]
    if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
        return f"it has turns {'/'.join(roles)}; only [system,] user, assistant fits"
    if messages[-1].weight == 0:
        return "its assistant turn has weight 0"
    system = messages[0].content if roles[0] == "system" else None
    return system, messages[-2].content, messages[-1].content


class InstructionFormat(Format):
    """Alpaca-style: {"instruction", "input"?, "output", "system"?}."""

    name = "instruction"

    @classmethod
    def matches(cls, obj: dict) -> bool:
        return "instruction" in obj and "output" in obj

    @classmethod
    def parse(cls, obj: dict, problems: list[Problem]) -> list[Message]:
        out: list[Message] = []
        if "system" in obj:
            system = _content(obj["system"], "system", problems)
            if system is not None:
                out.append(Message("system", system))
        instruction = _content(obj["instruction"], "instruction", problems)
        extra = obj.get("input", "")
        extra = _content(extra, "input", problems) if extra is not None else ""
        output = _content(obj["output"], "output", problems)
        if instruction is not None:
            user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
            out.append(Message("user", user))
        if output is not None:
            out.append(Message("assistant", output))
        return out

    @classmethod
    def dump(cls, messages: list[Message]) -> tuple[dict | None, str]:
        parts = _single_turn(messages)
        if isinstance(parts, str):
            return None, parts
        system, user, assistant = parts
        rec: dict = {}
        if system is not None:
            rec["system"] = system
        rec.update({"instruction": user, "input": "", "output": assistant})
        return rec, ""


class PromptCompletionFormat(Format):
    """{"prompt", "completion"} (older completion APIs)."""

    name = "prompt_completion"

    @classmethod
    def matches(cls, obj: dict) -> bool:
        return "prompt" in obj and "completion" in obj

    @classmethod
    def parse(cls, obj: dict, problems: list[Problem]) -> list[Message]:
        out: list[Message] = []
        prompt = _content(obj["prompt"], "prompt", problems)
        completion = _content(obj["completion"], "completion", problems)
        if prompt is not None:
            out.append(Message("user", prompt))
        if completion is not None:
            out.append(Message("assistant", completion))
        return out

    @classmethod
    def dump(cls, messages: list[Message]) -> tuple[dict | None, str]:
        parts = _single_turn(messages)
        if isinstance(parts, str):
            return None, parts
        system, user, assistant = parts
        if system is not None:
            return None, "prompt/completion has no place for a system prompt"
        return {"prompt": user, "completion": assistant}, ""


FORMATS: dict[str, type[Format]] = {
    f.name: f for f in (MessagesFormat, ShareGPTFormat, InstructionFormat, PromptCompletionFormat)
}


def parse_record(value: object, line: int, offset: int = 0) -> Example:
    """Detect the format of one parsed JSON line and convert it; problems are collected, not raised."""
    if not isinstance(value, dict):
        return Example(line, "?", [], offset, [Problem(
            "not_an_object", f"line is a JSON {type(value).__name__}, expected an object",
        )])
    fmt = next((f for f in FORMATS.values() if f.matches(value)), None)
    if fmt is None:
        keys = ", ".join(sorted(map(str, value))[:6]) or "no keys"
        return Example(line, "?", [], offset, [Problem(
            "unknown_format",
            f"no known format: keys are {keys}; expected messages, conversations, instruction/output or prompt/completion",
        )])
    problems: list[Problem] = []
    messages = fmt.parse(value, problems)
    for i, m in enumerate(messages):
        if not m.content.strip():
            problems.append(Problem("empty_content", f"the {m.role} turn #{i + 1} is empty", m.role))
    if messages and not any(m.role == "assistant" for m in messages):
        problems.append(Problem("missing_assistant", "no assistant turn: nothing to train on"))
    elif not messages and not problems:
        problems.append(Problem("missing_assistant", "no turns at all"))
    return Example(line, fmt.name, messages, offset, problems)


def iter_examples(path: str | Path) -> Iterator[Example]:
    """Every non-blank line of a JSONL file as an Example; unreadable lines come with problems attached."""
    from tunesmith.data.reader import iter_raw

    for raw in iter_raw(path):
        if raw.error is not None:
            yield Example(raw.line, "?", [], raw.offset, [Problem(*raw.error)])
        else:
            yield parse_record(raw.value, raw.line, raw.offset)
