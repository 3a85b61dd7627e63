"""One decoding step of a Llama-family model without transformers' per-call machinery.

Decoding one token of a small model on a CPU is a few dozen small matrix-vector products and some 750
tiny tensor ops, and the model's own ``forward`` adds its Python around every layer: output-capturing
decorators, keyword plumbing, module hooks, output dataclasses. On SmolLM2-135M (2-core Xeon, one stream,
`benchmarks/decode_speed.py`, rows ``tunesmith-1`` vs ``tunesmith-forward-1``) this step decoded 22.0
tokens/s against 19.4 through the forward in float32, and 37.6 against 26.6 with ``--quant int8`` (with
PyTorch's int8 kernel; with a LoRA adapter, 28.6 against 24.6 through PEFT's forward).

`LeanStep` runs the very ops the model's forward runs, in the same order, on the same tensors: the
model's mask builder, rotary embedding and function, and attention function; norms and projections (an
`Int8Linear` too) inlined as their ``forward`` writes them. So its logits are bitwise those of ``model(...)`` (tested for each architecture
below, batched with left padding), and an answer stays the one ``model.generate`` gives. Prompts are
still prefilled by the model's own forward; only the one-token steps come here.

Taken only where that equality is known to hold: causal LMs of the Llama, Mistral and Qwen2 classes with
full attention in every layer, eager or SDPA attention, no accelerate hooks (offloading). A PEFT model
with plain LoRA adapters on its linear layers is taken too, for batches whose rows all use one adapter
(`eval RUN`'s tuned pass, a server's one-adapter batches): each such projection runs PEFT's
``lora.Linear.forward`` ops for the active adapter, ``base(x) + B(A(x)) * scaling``, read at every step
(so `set_adapter` and adapter loads are followed). DoRA and other LoRA variants, LoRA on the embeddings
or the head, merged adapters and mixed-adapter batches keep the forward. Anything else keeps the model's
forward. ``TUNESMITH_LEAN_DECODE=0`` turns it off (for side-by-side measurements).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tunesmith.inference.loading import accepts

#: the causal LM classes whose decoder layer this step reproduces op for op
SUPPORTED = {
    "LlamaForCausalLM": "LlamaDecoderLayer",
    "MistralForCausalLM": "MistralDecoderLayer",
    "Qwen2ForCausalLM": "Qwen2DecoderLayer",
}


def lean_enabled() -> bool:
    return os.environ.get("TUNESMITH_LEAN_DECODE", "1") != "0"


def why_not(model: Any) -> str | None:
    """Why `model` must keep its own forward for decoding steps; None when `LeanStep` reproduces it."""
    if not lean_enabled():
        return "TUNESMITH_LEAN_DECODE=0"
    if getattr(model, "peft_config", None):
        reason = _why_not_lora(model)
        if reason is not None:
            return reason
        model = model.get_base_model()
    name = type(model).__name__
    if name not in SUPPORTED:
        return f"{name} is not one of {', '.join(sorted(SUPPORTED))}"
    config = model.config
    inner = getattr(model, "model", None)
    layers = list(getattr(inner, "layers", None) or [])
    if len(layers) != config.num_hidden_layers or any(type(l).__name__ != SUPPORTED[name] for l in layers):
        return "its decoder layers are not the stock ones"
    if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or ())):
        return "some layers use sliding-window attention"
    if name == "MistralForCausalLM" and getattr(config, "sliding_window", None) is not None:
        return "Mistral's sliding-window mask"
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return f"attention implementation {config._attn_implementation!r}"
    if any(hasattr(m, "_hf_hook") for m in model.modules()):
        return "accelerate hooks (offloaded weights)"
    return None


def _why_not_lora(model: Any) -> str | None:
    """Why a PEFT model's adapters are not ones `_Projection` applies as PEFT does; None when they are."""
    from torch import nn

    if any(getattr(config, "peft_type", None) != "LORA" for config in model.peft_config.values()):
        return "a PEFT method other than LoRA"  # PeftType is a str enum: PeftType.LORA == "LORA"
    if any(isinstance(m, nn.Dropout) and m.training and m.p > 0 for m in model.modules()):
        return "the model is in training mode (LoRA dropout)"
    base = model.get_base_model()
    if not isinstance(base.get_input_embeddings(), nn.Embedding) \
            or type(base.get_output_embeddings()) is not nn.Linear:
        return "LoRA on the embeddings or the output head"
    for module in base.modules():
        if not hasattr(module, "lora_A"):
            continue
        base_layer = getattr(module, "base_layer", None)
        if type(module).__name__ != "Linear" or type(base_layer) is not nn.Linear:
            return f"a LoRA layer of type {type(module).__name__} on {type(base_layer).__name__}"
        if getattr(module, "merged_adapters", None):
            return "a merged LoRA adapter (PEFT's merge_adapter)"
        if getattr(module, "lora_variant", None) or any(getattr(module, "use_dora", {}).values()):
            return "a LoRA variant (DoRA or another) that PEFT computes its own way"
        if getattr(module, "fan_in_fan_out", False) or not getattr(module, "cast_input_dtype_enabled", True):
            return "a LoRA layer with fan_in_fan_out or without input casting"
    return None


def _lora(module: Any, x: Any, result: Any) -> Any:
    """PEFT's `lora.Linear.forward` after its base layer, for plain LoRA (`_why_not_lora`): the same ops in
    the same order, dropout left out (in eval mode it returns its input)."""
    import torch.nn.functional as F

    if module.disable_adapters:
        return result
    dtype = result.dtype
    keys = module.lora_A.keys()
    for name in module.active_adapters:
        if name not in keys:
            continue
        a, b = module.lora_A[name], module.lora_B[name]
        if x.dtype != a.weight.dtype:
            x = x.to(dtype=a.weight.dtype)
        result = result + F.linear(F.linear(x, a.weight, a.bias), b.weight, b.bias) * module.scaling[name]
    return result.to(dtype)


class _Projection:
    """Calls one `nn.Linear` or `Int8Linear` (or several fused along their outputs) as its forward does,
    without the module call. Only int8 projections are fused: both int8 kernels compute every output row
    on its own (one scale per row), so fused outputs are the separate ones bit for bit (tested), and one
    call costs less than three. Float32 GEMMs promise no such thing, so they stay one per module."""

    def __init__(self, modules: list[Any]) -> None:
        import torch

        self.int8 = all(hasattr(m, "weight_int8") for m in modules)
        if self.int8:
            from tunesmith.inference.int8_kernel import int8_mm

            self.mm = int8_mm
            weight = torch.cat([m.weight_int8 for m in modules]).contiguous()
            scales = torch.cat([m.scales for m in modules]).contiguous()
            start = 0
            for m in modules:  # the modules' own buffers become views of the fused ones: no second copy
                n = m.weight_int8.shape[0]
                m.weight_int8, m.scales = weight[start:start + n], scales[start:start + n]
                start += n
            self.weight, self.scales = weight, scales
            self.sizes = [m.out_features for m in modules]
            biases = [m.bias for m in modules]
            self.bias = None if all(b is None for b in biases) else torch.cat(
                [b if b is not None else torch.zeros(n, dtype=torch.float32, device=weight.device)
                 for b, n in zip(biases, self.sizes)])
            self.linears: list[tuple[Any, Any, Any]] = []
        else:
            # a PEFT LoRA layer: its base layer's weights, and the layer itself for the adapter (read per call)
            self.linears = [(m.base_layer.weight, m.base_layer.bias, m) if hasattr(m, "lora_A")
                            else (m.weight, m.bias, None) for m in modules]

    def __call__(self, x: Any) -> list[Any]:
        import torch.nn.functional as F

        if not self.int8:
            return [F.linear(x, weight, bias) if lora is None else _lora(lora, x, F.linear(x, weight, bias))
                    for weight, bias, lora in self.linears]
        y = self.fused(x)
        return list(y.split(self.sizes, dim=-1)) if len(self.sizes) > 1 else [y]

    def fused(self, x: Any) -> Any:
        """Int8Linear.forward for the fused rows: the outputs side by side in one tensor."""
        import torch

        flat = x.reshape(-1, x.shape[-1]).to(torch.float32)
        y = self.mm(flat, self.weight, self.scales).to(x.dtype)
        y = y.reshape(*x.shape[:-1], y.shape[-1])
        return y if self.bias is None else y + self.bias


class _Layer:
    """One decoder layer's tensors and callables, looked up once."""

    def __init__(self, layer: Any) -> None:
        import torch.nn.functional as F

        attn, mlp = layer.self_attn, layer.mlp
        self.attn = attn
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.q_heads = attn.q_proj.out_features // attn.head_dim
        self.kv_heads = attn.k_proj.out_features // attn.head_dim
        self.norm1 = (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        self.norm2 = (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
        self.qkv = _Projection([attn.q_proj, attn.k_proj, attn.v_proj])
        self.o = _Projection([attn.o_proj])
        self.gate_up = _Projection([mlp.gate_proj, mlp.up_proj])
        self.down = _Projection([mlp.down_proj])
        act = mlp.act_fn
        self.act = F.silu if type(act).__name__ in ("SiLUActivation", "SiLU") else act


def _rms_norm(hidden: Any, weight: Any, eps: float) -> Any:
    # LlamaRMSNorm.forward (Mistral's and Qwen2's are the same); in float32 its two casts are no-ops, and
    # `variance + eps` and its rsqrt may overwrite the fresh mean (the same values, two allocations fewer)
    import torch

    dtype = hidden.dtype
    if dtype is torch.float32:
        return weight * (hidden * hidden.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_())
    hidden = hidden.to(torch.float32)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + eps)
    return weight * hidden.to(dtype)


def _rotate_by_roll(q: Any, cos: Any, signed_sin: Any) -> Any:
    """`q * cos + rotate_half(q) * sin` in three ops instead of seven: rotate_half(q) is q rolled by half
    its width with the first half negated, and that sign moves onto sin (`signed_sin`), exactly: IEEE
    multiplication is symmetric in sign, so (-a) * b and a * (-b) are the same number."""
    import torch

    return q * cos + torch.roll(q, q.shape[-1] // 2, -1) * signed_sin


def _signed_sin(sin: Any) -> Any:
    import torch

    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def _rope_is_rotate_half(rotate: Any) -> bool:
    """Whether the model's `apply_rotary_pos_emb` gives `_rotate_by_roll`'s numbers, bit for bit: checked
    once on random tensors (another rotary layout keeps the model's own function)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 4, 8, generator=gen), torch.randn(2, 1, 4, 8, generator=gen)
    cos, sin = torch.randn(2, 4, 8, generator=gen), torch.randn(2, 4, 8, generator=gen)
    try:
        want_q, want_k = rotate(q, k, cos, sin)
    except Exception:  # noqa: BLE001 - another signature: not the function this shortcut reproduces
        return False
    c, s = cos.unsqueeze(1), _signed_sin(sin).unsqueeze(1)
    return torch.equal(want_q, _rotate_by_roll(q, c, s)) and torch.equal(want_k, _rotate_by_roll(k, c, s))


class LeanStep:
    """Decoding steps for one supported model (see `why_not`)."""

    def __init__(self, model: Any) -> None:
        from transformers import masking_utils
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        if getattr(model, "peft_config", None):
            model = model.get_base_model()  # its LoRA layers stay in place: `_Projection` applies them
        self.config = model.config
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.norm = (inner.norm.weight, inner.norm.variance_epsilon)
        self.head = model.get_output_embeddings()
        self.layers = [_Layer(layer) for layer in inner.layers]
        modeling = sys.modules[type(inner.layers[0]).__module__]
        self.rotate = modeling.apply_rotary_pos_emb
        self.roll = _rope_is_rotate_half(self.rotate)
        impl = self.config._attn_implementation
        self.attention = (modeling.eager_attention_forward if impl == "eager"
                          else ALL_ATTENTION_FUNCTIONS.get_interface(impl, modeling.eager_attention_forward))
        self.make_mask = masking_utils.create_causal_mask
        self.cache_kwarg = "cache" if accepts(self.make_mask, "cache") else "past_key_values"

    @classmethod
    def for_model(cls, model: Any) -> LeanStep | None:
        return cls(model) if why_not(model) is None else None

    def __call__(self, ids: Any, attention_mask: Any, positions: Any, cache: Any) -> Any:
        """float32 logits [rows, vocab] for each row's one new token; `cache` gains its keys/values."""
        import torch

        hidden = self.embed(ids)
        mask = self.make_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask,
                              position_ids=positions, **{self.cache_kwarg: cache})
        cos, sin = self.rotary(hidden, position_ids=positions)
        # apply_rotary_pos_emb's unsqueeze and rotate_half, once per step instead of in every layer
        rope = (cos.unsqueeze(1), _signed_sin(sin).unsqueeze(1)) if self.roll and cos.shape[-1] == sin.shape[
            -1] == self.layers[0].head_dim else None
        # the cache's own layers, straight (`DynamicCache.update` only forwards there when not offloading)
        direct = not getattr(cache, "offloading", False) and len(getattr(cache, "layers", ())) == len(self.layers)
        for index, layer in enumerate(self.layers):
            hidden = self._layer(layer, index, hidden, mask, cos, sin, rope,
                                 cache.layers[index] if direct else None, cache)
        hidden = _rms_norm(hidden, *self.norm)
        return self.head(hidden[:, -1:, :])[:, -1, :].to(dtype=torch.float32, copy=True)

    def _layer(self, layer: _Layer, index: int, hidden: Any, mask: Any, cos: Any, sin: Any, rope: Any,
               layer_cache: Any, cache: Any) -> Any:
        # LlamaDecoderLayer.forward, LlamaAttention.forward and LlamaMLP.forward, inlined (Mistral's and
        # Qwen2's are the same ops; their sliding-window argument is None under full attention)
        residual = hidden
        x = _rms_norm(hidden, *layer.norm1)
        if layer.qkv.int8 and rope is not None:
            # one view of the fused q|k|v output, and q and k rotated together (elementwise: the same numbers)
            heads = layer.qkv.fused(x).view(*x.shape[:-1], -1, layer.head_dim).transpose(1, 2)
            qk = _rotate_by_roll(heads[:, : layer.q_heads + layer.kv_heads], *rope)
            q, k, v = qk[:, : layer.q_heads], qk[:, layer.q_heads:], heads[:, layer.q_heads + layer.kv_heads:]
        else:
            shape = (*x.shape[:-1], -1, layer.head_dim)
            q, k, v = (t.view(shape).transpose(1, 2) for t in layer.qkv(x))
            if rope is not None:
                q, k = _rotate_by_roll(q, *rope), _rotate_by_roll(k, *rope)
            else:
                q, k = self.rotate(q, k, cos, sin)
        k, v = layer_cache.update(k, v) if layer_cache is not None else cache.update(k, v, index)
        out, _ = self.attention(layer.attn, q, k, v, mask, dropout=0.0, scaling=layer.scaling, sliding_window=None)
        out = out.reshape(*x.shape[:-1], -1).contiguous()
        hidden = residual + layer.o(out)[0]
        residual = hidden
        x = _rms_norm(hidden, *layer.norm2)
        gate, up = layer.gate_up(x)
        return residual + layer.down(layer.act(gate) * up)[0]
