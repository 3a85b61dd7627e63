"""The shared prompt prefix: prefill it once, reuse its keys/values for every prompt that starts with it.

Every prompt of a project starts with the same rendered system prompt (often a long template), and a
server's requests for one adapter usually do too. Keys and values at a position depend only on the
tokens up to it, so the cache of any earlier prompt holds exactly the cache of the part a new prompt
shares with it. `PrefixStore` keeps, per adapter (LoRA weights change keys and values), the token ids
and per-layer keys/values of the last prompt prefilled; a new prompt takes the longest common token
prefix from it and prefills only the rest.

Only plain key/value caches take part (`kv_cache.plain_layers`); a model edit (loading or unloading an
adapter) empties the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: shorter shared prefixes are prefilled again: copying their cache costs about what it saves
MIN_PREFIX = 16


@dataclass
class _Entry:
    ids: list[int]
    layers: list[tuple[Any, Any]]  # per layer: keys, values of shape [1, kv-heads, len(ids), head-dim]


class PrefixStore:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._entries: dict[str, _Entry] = {}
        #: prompt tokens prefilled, and prompt tokens whose keys/values were reused instead
        self.prefilled = 0
        self.reused = 0

    def lookup(self, adapter: str, ids: list[int]) -> tuple[int, list[tuple[Any, Any]]]:
        """How many leading tokens of `ids` can be reused for `adapter`, and their per-layer keys/values
        (views: the caller copies them). At least one token is always left to prefill (its logits are
        the first answer token's)."""
        entry = self._entries.get(adapter) if self.enabled else None
        if entry is None:
            return 0, []
        limit = min(len(entry.ids), len(ids) - 1)
        n = 0
        while n < limit and entry.ids[n] == ids[n]:
            n += 1
        if n < MIN_PREFIX:
            return 0, []
        return n, [(k[..., :n, :], v[..., :n, :]) for k, v in entry.layers]

    def remember(self, adapter: str, ids: list[int], layers: list[tuple[Any, Any]]) -> None:
        if self.enabled:
            self._entries[adapter] = _Entry(list(ids), layers)

    def count(self, prefilled: int, reused: int) -> None:
        self.prefilled += prefilled
        self.reused += reused

    def clear(self) -> None:
        self._entries.clear()
