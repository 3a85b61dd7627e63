"""One turn of a conversation: what `data` parses every format into and `models.chat` renders.

It lives outside both so that `data` can use the model's chat template (token counts in `check`)
without `models` depending on `data` in return.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Message:
    role: str
    content: str
    weight: float | None = None  # only on assistant turns; 0 means "do not train on this turn"
