"""The provider's own rules for a training file, so a job is refused here, not after an upload.

OpenAI: at least 10 examples; each example (its whole conversation, as tokens) within the model's
training context; roles system/user/assistant (tool turns aside); `weight` 0 or 1, only on assistant
turns; no empty turn; at least one assistant turn with weight 1.
"""

from __future__ import annotations

from tunesmith.train.hosted.prices import base_name

MIN_EXAMPLES = 10

#: Tokens one training example may hold, by base model (OpenAI's fine-tuning guide).
EXAMPLE_TOKEN_LIMITS: dict[str, int] = {
    "gpt-4o-mini": 65_536,
    "gpt-4o": 65_536,
    "gpt-4.1": 65_536,
    "gpt-4.1-mini": 65_536,
    "gpt-4.1-nano": 65_536,
    "gpt-3.5-turbo": 16_385,
}


def example_token_limit(model: str) -> int | None:
    """The per-example token limit of a fine-tunable model; None for a model OpenAI does not fine-tune
    (as far as this table knows)."""
    return EXAMPLE_TOKEN_LIMITS.get(base_name(model))


def fine_tunable_models() -> list[str]:
    return sorted(EXAMPLE_TOKEN_LIMITS)
