"""Where and how a model runs: device and dtype defaults, loading a base + LoRA adapter, memory.

Shared by every local user of the decoding engine (`LocalBackend` for eval/baseline/check/mixing, the
server, merge and export verification), so a model is loaded, placed and sized the same way everywhere.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError, one_line

#: most sequences decoded together, by device type (see auto_batch_size)
BATCH_CAP = {"cpu": 32, "cuda": 64, "mps": 32}
#: share of the currently free memory the batch may take (KV cache + activations)
MEMORY_SHARE = 0.4


def available_memory(device: str) -> int:
    """Free bytes on `device` right now: the GPU's free memory, else MemAvailable of this machine."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    with contextlib.suppress(ImportError):
        import psutil

        return int(psutil.virtual_memory().available)
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 4 << 30


def auto_batch_size(config: Any, prompt_tokens: int, max_new_tokens: int, *, dtype_bytes: int = 4,
                    available_bytes: int, device_type: str = "cpu") -> int:
    """How many sequences to decode together: what fits in MEMORY_SHARE of the free memory, capped.

    Per sequence it counts the KV cache of the whole sequence (2 x layers x kv-heads x head-dim x
    (prompt + new tokens) values), one layer's prefill activations (prompt x (4 x hidden + 3 x
    intermediate) values), one layer's attention scores in fp32 (heads x prompt^2) and two fp32 rows
    of logits. The cap (`BATCH_CAP`: 32 on CPU, 64 on CUDA) is where bigger batches stop paying off.
    On a CPU, decoding is compute-bound: SmolLM2-135M on one core made 88 tokens/s at 16 rows, 100 at
    32, 108 at 48 and 105 at 64 (96 pyfunc-json prompts, 128 new tokens), as a bigger batch spends
    longer waiting for its longest answer with few rows left.
    """
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0) or 1024)
    layers = int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0) or 24)
    heads = int(getattr(text, "num_attention_heads", 0) or getattr(text, "n_head", 0) or 16)
    kv_heads = int(getattr(text, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(text, "head_dim", 0) or hidden // max(heads, 1))
    inter = int(getattr(text, "intermediate_size", 0) or 4 * hidden)
    vocab = int(getattr(text, "vocab_size", 0) or 32000)
    seq = prompt_tokens + max_new_tokens
    kv = 2 * layers * kv_heads * head_dim * seq * dtype_bytes
    prefill = prompt_tokens * (4 * hidden + 3 * inter) * dtype_bytes + heads * prompt_tokens * prompt_tokens * 4
    per_sequence = kv + prefill + 2 * vocab * 4
    cap = BATCH_CAP.get(device_type, 16)
    return max(1, min(cap, int(available_bytes * MEMORY_SHARE // max(per_sequence, 1))))


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def default_dtype(device: str) -> str:
    """fp32 on CPU (bf16 there is slower and changes greedy answers); bf16 on a GPU that has it."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"



def is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_memory(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether `fn` takes a parameter called `name` (forward signatures differ between architectures)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return False


def load_model(model_path: Path, adapter_path: Path | None, *, device: str, dtype: str) -> Any:
    """The checkpoint in `model_path` (a PeftModel when `adapter_path` is given), in eval mode on `device`."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        from tunesmith.models.quiet import quiet_transformers

        quiet_transformers()
        model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=getattr(torch, dtype),
                                                     local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - becomes a user-facing error
        raise ModelError(f"cannot load the model in {model_path}: {one_line(exc)}",
                         "check that the directory is a complete transformers checkpoint") from exc
    if adapter_path is not None:
        try:
            from peft import PeftModel
        except ImportError as exc:
            raise ModelError("evaluating a LoRA adapter needs the `peft` package, which is not installed",
                             "install the training extras: pip install 'tunesmith[train]'") from exc
        try:
            model = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=False)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"cannot load the adapter in {adapter_path} onto {model_path}: {one_line(exc)}",
                             "was the adapter trained on this base model? Evaluate it with the run's base model") from exc
    try:
        model.to(device)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot move the model to device {device!r}: {one_line(exc)}",
                         "pick another device (cpu, cuda, cuda:1)") from exc
    model.eval()
    return model
