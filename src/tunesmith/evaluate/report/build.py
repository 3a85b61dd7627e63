"""A run's report: `ReportData` from an evaluation, written to runs/<id>/report.html."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.evaluate.report.data import Item, Judge, LossCurve, MetricRow, Regression, ReportData, Seal
from tunesmith.evaluate.report.page import write_report
from tunesmith.evaluate.types import EvalItem
from tunesmith.project import Project


def loss_curve(run_dir: Path) -> LossCurve:
    train, evals = [], []
    steps = run_dir / "steps.jsonl"
    if steps.exists():
        for line in steps.read_text(encoding="utf-8").splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == "step" and "loss" in e:
                train.append([e["step"], e["loss"]])
            elif e.get("event") == "eval" and "eval_loss" in e:
                evals.append([e["step"], e["eval_loss"]])
    return LossCurve.from_mapping({"train": train, "eval": evals})


def report_data(project: Project, subject: Any, tuned: Any, base: Any | None, test: list[EvalItem],
                regression: list[EvalItem], summary: dict[str, Any], gate: dict[str, Any] | None) -> ReportData:
    record = project.registry().get(subject.run_id)
    comp = summary.get("comparison", {})
    base_metrics = (summary.get("base") or {}).get("metrics", {})
    metrics = [MetricRow(name, base=base_metrics.get(name), tuned=est, diff=comp.get(name, {}).get("diff"),
                         p_value=comp.get(name, {}).get("p_value"), verdict=comp.get(name, {}).get("verdict"))
               for name, est in summary["test"]["metrics"].items()]
    items = []
    base_gens = base.test_generations if base is not None else [None] * len(test)
    for it, score, gen, bgen in zip(test, tuned.test_scores, tuned.test_generations, base_gens):
        failures = []
        if score.error:
            failures.append(f"generation failed: {score.error}")
        if score.exact_match is False:
            failures.append("differs from the expected output")
        if score.schema_valid is False:
            failures.append("breaks the schema")
        if gen.finish_reason == "contract":
            failures.append("cut early: it had already broken the output contract (--no-early-stop decodes it all)")
        elif not score.stopped:
            failures.append("did not stop (hit max_new_tokens)")
        items.append(Item(it.id, it.prompt_text(), it.expected, base_output=bgen.text if bgen is not None else None,
                          tuned_output=gen.text, passed=not failures, failures=failures, scores=score.to_dict()))
    for it, gen in zip(regression, tuned.regression_generations):
        res = tuned.regression[it.id]
        items.append(Item(f"regression:{it.id}", it.prompt_text(), it.expected, tuned_output=gen.text,
                          passed=res.passed, failures=res.failures + res.pending))
    judge = summary.get("judge")
    provenance = record.data.get("provenance")
    return ReportData(
        title=f"tunesmith report: {record.id}",
        run_id=record.id,
        created=record.created_at,
        task=project.task,
        base_model=record.base_model or project.base_model,
        seal=_seal(record.id, summary.get("seal")),
        engines=summary.get("engine") or None,
        training_data=_describe_provenance(provenance) if isinstance(provenance, dict) else None,
        loss_curve=loss_curve(Path(record.path)),
        metrics=metrics,
        variants=_variants(summary),
        judge=Judge.from_mapping(judge) if judge else None,
        regression=Regression.from_mapping({"passed": summary["regression"]["passed"],
                                            "total": summary["regression"]["total"],
                                            "flips": (gate or {}).get("flips", []), "gate": (gate or {}).get("status")}),
        items=items,
    )


def _seal(run_id: str, seal: dict[str, Any] | None) -> Seal | None:
    from tunesmith.evaluate.subject import seal_warning

    if seal is None:
        return None
    return Seal(seal.get("scored_on"), seal.get("trained_on"), seal_warning(run_id, seal))


def _variants(summary: dict[str, Any]) -> dict[str, Any] | None:
    from tunesmith.evaluate.constrained import variants_table

    return variants_table(summary)


def _describe_provenance(provenance: dict[str, Any]) -> str:
    from tunesmith.distill.provenance import describe

    return describe(provenance)


def write_run_report(project: Project, subject: Any, tuned: Any, base: Any | None, test: list[EvalItem],
                     regression: list[EvalItem], summary: dict[str, Any], gate: dict[str, Any] | None) -> Path:
    run_dir = Path(project.registry().get(subject.run_id).path)
    data = report_data(project, subject, tuned, base, test, regression, summary, gate)
    # "RUN@transformers-int8" -> report@transformers-int8.html: a quantised evaluation never replaces the
    # checkpoint's own report.html, which `run` and the model card point at
    variant = subject.name[len(subject.run_id):] if subject.name.startswith(subject.run_id) else ""
    return write_report(run_dir / f"report{variant}.html", data)
