"""Dataset size against the guide's table, and token lengths under the base model's chat template."""

from __future__ import annotations

import numpy as np

from tunesmith.data.checks.base import CheckContext, Finding, finding
from tunesmith.data.formats import Example
from tunesmith.models.chat import chat_weights, prompt_ids, render, to_chat, token_lengths

#: The guide's table: task kind -> (minimum, comfortable range).
SIZE_TABLE: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "format": ((50, 100), (200, 500)),
    "style": ((100, 300), (500, 1000)),
    "domain": ((500, 1000), (2000, 5000)),
    "multistep": ((1000, 2000), (5000, 10000)),
}
NOT_A_DATASET = 30
TOKEN_BATCH = 512


def size_verdict(n: int, task_kind: str) -> tuple[str, str]:
    """(verdict word, sentence) for n usable examples of a task kind."""
    (lo, hi), (c_lo, c_hi) = SIZE_TABLE[task_kind]
    if n < NOT_A_DATASET:
        return "not_a_dataset", f"{n} examples: under {NOT_A_DATASET} is not a dataset; use them as few-shot examples"
    if n < lo:
        return "too_small", f"{n} examples: below the minimum of {lo}-{hi} for a {task_kind} task"
    if n < c_lo:
        return "minimum", f"{n} examples: enough for a {task_kind} task; {c_lo}-{c_hi} is comfortable"
    if n <= c_hi:
        return "comfortable", f"{n} examples: in the comfortable range ({c_lo}-{c_hi}) for a {task_kind} task"
    return "large", f"{n} examples: above the comfortable range ({c_lo}-{c_hi}); curation beats volume"


def too_few(n: int, ctx: CheckContext) -> list[Finding]:
    verdict, sentence = size_verdict(n, ctx.task_kind)
    ctx.stats["size_verdict"] = {"verdict": verdict, "message": sentence}
    if verdict == "not_a_dataset":
        return [finding("too_few_examples", [], sentence)]
    if verdict == "too_small":
        return [finding("too_few_examples", [], sentence, severity="warning",
                        hint="collect more examples (real inputs with checked answers are best); if the project's "
                             "build: command makes the data, extend it and re-run `tunesmith build --force`")]
    return []


class TokenLengths:
    """Renders each example with the project's system prompt and the model's template, in batches."""

    def __init__(self, ctx: CheckContext) -> None:
        self.tokenizer = ctx.tokenizer
        self.system_prompt = ctx.system_prompt
        self.max_length = ctx.max_length
        self._pending: list[tuple[Example, str]] = []
        self.lengths: list[int] = []
        self.lines: list[int] = []
        #: examples whose prompt alone fills max_length: training keeps the first max_length tokens,
        #: so not one answer token would be trained (and `train` refuses them)
        self.nothing_left: list[int] = []

    def observe(self, ex: Example) -> None:
        self._pending.append((ex, render(self.tokenizer, to_chat(ex.messages, self.system_prompt))))
        if len(self._pending) >= TOKEN_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            lengths = token_lengths(self.tokenizer, [t for _, t in self._pending])
            self.lengths.extend(lengths)
            self.lines.extend(ex.line for ex, _ in self._pending)
            if self.max_length is not None:
                long = [ex for (ex, _), n in zip(self._pending, lengths) if n > self.max_length]
                self.nothing_left.extend(ex.line for ex in long if self._prompt_fills_max_length(ex))
            self._pending = []

    def _prompt_fills_max_length(self, ex: Example) -> bool:
        chat, weights = to_chat(ex.messages, self.system_prompt), chat_weights(ex.messages, self.system_prompt)
        first = next((i for i, (t, w) in enumerate(zip(chat, weights)) if t["role"] == "assistant" and w != 0), None)
        if first is None:
            return False  # nothing to train on at all: `missing_assistant` says so
        assert self.max_length is not None
        return len(prompt_ids(self.tokenizer, [chat[:first]])[0]) >= self.max_length

    def finish(self, ctx: CheckContext) -> list[Finding]:
        self._flush()
        if not self.lengths:
            return []
        arr = np.asarray(self.lengths)
        ctx.stats["tokens"] = {
            "min": int(arr.min()), "mean": round(float(arr.mean()), 1), "p50": int(np.percentile(arr, 50)),
            "p90": int(np.percentile(arr, 90)), "p99": int(np.percentile(arr, 99)), "max": int(arr.max()),
            "per_epoch": int(arr.sum()),
        }
        if ctx.max_length is None:
            return []
        long_lines = [ln for ln, n in zip(self.lines, self.lengths) if n > ctx.max_length]
        if not long_lines:
            return []
        out = [finding(
            "too_long", long_lines,
            f"{len(long_lines)} example(s) are longer than max_length={ctx.max_length} tokens "
            f"(longest {int(arr.max())})",
        )]
        if self.nothing_left:
            out.append(finding(
                "too_long", self.nothing_left,
                f"{len(self.nothing_left)} example(s) have a prompt of max_length={ctx.max_length} tokens or more: "
                "truncated to max_length, not one answer token is left to train on (`train` refuses them)",
                severity="error",
                hint="shorten their prompts, drop them (`tunesmith fix`), or raise max_length in tunesmith.yaml"))
        return out
