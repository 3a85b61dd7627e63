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
from typing import Any, ClassVar

from tunesmith.messages import Message

ROLES = ("system", "user", "assistant")
#: tunesmith's own keys beside a row's format keys: where a row came from and what a reviewer said of it
#: (`tunesmith.distill.provenance`); conversions keep them, so the review gate still sees them
PROVENANCE, REVIEW = "provenance", "review"
META_KEYS = (PROVENANCE, REVIEW)


@dataclass(slots=True)
class Problem:
    """A structural problem in one record: a check id, a message and optionally the field path."""

    check: str
    message: str
    where: str = ""
    #: replaces the check's default hint when this problem needs its own advice
    hint: str = ""


@dataclass(slots=True)
class Example:
    line: int
    format: str
    messages: list[Message]
    offset: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: what is worth knowing but does not make the example unusable (e.g. tool calls that are not trained)
    warnings: list[Problem] = field(default_factory=list)
    #: the row's META_KEYS, as they were
    meta: dict[str, Any] = field(default_factory=dict)

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


def a_or_an(noun: str) -> str:
    """'an int', 'a list': by the first letter, which is right for every noun tunesmith puts after it."""
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def type_name(value: object) -> str:
    return a_or_an(type(value).__name__)


def normalize_text(text: str) -> str:
    """Unicode NFC and collapsed whitespace: the form used to compare inputs and prompts."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


class Format:
    name: ClassVar[str]

    @classmethod
    def matches(cls, obj: dict) -> bool:
        raise NotImplementedError

    @classmethod
    def assistant_turns(cls, obj: dict) -> int:
        """How many assistant turns the record declares, usable or not (only `matches` holds)."""
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
        problems.append(Problem("content_type", f"{where} has no content (null or missing); it must be a string", where))
    else:
        problems.append(Problem("content_type", f"{where} is {type_name(value)}; it must be a string", where))
    return None


def _system(obj: dict, problems: list[Problem]) -> list[Message]:
    """The optional top-level "system" field of the single-turn formats; null or blank means none."""
    value = obj.get("system")
    if value is None or (isinstance(value, str) and not value.strip()):
        return []  # exports often carry an empty system column: no system prompt, not an empty turn
    system = _content(value, "system", problems)
    return [] if system is None else [Message("system", system)]


TOOLS_HINT = ("tunesmith trains text turns only: if the calls matter, write each one into the assistant text in "
              "the exact form your app parses; otherwise drop the tool fields or the row")


def _calls(turn: dict) -> bool:
    """True when an assistant turn carries OpenAI tool calls (or the older function_call)."""
    return bool(turn.get("tool_calls") or turn.get("function_call"))


def _untrained_tools(obj: dict) -> list[Problem]:
    """Tool definitions and tool calls a record carries: parsed rows keep only their text, so say so."""
    out: list[Problem] = []
    for key in ("tools", "functions"):
        if obj.get(key):
            out.append(Problem("tools_not_trained",
                               f"the row's tool definitions ({key!r}) are not trained: the model never sees them", key))
            break
    turns = obj.get("messages")
    if isinstance(turns, list):
        for i, turn in enumerate(turns):
            has_calls = isinstance(turn, dict) and ("tool_calls" in turn or "function_call" in turn)  # cheap test first
            if has_calls and _role(turn.get("role")) == "assistant" and _calls(turn):
                out.append(Problem(
                    "tools_not_trained",
                    "an assistant turn carries tool calls, which are not trained: this row trains only the turn's text",
                    f"messages[{i}].tool_calls",
                ))
                break
    return out


def _short_repr(value: object, limit: int = 40) -> str:
    """repr for a message that quotes user data: a 5 MB weight is named, not repeated."""
    text = repr(value) if not isinstance(value, (dict, list)) else type_name(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


WEIGHT_HINT = ("weight says whether an assistant turn is trained: 1 (or no weight) trains it, 0 leaves it as context "
               "the model only reads; drop the weight from user and system turns")


class MessagesFormat(Format):
    """OpenAI chat: {"messages": [{"role", "content", "weight"?}, ...]}."""

    name = "messages"

    @classmethod
    def matches(cls, obj: dict) -> bool:
        return "messages" in obj

    @classmethod
    def assistant_turns(cls, obj: dict) -> int:
        turns = obj["messages"]
        return sum(isinstance(t, dict) and _role(t.get("role")) == "assistant" for t in turns) if isinstance(turns, list) else 0

    @classmethod
    def parse(cls, obj: dict, problems: list[Problem]) -> list[Message]:
        turns = obj["messages"]
        if not isinstance(turns, list):
            problems.append(Problem(
                "unknown_format",
                f"'messages' is {type_name(turns)}, expected a list of {{role, content}} objects",
                "messages",
            ))
            return []
        out: list[Message] = []
        for i, turn in enumerate(turns):
            where = f"messages[{i}]"
            if not isinstance(turn, dict):
                problems.append(Problem(
                    "unknown_format", f"{where} is {type_name(turn)}, expected an object with role and content", where,
                ))
                continue
            role = _role(turn.get("role"))
            if role not in ROLES:
                sharegpt = role is None and "from" in turn and "value" in turn
                problems.append(Problem(
                    "unknown_role",
                    f"{where} has ShareGPT keys (from/value) inside \"messages\"" if sharegpt else
                    f"{where}.role is {role!r}; expected one of {', '.join(ROLES)}", f"{where}.role",
                    hint="ShareGPT turns go under \"conversations\"; under \"messages\" use role/content" if sharegpt
                    else TOOLS_HINT if role in ("tool", "function") else "",
                ))
                continue
            if role == "assistant" and _calls(turn) and turn.get("content") in (None, ""):
                problems.append(Problem(
                    "content_type", f"{where} holds only tool calls and no text: tool calls are not trained",
                    f"{where}.content", hint=TOOLS_HINT,
                ))
                continue
            content = _content(turn.get("content"), f"{where}.content", problems)
            if content is None:
                continue
            weight = turn.get("weight")
            if weight is not None and (role != "assistant" or isinstance(weight, bool) or weight not in (0, 1)):
                problems.append(Problem(
                    "content_type", f"{where}.weight must be 0 or 1 and only on assistant turns, got {_short_repr(weight)}", f"{where}.weight",
                    hint=WEIGHT_HINT,
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


def _role(value: Any) -> Any:
    """A role or speaker as compared: "User", "ASSISTANT " and "GPT" differ from the usual spelling in
    case, not in meaning. Anything that is not a string stays as it is (and is reported)."""
    return value.strip().lower() if isinstance(value, str) else value


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
    def assistant_turns(cls, obj: dict) -> int:
        turns = obj["conversations"]
        if not isinstance(turns, list):
            return 0
        return sum(isinstance(t, dict) and isinstance(t.get("from"), str) and _SHAREGPT_ROLES.get(_role(t["from"])) == "assistant"
                   for t in turns)

    @classmethod
    def parse(cls, obj: dict, problems: list[Problem]) -> list[Message]:
        turns = obj["conversations"]
        if not isinstance(turns, list):
            problems.append(Problem(
                "unknown_format",
                f"'conversations' is {type_name(turns)}, expected a list of {{from, value}} objects",
                "conversations",
            ))
            return []
        out: list[Message] = []
        for i, turn in enumerate(turns):
            where = f"conversations[{i}]"
            if not isinstance(turn, dict):
                problems.append(Problem(
                    "unknown_format", f"{where} is {type_name(turn)}, expected an object with from and value", where,
                ))
                continue
            speaker = turn.get("from")
            role = _SHAREGPT_ROLES.get(_role(speaker)) if isinstance(speaker, str) else None
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


def _history(value: object, problems: list[Problem]) -> list[Message]:
    """Alpaca "history": [[question, answer], ...] as user/assistant turns; null or absent means none."""
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(Problem(
            "unknown_format", f"history is {type_name(value)}, expected a list of [question, answer] pairs", "history",
        ))
        return []
    out: list[Message] = []
    for i, pair in enumerate(value):
        where = f"history[{i}]"
        if not isinstance(pair, list) or len(pair) != 2:
            what = f"a list of {len(pair)}" if isinstance(pair, list) else type_name(pair)
            problems.append(Problem("unknown_format", f"{where} is {what}, expected a [question, answer] pair", where))
            continue
        question = _content(pair[0], f"{where}[0]", problems)
        answer = _content(pair[1], f"{where}[1]", problems)
        if question is not None and answer is not None:
            out += [Message("user", question), Message("assistant", answer)]
    return out


class InstructionFormat(Format):
    """Alpaca-style: {"instruction", "input"?, "output", "system"?, "history"?}.

    history is a list of earlier [question, answer] pairs, turns before the instruction (as
    LLaMA-Factory reads it); their answers are trained like any assistant turn.
    """

    name = "instruction"

    @classmethod
    def matches(cls, obj: dict) -> bool:
        return "instruction" in obj and "output" in obj

    @classmethod
    def assistant_turns(cls, obj: dict) -> int:
        history = obj.get("history")
        pairs = sum(isinstance(p, list) and len(p) == 2 for p in history) if isinstance(history, list) else 0
        return 1 + pairs

    @classmethod
    def parse(cls, obj: dict, problems: list[Problem]) -> list[Message]:
        out = _system(obj, problems)
        out.extend(_history(obj.get("history"), problems))
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
    """{"prompt", "completion", "system"?} (older completion APIs; some exports add a system prompt)."""

    name = "prompt_completion"

    @classmethod
    def matches(cls, obj: dict) -> bool:
        return "prompt" in obj and "completion" in obj

    @classmethod
    def assistant_turns(cls, obj: dict) -> int:
        return 1

    @classmethod
    def parse(cls, obj: dict, problems: list[Problem]) -> list[Message]:
        out = _system(obj, problems)
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
    problems.extend(_nothing_to_train(fmt, value, messages, problems))
    warnings = [] if problems else _untrained_tools(value)
    meta = {k: value[k] for k in META_KEYS if k in value}
    return Example(line, fmt.name, messages, offset, problems, warnings, meta)


def _nothing_to_train(fmt: type[Format], obj: dict, messages: list[Message], problems: list[Problem]) -> list[Problem]:
    if not messages:
        return [] if problems else [Problem("missing_assistant", "no turns at all")]
    assistant = [m for m in messages if m.role == "assistant"]
    if problems and len(assistant) < fmt.assistant_turns(obj):
        return []  # an assistant turn is there but unusable; its own problem says why
    if not assistant:
        return [Problem("missing_assistant", "no assistant turn: nothing to train on")]
    if all(m.weight == 0 for m in assistant):
        return [Problem(
            "missing_assistant", "every assistant turn has weight 0: nothing to train on", "weight",
            hint="give the turn(s) the model should learn weight 1 (or no weight); weight 0 marks context the model only reads",
        )]
    return []


def iter_examples(path: str | Path) -> Iterator[Example]:
    """Every non-blank line of a JSONL file as an Example; unreadable lines come with problems attached."""
    from tunesmith.data.reader import iter_raw

    for raw in iter_raw(path):
        if raw.error is not None:
            yield Example(raw.line, "?", [], raw.offset, [Problem(*raw.error, hint=raw.hint)])
        else:
            yield parse_record(raw.value, raw.line, raw.offset)
