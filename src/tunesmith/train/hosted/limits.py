"""The provider's own rules for a training file, so a job is refused here, not after an upload.

OpenAI: at least 10 examples, and each example (its whole conversation, as tokens) within the model's
training context. Its other rules (roles system/user/assistant, `weight` 0 or 1 and only on assistant
turns, no empty turn, an assistant turn to train on) are `check` errors already, which the hosted plan
refuses like local training does.
"""

from __future__ import annotations

from tunesmith.inference.openai_client import model_family

MIN_EXAMPLES = 10
#: what `advise` recommends and `cost` prices when the project names no hosted model: the cheapest
#: model the guide fine-tunes, with its snapshot date (OpenAI wants the dated name)
DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"

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
    return EXAMPLE_TOKEN_LIMITS.get(model_family(model))


def fine_tunable_models() -> list[str]:
    return sorted(EXAMPLE_TOKEN_LIMITS)
