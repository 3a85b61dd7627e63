"""Training rows: rendered with the model's template, loss-masked, audited, split for validation."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.formats import Example, iter_examples
from tunesmith.errors import DataError
from tunesmith.models.chat import Encoded, TemplateError, chat_weights, encode_chat, to_chat


@dataclass
class Row:
    line: int
    source: str  # "train" or "mix"
    enc: Encoded
    full_length: int


@dataclass
class LabelAudit:
    rows: int
    truncated_lines: list[int]
    no_trainable_lines: list[int]
    eot_missing_lines: list[int]
    trainable_share_mean: float
    trainable_share_min: float
    trainable_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "truncated": len(self.truncated_lines),
            "no_trainable_tokens_lines": self.no_trainable_lines,
            "end_of_turn_trained": self.rows - len(self.eot_missing_lines),
            "end_of_turn_missing_lines": self.eot_missing_lines[:50],
            "trainable_share_mean": round(self.trainable_share_mean, 3),
            "trainable_share_min": round(self.trainable_share_min, 3),
            "trainable_tokens": self.trainable_tokens,
        }


@dataclass
class TrainingData:
    rows: list[Row] = field(default_factory=list)

    def lengths(self) -> list[int]:
        return [r.full_length for r in self.rows]


def load_examples(path: Path) -> list[Example]:
    """Well-formed examples of a file; anything malformed stops training with the lines named."""
    good, bad = [], []
    for ex in iter_examples(path):
        (bad if ex.problems else good).append(ex)
    if bad:
        lines = ", ".join(str(ex.line) for ex in bad[:20])
        raise DataError(f"{path}: {len(bad)} malformed example(s) (lines {lines})",
                        f"run `tunesmith check {path}` and `tunesmith fix` first")
    if not good:
        raise DataError(f"{path}: no examples to train on", "add examples, or point data.train at the right file")
    return good


def encode_examples(tokenizer: Any, examples: list[Example], system_prompt: str | None,
                    max_length: int | None, source: str = "train") -> TrainingData:
    data = TrainingData()
    for ex in examples:
        chat = to_chat(ex.messages, system_prompt)
        weights = chat_weights(ex.messages, system_prompt)
        try:
            full = encode_chat(tokenizer, chat, weights=weights)
        except TemplateError as exc:
            raise DataError(f"line {ex.line}: {exc}", "use a model whose chat template appends turns in order") from None
        enc = full if max_length is None else _truncate(full, max_length, tokenizer)
        data.rows.append(Row(ex.line, source, enc, len(full.input_ids)))
    return data


def truncate_rows(data: TrainingData, max_length: int, tokenizer: Any) -> TrainingData:
    return TrainingData([Row(r.line, r.source, _truncate(r.enc, max_length, tokenizer), r.full_length) for r in data.rows])


def _truncate(full: Encoded, max_length: int, tokenizer: Any) -> Encoded:
    if len(full.input_ids) <= max_length:
        return full
    from tunesmith.models.chat import IGNORE, end_of_turn_ids

    ids, labels = full.input_ids[:max_length], full.labels[:max_length]
    eot = end_of_turn_ids(tokenizer)
    trainable = sum(1 for x in labels if x != IGNORE)
    return Encoded(ids, labels, True, trainable, any(x in eot for x in labels if x != IGNORE))


def audit(data: TrainingData) -> LabelAudit:
    shares = [r.enc.trainable / max(1, len(r.enc.input_ids)) for r in data.rows]
    return LabelAudit(
        rows=len(data.rows),
        truncated_lines=[r.line for r in data.rows if r.enc.truncated],
        no_trainable_lines=[r.line for r in data.rows if r.enc.trainable == 0],
        eot_missing_lines=[r.line for r in data.rows if r.enc.trainable and not r.enc.eot_trained],
        trainable_share_mean=sum(shares) / max(1, len(shares)),
        trainable_share_min=min(shares) if shares else 0.0,
        trainable_tokens=sum(r.enc.trainable for r in data.rows),
    )


def validation_split(data: TrainingData, n_eval: int) -> tuple[TrainingData, TrainingData]:
    """Deterministic: the rows whose token ids hash lowest form the validation slice."""
    if n_eval <= 0:
        return data, TrainingData()
    keyed = sorted(data.rows, key=lambda r: hashlib.sha256(str(r.enc.input_ids).encode()).digest())
    held = {id(r) for r in keyed[:n_eval]}
    return (TrainingData([r for r in data.rows if id(r) not in held]),
            TrainingData([r for r in data.rows if id(r) in held]))
