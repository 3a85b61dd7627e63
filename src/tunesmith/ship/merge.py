"""`tunesmith merge`: fold a run's LoRA adapter into its base model, and prove nothing changed.

The merged checkpoint is an ordinary transformers directory (safetensors weights, config, generation
config, and the run's own tokenizer files and chat template, copied byte for byte), so anything that
loads a Hugging Face model can serve it without PEFT. It is built in a temporary directory next to the
target and renamed into place only when it is complete and verified: the greedy answers of the merged
model, loaded back from disk, must equal the adapter model's on the run's sealed test prompts.

A QLoRA run is merged into the base reloaded in 16 bit (bf16 on a GPU, fp32 on CPU), never into a
4-bit base: merging into 4-bit weights rounds the LoRA update away (PEFT's guidance). A full
fine-tune has nothing to merge; its model is already a plain checkpoint in ``<run>/model``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import ExportError, ModelError, UsageError, one_line
from tunesmith.evaluate.types import DecodeSettings, EvalItem
from tunesmith.io import publish_dir, staged_dir, write_json_atomic
from tunesmith.progress import Say
from tunesmith.project import Project, load_project
from tunesmith.runs import RunModel

#: progress(done, total) over the answers a verification generates
Progress = Callable[[int, int], None]

#: tokenizer files copied from the run: the exact tokenizer and chat template training used
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
MERGE_RECORD = "tunesmith-merge.json"
#: prompt ids a mismatch message names before "and N more"
SHOWN_IDS = 5


def _quiet(_msg: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# what a run trained


def locate_run(project: Project, ref: str) -> RunModel:
    """The run `ref` names (id, prefix or 'latest') and what it produced, on the base it was trained on."""
    run = project.registry().get(ref).model(project.base_model)
    _ = run.base_path  # a base that is gone fails here, before any output is touched
    return run


# ---------------------------------------------------------------------------------------------
# loading and merging


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def merge_dtype(device: str, bf16_supported: bool) -> str:
    """bf16 on a GPU that has it, else fp32 (16-bit on a CPU is slower and changes greedy answers)."""
    return "bfloat16" if device.startswith("cuda") and bf16_supported else "float32"


def merge_load_kwargs(method: str, device: str, *, bf16_supported: bool) -> dict[str, Any]:
    """`from_pretrained` keyword arguments for the base model an adapter is folded into.

    The same for every method, on purpose: a QLoRA adapter was trained against a 4-bit base, but it is
    merged into the base reloaded in 16 bit (32 on CPU). Folding the LoRA update into 4-bit weights
    would round it away, so no quantization_config is ever passed here.
    """
    if method not in ("lora", "qlora"):
        raise UsageError(f"a {method} run has no adapter to merge", "merge runs trained with --method lora or qlora")
    return {"dtype": merge_dtype(device, bf16_supported), "local_files_only": True}


def _bf16_supported(device: str) -> bool:
    import torch

    return device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def refuse_quantized_base(checkpoint: Path) -> None:
    """A base checkpoint saved already quantized (a `*-bnb-4bit` repo) would load, and merge, in 4 bit
    whatever tunesmith asks for: the LoRA update would be rounded away. Refuse it by name."""
    try:
        config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    quant = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config")
    if quant:
        method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else "unknown"
        raise ExportError(f"the base model in {checkpoint} is stored quantized ({method}): merging into it would "
                          "round the adapter's update away",
                          "merge onto the same model in 16-bit (its non-quantized release), with the adapter "
                          "trained on it; or serve the adapter unmerged with `tunesmith serve`")


def load_merged(run: RunModel, *, device: str | None = None) -> tuple[Any, str]:
    """The run's model with the adapter folded in (or the full fine-tune as is), in eval mode; and its dtype."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    if run.adapter_dir is None:
        dtype = merge_dtype(device, _bf16_supported(device))
        model = _load_checkpoint(AutoModelForCausalLM, run.checkpoint_dir, dtype=getattr(torch, dtype),
                                 local_files_only=True)
        return model.to(device).eval(), dtype
    refuse_quantized_base(run.checkpoint_dir)
    kwargs = merge_load_kwargs(run.method, device, bf16_supported=_bf16_supported(device))
    dtype = kwargs.pop("dtype")
    base = _load_checkpoint(AutoModelForCausalLM, run.checkpoint_dir, dtype=getattr(torch, dtype), **kwargs)
    base.to(device)
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(base, str(run.adapter_dir), is_trainable=False)
    except Exception as exc:  # noqa: BLE001 - becomes a user-facing error
        raise ModelError(f"cannot load the adapter in {run.adapter_dir} onto {run.base_path}: {one_line(exc)}",
                         "is it complete, and was it trained on this base model? Retrain or resume the run") from exc
    try:
        merged = peft_model.merge_and_unload(safe_merge=True)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"cannot fold the adapter of run {run.run_id} into its base model: {one_line(exc)}",
                          "the adapter weights are broken (NaN or infinite values?); retrain the run") from exc
    return merged.eval(), dtype


def _stored_dtype(checkpoint: Path) -> str | None:
    try:
        config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("dtype") or config.get("torch_dtype")
    return value if isinstance(value, str) else None


def _load_checkpoint(auto: Any, path: Path, **kwargs: Any) -> Any:
    try:
        from tunesmith.models.quiet import quiet_transformers

        quiet_transformers()
        return auto.from_pretrained(str(path), **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot load the model in {path}: {one_line(exc)}",
                         "check that the directory is a complete transformers checkpoint") from exc


def require_chat_template(tokenizer: Any, where: Path) -> None:
    """Serving and exporting need the chat template training used; say so before any heavy work."""
    if not getattr(tokenizer, "chat_template", None):
        raise ExportError(f"the tokenizer in {where} has no chat template",
                          "training renders every example with the model's chat template: add one "
                          "(tokenizer.chat_template, or chat_template.jinja) to that directory and run again")


def _stop_on_end_of_turn(model: Any, tokenizer: Any) -> None:
    """The generation config stops on the chat template's end-of-turn tokens too (e.g. <|im_end|>), as
    tunesmith's own decoding and its verification do; otherwise servers that read generation_config.json
    would run past the end of the answer."""
    from tunesmith.models.chat import end_of_turn_ids

    config = getattr(model, "generation_config", None)
    if config is None:
        return
    eos = config.eos_token_id
    current = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    wanted = sorted(current | set(end_of_turn_ids(tokenizer)))
    if wanted:
        config.eos_token_id = wanted if len(wanted) > 1 else wanted[0]


def save_merged(model: Any, target: Path, tokenizer_dir: Path, tokenizer: Any) -> None:
    """Weights (safetensors), config and generation config, plus the run's tokenizer files verbatim."""
    _stop_on_end_of_turn(model, tokenizer)
    kwargs: dict[str, Any] = {}
    with contextlib.suppress(TypeError, ValueError):
        if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
            kwargs["safe_serialization"] = True  # transformers 4.x; 5.x writes safetensors only
    model.save_pretrained(str(target), **kwargs)
    if not any(target.glob("*.safetensors")):  # pragma: no cover - defensive
        raise ExportError(f"saving the merged model to {target} wrote no safetensors file",
                          "update transformers (pip install -U transformers) and merge again")
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, target / name)


# ---------------------------------------------------------------------------------------------
# verification


@dataclass
class Verification:
    """How many prompts two models (or tokenizers) treat identically, and which ones they do not."""

    what: str
    total: int
    identical: int
    mismatched: list[str] = field(default_factory=list)
    computed_on: str = "sealed test set"

    @property
    def ok(self) -> bool:
        return self.identical == self.total

    def summary(self, label: str = "greedy outputs") -> str:
        return f"{label}: {self.identical}/{self.total} identical ({self.what}; {self.computed_on})"

    def shown_ids(self) -> str:
        shown = ", ".join(self.mismatched[:SHOWN_IDS])
        more = len(self.mismatched) - SHOWN_IDS
        return shown + (f" and {more} more" if more > 0 else "")

    def require(self, label: str, *, allow: bool, hint: str) -> None:
        """Raise ExportError naming the first differing prompts, unless everything matched or `allow`."""
        if self.ok or allow:
            return
        raise ExportError(f"{label}: {self.identical}/{self.total} identical ({self.what}); "
                          f"they differ on {self.shown_ids()}", hint)

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "computed_on": self.computed_on, "total": self.total,
                "identical": self.identical, "mismatched": self.mismatched}


def verification_prompts(project: Project, verify_n: int | None) -> tuple[list[EvalItem], DecodeSettings]:
    """The first `verify_n` sealed test prompts (all when None, none when 0) and greedy settings."""
    if verify_n is not None and verify_n < 0:
        raise UsageError(f"--verify-n must be 0 or more, got {verify_n}", "leave it out to check every sealed test prompt")
    from tunesmith.evaluate.budget import answer_token_budget

    settings = DecodeSettings(max_new_tokens=answer_token_budget(project)[0])
    if verify_n == 0:
        return [], settings
    from tunesmith.evaluate.items import test_items

    items = test_items(project)
    return (items if verify_n is None else items[:verify_n]), settings


def compare_greedy(reference: Any, candidate: Any, items: list[EvalItem], settings: DecodeSettings, *,
                   what: str, computed_on: str, progress: Progress | None = None) -> Verification:
    """Greedy answers of two backends on the same prompts; a prompt matches when text and ending match.

    `progress(done, total)` counts the answers of both sides."""
    chats = [it.chat for it in items]
    n = len(chats)
    ref = reference.generate(chats, settings, (lambda d: progress(d, 2 * n)) if progress else None)
    got = candidate.generate(chats, settings, (lambda d: progress(n + d, 2 * n)) if progress else None)
    mismatched = [it.id for it, a, b in zip(items, ref, got) if (a.text, a.finish_reason) != (b.text, b.finish_reason)]
    return Verification(what, len(items), len(items) - len(mismatched), mismatched, computed_on)


def describe_prompts(items: list[EvalItem], settings: DecodeSettings) -> str:
    return f"{len(items)} sealed test prompt(s), max_new_tokens {settings.max_new_tokens}"


# ---------------------------------------------------------------------------------------------
# the output directory


def check_output_dir(out: Path, *, force: bool, protected: dict[str, Path | None]) -> None:
    """Refuse a target that is a file, holds or lies inside a model or data in use, or is a non-empty
    directory (without --force, or with --force when it is not an earlier merge's output)."""
    out = out.resolve()  # `..` and symlinks cannot sneak past the comparisons below
    for what, path in protected.items():
        if path is None:
            continue
        path = path.resolve()
        if out == path or out in path.parents or path in out.parents:
            raise UsageError(f"-o {out} would overwrite {what} ({path})", "pick a new directory for the merged model")
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} exists and is not a directory", "pick a directory path for the merged model")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UsageError(f"-o {out} exists and is not empty",
                             "pick a new directory, or pass --force to replace it once the merge is complete and verified")
        if not (out / MERGE_RECORD).is_file():
            raise UsageError(f"-o {out} is not empty and is not a merge tunesmith wrote (no {MERGE_RECORD}): "
                             "--force replaces only earlier merges",
                             "pick a new directory, or empty this one yourself if it really should go")


# ---------------------------------------------------------------------------------------------
# the command


@dataclass
class MergeOutcome:
    run_id: str
    output: Path
    base_model: str
    method: str
    dtype: str
    verification: Verification | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "output": str(self.output), "base_model": self.base_model,
                "method": self.method, "dtype": self.dtype, "seconds": self.seconds,
                "verification": self.verification.to_dict() if self.verification else None}


MISMATCH_HINT = ("The merged model is not saved. Greedy answers can flip where two tokens are nearly tied "
                 "(rounding differs once the adapter is folded in); pass --allow-mismatch to keep it anyway.")


SAVE_DTYPES = ("auto", "stored", "float32", "bfloat16", "float16")


def merge_run(project_dir: Path | str, ref: str, out: Path | str, *, force: bool = False, verify_n: int | None = None,
              allow_mismatch: bool = False, device: str | None = None, say: Say | None = None,
              save_dtype: str = "auto", progress: Progress | None = None) -> MergeOutcome:
    """Merge run `ref`'s adapter into its base, save it to `out` and verify it (see the module doc)."""
    say = say or _quiet
    started = time.monotonic()
    if save_dtype not in SAVE_DTYPES:
        raise UsageError(f"--dtype {save_dtype!r} is not one of {', '.join(SAVE_DTYPES)}",
                         "auto keeps the precision of the merge (exact); stored uses the base's own dtype")
    project = load_project(project_dir)
    run = locate_run(project, ref)
    if run.warning:
        say(f"warning: {run.warning}")
    if run.adapter_dir is None:
        raise UsageError(f"run {run.run_id} is a full fine-tune: there is no adapter to merge, "
                         f"the model is already a complete checkpoint at {run.model_dir}",
                         f"use that directory as it is, or `tunesmith export {run.run_id} --format gguf` for llama.cpp")
    target = Path(out).expanduser().resolve()
    check_output_dir(target, force=force, protected={
        "the base model": run.base_path, "the run directory": run.run_dir,
        **{f"the project's {name} data": project.path(getattr(project.data, name))
           for name in ("source", "train", "test", "regression")}})
    if target == project.root.resolve() or target in project.root.resolve().parents:
        raise UsageError(f"-o {target} would overwrite the project directory ({project.root})",
                         "pick a new directory for the merged model, e.g. -o merged/")
    from tunesmith.models.resolve import tokenizer_in

    tokenizer = tokenizer_in(run.tokenizer_dir)
    require_chat_template(tokenizer, run.tokenizer_dir)
    items, settings = verification_prompts(project, verify_n)  # a broken seal fails before the heavy work
    device = device or default_device()
    say(f"merging run {run.run_id} ({run.method}) into {run.base_ref} on {device}")
    model, dtype = load_merged(run, device=device)
    stored = _stored_dtype(run.checkpoint_dir)
    wanted = (stored or dtype) if save_dtype == "stored" else dtype if save_dtype == "auto" else save_dtype
    if wanted != dtype:
        import torch

        # rounding the merged weights can flip near-tied greedy answers: the check below tells
        model = model.to(getattr(torch, wanted))
        say(f"saving in {wanted} (merged in {dtype})")
        dtype = wanted
    elif stored and stored != dtype:
        say(f"note: the base is stored in {stored}; the merged model is saved in {dtype} (exact; "
            f"--dtype stored saves it in {stored})")
    with staged_dir(target) as tmp:
        save_merged(model, tmp, run.tokenizer_dir, tokenizer)
        del model
        verification = None
        if items:
            say(f"verifying: greedy answers of the merged and the adapter model on {describe_prompts(items, settings)}")
            verification = verify_merged(project, run, tmp, items, settings, device=device, progress=progress)
        write_json_atomic(tmp / MERGE_RECORD, merge_record(run, dtype, verification, settings))
        if verification is not None:
            verification.require("greedy outputs", allow=allow_mismatch, hint=MISMATCH_HINT)
        publish_dir(tmp, target)
    return MergeOutcome(run.run_id, target, run.base_ref, run.method, dtype, verification,
                        round(time.monotonic() - started, 1))


def verify_merged(project: Project, run: RunModel, merged_dir: Path, items: list[EvalItem],
                  settings: DecodeSettings, *, device: str, progress: Progress | None = None) -> Verification:
    """Greedy answers of `merged_dir` (loaded from disk) against the adapter model's (cached if evaluated)."""
    from tunesmith.evaluate.cache import CachedBackend
    from tunesmith.evaluate.generate import LocalBackend
    from tunesmith.evaluate.subject import cache_for

    assert run.base_path is not None and run.adapter_dir is not None
    adapter = CachedBackend(LocalBackend(run.base_path, adapter_path=run.adapter_dir, device=device), cache_for(project))
    merged = LocalBackend(merged_dir, device=device)
    return compare_greedy(adapter, merged, items, settings, what="merged model vs adapter model",
                          computed_on=describe_prompts(items, settings), progress=progress)


def merge_record(run: RunModel, dtype: str, verification: Verification | None,
                 settings: DecodeSettings) -> dict[str, Any]:
    from tunesmith import __version__

    return {
        "run_id": run.run_id, "base_model": run.base_ref, "base_path": str(run.base_path),
        "adapter": str(run.adapter_dir), "method": run.method, "dtype": dtype,
        "verification": verification.to_dict() if verification else None,
        "decode": {"max_new_tokens": settings.max_new_tokens, "temperature": 0.0},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "tunesmith": __version__,
    }
