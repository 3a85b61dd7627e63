"""Weight-only int8 for the transformers engine (`--quant int8`): explicitly lossy, like a quantised GGUF.

Decoding one token on a CPU reads every weight once, so it is bound by memory bandwidth: a 135M model in
float32 reads 540 MB per token, llama.cpp's f16 file half that. Each `nn.Linear` (the output head
included) becomes an `Int8Linear`: int8 weights with one scale per output row (symmetric, absmax / 127),
multiplied by `int8_kernel.int8_mm`: tunesmith's own CPU kernel (which streams the weights about twice as
fast) where it builds, else `torch._weight_int8pack_mm`, PyTorch's kernel for this layout. Activations
stay float32 outside the matmuls; inside, they are taken as bfloat16, the only input dtype for which
PyTorch's kernel is fast on a CPU (float32 input takes a scalar path ~10x slower, measured), and both
kernels compute that same function. Embeddings, norms and attention are untouched.

torchao's `Int8WeightOnlyConfig` was measured first (0.18.0 on torch 2.13): on a CPU its tensor subclass
made one 576x1536 linear 2x *slower* than float32 (396 vs 191 us, one thread), so tunesmith calls the
kernel directly and needs no extra package.

A LoRA adapter is merged into the float32 weights before they are quantised (the deployment a user
ships: the merged model, quantised), so an int8 model has no adapters and cannot take any.
"""

from __future__ import annotations

from typing import Any

from tunesmith.errors import ModelError

#: the quantisation names the transformers engine takes (`--quant` with `--engine transformers`)
TRANSFORMERS_QUANTS = ("int8",)


def int8_available() -> bool:
    import torch

    return hasattr(torch, "_weight_int8pack_mm")


def _int8_linear_class() -> type:
    import torch
    from torch import nn

    from tunesmith.inference.int8_kernel import int8_mm

    class Int8Linear(nn.Module):
        """`nn.Linear` with int8 weights and a bfloat16 scale per output row (weight-only int8)."""

        def __init__(self, linear: nn.Linear) -> None:
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            weight = linear.weight.detach().to(torch.float32)
            scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            # the kernel multiplies by the bfloat16 scale: round the weights against that very scale
            scales = scales.to(torch.bfloat16)
            q = torch.round(weight / scales.to(torch.float32)[:, None]).clamp(-127, 127).to(torch.int8)
            self.register_buffer("weight_int8", q.contiguous())
            self.register_buffer("scales", scales.contiguous())
            self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(),
                                                                      requires_grad=False)

        def forward(self, x: Any) -> Any:
            flat = x.reshape(-1, self.in_features).to(torch.float32)
            y = int8_mm(flat, self.weight_int8, self.scales).to(x.dtype)
            y = y.reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, weight-only int8"

    return Int8Linear


_INT8_LINEAR: type | None = None


def int8_linear() -> type:
    global _INT8_LINEAR
    if _INT8_LINEAR is None:
        _INT8_LINEAR = _int8_linear_class()
    return _INT8_LINEAR


def quantize_int8(model: Any, device: str) -> Any:
    """`model` with every plain `nn.Linear` replaced by an `Int8Linear`, in place; a PEFT model is merged
    first (`merge_and_unload`). Returns the (possibly unwrapped) model."""
    from torch import nn

    if not device.startswith("cpu"):
        raise ModelError(f"--quant int8 is a CPU kernel; this model runs on {device}",
                         "leave --quant out on a GPU (bfloat16 is already fast there), or pass --device cpu")
    if not int8_available():
        raise ModelError("this PyTorch has no int8 weight-only kernel (torch._weight_int8pack_mm)",
                         "upgrade torch (2.4 or newer), or leave --quant int8 out")
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    cls = int8_linear()
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, cls(child))
                replaced += 1
    if not replaced:
        raise ModelError(f"{type(model).__name__} has no nn.Linear layer to quantise",
                         "leave --quant int8 out for this model")
    return model
