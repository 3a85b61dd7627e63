"""`tunesmith export --format gguf`: the merged model as one GGUF file that llama.cpp and Ollama load.

It follows llama.cpp's ``convert_hf_to_gguf.py`` for the architectures it knows (`SUPPORTED`):

* llama (LlamaForCausalLM, SmolLM/SmolLM2 included, and MistralForCausalLM, which llama.cpp converts
  as llama): q_proj/k_proj rows permuted into llama.cpp's rotary layout;
* qwen2 (Qwen2ForCausalLM): no permutation, q/k/v biases kept.

Tensor names come from gguf-py's own map (`gguf.get_tensor_name_map`); the hyperparameters are the
keys llama.cpp reads; a tied output projection is left out (llama.cpp reuses the embeddings); 1-D
tensors, norms and biases stay F32; the other weights are F16, or Q8_0 where a row is a whole number
of 32-value blocks (F16 otherwise), as the converter does. The tokenizer is written as a byte-level
BPE ("gpt2") vocabulary with its merges, token types, special token ids, the add-BOS flag, the
llama.cpp pre-tokenizer name matching tokenizer.json, and the chat template training used
(`tunesmith.ship.gguf_vocab`).

Verification loads the file back with transformers (through `tunesmith.models.resolve`, the way a
.gguf base model is loaded): the chat template must render the sealed test prompts to the same token
ids as the run's tokenizer, and the greedy answers must equal those of the merged model with its
weights at the file's precision (an f16 file is then exact; q8_0 is lossy, so it is reported only).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import UsageError
from tunesmith.evaluate.generate import LocalBackend
from tunesmith.evaluate.types import DecodeSettings, EvalItem
from tunesmith.io import sha256_file, write_json_atomic, write_text_atomic
from tunesmith.progress import Say
from tunesmith.project import load_project
from tunesmith.ship.gguf_quant import EXACT, QUANT_HINT, QUANTS, fallback_note, file_type, round_like_file, tensor_type
from tunesmith.ship.gguf_vocab import VocabSpec, cannot_export, emulate_llama_cpp_pre, vocab_spec
from tunesmith.ship.merge import (
    Progress,
    RunModel,
    Verification,
    compare_greedy,
    default_device,
    describe_prompts,
    load_merged,
    locate_run,
    require_chat_template,
    verification_prompts,
)


#: transformers architecture -> llama.cpp architecture it is written as
SUPPORTED: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
}
#: gguf: the merged model (plus an Ollama Modelfile); ollama: the same, and the `ollama create` line;
#: lora-gguf: the adapter alone, for llama.cpp's --lora
FORMATS = ("gguf", "ollama", "lora-gguf")

_SUPPORTED_TEXT = "LlamaForCausalLM (Llama, SmolLM2), MistralForCausalLM, Qwen2ForCausalLM"


def _say_nothing(_msg: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# what can be exported


@dataclass(frozen=True)
class ArchPlan:
    """The llama.cpp hyperparameters of one model, checked against what this exporter can write."""

    architecture: str
    gguf_arch: str
    context_length: int
    hidden: int
    layers: int
    feed_forward: int
    heads: int
    kv_heads: int
    head_dim: int
    rope_theta: float
    rms_eps: float
    vocab_size: int
    tied: bool
    notes: tuple[str, ...] = ()


def _rope(config: Any) -> tuple[float, str]:
    """(rope theta, rope type) from a transformers 5 `rope_parameters` or a 4.x `rope_theta`/`rope_scaling`."""
    params = getattr(config, "rope_parameters", None) or {}
    if isinstance(params.get("full_attention"), dict):
        params = params["full_attention"]
    scaling = getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    return float(theta), str(kind)


def check_exportable(config: Any) -> ArchPlan:
    """The plan for `config`, or ExportError naming what this exporter cannot write and the way out."""
    archs = list(getattr(config, "architectures", None) or [])
    arch = archs[0] if archs else str(getattr(config, "model_type", "this model"))
    if arch not in SUPPORTED:
        raise cannot_export(arch, f"the architecture {arch} is not supported (supported: {_SUPPORTED_TEXT})")
    gguf_arch = SUPPORTED[arch]
    theta, rope_type = _rope(config)
    if rope_type != "default":
        raise cannot_export(arch, f"rope scaling {rope_type!r} is not supported (only plain rotary embeddings)")
    if gguf_arch == "llama" and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        raise cannot_export(arch, "attention or MLP biases in a Llama-layout model are not supported")
    if gguf_arch == "qwen2" and getattr(config, "use_sliding_window", False):
        raise cannot_export(arch, "sliding-window attention is not supported")
    heads = int(config.num_attention_heads)
    hidden = int(config.hidden_size)
    context = int(config.max_position_embeddings)
    notes: list[str] = []
    window = getattr(config, "sliding_window", None) if arch == "MistralForCausalLM" else None
    if window and int(window) < context:
        # llama.cpp's llama architecture has no sliding window; within the window both attend alike
        notes.append(f"context length capped at the sliding window ({window} of {context} tokens): "
                     "llama.cpp runs Mistral as llama, with full attention")
        context = int(window)
    return ArchPlan(
        architecture=arch, gguf_arch=gguf_arch, context_length=context, hidden=hidden,
        layers=int(config.num_hidden_layers), feed_forward=int(config.intermediate_size), heads=heads,
        kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(config, "head_dim", None) or hidden // heads), rope_theta=theta,
        rms_eps=float(config.rms_norm_eps), vocab_size=int(config.vocab_size),
        tied=bool(getattr(config, "tie_word_embeddings", False)), notes=tuple(notes),
    )


# writing


def permute_qk(weights: Any, n_head: int, n_head_kv: int | None = None) -> Any:
    """llama.cpp's reordering of q/k rows for its rotary layout (transformers undoes it on load)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def is_tied(model: Any, plan: ArchPlan) -> bool:
    """Whether the output projection is the embedding matrix (then llama.cpp writes no output.weight)."""
    import torch

    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None:
        return True
    return plan.tied and torch.equal(head.weight, embed.weight)


def write_gguf(model: Any, plan: ArchPlan, vocab: VocabSpec, path: Path, quant: str, *, name: str,
               source: Path | None = None, fallbacks: list[str] | None = None) -> dict[str, int]:
    """Write `model` to `path` as GGUF; returns the number of tensors per GGML type. The names of
    tensors that stayed F16 instead of `quant`'s block type are appended to `fallbacks`."""
    import gguf

    arch = gguf.MODEL_ARCH.LLAMA if plan.gguf_arch == "llama" else gguf.MODEL_ARCH.QWEN2
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[arch], use_temp_file=True)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        general_metadata(name, source, sum(p.numel() for p in model.parameters())).set_gguf_meta_model(writer)
        _add_hparams(writer, plan)
        _add_vocab(writer, vocab)
        counts = _add_tensors(writer, model, plan, quant, gguf.get_tensor_name_map(arch, plan.layers),
                              fallbacks if fallbacks is not None else [])
        writer.add_file_type(file_type(quant))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.write_header_to_file(path=Path(path))
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return counts


def general_metadata(name: str, source: Path | None, total_params: int) -> Any:
    """`general.*` keys the way llama.cpp's converter fills them (gguf.Metadata: base model, licence and
    size label from the checkpoint's model card and config), named after the run."""
    import gguf

    try:
        meta = gguf.Metadata.load(None, source, name, total_params)
    except Exception:  # noqa: BLE001 - an unparsable model card must not stop an export: the keys are informational
        meta = gguf.Metadata()
    meta.name = name
    return meta


def _add_hparams(writer: Any, plan: ArchPlan) -> None:
    writer.add_context_length(plan.context_length)
    writer.add_embedding_length(plan.hidden)
    writer.add_block_count(plan.layers)
    writer.add_feed_forward_length(plan.feed_forward)
    writer.add_head_count(plan.heads)
    writer.add_head_count_kv(plan.kv_heads)
    writer.add_rope_freq_base(plan.rope_theta)
    writer.add_layer_norm_rms_eps(plan.rms_eps)
    writer.add_key_length(plan.head_dim)
    writer.add_value_length(plan.head_dim)
    writer.add_vocab_size(plan.vocab_size)
    if plan.gguf_arch == "llama":
        writer.add_rope_dimension_count(plan.head_dim)


def _add_vocab(writer: Any, vocab: VocabSpec) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    for kind, token_id in vocab.special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    template = vocab.chat_template
    if isinstance(template, dict):
        template = [{"name": k, "template": v} for k, v in template.items()]
    if template:
        writer.add_chat_template(template)


def _add_tensors(writer: Any, model: Any, plan: ArchPlan, quant: str, names: Any,
                 fallbacks: list[str]) -> dict[str, int]:
    import gguf
    import torch

    tied = is_tied(model, plan)
    counts: dict[str, int] = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise cannot_export(plan.architecture, f"its tensor {hf_name} has no llama.cpp name")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if plan.gguf_arch == "llama" and hf_name.endswith("q_proj.weight"):
            data = permute_qk(data, plan.heads, plan.heads)
        elif plan.gguf_arch == "llama" and hf_name.endswith("k_proj.weight"):
            data = permute_qk(data, plan.heads, plan.kv_heads)
        qtype = tensor_type(new_name, tuple(data.shape), quant)
        if qtype.name == "F16" and quant not in ("f16", "bf16", "f32"):
            fallbacks.append(new_name)
        writer.add_tensor(new_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------
# verification


class InMemoryBackend(LocalBackend):
    """`LocalBackend` answering with a model already in memory (the merged one): same rendering, same
    decoding. `checkpoint_dir` is the directory the model came from (it names it in the fingerprint)."""

    def __init__(self, model: Any, tokenizer: Any, checkpoint_dir: Path) -> None:
        super().__init__(checkpoint_dir, device=model.device.type, dtype=str(model.dtype).removeprefix("torch."))
        self._model, self._tokenizer = model, tokenizer


def template_ids(tokenizer: Any, item: EvalItem) -> list[list[int]]:
    """Token ids of the rendered prompt, and of prompt + expected answer (end-of-turn included)."""
    from tunesmith.models.chat import render

    texts = [render(tokenizer, item.chat, add_generation_prompt=True)]
    if item.expected is not None:
        texts.append(render(tokenizer, [*item.chat, {"role": "assistant", "content": item.expected}]))
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def compare_templates(trained: Any, exported: Any, items: list[EvalItem], computed_on: str) -> Verification:
    mismatched = [it.id for it in items if template_ids(trained, it) != template_ids(exported, it)]
    return Verification("GGUF tokenizer + chat template vs the run's", len(items), len(items) - len(mismatched),
                        mismatched, computed_on)


def verify_gguf(path: Path, trained_tokenizer: Any, reference: Any, items: list[EvalItem], settings: DecodeSettings,
                *, pre: str, quant: str, workdir: Path,
                progress: Progress | None = None) -> tuple[Verification, Verification]:
    """Load `path` back with transformers; compare template token ids and greedy answers (see module doc)."""
    from tunesmith.models.resolve import load_tokenizer, resolve_model

    on = describe_prompts(items, settings)
    with tempfile.TemporaryDirectory(prefix=".gguf-check-", dir=workdir) as cache:
        loaded = resolve_model(str(path), cache_dir=Path(cache))
        tokenizer = load_tokenizer(loaded)
        if emulate_llama_cpp_pre(tokenizer, pre):
            tokenizer.save_pretrained(str(loaded.path))
        template = compare_templates(trained_tokenizer, tokenizer, items, on)
        candidate = LocalBackend(loaded.path, device=reference.device, dtype=reference.dtype)
        reference_name = "merged model" + (f" at {quant}" if quant in ("f16", "bf16") else "")
        outputs = compare_greedy(reference, candidate, items, settings,
                                 what=f"GGUF {quant} loaded by transformers vs {reference_name}", computed_on=on,
                                 progress=progress)
    return template, outputs


# ---------------------------------------------------------------------------------------------
# the command


@dataclass
class ExportOutcome:
    run_id: str
    path: Path
    quant: str
    architecture: str
    gguf_architecture: str
    size_bytes: int
    tensors: dict[str, int]
    template: Verification | None
    outputs: Verification | None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    fmt: str = "gguf"
    modelfile: Path | None = None
    ollama_create: str | None = None
    #: lora-gguf only: alpha, ranks and the base model the adapter goes on
    adapter: dict[str, Any] | None = None
    #: what only the record keeps
    record_extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "format": self.fmt, "path": str(self.path), "quant": self.quant,
                "modelfile": str(self.modelfile) if self.modelfile else None, "ollama_create": self.ollama_create,
                "adapter": self.adapter,
                "architecture": self.architecture, "gguf_architecture": self.gguf_architecture,
                "size_bytes": self.size_bytes, "tensors": self.tensors,
                "template": self.template.to_dict() if self.template else None,
                "outputs": self.outputs.to_dict() if self.outputs else None,
                "notes": self.notes, "seconds": self.seconds}


def check_export_args(fmt: str, quant: str, out: Path | None) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not an export format",
                         "use --format gguf (model + Modelfile), ollama (the same, with the `ollama create` line) "
                         "or lora-gguf (the adapter alone, for llama.cpp --lora)")
    if quant not in QUANTS:
        raise UsageError(f"--quant {quant!r} is not supported", QUANT_HINT)
    if fmt == "lora-gguf" and quant not in EXACT:
        raise UsageError(f"--quant {quant} is not available for --format lora-gguf",
                         "use --quant f16, bf16 or f32: an adapter is small, and its rank-wide rows do not "
                         "fill 32-value blocks")
    if out is not None and out.suffix.lower() != ".gguf":
        raise UsageError(f"-o {out}: a GGUF file name must end in .gguf", "for example -o model-f16.gguf")
    if out is not None and out.is_dir():
        raise UsageError(f"-o {out} is a directory", "give a file name ending in .gguf")


def check_export_target(target: Path, *, force: bool, protected: list[Path]) -> None:
    """An existing file is replaced only with --force, or when it is an earlier export (its record is
    next to it); never the base model or the GGUF it was converted from."""
    for path in protected:
        if target == path.resolve():
            raise UsageError(f"-o {target} is the model this run was trained from", "pick another file name")
    if target.exists() and not force and not record_path(target).is_file():
        raise UsageError(f"-o {target} exists and is not an earlier tunesmith export",
                         "pick another file name, or pass --force to replace it")


def export_run(project_dir: Path | str, ref: str, *, fmt: str = "gguf", quant: str = "f16", out: Path | str | None = None,
               verify_n: int | None = None, allow_mismatch: bool = False, device: str | None = None,
               say: Say | None = None, force: bool = False, progress: Progress | None = None) -> ExportOutcome:
    """Merge run `ref` in memory and write it as GGUF with its Modelfile, then verify the file (see the
    module doc); with fmt "lora-gguf", write the run's adapter alone (`tunesmith.ship.gguf_adapter`)."""
    say = say or _say_nothing
    started = time.monotonic()
    check_export_args(fmt, quant, Path(out) if out is not None else None)
    project = load_project(project_dir)
    run = locate_run(project, ref)
    if run.warning:  # exported on the base it was trained on, which is no longer the project's
        say(f"warning: {run.warning}")
    if fmt == "lora-gguf":
        from tunesmith.ship.gguf_adapter import export_adapter

        outcome = export_adapter(run, quant=quant, out=Path(out) if out is not None else None, force=force, say=say)
    else:
        outcome = _export_model(project, run, fmt=fmt, quant=quant, out=out, verify_n=verify_n,
                                allow_mismatch=allow_mismatch, device=device, say=say, force=force, progress=progress)
    outcome.seconds = round(time.monotonic() - started, 1)
    write_json_atomic(record_path(outcome.path), export_record(outcome, run))
    return outcome


def run_system_prompt(project: Any, run: RunModel, say: Say) -> tuple[str | None, str]:
    """The system prompt run `run` was trained with (recorded in its config.json), else the project's;
    and where it comes from, for messages."""
    recorded = project.registry().get(run.run_id).config.get("project")
    if isinstance(recorded, dict) and "system_prompt" in recorded:
        prompt = recorded["system_prompt"] if isinstance(recorded["system_prompt"], str) else None
        if prompt != project.system_prompt:
            say(f"note: the project's system_prompt changed since run {run.run_id} was trained; "
                "the Modelfile has the one it was trained with")
        return prompt, f"the system_prompt of run {run.run_id} ({run.run_dir / 'config.json'})"
    return project.system_prompt, f"system_prompt in {project.root / 'tunesmith.yaml'}"


def _export_model(project: Any, run: RunModel, *, fmt: str, quant: str, out: Path | str | None,
                  verify_n: int | None, allow_mismatch: bool, device: str | None, say: Say, force: bool,
                  progress: Progress | None) -> ExportOutcome:
    from transformers import AutoConfig

    from tunesmith.models.resolve import resolve_model, tokenizer_in
    from tunesmith.ship.modelfile import build_modelfile

    plan = check_exportable(AutoConfig.from_pretrained(str(run.checkpoint_dir), local_files_only=True))
    tok_dir = run.tokenizer_dir
    tokenizer = tokenizer_in(tok_dir)
    require_chat_template(tokenizer, tok_dir)
    vocab = vocab_spec(tokenizer, plan.vocab_size)
    target = (Path(out).expanduser() if out is not None else run.run_dir / "export" / f"model-{quant}.gguf").resolve()
    resolved = resolve_model(run.base_ref)
    check_export_target(target, force=force, protected=[p for p in (resolved.converted_from, resolved.path) if p])
    system_prompt, system_where = run_system_prompt(project, run, say)
    modelfile = build_modelfile(target, tokenizer, system_prompt=system_prompt, system_where=system_where,
                                add_bos=vocab.add_bos, run_id=run.run_id, quant=quant)
    items, settings = verification_prompts(project, verify_n)
    device = device or default_device()
    say(f"exporting run {run.run_id} ({plan.architecture} as llama.cpp {plan.gguf_arch}, {quant}) on {device}")
    model, _ = load_merged(run, device=device)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".gguf", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        fallbacks: list[str] = []
        counts = write_gguf(model, plan, vocab, tmp, quant, name=f"{Path(run.base_ref).name}-{run.run_id}",
                            source=run.checkpoint_dir, fallbacks=fallbacks)
        template = outputs = None
        if items:
            round_like_file(model, quant)
            say(f"verifying: loading {target.name} back with transformers; {describe_prompts(items, settings)}")
            reference = InMemoryBackend(model, tokenizer, run.checkpoint_dir)
            template, outputs = verify_gguf(tmp, tokenizer, reference, items, settings, pre=vocab.pre, quant=quant,
                                            workdir=target.parent, progress=progress)
        del model
        notes = [*plan.notes, *filter(None, [fallback_note(quant, fallbacks)]), *modelfile.notes]
        outcome = ExportOutcome(run.run_id, target, quant, plan.architecture, plan.gguf_arch, tmp.stat().st_size,
                                counts, template, outputs, notes, fmt=fmt, modelfile=modelfile.path,
                                ollama_create=modelfile.ollama_create)
        hint = ("the file is not saved. Pass --allow-mismatch to keep it anyway, and please report the model: "
                "the exporter and llama.cpp's converter disagree about it")
        if template is not None:
            template.require("template token ids", allow=allow_mismatch, hint=hint)
        if outputs is not None and quant in EXACT:
            outputs.require("greedy outputs", allow=allow_mismatch, hint=hint)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    write_text_atomic(modelfile.path, modelfile.text)
    outcome.record_extra = {"tokenizer_pre": vocab.pre, "add_bos": vocab.add_bos,
                            "has_chat_template": bool(vocab.chat_template)}
    return outcome


def record_path(gguf_file: Path) -> Path:
    """Where the verification record of a GGUF file is kept: `<file>.json` next to it."""
    return gguf_file.with_name(gguf_file.name + ".json")


def export_record(outcome: ExportOutcome, run: RunModel) -> dict[str, Any]:
    import importlib.metadata

    import transformers

    from tunesmith import __version__

    try:
        gguf_version = importlib.metadata.version("gguf")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - gguf imported from a source tree
        gguf_version = "unknown"

    return {
        **outcome.to_dict(), "file": outcome.path.name, "sha256": sha256_file(outcome.path),
        "base_model": run.base_ref, "method": run.method, **outcome.record_extra,
        "lossy": outcome.quant not in EXACT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"tunesmith": __version__, "gguf": gguf_version,
                     "transformers": transformers.__version__},
    }
