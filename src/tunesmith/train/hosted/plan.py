"""The hosted job's plan: the provider's rules checked locally, the files it will get, the
hyperparameters with where they came from and why, and the billed tokens and dollars, before any upload.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from tunesmith.errors import DataError, UsageError
from tunesmith.models.chat import chat_weights, to_chat
from tunesmith.project import Project
from tunesmith.train.hosted.limits import MIN_EXAMPLES, example_token_limit, fine_tunable_models
from tunesmith.train.hosted.prices import PRICES_AS_OF, HostedPrice, hosted_price
from tunesmith.train.plan import DATA, DEFAULT, FILE, FLAG, epochs_for

#: assumed per-example limit for a model the table does not know but the project priced
UNKNOWN_MODEL_LIMIT = 65_536


@dataclass
class HostedPlan:
    model: str
    suffix: str | None
    base_url: str | None
    api_key_env: str
    #: {name: {"value", "source", "why"}} as the local plan reports its settings
    hyperparameters: dict[str, dict[str, Any]]
    train_examples: int
    validation_examples: int
    train_tokens: int
    #: epochs the bill is computed with ("auto" is estimated the way OpenAI's auto chooses)
    billed_epochs: int
    counter: str
    price: HostedPrice | None
    data_hashes: dict[str, Any] = field(default_factory=dict)
    train_rows: list[dict[str, Any]] = field(default_factory=list, repr=False)
    validation_rows: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def billed_tokens(self) -> int:
        return self.train_tokens * self.billed_epochs

    @property
    def cost_usd(self) -> float | None:
        return None if self.price is None else self.price.training(self.billed_tokens)

    def api_hyperparameters(self) -> dict[str, Any]:
        return {k: v["value"] for k, v in self.hyperparameters.items()}

    def cost_line(self) -> str:
        head = f"{self.train_tokens:,} tokens x {self.billed_epochs} epoch(s) = {self.billed_tokens:,} billed tokens"
        if self.price is None:
            return f"{head}; cost unknown: no price for {self.model} (set hosted.price.training in tunesmith.yaml)"
        return (f"{head} x ${self.price.training_per_m:.2f}/1M = ${self.cost_usd:.2f} "
                f"({self.price.source}; tokens: {self.counter})")

    def to_dict(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.model, "suffix": self.suffix, "settings": self.hyperparameters,
                "derived": {"train_examples": self.train_examples, "validation_examples": self.validation_examples,
                            "train_tokens": self.train_tokens, "billed_epochs": self.billed_epochs,
                            "billed_tokens": self.billed_tokens, "token_count": self.counter,
                            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 4),
                            "price": None if self.price is None else {
                                "training_per_1m": self.price.training_per_m, "source": self.price.source}}}


def plan_hosted(project: Project, flags: dict[str, Any]) -> HostedPlan:
    """Everything before the upload; raises (with every problem named) when the provider would refuse."""
    from tunesmith.train.dataset import load_examples
    from tunesmith.train.hosted.tokens import counter_for
    from tunesmith.train.prepare import guard_data

    h = project.hosted
    model = flags.get("model") or h.model
    if not model:
        raise UsageError("no hosted model: name the provider's model to fine-tune",
                         f"pass --model (e.g. gpt-4o-mini-2024-07-18), or set hosted.model in tunesmith.yaml; "
                         f"fine-tunable: {', '.join(fine_tunable_models())}")
    override = (h.price.training, h.price.input, h.price.output) if h.price else None
    limit = example_token_limit(model)
    if limit is None and override is None:
        raise UsageError(f"--model {model}: not a model OpenAI fine-tunes, as far as the table of {PRICES_AS_OF} knows",
                         f"use one of {', '.join(fine_tunable_models())} (with its snapshot date, e.g. "
                         "gpt-4o-mini-2024-07-18); for a newer one, set hosted.price for it in tunesmith.yaml")
    train_path, hashes = guard_data(project, allow_unreviewed=bool(flags.get("allow_unreviewed")))
    examples = load_examples(train_path)
    counter = counter_for(model)
    rows, problems, tokens = [], [], []
    for ex in examples:
        row = openai_row(ex, project.system_prompt)
        n = counter.chat_tokens(row["messages"])
        if n > (limit or UNKNOWN_MODEL_LIMIT):
            problems.append(f"{train_path}:{ex.line}: {n:,} tokens, over {model}'s {limit or UNKNOWN_MODEL_LIMIT:,} per example")
        rows.append(row)
        tokens.append(n)
    if problems:
        raise DataError(f"{len(problems)} example(s) are longer than {model} trains on; nothing was uploaded",
                        "shorten or drop them (`tunesmith check` with max_length finds long ones)", details=problems[:50])
    train, valid, train_tokens = _split(rows, tokens, h.validation_fraction)
    if len(train) < MIN_EXAMPLES:
        raise DataError(f"{train_path}: {len(train)} training example(s); OpenAI needs at least {MIN_EXAMPLES}",
                        "add examples (`tunesmith generate` distils more from a teacher), or lower "
                        "hosted.validation_fraction")
    hyper = _hyperparameters(project, flags, len(train))
    epochs = hyper["n_epochs"]["value"]
    billed_epochs = epochs if isinstance(epochs, int) else epochs_for(len(train))[0]
    return HostedPlan(model=model, suffix=flags.get("suffix") or h.suffix, base_url=h.base_url,
                      api_key_env=h.api_key_env, hyperparameters=hyper, train_examples=len(train),
                      validation_examples=len(valid), train_tokens=train_tokens, billed_epochs=billed_epochs,
                      counter=counter.describe(), price=hosted_price(model, override), data_hashes=hashes,
                      train_rows=train, validation_rows=valid)


def openai_row(ex: Any, system_prompt: str | None) -> dict[str, Any]:
    """One example as OpenAI trains on it: the project's system prompt (as local training uses it), the
    turns, `weight` on assistant turns that have one; tunesmith's own keys left out."""
    turns = []
    for turn, weight in zip(to_chat(ex.messages, system_prompt), chat_weights(ex.messages, system_prompt)):
        if weight is not None and turn["role"] == "assistant":
            turn = {**turn, "weight": int(weight)}
        turns.append(turn)
    return {"messages": turns}


def _split(rows: list[dict[str, Any]], tokens: list[int], fraction: float
           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """A deterministic validation slice of train (lowest row hashes), never leaving train under the minimum."""
    n_valid = int(round(fraction * len(rows)))
    if len(rows) - n_valid < MIN_EXAMPLES:
        n_valid = 0
    order = sorted(range(len(rows)), key=lambda i: hashlib.sha256(json.dumps(rows[i], sort_keys=True).encode()).digest())
    held = set(order[:n_valid])
    train = [r for i, r in enumerate(rows) if i not in held]
    valid = [r for i, r in enumerate(rows) if i in held]
    return train, valid, sum(t for i, t in enumerate(tokens) if i not in held)


def _hyperparameters(project: Project, flags: dict[str, Any], n: int) -> dict[str, dict[str, Any]]:
    h = project.hosted
    out: dict[str, dict[str, Any]] = {}

    def choose(name: str, flag: Any, file: Any, default: Any, source: str, why: str) -> None:
        if flag is not None:
            out[name] = {"value": flag, "source": FLAG, "why": "given on the command line"}
        elif file is not None:
            out[name] = {"value": file, "source": FILE, "why": f"hosted.{name} in tunesmith.yaml"}
        else:
            out[name] = {"value": default, "source": source, "why": why}

    epochs, why = epochs_for(n)
    choose("n_epochs", flags.get("epochs"), h.n_epochs, epochs, DATA, why + " (the local plan's rule)")
    choose("batch_size", flags.get("batch_size"), h.batch_size, "auto", DEFAULT,
           "auto: OpenAI picks it from the dataset size (about 0.2 % of the examples, at most 256)")
    choose("learning_rate_multiplier", flags.get("learning_rate_multiplier"), h.learning_rate_multiplier, "auto",
           DEFAULT, "auto: OpenAI picks it from the batch size (0.05-0.2 x the pretraining rate); the guide's "
           "examples use 1.8 for small datasets")
    if isinstance(out["n_epochs"]["value"], float):
        out["n_epochs"]["value"] = int(out["n_epochs"]["value"])
    return out
