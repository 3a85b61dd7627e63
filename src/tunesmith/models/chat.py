"""Rendering conversations with the base model's own chat template.

Training, evaluation, serving and `check`'s token counts all go through these functions, so the
prompt a model is trained on is by construction the prompt it is evaluated and served with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunesmith.messages import Message


def to_chat(messages: Sequence[Message], system_prompt: str | None = None) -> list[dict[str, str]]:
    """Plain role/content dicts; the project's system prompt replaces the example's when it is set."""
    turns = [{"role": m.role, "content": m.content} for m in messages]
    if system_prompt is not None:
        turns = [t for t in turns if t["role"] != "system"]
        turns.insert(0, {"role": "system", "content": system_prompt})
    return turns


def chat_weights(messages: Sequence[Message], system_prompt: str | None = None) -> list[float | None]:
    """Per-turn loss weights aligned with `to_chat`'s output (the injected system prompt has none)."""
    kept = [m.weight for m in messages if not (system_prompt is not None and m.role == "system")]
    return ([None] if system_prompt is not None else []) + kept


def render(tokenizer: Any, chat: list[dict[str, str]], *, add_generation_prompt: bool = False) -> str:
    """The exact text the model sees, from its own chat template."""
    return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)


def prompt_ids(tokenizer: Any, chats: list[list[dict[str, str]]]) -> list[list[int]]:
    """Token ids of each chat rendered up to the assistant's turn, as the model is asked to answer it.

    The template writes every special token itself (BOS included); training encodes the same way."""
    if not chats:
        return []
    texts = [render(tokenizer, chat, add_generation_prompt=True) for chat in chats]
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def token_lengths(tokenizer: Any, texts: list[str]) -> list[int]:
    """Token counts of already-rendered texts (the template supplies special tokens itself)."""
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)
    return [len(ids) for ids in enc["input_ids"]]


@dataclass
class Encoded:
    """One tokenised conversation with its loss mask (labels = -100 where the model is not trained)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool
    trainable: int
    #: the end-of-turn token of at least one trained assistant turn is itself trained
    eot_trained: bool


IGNORE = -100


class TemplateError(ValueError):
    """The chat template does not render conversations incrementally (each turn appended at the end)."""


def _assistant_spans(tokenizer: Any, chat: list[dict[str, str]], weights: list[float | None]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the character spans of each trained assistant turn.

    A span runs from the end of the generation prompt to the end of the turn's end-of-turn marker
    (trailing whitespace after the marker is not trained): exactly what the model must produce at
    inference time, including the token that makes it stop.
    """
    full = render(tokenizer, chat)
    spans = []
    for i, turn in enumerate(chat):
        if turn["role"] != "assistant" or weights[i] == 0:
            continue
        prefix = render(tokenizer, chat[:i], add_generation_prompt=True)
        upto = render(tokenizer, chat[: i + 1])
        if not (full.startswith(upto) and upto.startswith(prefix)):
            raise TemplateError(
                f"the chat template does not render turn {i + 1} as an extension of the turns before it"
            )
        end = len(upto.rstrip())
        if end > len(prefix):
            spans.append((len(prefix), end))
    return full, spans


def encode_chat(
    tokenizer: Any,
    chat: list[dict[str, str]],
    *,
    weights: list[float | None] | None = None,
    max_length: int | None = None,
) -> Encoded:
    """Tokenise with the model's template; loss only on assistant turns, end-of-turn token included."""
    weights = weights or [None] * len(chat)
    text, spans = _assistant_spans(tokenizer, chat, weights)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    labels = [IGNORE] * len(ids)
    span_idx = 0
    for t, (start, end) in enumerate(enc["offset_mapping"]):
        while span_idx < len(spans) and spans[span_idx][1] <= start:
            span_idx += 1
        if span_idx < len(spans) and start < spans[span_idx][1] and end > spans[span_idx][0]:
            labels[t] = ids[t]
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    eot_ids = end_of_turn_ids(tokenizer)
    trainable = sum(1 for x in labels if x != IGNORE)
    eot_trained = any(x in eot_ids for x in labels if x != IGNORE)
    return Encoded(ids, labels, truncated, trainable, eot_trained)


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    """Token ids that end an assistant turn: eos plus the common end-of-turn markers the vocab has."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>", "<|endoftext|>"):
        if marker in vocab:
            ids.add(int(vocab[marker]))
    return ids
