"""How many tokens an answer may take when the project does not say (eval.max_new_tokens unset).

A fixed 256 lets a base model that never stops ramble for 256 tokens on every prompt, which made the
baseline the slowest stage of a CPU run. The training answers show how long a right answer is, so the
budget is the longest of them with a margin: a correct answer always fits, a rambling one is cut early
(and still counted as "did not stop").
"""

from __future__ import annotations

import math
from collections.abc import Callable

from tunesmith.project import Project

FALLBACK = 256
MARGIN_FACTOR = 1.25
MARGIN_TOKENS = 16
FLOOR, CEILING = 32, 4096


def answer_token_budget(project: Project, lengths: Callable[[list[str]], list[int]] | None = None) -> tuple[int, str]:
    """(max_new_tokens, why) for this project. `lengths` counts tokens the way the model that answers
    does (a hosted model's tokenizer); default: the project's base model's tokenizer."""
    if project.eval.max_new_tokens is not None:
        return project.eval.max_new_tokens, "eval.max_new_tokens in tunesmith.yaml"
    train = project.path(project.data.train)
    if train is None or not train.exists():
        return FALLBACK, f"default {FALLBACK} (no training file to measure answers on)"
    from tunesmith.data.formats import iter_examples

    answers = [m.content for ex in iter_examples(train) if not ex.problems
               for m in ex.messages if m.role == "assistant" and m.content]
    if not answers:
        return FALLBACK, f"default {FALLBACK} (no answers in {train.name})"
    if lengths is None:
        from tunesmith.models.chat import token_lengths
        from tunesmith.models.resolve import load_tokenizer

        tokenizer = load_tokenizer(project.base_model)
        lengths = lambda texts: token_lengths(tokenizer, texts)  # noqa: E731
    longest = max(lengths(answers))
    budget = min(CEILING, max(FLOOR, math.ceil(longest * MARGIN_FACTOR) + MARGIN_TOKENS))
    return budget, f"1.25 x the longest training answer ({longest} tokens) + {MARGIN_TOKENS}"
