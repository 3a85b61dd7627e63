"""`baseline`'s second question: would prompting do, without touching the weights?

The guide says to try prompting before fine-tuning. After the plain base model, `baseline` tries it
once more the way a prompt engineer would: constrained to the output contract (when the project has
one and `baseline.constrained` is on) and shown k training examples first (`baseline.few_shot: k`).
When that variant already passes the bar, fine-tuning is not recommended, with the numbers. The
regression suite is not asked again (it is about forgetting, and nothing was trained): the plain
base's regression rate stands for both. Unless `--full`, the variant stops like the plain base once
its pass rate's interval clears the bar (`evaluate.sequential`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.evaluate.types import DecodeSettings, EvalItem
from tunesmith.progress import Say
from tunesmith.project import Project


def prompting_variant(project: Project, subject: Any, test: list[EvalItem], settings: DecodeSettings, *,
                      constrained: bool | None, few_shot: int | None, say: Say, warnings: list[str],
                      progress: Callable[[int], None] | None = None,
                      threshold: float | None = None) -> dict[str, Any] | None:
    """The base model constrained and/or few-shot on the test set (a variant summary), or None when
    neither applies. `constrained` / `few_shot`: the command line's, None for the project's setting.
    `threshold`: stop once the pass rate's interval clears this bar (None: answer the whole test set)."""
    from tunesmith.evaluate import constrained as C

    k = project.baseline.few_shot if few_shot is None else few_shot
    constraint = None
    if constrained:  # asked for on the command line: no contract or no grammar is an error
        constraint = C.require_constraint(project, "--constrained")
        if not C.honours_constraint(subject):
            raise C.unconstrained_error(subject)
    elif constrained is None and project.baseline.constrained:  # the default: only where it can be done
        constraint = C.project_constraint(project)
        if constraint is not None and not C.honours_constraint(subject):
            _warn(say, warnings, f"baseline.constrained: skipped, {subject.name} answers through an endpoint")
            constraint = None
    if constraint is None and k <= 0:
        return None
    pairs = C.few_shot_pairs(project, k, test)
    items = C.with_few_shot(test, pairs)
    while True:
        run_settings = C.constrained_settings(settings, constraint) if constraint is not None else settings
        try:
            variant = C.evaluate_variant(
                project, subject, items, run_settings, say=say, progress=progress, few_shot=len(pairs),
                threshold=threshold,
                label=C.variant_label("base", constraint is not None, len(pairs)),
                name=C.variant_name(subject.name, constraint is not None, len(pairs)))
            variant["few_shot_lines"] = [s.line for s in pairs]
            return variant
        except TunesmithError as exc:
            if constraint is None or constrained or not C.is_grammar_error(exc):
                raise
            _warn(say, warnings, f"baseline.constrained: skipped, the output contract cannot be enforced: {exc}")
            if not pairs:
                return None
            constraint = None  # the few-shot examples are still worth measuring


def _warn(say: Say, warnings: list[str], message: str) -> None:
    warnings.append(message)
    say(f"warning: {message}")


def recommendation(rate: float | None, reg_rate: float | None, threshold: float,
                   variant: dict[str, Any] | None, sample: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune or not, and why: the plain base first, then the prompted variant. `sample`: what the
    plain base answered (`Sample.to_dict()`; the variant's is its "sample"), when it may have stopped
    early: the message then says on how many prompts, and the result carries evaluated / of / stopped.

    The rates are the point estimates on what was answered. A sample that stopped early stopped
    because its interval lay entirely on one side of the bar, and then so does its point estimate:
    the same rule decides whether it stopped or not."""
    from tunesmith.evaluate.api import base_passes
    from tunesmith.evaluate.sequential import of_test_set

    v_rate = (variant["metrics"].get("exact_match") or {}).get("mean") if variant else None
    plain = base_passes(rate, reg_rate, threshold)
    prompted = not plain and variant is not None and base_passes(v_rate, reg_rate, threshold)
    shown = 0 if rate is None else rate
    if plain:
        message = (f"the base model already answers {shown:.0%} of {of_test_set(sample)} correctly "
                   f"(>= {threshold:.0%}): improve the prompt or the pipeline instead of fine-tuning")
    elif prompted:
        assert variant is not None and v_rate is not None
        message = (f"the base model {_how(variant)} already answers {v_rate:.0%} of "
                   f"{of_test_set(variant.get('sample'))} correctly (>= {threshold:.0%}; {shown:.0%} without): "
                   f"{_advice(variant)}")
    else:
        also = "" if variant is None else f"; {variant['label']}: {0 if v_rate is None else v_rate:.0%}"
        message = (f"the base model answers {shown:.0%} of {of_test_set(sample)} correctly "
                   f"(< {threshold:.0%}{also}): fine-tuning is worth trying")
    out: dict[str, Any] = {
        "fine_tune": not (plain or prompted), "threshold": threshold, "base_pass_rate": rate,
        "base_regression_rate": reg_rate, "constrained_pass_rate": v_rate,
        "constrained": bool(variant and variant["constrained"]), "few_shot": variant["few_shot"] if variant else 0,
        "variant": variant["label"] if variant else None, "message": message}
    if sample is not None:
        out.update(evaluated=sample["evaluated"], of=sample["of"], stopped=sample["stopped"])
    return out


def _how(variant: dict[str, Any]) -> str:
    k = variant["few_shot"]
    shots = f"{k} few-shot example{'s' if k != 1 else ''}"
    if variant["constrained"]:
        return "constrained to the output contract" + (f" (with {shots})" if k else "")
    return f"shown {shots} from the training split"


def _advice(variant: dict[str, Any]) -> str:
    lines = variant.get("few_shot_lines") or []
    which = f" (lines {', '.join(map(str, lines))} of the training split)" if lines else ""
    if variant["constrained"]:
        return ("use constrained decoding (response_format in `tunesmith serve`) and the prompt"
                + (f" with those examples{which}" if variant["few_shot"] else "") + " instead of fine-tuning")
    return f"put those examples{which} in the prompt instead of fine-tuning"
