"""The FLOPs a LoRA training step really needs per trained token, and a measured matmul peak: the MFU.

Counted from the model's config (a Llama-style decoder: attention projections, a gated MLP, an LM head):

- forward: every decoder matmul for every token (2 x weights), the attention scores and the weighted
  sum over the positions each token attends to (causal: (s + 1) / 2 on average in a row of s tokens),
  the LoRA matmuls, and the LM head only where the objective needs it (`loss_share` of the tokens);
- backward: input gradients through the adapted layers only (the frozen layers below the lowest
  adapted one need none: autograd stops there), attention backward (2 x its forward) in those layers,
  LoRA weight and input gradients, and the LM head's input gradient where there is a loss. Frozen
  weights get no weight gradient.

Recomputation (gradient checkpointing), norms, activations and the optimizer are not counted: the
MFU says how much of the machine's matmul speed went into the work the objective needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: LoRA targets in a Llama-style layer: (name, in features, out features) as functions of the config
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Shape:
        cfg = cfg.get("text_config", cfg)
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        return cls(hidden=hidden, intermediate=int(cfg.get("intermediate_size", 4 * hidden)),
                   layers=int(cfg["num_hidden_layers"]), heads=heads,
                   kv_heads=int(cfg.get("num_key_value_heads") or heads),
                   head_dim=int(cfg.get("head_dim") or hidden // heads), vocab=int(cfg["vocab_size"]))

    def projections(self) -> dict[str, tuple[int, int]]:
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def mean_context(lengths: Sequence[int]) -> float:
    """Positions a token attends to, averaged over the tokens of rows of these lengths (causal)."""
    tokens = sum(lengths)
    return sum(s * (s + 1) / 2 for s in lengths) / tokens if tokens else 0.0


def training_flops_per_token(shape: Shape, lengths: Sequence[int], *, loss_share: float, adapted_layers: int | None = None,
                             rank: int = 16, targets: Sequence[str] = _PROJECTIONS) -> float:
    """FLOPs per trained (non-padding) token of a LoRA step; `adapted_layers` None: all of them."""
    adapted = shape.layers if adapted_layers is None else min(adapted_layers, shape.layers)
    proj = shape.projections()
    dense = sum(2 * i * o for i, o in proj.values())                        # per token per layer
    lora = sum(2 * rank * (i + o) for name, (i, o) in proj.items() if name in targets)
    attention = 2 * 2 * shape.heads * shape.head_dim * mean_context(lengths)  # scores + weighted sum
    head = 2 * shape.hidden * shape.vocab
    forward = shape.layers * (dense + attention) + adapted * lora + loss_share * head
    backward = adapted * (dense + 2 * attention + 2 * lora) + loss_share * head
    return forward + backward


def matmul_peak(dtype: str = "fp32", size: int = 2048, seconds: float = 3.0) -> float:
    """Best FLOP/s of a square torch.mm on this machine with torch's current threads (measured)."""
    import time

    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = torch.randn(size, size).to(dt), torch.randn(size, size).to(dt)
    torch.mm(a, b)  # warm-up: kernels, oneDNN primitive cache
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - t0))
    return best
