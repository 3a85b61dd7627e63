"""The guide's "wrong base model" pitfall: a completion model (no chat template, or a template whose
assistant turn ends in no end-of-turn token) never learns where an answer stops."""

from __future__ import annotations

from typing import Any

from tunesmith.data.checks.base import CheckContext, Finding, finding

_PROBE = "tunesmith-probe-answer"


def completion_model(ctx: CheckContext) -> list[Finding]:
    """A warning when the base model looks like a completion model. Without any chat template nothing
    can be rendered, so the token statistics are skipped (ctx.tokenizer is cleared)."""
    tokenizer = ctx.tokenizer
    if tokenizer is None:
        return []
    if not getattr(tokenizer, "chat_template", None):
        ctx.tokenizer = None
        ctx.stats["tokens_skipped"] = "the base model has no chat template"
        return [finding("completion_model", [], "the base model has no chat template: it looks like a completion "
                                                "(pretrained-only) model, not a chat model")]
    tail = _after_answer(tokenizer)
    if tail is not None and not _ends_turn(tokenizer, tail):
        return [finding("completion_model", [],
                        f"the base model's chat template ends an assistant turn with {tail!r}, not an end-of-turn "
                        "token: a model tuned on it does not learn to stop")]
    return []


def _after_answer(tokenizer: Any) -> str | None:
    """What the template writes after an assistant answer (None when it cannot render a plain chat)."""
    from tunesmith.models.chat import render

    try:
        text = render(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}])
    except Exception:  # noqa: BLE001 - a template that cannot render this is `check`'s token pass's to report
        return None
    at = text.rfind(_PROBE)
    return None if at < 0 else text[at + len(_PROBE):]


def _ends_turn(tokenizer: Any, tail: str) -> bool:
    from tunesmith.models.chat import end_of_turn_ids

    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    return bool(set(ids) & end_of_turn_ids(tokenizer))
