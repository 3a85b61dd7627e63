"""What hosted fine-tuning costs: a dated table, overridable under `hosted.price` in tunesmith.yaml.

Training is billed per token of the training file, times the epochs; the fine-tuned model then costs
more per token than its base (about double on OpenAI). A model not in the table has no price, not a
guessed one.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.inference.openai_client import model_family

#: When the table below was read: OpenAI's fine-tuning price page (2025) and, for gpt-4o-mini, the
#: guide's own figure for mid-2026 ("roughly $8 per million tokens for training").
PRICES_AS_OF = "2026-06"

#: US$ per 1M: (training tokens, fine-tuned input tokens, fine-tuned output tokens), by base model name
#: without its snapshot date.
PRICES: dict[str, tuple[float, float, float]] = {
    "gpt-4o-mini": (8.00, 0.30, 1.20),
    "gpt-4o": (25.00, 3.75, 15.00),
    "gpt-4.1": (25.00, 3.00, 12.00),
    "gpt-4.1-mini": (5.00, 0.80, 3.20),
    "gpt-4.1-nano": (1.50, 0.20, 0.80),
    "gpt-3.5-turbo": (8.00, 3.00, 6.00),
}

@dataclass(frozen=True)
class HostedPrice:
    training_per_m: float
    input_per_m: float | None
    output_per_m: float | None
    #: where the numbers come from, said with every cost printed
    source: str

    def training(self, billed_tokens: int) -> float:
        return billed_tokens * self.training_per_m / 1e6

    def inference(self, input_tokens: int, output_tokens: int) -> float | None:
        if self.input_per_m is None or self.output_per_m is None:
            return None
        return (input_tokens * self.input_per_m + output_tokens * self.output_per_m) / 1e6





def hosted_price(model: str, override: tuple[float, float | None, float | None] | None = None) -> HostedPrice | None:
    """The project's price when set, else the table's for `model`, else None."""
    if override is not None:
        return HostedPrice(override[0], override[1], override[2], "tunesmith.yaml hosted.price")
    found = PRICES.get(model_family(model))
    if found is None:
        return None
    return HostedPrice(*found, source=f"price table of {PRICES_AS_OF} ({model_family(model)}); set hosted.price if it changed")
