"""The forgetting guard: mix 5-10 % general examples into training (the guide's "data mixing").

`mix.source` is a JSONL file of general examples, or `self`: the base model itself answers a shipped
set of general prompts before training, offline, and those answers are replayed so the tuned model
keeps doing what it did before on everything outside the task.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.data.formats import Message, iter_examples
from tunesmith.errors import DataError
from tunesmith.io import write_jsonl_atomic
from tunesmith.project import Project
from tunesmith.train.dataset import TrainingData, encode_examples
from tunesmith.progress import Say

REPLAY_PROMPTS = Path(__file__).with_name("replay_prompts.jsonl")


def mix_count(n_task: int, fraction: float) -> int:
    """Mixed rows so that they make up `fraction` of the final training set."""
    return max(1, math.ceil(n_task * fraction / (1 - fraction)))


def _pick(items: list[Any], k: int, key: Callable[[Any], str]) -> list[Any]:
    return sorted(items, key=lambda x: hashlib.sha256(key(x).encode()).hexdigest())[:k]


def mixed_rows(n_task: int, project: Project, tokenizer: Any, model_path: Path,
               say: Say) -> TrainingData:
    """General examples to mix in (untruncated), sized so they make up `mix.fraction` of training."""
    mix = project.train.mix
    k = mix_count(n_task, mix.fraction)
    if mix.source == "self":
        examples = self_replay(project, tokenizer, model_path, k, say)
    else:
        path = project.path(mix.source)
        if not path.exists():
            raise DataError(f"train.mix.source: {path} does not exist", "point it at a JSONL file of general examples, or use `self`")
        pool = [ex for ex in iter_examples(path) if not ex.problems]
        if not pool:
            raise DataError(f"train.mix.source: {path} has no well-formed examples", f"run `tunesmith check {path}`")
        examples = _pick(pool, k, lambda ex: ex.dialogue_text())
    # General examples keep their own system prompt (or none): they are not the task.
    mixed = encode_examples(tokenizer, examples, None, None, source="mix")
    say(f"mixing {len(mixed.rows)} general example(s) into {n_task} ({mix.fraction:.0%}) against forgetting")
    return mixed


def self_replay(project: Project, tokenizer: Any, model_path: Path, k: int, say: Say) -> list:
    """The base model's own answers to k shipped general prompts; cached per model in the project."""
    from tunesmith.data.formats import Example

    prompts = [ex for ex in iter_examples(REPLAY_PROMPTS)]
    chosen = _pick(prompts, min(k, len(prompts)), lambda ex: ex.messages[0].content)
    fingerprint = hashlib.sha256(str(model_path.resolve()).encode()).hexdigest()[:12]
    cache = project.root / ".tunesmith" / f"replay-{fingerprint}.jsonl"
    answers: dict[str, str] = {}
    if cache.exists():
        for line in cache.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            answers[rec["messages"][0]["content"]] = rec["messages"][1]["content"]
    todo = [ex.messages[0].content for ex in chosen if ex.messages[0].content not in answers]
    if todo:
        say(f"the base model answers {len(todo)} general prompt(s) for replay (once; cached)")
        answers.update(zip(todo, generate_answers(model_path, tokenizer, todo)))
        write_jsonl_atomic(cache, ({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
                                   for p, a in answers.items()))
    out = []
    for i, ex in enumerate(chosen):
        prompt = ex.messages[0].content
        if answers.get(prompt, "").strip():
            out.append(Example(i + 1, "messages", [Message("user", prompt), Message("assistant", answers[prompt])]))
    return out


def generate_answers(model_path: Path, tokenizer: Any, prompts: list[str], max_new_tokens: int = 96,
                     batch_size: int = 8) -> list[str]:
    """Greedy, batched, left-padded generation with the model's chat template."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.models.chat import render

    from tunesmith.models.quiet import quiet_transformers

    quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outs: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [render(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True)
                     for p in prompts[i : i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            for row in gen[:, enc["input_ids"].shape[1]:]:
                outs.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = side
    return outs
