"""What every check shares: findings, the closed registry of check ids, and the check context."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from tunesmith.data.formats import TOOLS_HINT, Example

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass(slots=True)
class Finding:
    check: str
    severity: Severity
    lines: list[int]
    message: str
    hint: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Every check id tunesmith emits: (severity, default hint). A closed registry, so docs and tests
#: can enumerate it and a typo in a check id fails loudly.
CHECKS: dict[str, tuple[Severity, str]] = {
    # structure
    "invalid_json_line": ("error", "each line must be one complete JSON object; fix or remove the line"),
    "invalid_utf8": ("error", "re-save the file as UTF-8"),
    "not_an_object": ("error", "each line must be a JSON object such as {\"messages\": [...]}"),
    "unknown_format": ("error", "use {\"messages\": [{\"role\", \"content\"}...]}; `tunesmith convert` converts other formats"),
    "missing_assistant": ("error", "add the assistant answer the model should learn, or drop the line"),
    "unknown_role": ("error", "roles are system, user and assistant (ShareGPT: system, human, gpt)"),
    "empty_content": ("error", "fill in the turn or drop the example; an empty turn teaches nothing"),
    "content_type": ("error", "content must be a string (or a list of {type: text, text} parts)"),
    "tools_not_trained": ("warning", TOOLS_HINT),
    # curation
    "exact_duplicate": ("warning", "duplicates over-weight one example; `tunesmith fix` keeps the first"),
    "near_duplicate": ("warning", "near-copies teach one case many times; keep the best one (`tunesmith fix` keeps the first)"),
    "contradiction": ("error", "same input, different outputs is poison: keep the correct one; if you cannot tell which, the task is underspecified"),
    # output contract
    "output_not_json": ("error", "every output must be exactly the JSON your production code parses"),
    "output_schema": ("error", "make every output validate against the schema (or fix the schema)"),
    "output_regex": ("error", "make every output match output.regex exactly"),
    "key_style": ("warning", "use one key style everywhere; one camelCase key among snake_case ones confuses the model"),
    # prompts
    "system_prompt_inconsistent": ("warning", "use one system prompt for every example, the same one you will use at inference"),
    "system_prompt_mismatch": ("warning", "tunesmith trains with the project's system_prompt; make the data agree or change system_prompt"),
    # size
    "too_long": ("warning", "these will be truncated in training; shorten them or raise max_length"),
    "too_few_examples": ("error", "under 30 examples is not a dataset: use them as few-shot examples in the prompt instead"),
    # test set
    "test_overlap": ("error", "a training example equal or nearly equal to a sealed test row makes the test a memory test; drop it from train"),
    # the base model
    "completion_model": ("warning", "use the model's instruct/chat variant as base_model, or give train.chat_template "
                                    "(a template whose assistant turn ends in an end-of-turn token)"),
    # leakage from the base model (`check --base`)
    "base_correct": ("warning", "the base model already gets these right: they teach nothing new; replace them with harder cases"),
    # safety
    "secret": ("warning", "remove credentials before training: a model can repeat them verbatim"),
    "pii": ("warning", "remove or mask personal data before training"),
}


def finding(check: str, lines: list[int], message: str, *, severity: Severity | None = None, hint: str | None = None) -> Finding:
    default_severity, default_hint = CHECKS[check]
    return Finding(check, severity or default_severity, sorted(set(lines)), message, hint or default_hint)


@dataclass
class CheckContext:
    """Everything checks may consult besides the examples themselves."""

    file: Path
    schema: dict | None = None
    regex: str | None = None
    expects_json: bool = False
    system_prompt: str | None = None
    task_kind: str = "format"
    max_length: int | None = None
    tokenizer: Any = None
    near_threshold: float = 0.8
    test_file: Path | None = None
    #: True when the checked file is itself the sealed test set: findings never quote its content.
    sealed: bool = False
    stats: dict[str, Any] = field(default_factory=dict)


class Check(Protocol):
    def observe(self, ex: Example) -> None: ...

    def finish(self, ctx: CheckContext) -> list[Finding]: ...


def quote(text: str, ctx: CheckContext, limit: int = 60) -> str:
    """A short quote of data for a message, or nothing when the file is sealed."""
    if ctx.sealed:
        return "<sealed>"
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
