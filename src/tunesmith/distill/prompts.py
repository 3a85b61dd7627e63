"""What tunesmith asks the teacher: a diversity plan, new inputs, and answers under the output contract.

Every prompt is a pure function of its arguments, so the same run sends the same requests and the
request cache answers a re-run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tunesmith.data.checks.contract import AnswerContract

Chat = list[dict[str, str]]

#: How much of one seed input a prompt quotes (a long input is shown cut).
SEED_CHARS = 1200

#: Input kinds and lengths, cycled over the requests: mostly typical inputs, some edge cases and
#: error paths (the guide: include what goes wrong), and every length.
KINDS = {
    "typical": "typical, realistic inputs of the kind users send most often",
    "edge case": ("edge cases: unusual but valid inputs (boundary values, rare formats, minimal or ambiguous "
                  "content, unusual structure)"),
    "error path": ("inputs that test error paths: malformed, incomplete, contradictory or off-task inputs that "
                   "the task must still handle the way its instructions say"),
}
KIND_CYCLE = ("typical", "typical", "edge case", "typical", "error path")
LENGTHS = {
    "short": "short (noticeably shorter than the examples)",
    "medium": "about as long as the examples",
    "long": "long (noticeably longer than the examples)",
}
LENGTH_CYCLE = ("medium", "short", "long")


def _quote(text: str) -> str:
    return text if len(text) <= SEED_CHARS else text[:SEED_CHARS] + " [...]"


def _examples_block(inputs: list[str]) -> str:
    if not inputs:
        return "(no examples yet: work from the task alone)"
    return "\n\n".join(f"<example {i + 1}>\n{_quote(t)}\n</example {i + 1}>" for i, t in enumerate(inputs))


def _task_block(task: str, system_prompt: str | None, contract: AnswerContract) -> str:
    lines = [f"The task: {task}"]
    if system_prompt:
        lines.append(f"The instructions the model works under (its system prompt): {system_prompt}")
    lines.append(f"Its output must be {contract.describe()}.")
    return "\n".join(lines)


_DATA_WRITER = ("You write training data for fine-tuning a small model on one narrow task. You are careful, "
                "varied and realistic, and you reply with JSON only.")


def plan_messages(task: str, system_prompt: str | None, contract: AnswerContract, seeds: list[str],
                  topics: int) -> Chat:
    """Ask for the diversity plan: topics, scenarios or user personas the inputs should cover."""
    user = (f"{_task_block(task, system_prompt, contract)}\n\nExample inputs (what a user sends):\n\n"
            f"{_examples_block(seeds)}\n\n"
            f"Propose {topics} distinct topics, scenarios or user personas that inputs to this task should "
            "cover, so that together they span the real variety of inputs, including rare ones. Each is one "
            "short phrase. Reply with only this JSON object: {\"topics\": [\"...\", ...]}")
    return [{"role": "system", "content": _DATA_WRITER}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class InputRequest:
    """One request for new inputs: which topic, kind and length, and the tag that makes it unique."""

    index: int
    round: int
    topic: str | None
    kind: str
    length: str
    count: int


def input_messages(task: str, system_prompt: str | None, contract: AnswerContract, seeds: list[str],
                   req: InputRequest) -> Chat:
    """Ask for `req.count` new inputs (only inputs: the answers come later, under the contract)."""
    focus = f"Topic, scenario or persona: {req.topic}\n" if req.topic else ""
    user = (f"{_task_block(task, system_prompt, contract)}\n\nExample inputs (what a user sends):\n\n"
            f"{_examples_block(seeds)}\n\n"
            f"Write {req.count} new inputs for this task (batch {req.round + 1}.{req.index + 1}).\n{focus}"
            f"Kind: {KINDS[req.kind]}.\nLength: {LENGTHS[req.length]}.\n"
            "Write only what the user sends, never an answer. Each input must be different from the examples "
            "and from the others, as a real user would write it (same language and format as the examples). "
            "Reply with only this JSON object: {\"inputs\": [\"...\", ...]}")
    return [{"role": "system", "content": _DATA_WRITER}, {"role": "user", "content": user}]


def answer_system(task: str, system_prompt: str | None, contract: AnswerContract, schema: dict | None) -> str:
    """The teacher's system prompt: the project's own, plus the task and the contract spelled out."""
    parts = [system_prompt.strip()] if system_prompt and system_prompt.strip() else []
    parts.append(f"The task: {task}")
    if not contract.empty:
        parts.append(f"Your answer must be {contract.describe()}. Reply with only that output: no explanation, "
                     "no Markdown code fence.")
    if schema is not None:
        parts.append("The JSON Schema:\n" + json.dumps(schema, ensure_ascii=False, separators=(",", ":")))
    return "\n\n".join(parts)


def answer_messages(system: str, fewshot: list[tuple[str, str]], prior: Chat) -> Chat:
    """System prompt, a few seed examples as earlier turns, then the chat to answer (ending on a user turn)."""
    chat: Chat = [{"role": "system", "content": system}]
    for question, answer in fewshot:
        chat += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return chat + prior


def fix_messages(chat: Chat, bad_answer: str, problems: list[str]) -> Chat:
    """The retry after an answer that broke the contract: the teacher sees its answer and why."""
    why = "; ".join(problems)
    return [*chat, {"role": "assistant", "content": bad_answer},
            {"role": "user", "content": f"That answer cannot be used: it {why}. Reply again with only the corrected "
                                        "output, nothing else."}]


def json_fix(chat: Chat, bad_reply: str, what: str) -> Chat:
    """The retry after a plan or input reply that was not the JSON object asked for."""
    return [*chat, {"role": "assistant", "content": bad_reply},
            {"role": "user", "content": f"That reply could not be read: {what}. Reply again with only the JSON object "
                                        "asked for."}]


def response_format(contract: AnswerContract, schema: dict | None) -> dict[str, Any] | None:
    """The JSON mode to ask for: the schema itself where there is one, else any JSON object."""
    if schema is not None:
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": False}}
    if contract.expects_json:
        return {"type": "json_object"}
    return None
