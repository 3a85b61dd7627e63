"""Rendering conversations with the base model's own chat template.

Training, evaluation, serving and `check`'s token counts all go through these functions, so the
prompt a model is trained on is by construction the prompt it is evaluated and served with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunesmith.data.formats import Message


def to_chat(messages: Sequence[Message], system_prompt: str | None = None) -> list[dict[str, str]]:
    """Plain role/content dicts; the project's system prompt replaces the example's when it is set."""
    turns = [{"role": m.role, "content": m.content} for m in messages]
    if system_prompt is not None:
        turns = [t for t in turns if t["role"] != "system"]
        turns.insert(0, {"role": "system", "content": system_prompt})
    return turns


def render(tokenizer: Any, chat: list[dict[str, str]], *, add_generation_prompt: bool = False) -> str:
    """The exact text the model sees, from its own chat template."""
    return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)


def token_lengths(tokenizer: Any, texts: list[str]) -> list[int]:
    """Token counts of already-rendered texts (the template supplies special tokens itself)."""
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)
    return [len(ids) for ids in enc["input_ids"]]
