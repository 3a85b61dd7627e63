"""The project's LLM judge applied to an evaluation: rubric scores per subject, pairwise base vs tuned."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunesmith.inference.openai_client import api_key_from
from tunesmith.judge.config import JudgeConfig
from tunesmith.judge.results import PairInput, RubricInput, RubricResult
from tunesmith.judge.runner import judge_pairwise, judge_rubric
from tunesmith.project import Project
from tunesmith.progress import Say

if TYPE_CHECKING:
    from tunesmith.evaluate.types import EvalItem

#: Beside the teacher's teacher-cache.sqlite: the same kind of file (the shared request cache).
CACHE_FILE = "judge-cache.sqlite"


def judge_config(project: Project, *, allow_self: bool) -> JudgeConfig:
    j = project.eval.judge
    return JudgeConfig(base_url=j.base_url, model=j.model, api_key=api_key_from(j.api_key_env),
                       concurrency=j.concurrency, allow_self_judging=allow_self,
                       cache_path=project.root / ".tunesmith" / CACHE_FILE)


def _rubric_summary(result: RubricResult) -> dict[str, Any]:
    from tunesmith.evaluate.stats import bootstrap_ci

    out: dict[str, Any] = {"n": len(result.scores), "failures": [f.__dict__ for f in result.failures]}
    for crit in ("correctness", "format", "completeness", "overall"):
        out[crit] = bootstrap_ci([float(getattr(s, crit)) for s in result.scores]).to_dict()
    return out


def run_judge(project: Project, subject: Any, tuned: Any, base: Any | None, items: list[EvalItem], *,
              allow_self: bool, say: Say) -> dict[str, Any]:
    cfg = judge_config(project, allow_self=allow_self)
    subjects = list(subject.model_names) + [project.base_model]
    say(f"judge {cfg.model}: scoring {len(items)} answers" + (" and comparing with the base model" if base else ""))
    summary: dict[str, Any] = {"model": cfg.model}
    tuned_inputs = [RubricInput(it.id, it.prompt_text(), it.expected, g.text)
                    for it, g in zip(items, tuned.test_generations) if g.finish_reason != "error"]
    summary["rubric"] = {"tuned": _rubric_summary(judge_rubric(tuned_inputs, cfg, subject_models=subjects))}
    if base is not None:
        base_inputs = [RubricInput(it.id, it.prompt_text(), it.expected, g.text)
                       for it, g in zip(items, base.test_generations) if g.finish_reason != "error"]
        summary["rubric"]["base"] = _rubric_summary(judge_rubric(base_inputs, cfg, subject_models=subjects))
        if project.eval.judge.pairwise:
            pairs = [PairInput(it.id, it.prompt_text(), it.expected, gb.text, gt.text)
                     for it, gb, gt in zip(items, base.test_generations, tuned.test_generations)
                     if gb.finish_reason != "error" and gt.finish_reason != "error"]
            pw = judge_pairwise(pairs, cfg, subject_models=subjects)
            summary["pairwise"] = {"wins_base": pw.wins_a, "wins_tuned": pw.wins_b, "ties": pw.ties,
                                   "position_consistency_rate": pw.position_consistency_rate,
                                   "failures": len(pw.failures), "judged": pw.judged}
    return summary
