"""`tunesmith export RUN --format lora-gguf`: a run's LoRA adapter alone, as the GGUF adapter file that
llama.cpp loads with `--lora` on top of its base model's GGUF.

It follows llama.cpp's ``convert_lora_to_gguf.py``: ``general.type = "adapter"``, ``adapter.type =
"lora"``, ``adapter.lora.alpha``, no vocabulary, and for every adapted weight ``<gguf name>.lora_a``
(PEFT's A, rank x in) and ``<gguf name>.lora_b`` (B, out x rank), B's rows permuted like the base
weight's for llama's q/k projections. llama.cpp scales each pair by alpha / rank (the rank read from
the tensor); where PEFT scales otherwise (rsLoRA's alpha / sqrt(rank), a per-module alpha_pattern) the
difference is folded into lora_b, so base + (lora_b @ lora_a) * alpha / rank is PEFT's merged weight.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from tunesmith.errors import ExportError, UsageError
from tunesmith.progress import Say
from tunesmith.runs import RunModel

PREFIX = "base_model.model."


def _adapter_error(what: str, hint: str) -> ExportError:
    return ExportError(f"cannot export this adapter to GGUF: {what}", hint)


def read_adapter(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """adapter_config.json and the adapter's tensors (safetensors only: pickles can run code)."""
    from safetensors.torch import load_file

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise _adapter_error(f"{adapter_dir} has no adapter_model.safetensors",
                             "re-save the adapter with save_pretrained(..., safe_serialization=True)")
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("use_dora"):
        raise _adapter_error(f"{adapter_dir}/adapter_config.json: use_dora is true; llama.cpp applies plain LoRA only",
                             "export the merged model instead: tunesmith export RUN --format gguf")
    return config, load_file(str(weights), device="cpu")


def lora_pairs(tensors: dict[str, Any], adapter_dir: Path) -> dict[str, tuple[Any, Any]]:
    """{transformers weight name: (A, B)}; anything else in the adapter (full copies of modules,
    embedding LoRA) is refused, as llama.cpp's converter does."""
    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(PREFIX)
        for part in ("A", "B"):
            if name.endswith(f".lora_{part}.weight"):
                base = name.removesuffix(f".lora_{part}.weight") + ".weight"
                pairs.setdefault(base, {})[part] = tensor
                break
        else:
            raise _adapter_error(f"{adapter_dir}/adapter_model.safetensors holds {key}, which is not a LoRA "
                                 "pair on a linear layer (a module saved whole, or LoRA on embeddings)",
                                 "export the merged model instead: tunesmith export RUN --format gguf")
    return {base: (p["A"], p["B"]) for base, p in sorted(pairs.items()) if len(p) == 2}


def peft_scale(config: dict[str, Any], hf_name: str, rank: int) -> float:
    """The factor PEFT multiplies B @ A by for module `hf_name` (alpha_pattern and rsLoRA included)."""
    module = hf_name.removesuffix(".weight")
    alpha = float(config.get("lora_alpha") or rank)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if module == pattern or module.endswith(f".{pattern}"):
            alpha = float(value)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def file_alpha(config: dict[str, Any], pairs: dict[str, tuple[Any, Any]]) -> float:
    """adapter.lora.alpha: the adapter's lora_alpha (0 would make llama.cpp skip scaling: use the rank)."""
    return float(config.get("lora_alpha") or 0) or float(next(iter(pairs.values()))[0].shape[0])


def write_adapter_gguf(config: dict[str, Any], pairs: dict[str, tuple[Any, Any]], plan: Any, path: Path, quant: str,
                       *, name: str) -> tuple[dict[str, int], bool]:
    """Write the pairs as a llama.cpp LoRA adapter; returns tensors per GGML type and whether a PEFT
    scale had to be folded into lora_b."""
    import gguf
    import torch

    from tunesmith.ship.gguf_export import permute_qk
    from tunesmith.ship.gguf_quant import ggml_type, quantize
    from tunesmith.ship.gguf_vocab import cannot_export

    arch = gguf.MODEL_ARCH.LLAMA if plan.gguf_arch == "llama" else gguf.MODEL_ARCH.QWEN2
    names = gguf.get_tensor_name_map(arch, plan.layers)
    alpha = file_alpha(config, pairs)
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch], use_temp_file=True)
    counts: dict[str, int] = {}
    folded = False
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(name)
        qtype = ggml_type(quant)
        for hf_name, (lora_a, lora_b) in pairs.items():
            if hf_name == "lm_head.weight" and plan.tied:
                raise _adapter_error("it adapts lm_head, which llama.cpp shares with the token embeddings here",
                                     "export the merged model instead: tunesmith export RUN --format gguf")
            new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if new_name is None:
                raise cannot_export(plan.architecture, f"its adapted tensor {hf_name} has no llama.cpp name")
            rank = int(lora_a.shape[0])
            factor = peft_scale(config, hf_name, rank) / (alpha / rank)
            folded = folded or not math.isclose(factor, 1.0)
            a = lora_a.to(torch.float32).numpy()
            b = (lora_b.to(torch.float32) * factor).numpy()
            if plan.gguf_arch == "llama" and hf_name.endswith("q_proj.weight"):
                b = permute_qk(b, plan.heads, plan.heads)
            elif plan.gguf_arch == "llama" and hf_name.endswith("k_proj.weight"):
                b = permute_qk(b, plan.heads, plan.kv_heads)
            for suffix, data in ((".lora_a", a), (".lora_b", b)):
                writer.add_tensor(new_name + suffix, quantize(data, qtype), raw_dtype=qtype)
                counts[qtype.name] = counts.get(qtype.name, 0) + 1
        writer.write_header_to_file(path=Path(path))
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return counts, folded


def export_adapter(run: RunModel, *, quant: str, out: Path | None, force: bool, say: Say) -> Any:
    """Write run `run`'s adapter as `<run>/export/adapter-<quant>.gguf` (or `out`)."""
    from transformers import AutoConfig

    from tunesmith.models.resolve import resolve_model
    from tunesmith.ship.gguf_export import ExportOutcome, check_exportable, check_export_target

    if run.adapter_dir is None:
        raise UsageError(f"run {run.run_id} is a full fine-tune: it has no LoRA adapter to export",
                         "export the whole model instead: tunesmith export RUN --format gguf")
    plan = check_exportable(AutoConfig.from_pretrained(str(run.checkpoint_dir), local_files_only=True))
    target = (out.expanduser() if out is not None else run.run_dir / "export" / f"adapter-{quant}.gguf").resolve()
    resolved = resolve_model(run.base_ref)
    check_export_target(target, force=force, protected=[p for p in (resolved.converted_from, resolved.path) if p])
    config, tensors = read_adapter(run.adapter_dir)
    pairs = lora_pairs(tensors, run.adapter_dir)
    if not pairs:
        raise _adapter_error(f"{run.adapter_dir}/adapter_model.safetensors has no LoRA A/B pairs",
                             "check that the run finished training: tunesmith runs show RUN")
    say(f"exporting the adapter of run {run.run_id} ({len(pairs)} adapted weights, {quant})")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".gguf", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        counts, folded = write_adapter_gguf(config, pairs, plan, tmp, quant,
                                            name=f"{Path(run.base_ref).name}-{run.run_id}-lora")
        size = tmp.stat().st_size
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    notes = [f"load it on the base model's GGUF ({run.base_ref}): llama-cli -m BASE.gguf --lora {target.name}"]
    if folded:
        notes.append("PEFT scales this adapter otherwise than alpha/rank (rsLoRA or alpha_pattern): "
                     "the difference is folded into lora_b")
    if run.method == "qlora":
        notes.append("trained as QLoRA on a 4-bit base: on a 16-bit base GGUF it behaves like the merged model, "
                     "not exactly like the 4-bit training-time model")
    info = {"alpha": file_alpha(config, pairs), "ranks": sorted({int(a.shape[0]) for a, _ in pairs.values()}),
            "adapted": len(pairs), "base_model": run.base_ref}
    return ExportOutcome(run.run_id, target, quant, plan.architecture, plan.gguf_arch, size, counts, None, None,
                         notes, fmt="lora-gguf", adapter=info)
