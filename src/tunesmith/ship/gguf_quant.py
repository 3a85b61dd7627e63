"""GGUF precisions: which GGML type each tensor is written as, through `gguf.quants` (pure numpy).

1-D tensors, norms and biases stay F32 (llama.cpp's converter does the same). The other weights take
the chosen type; a block type (q8_0, q5_0, q4_0: 32 values a block) needs whole blocks per row, so a
tensor whose rows are not a multiple of 32 stays F16 and the export says so in its notes.
"""

from __future__ import annotations

from typing import Any

#: --quant choices, largest first
QUANTS = ("f32", "bf16", "f16", "q8_0", "q5_0", "q4_0")
#: files the verification must reproduce exactly (the reference model is rounded the same way)
EXACT = ("f32", "bf16", "f16")
QUANT_HINT = ("use --quant f16 (exact, default), bf16 (exact, same size), f32 (exact, twice the size), "
              "q8_0 (about half), q5_0 or q4_0 (about a third / a quarter; lossy)")


def ggml_type(quant: str) -> Any:
    """The GGML type of a 2-D weight for `quant`."""
    from gguf import GGMLQuantizationType as T

    return {"f32": T.F32, "bf16": T.BF16, "f16": T.F16, "q8_0": T.Q8_0, "q5_0": T.Q5_0, "q4_0": T.Q4_0}[quant]


def file_type(quant: str) -> Any:
    """`general.file_type` for a file mostly in `quant`."""
    from gguf import LlamaFileType as F

    return {"f32": F.ALL_F32, "bf16": F.MOSTLY_BF16, "f16": F.MOSTLY_F16, "q8_0": F.MOSTLY_Q8_0,
            "q5_0": F.MOSTLY_Q5_0, "q4_0": F.MOSTLY_Q4_0}[quant]


def block_size(qtype: Any) -> int:
    from gguf import GGML_QUANT_SIZES

    return int(GGML_QUANT_SIZES[qtype][0])


def tensor_type(name: str, shape: tuple[int, ...], quant: str) -> Any:
    """GGML type of one tensor: F32 for 1-D, norms and biases; else `quant`'s type, or F16 where a
    row is not a whole number of its blocks."""
    from gguf import GGMLQuantizationType as T

    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return T.F32
    qtype = ggml_type(quant)
    return qtype if shape[-1] % block_size(qtype) == 0 else T.F16


def quantize(data: Any, qtype: Any) -> Any:
    """`data` (float32 numpy) as `qtype`'s raw bytes/values, ready for `GGUFWriter.add_tensor(raw_dtype=qtype)`."""
    import gguf

    return gguf.quants.quantize(data, qtype)


def fallback_note(quant: str, names: list[str]) -> str | None:
    """What the outcome says about tensors that could not take `quant`'s block type."""
    if not names:
        return None
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    size = block_size(ggml_type(quant))
    return (f"{len(names)} tensor(s) stay F16 because their rows are not a multiple of {size} values "
            f"({quant}'s block): {shown}")


def round_like_file(model: Any, quant: str) -> None:
    """Round, in place, the weights an exact file stores at 16 bit (every 2-D tensor) to that precision:
    the model the file holds. Norms and biases are F32 in the file and stay as they are."""
    import torch

    dtype = {"f16": torch.float16, "bf16": torch.bfloat16}.get(quant)
    if dtype is None:
        return
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(param.to(dtype).to(param.dtype))
