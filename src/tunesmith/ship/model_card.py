"""The model card `tunesmith push` uploads as README.md: the Hub's metadata block, then the run in words.

The metadata is what the Hub indexes (`base_model` links the model tree, `library_name` picks the
loading snippet, `model-index` shows the test metrics); it is built with huggingface_hub's own
`ModelCardData`/`EvalResult`, which render offline. The body says what the model does, what it was
trained on and how, and how it scored on the sealed test set, each figure with its n and 95 % interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.models.hub_ref import parse_hub_ref

#: the Hub library whose loading snippet fits each kind of push
LIBRARY = {"adapter": "peft", "merged": "transformers", "gguf": "gguf"}
#: builtin models and the Hub repository they are a quantized copy of
BUILTIN_ORIGINS = {"builtin:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
WHAT = {"adapter": "the LoRA adapter (load it on the base model with PEFT)",
        "merged": "the full model (the adapter folded into the base, or the full fine-tune)",
        "gguf": "one GGUF file for llama.cpp and Ollama"}


@dataclass
class CardFacts:
    """Everything the card says, gathered from the project, the run record and its stored evaluation."""

    repo_id: str
    kind: str
    run_id: str
    base_ref: str
    method: str
    task: str
    system_prompt: str | None = None
    plan: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] | None = None
    train_metrics: dict[str, Any] = field(default_factory=dict)
    #: {metric: {"mean", "lo", "hi", "n"}} from the latest test-set evaluation; None: not evaluated
    evaluation: dict[str, Any] | None = None
    evaluated_at: str | None = None
    files: list[str] = field(default_factory=list)


def card_facts(project: Any, record: Any, *, kind: str, repo_id: str, files: list[str]) -> CardFacts:
    """The facts of run `record` (a RunRecord) in `project`."""
    from tunesmith.evaluate.store import EvalStore

    stored = EvalStore(project.registry()).latest(record.id, "test")
    provenance = record.data.get("provenance")
    return CardFacts(
        repo_id=repo_id, kind=kind, run_id=record.id, base_ref=record.base_model or project.base_model,
        method=record.trained_method(), task=project.task, system_prompt=project.system_prompt, plan=record.plan,
        provenance=provenance if isinstance(provenance, dict) else None, train_metrics=dict(record.metrics or {}),
        evaluation=stored.summary if stored is not None else None,
        evaluated_at=stored.created_at if stored is not None else None, files=files)


def hub_base(base_ref: str) -> str | None:
    """The Hub repository a base reference names (its revision dropped: `base_model` takes a repo id)."""
    if base_ref in BUILTIN_ORIGINS:
        return BUILTIN_ORIGINS[base_ref]
    hub = parse_hub_ref(base_ref)
    return hub.repo_id if hub is not None else None


def metric_rows(evaluation: dict[str, Any] | None) -> list[tuple[str, float, float, float, int]]:
    """(name, mean, low, high, n) per stored metric that has a value."""
    rows = []
    for name, est in (evaluation or {}).items():
        if isinstance(est, dict) and isinstance(est.get("mean"), (int, float)) and est.get("n"):
            rows.append((name, float(est["mean"]), float(est["lo"]), float(est["hi"]), int(est["n"])))
    return rows


def card_metadata(facts: CardFacts) -> Any:
    """The YAML block as huggingface_hub's ModelCardData (`.to_yaml()` renders it)."""
    from huggingface_hub import EvalResult, ModelCardData

    rows = metric_rows(facts.evaluation)
    n_test = max((r[4] for r in rows), default=0)
    results = [EvalResult(task_type="text-generation", dataset_type="sealed-test",
                          dataset_name=f"sealed test set ({n_test} prompts)", metric_type=name,
                          metric_value=round(mean, 4), metric_name=f"{name} (95% CI {lo:.3f}-{hi:.3f}, n={n})")
               for name, mean, lo, hi, n in rows]
    tags = ["tunesmith", facts.method] + (["lora"] if facts.method in ("lora", "qlora") else [])
    tags += ["gguf"] if facts.kind == "gguf" else []
    return ModelCardData(base_model=hub_base(facts.base_ref), library_name=LIBRARY[facts.kind], tags=tags,
                         pipeline_tag="text-generation", model_name=facts.repo_id if results else None,
                         eval_results=results or None)


def render_card(facts: CardFacts) -> str:
    """README.md: the metadata block, then the body."""
    body = [f"# {facts.repo_id.split('/')[-1]}", "", facts.task.strip(), "",
            f"Fine-tuned with tunesmith (run `{facts.run_id}`, method {facts.method}). "
            f"This repository holds {WHAT[facts.kind]}.", ""]
    for section in (_base_section, _data_section, _plan_section, _eval_section, _use_section):
        body += section(facts) + [""]
    return f"---\n{card_metadata(facts).to_yaml()}\n---\n\n" + "\n".join(body).rstrip() + "\n"


def _cell(value: Any) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")


def _base_section(f: CardFacts) -> list[str]:
    hub = parse_hub_ref(f.base_ref)
    if f.base_ref in BUILTIN_ORIGINS:
        where = (f"`{f.base_ref}`: the Q4_1 GGUF of [{BUILTIN_ORIGINS[f.base_ref]}](https://huggingface.co/"
                 f"{BUILTIN_ORIGINS[f.base_ref]}), dequantized; loaded on the original weights it answers very nearly, "
                 "not exactly, alike")
    elif hub is not None:
        pinned = f", revision `{hub.revision}`" if hub.revision else " (no revision pinned: the latest main)"
        where = f"[{hub.repo_id}](https://huggingface.co/{hub.repo_id}){pinned}"
    else:
        where = f"a local checkpoint, `{Path(f.base_ref).name}` (not on the Hub)"
    return ["## Base model", "", f"- {where}"]


def _data_section(f: CardFacts) -> list[str]:
    from tunesmith.distill.provenance import describe

    derived = f.plan.get("derived") or {}
    lines = ["## Training data", ""]
    if isinstance(derived.get("examples"), int):
        lines.append(f"- {derived['examples']} examples: {derived.get('train_examples', '?')} trained on, "
                     f"{derived.get('eval_examples', '?')} held out for the validation loss")
    else:
        lines.append("- size: not recorded with this run")
    lines.append(f"- provenance: {describe(f.provenance)}" if f.provenance else
                 "- provenance: no row was generated by a teacher model")
    lines.append("- the sealed test set below was never trained on")
    return lines


def _plan_section(f: CardFacts) -> list[str]:
    settings = f.plan.get("settings") or {}
    lines = ["## Training plan", ""]
    if not settings:
        return lines + ["Not recorded with this run."]
    lines += ["| setting | value | why |", "|---|---|---|"]
    for name, s in settings.items():
        if isinstance(s, dict):
            lines.append(f"| {_cell(name)} | {_cell(s.get('value'))} | {_cell(s.get('why') or s.get('source') or '')} |")
    derived = f.plan.get("derived") or {}
    steps = [f"{derived[k]} {k.replace('_', ' ')}" for k in ("total_steps", "steps_per_epoch") if k in derived]
    if steps or derived.get("device"):
        lines += ["", "Planned: " + ", ".join(steps + ([f"on {derived['device']}"] if derived.get("device") else [])) + "."]
    losses = {k: v for k, v in f.train_metrics.items() if k in ("train_loss", "eval_loss") and isinstance(v, (int, float))}
    if losses:
        lines += ["", "Final losses: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()) + "."]
    return lines


def _eval_section(f: CardFacts) -> list[str]:
    rows = metric_rows(f.evaluation)
    lines = ["## Evaluation on the sealed test set", ""]
    if not rows:
        return lines + [f"Not evaluated yet: `tunesmith eval {f.run_id}` scores it (push again to update this card)."]
    lines += ["| metric | value | 95% interval | n |", "|---|---|---|---|"]
    lines += [f"| {_cell(name)} | {mean:.3f} | {lo:.3f} - {hi:.3f} | {n} |" for name, mean, lo, hi, n in rows]
    when = f" ({f.evaluated_at[:10]})" if f.evaluated_at else ""
    return lines + ["", f"Scored by `tunesmith eval`{when}: greedy answers, bootstrap 95 % intervals over the prompts."]


def _use_section(f: CardFacts) -> list[str]:
    base = hub_base(f.base_ref) or "BASE_MODEL"
    hub = parse_hub_ref(f.base_ref)
    rev_arg = f', revision="{hub.revision}"' if hub is not None and hub.revision else ""
    snippets = {
        "adapter": ["```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                    "", f'base = AutoModelForCausalLM.from_pretrained("{base}"{rev_arg})',
                    f'model = PeftModel.from_pretrained(base, "{f.repo_id}")',
                    f'tokenizer = AutoTokenizer.from_pretrained("{f.repo_id}")', "```"],
        "merged": ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                   f'model = AutoModelForCausalLM.from_pretrained("{f.repo_id}")',
                   f'tokenizer = AutoTokenizer.from_pretrained("{f.repo_id}")', "```"],
        "gguf": ["```sh"] + [f"llama-cli -hf {f.repo_id} --jinja  # {name}" for name in f.files if name.endswith(".gguf")]
                + [f"ollama create {f.repo_id.split('/')[-1].lower()} -f {name}  # after downloading the repository"
                   for name in f.files if name.endswith(".Modelfile")]
                + ["```"],
    }
    lines = ["## Use", ""] + snippets[f.kind]
    if f.system_prompt:
        lines += ["", "It was trained with this system prompt; send the same one:", "", "```text",
                  f.system_prompt.strip(), "```"]
    return lines
