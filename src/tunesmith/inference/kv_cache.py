"""Key/value caches for the decoding engine: preallocated buffers, and which caches can be re-shaped.

transformers' `DynamicCache` concatenates (copies) every layer's whole cache at each decoded position;
`preallocated_layer` keeps keys/values in buffers with room to grow instead. `plain_layers` says
whether a cache holds nothing but plain key/value layers, the only kind whose rows can be dropped,
left-padded into a running batch, or sliced into a reusable prompt prefix.
"""

from __future__ import annotations

from typing import Any

_PREALLOCATED_LAYER: type | None = None


def preallocated_layer() -> type:
    """A `DynamicLayer` whose keys/values live in buffers with room to grow: appending a decoded
    position copies that position only, where `DynamicLayer` concatenates (copies) the whole cache at
    every step, which on a CPU costs about as much as the attention itself. `keys`/`values` are views
    of the filled part, so everything reading them sees what `DynamicLayer` would hold."""
    global _PREALLOCATED_LAYER
    if _PREALLOCATED_LAYER is None:
        from transformers.cache_utils import DynamicLayer

        class PreallocatedLayer(DynamicLayer):
            def __init__(self, capacity: int) -> None:
                super().__init__()
                self.capacity = capacity
                self.length = 0
                self._k: Any = None
                self._v: Any = None

            def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                n = key_states.shape[-2]
                if self._k is None or self.length + n > self._k.shape[-2]:
                    size = max(self.capacity, 2 * (self.length + n)) if self._k is not None else max(
                        self.capacity, n)
                    k = key_states.new_empty((*key_states.shape[:-2], size, key_states.shape[-1]))
                    v = value_states.new_empty((*value_states.shape[:-2], size, value_states.shape[-1]))
                    if self.length:
                        k[..., : self.length, :] = self._k[..., : self.length, :]
                        v[..., : self.length, :] = self._v[..., : self.length, :]
                    self._k, self._v = k, v
                self._k[..., self.length: self.length + n, :] = key_states
                self._v[..., self.length: self.length + n, :] = value_states
                self.length += n
                self.keys = self._k[..., : self.length, :]
                self.values = self._v[..., : self.length, :]
                return self.keys, self.values

            def batch_select_indices(self, indices: Any) -> None:
                if self._k is not None:
                    self._k, self._v = self._k[indices, ...], self._v[indices, ...]
                    self.keys = self._k[..., : self.length, :]
                    self.values = self._v[..., : self.length, :]

        _PREALLOCATED_LAYER = PreallocatedLayer
    return _PREALLOCATED_LAYER


def new_cache(config: Any, capacity: int | None = None) -> Any:
    """A `DynamicCache` for `config`; with `capacity`, plain full-attention layers preallocate room
    for that many positions (other layer kinds are left as transformers makes them)."""
    import transformers.cache_utils as cache_utils
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    plain = getattr(cache_utils, "DynamicLayer", None)
    layers = getattr(cache, "layers", None)
    if capacity and layers and all(type(layer) is plain for layer in layers):
        cache.layers = [preallocated_layer()(capacity) for _ in layers]
    return cache


def plain_layers(cache: Any) -> bool:
    """Whether `cache` holds only plain full-attention `DynamicLayer`s (not sliding-window, linear or
    quantized ones): their keys/values are the whole story, so they can be sliced, padded and stacked."""
    import transformers.cache_utils as cache_utils

    plain = getattr(cache_utils, "DynamicLayer", None)
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is plain for layer in layers)
