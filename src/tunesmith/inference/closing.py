"""Closing a constrained answer that is still open when its token budget runs out.

A model can write a JSON string it never closes (``"name": "user1234567890123...``) until the budget
cuts it: the answer then does not parse, although every token obeyed the grammar. A row with
``Sampling.close_within`` gets that many more tokens, and `ClosingBias` steers them to the nearest end:
it is added to the row's masked logits (a forbidden token stays at -inf), so among the tokens the
grammar allows the model still chooses, but from the highest tier present:

* the end-of-turn token (the answer is complete);
* inside a JSON string: a token that ends it (better, one that also closes a container);
* elsewhere: a token that closes a container, then one that ends a value (``,``), then one that
  starts the shortest value (a string: ``""``).

What a close needs beyond that (a required key, a ``:``) the grammar forces. A regex answer gets the
end-of-turn token favoured only.
"""

from __future__ import annotations

from typing import Any

from tunesmith.inference.contract_stop import JsonPrefix

_IN_STRING = ("string", "escape", "unicode")


class ClosingBias:
    """Per-token bonuses for one tokenizer and logits width (built once, ~50k short strings read)."""

    def __init__(self, tokenizer: Any, width: int, eot_ids: list[int], device: str) -> None:
        import torch

        self.tokenizer = tokenizer
        inside, outside, end = (torch.zeros(width, dtype=torch.float32, device=device) for _ in range(3))
        pieces = tokenizer.convert_ids_to_tokens(list(range(min(width, len(tokenizer)))))
        for i, piece in enumerate(pieces):
            piece = piece or ""
            closes = "}" in piece or "]" in piece
            inside[i] = (3.5e4 if closes else 3e4) if '"' in piece else 0.0
            outside[i] = 3e4 if closes else 2e4 if "," in piece else 1e4 if '"' in piece else 0.0
        for bias in (inside, outside, end):
            bias[eot_ids] = 4e4
        self.inside, self.outside, self.end = inside, outside, end

    def for_row(self, row: Any) -> Any:
        """The bonuses for `row` (a `rows.Row`) now: by where its answer stands."""
        constraint = row.job.sampling.constraint
        if constraint is None or constraint.kind == "regex":
            return self.end
        state = JsonPrefix()
        state.feed(self.tokenizer.decode(row.tokens, skip_special_tokens=True))
        return self.inside if state.state in _IN_STRING else self.outside
