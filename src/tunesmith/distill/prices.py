"""What teacher tokens cost: a dated price table, overridable under `generate.price` in tunesmith.yaml.

Prices change; the table says when it was read, and every cost tunesmith prints names that date (or
"your price" when the project sets one). A model not in the table has no cost, not a guessed one.
"""

from __future__ import annotations

from dataclasses import dataclass

#: When the table below was read from the providers' price pages.
PRICES_AS_OF = "2026-03"

#: US$ per 1M (input, output) tokens, standard tier, by model name (dated snapshots map to their name).
PRICES: dict[str, tuple[float, float]] = {
    "gpt-5.4": (2.50, 15.00),
    "gpt-5.1": (1.25, 10.00),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "o3": (2.00, 8.00),
    "o4-mini": (1.10, 4.40),
    "claude-opus-4-5": (5.00, 25.00),
    "claude-sonnet-4-5": (3.00, 15.00),
    "claude-haiku-4-5": (1.00, 5.00),
}

@dataclass(frozen=True)
class Price:
    input_per_m: float
    output_per_m: float
    #: "tunesmith.yaml" or "table of 2026-03 (gpt-4o-mini)"
    source: str

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_m + completion_tokens * self.output_per_m) / 1e6


def price_for(model: str, override: tuple[float, float] | None = None) -> Price | None:
    """The project's price when set, else the table's for `model` (its dated snapshots and a
    provider prefix such as "openai/" included), else None."""
    if override is not None:
        return Price(override[0], override[1], "tunesmith.yaml generate.price")
    from tunesmith.inference.openai_client import model_family

    name = model_family(model)
    found = PRICES.get(name)
    if found is None:
        return None
    return Price(found[0], found[1], f"price table of {PRICES_AS_OF} ({name}); set generate.price if it changed")
