"""Constrained decoding in evaluation: the model made to answer inside the project's output contract.

`eval --constrained` adds "base + constrained" and "tuned + constrained" to the usual base vs tuned
comparison; `baseline` tries the base model constrained (optionally shown k training examples first)
before recommending fine-tuning at all. A constrained answer is decoded under a grammar mask built
from the contract (`inference.constraints.for_contract`), so it cannot break it: what is left to
measure is whether it is *right* (exact match, per-field accuracy) and how fast it is.

Only the sealed test set is answered constrained: the regression suite is about forgetting, its
prompts need not follow the contract, and its plain answers are already measured. Constrained
evaluations are stored as "<subject>+constrained", so gate, accept and compare never read them.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

from tunesmith.errors import UsageError
from tunesmith.evaluate.types import DecodeSettings, EvalItem
from tunesmith.inference.constraints import Constraint, for_contract
from tunesmith.progress import Say
from tunesmith.project import Project


CONTRACT_HINT = ("add an output contract to tunesmith.yaml: `output: {json_schema: schema.json}`, "
                 "`output: {regex: \"...\"}` or `output: {json: true}`")
ENDPOINT_HINT = ("an endpoint cannot be constrained token by token from here: serve the model with "
                 "`tunesmith serve` (or vLLM) and send response_format with each request, or drop --constrained")
#: the side-by-side table's rows, in this order (json_valid only where there is no schema to validate)
VARIANT_METRICS = ("schema_valid", "json_valid", "regex_ok", "field_accuracy", "exact_match")


def project_constraint(project: Project) -> Constraint | None:
    """The constraint that enforces the project's output contract, or None when it has none."""
    return for_contract(project.load_schema(), project.output.regex, project.output.expects_json)


def require_constraint(project: Project, where: str) -> Constraint:
    """The project's constraint; a UsageError naming `where` it was asked for when there is none."""
    constraint = project_constraint(project)
    if constraint is None:
        raise UsageError(f"{where} needs an output contract to constrain answers to, and this project has none",
                         CONTRACT_HINT)
    return constraint


def constrained_settings(settings: DecodeSettings, constraint: Constraint) -> DecodeSettings:
    # The grammar keeps every answer inside the contract: contract-aware stopping has nothing to cut.
    return dataclasses.replace(settings, constraint=constraint, contract=None)


def honours_constraint(subject: Any) -> bool:
    return bool(getattr(subject.backend, "honours_constraint", False))


def unconstrained_error(subject: Any) -> UsageError:
    """The one kind of subject tunesmith's grammar mask cannot reach: one answering through an endpoint."""
    return UsageError(f"{subject.name} cannot be evaluated constrained: it answers through an endpoint, "
                      "which decodes without tunesmith's grammar mask", ENDPOINT_HINT)


def is_grammar_error(exc: BaseException) -> bool:
    """Whether `exc` says the contract uses a schema feature the grammar engine cannot enforce."""
    try:
        from tunesmith.inference.grammar import GrammarError
    except ImportError:  # pragma: no cover - the grammar engine ships with the decoding engine
        return False
    return isinstance(exc, GrammarError)


# -- few-shot ----------------------------------------------------------------------------------


class Shot(NamedTuple):
    prompt: str
    answer: str
    line: int  # in the training split, so the message can say which examples worked


def few_shot_pairs(project: Project, k: int, test: list[EvalItem]) -> list[Shot]:
    """k single-turn (prompt, answer) pairs from the training split, the most mutually different ones
    (the same k-center pick `sample --diverse` uses: deterministic, and it covers the cases instead of
    repeating the common one). Never a test prompt: a hand-edited train file could hold one."""
    if k <= 0:
        return []
    from tunesmith.data.diversity import hashed_vectors, k_center
    from tunesmith.data.formats import iter_examples

    path = project.path(project.data.train)
    if path is None or not path.is_file():
        raise UsageError(f"few-shot examples come from the training split, and {path} does not exist",
                         "write it with `tunesmith split`, or set baseline.few_shot: 0 (--few-shot 0)")
    test_prompts = {it.prompt_text() for it in test}
    pairs = []
    for ex in iter_examples(path):
        turns = [m for m in ex.messages if m.role != "system"]
        if (ex.problems or len(turns) != 2 or turns[0].role != "user" or turns[1].role != "assistant"
                or turns[0].content in test_prompts):
            continue
        pairs.append(Shot(turns[0].content, turns[1].content, ex.line))
    if not pairs:
        raise UsageError(f"{path} has no single-turn example (one user turn, one answer) to show as a few-shot "
                         "example", "set baseline.few_shot: 0 (--few-shot 0)")
    chosen = k_center(hashed_vectors([s.prompt + "\n" + s.answer for s in pairs]), min(k, len(pairs)))
    return [pairs[i] for i in chosen]


def with_few_shot(items: list[EvalItem], pairs: list[Shot]) -> list[EvalItem]:
    """Each item's chat with the pairs as earlier user/assistant turns, right after the system prompt."""
    if not pairs:
        return items
    shots = [turn for s in pairs
             for turn in ({"role": "user", "content": s.prompt}, {"role": "assistant", "content": s.answer})]
    out = []
    for it in items:
        head = 1 if it.chat and it.chat[0]["role"] == "system" else 0
        out.append(dataclasses.replace(it, chat=it.chat[:head] + shots + it.chat[head:]))
    return out


# -- evaluating a variant ----------------------------------------------------------------------


def variant_name(subject_name: str, constrained: bool, few_shot: int) -> str:
    """Where a variant is stored: never a name gate, accept or compare read ("base", a run id)."""
    return subject_name + ("+constrained" if constrained else "") + (f"+{few_shot}shot" if few_shot else "")


def variant_label(role: str, constrained: bool, few_shot: int) -> str:
    return role + (" + constrained" if constrained else "") + (f" + {few_shot}-shot" if few_shot else "")


def evaluate_variant(project: Project, subject: Any, test: list[EvalItem], settings: DecodeSettings, *,
                     label: str, name: str, say: Say, progress: Callable[[int], None] | None = None,
                     few_shot: int = 0, threshold: float | None = None) -> dict[str, Any]:
    """`subject` answers the test set under `settings` (constrained or with few-shot turns): scored,
    stored as `name`, and summarised with its tokens/s. Regression prompts are not asked again.
    With a `threshold` (baseline's bar) it stops once the pass rate's interval clears it
    (`evaluate.sequential`); "sample" then says how many it answered, "n" counts those."""
    from tunesmith.evaluate.subject import store_eval
    from tunesmith.evaluate.sequential import evaluate_sample
    from tunesmith.evaluate.speed import SpeedMeter

    renamed = dataclasses.replace(subject, name=name)
    meter = SpeedMeter(subject.backend)
    ev, answered, sample = evaluate_sample(project, renamed, test, settings, threshold=threshold, say=say,
                                           progress=progress)
    speed = meter.result()
    store_eval(project, ev, renamed, answered, [], settings)
    finishes = collections.Counter(g.finish_reason for g in ev.test_generations)
    out = {"label": label, "subject": name, "n": len(answered), "constrained": settings.constraint is not None,
           "few_shot": few_shot, "metrics": {k: v.to_dict() for k, v in ev.aggregate.items()},
           "tokens_per_s": speed["tokens_per_s"], "speed": speed, "finish_reasons": dict(finishes), "_eval": ev}
    if threshold is not None:
        out["sample"] = sample.to_dict()
    return out


def public(variant: dict[str, Any]) -> dict[str, Any]:
    """The variant's summary without the in-memory evaluation (summaries are written as JSON)."""
    return {k: v for k, v in variant.items() if not k.startswith("_")}


# -- the side-by-side table ----------------------------------------------------------------------


def variant_columns(summary: dict[str, Any]) -> list[dict[str, Any]] | None:
    """base, base + constrained, tuned, tuned + constrained (those there are), each with its metrics and
    speed; None when the summary has no constrained (or few-shot) variant."""
    variants = summary.get("constrained")
    if not variants:
        return None
    speed = summary.get("speed") or {}
    if "base" in summary:  # a run (or endpoint) against the base model
        plain = [("base", summary["base"]["metrics"], speed.get("base")),
                 ("tuned", summary["test"]["metrics"], speed.get("tuned"))]
    else:  # the base model itself was the subject
        plain = [("base", summary["test"]["metrics"], speed.get("base"))]
    columns = []
    for role, metrics, spd in plain:
        columns.append({"label": role, "metrics": metrics, "speed": spd})
        if role in variants:
            v = variants[role]
            columns.append({"label": v["label"], "metrics": v["metrics"], "speed": v.get("speed")})
    return columns


def variants_table(summary: dict[str, Any]) -> dict[str, Any] | None:
    """{"title", "columns": [label], "rows": [{"name", "values": [estimate or None]}], "tokens_per_s": [text]}."""
    from tunesmith.evaluate.speed import speed_text

    columns = variant_columns(summary)
    if columns is None:
        return None
    present = [m for m in VARIANT_METRICS if any(m in c["metrics"] for c in columns)]
    if "schema_valid" in present and "json_valid" in present:
        present.remove("json_valid")  # valid against the schema implies valid JSON
    rows = [{"name": m, "values": [c["metrics"].get(m) for c in columns]} for m in present]
    constrained = any(v.get("constrained", True) for v in summary["constrained"].values())
    return {"title": "constrained to the output contract" if constrained else "shown few-shot examples",
            "columns": [c["label"] for c in columns], "rows": rows,
            "tokens_per_s": [speed_text(c["speed"]) for c in columns]}
