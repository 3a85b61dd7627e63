"""`tunesmith advise`: should you fine-tune at all, and how? The guide's decision tree."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer

from tunesmith.cli import app
from tunesmith.cli._errors import handle_errors
from tunesmith.cli._output import print_json
from tunesmith.cli._settings import setting_option


@app.command("advise")
@handle_errors
def advise_command(
    project: Optional[Path] = typer.Option(None, "--project", "-p", help="Project directory (default: the one around the current directory; none: advise from the flags)."),
    task: Optional[str] = typer.Option(None, "--task", help="The task sentence (instead of the project's)."),
    task_kind: Optional[str] = setting_option("task_kind", "--task-kind"),
    examples: Optional[int] = typer.Option(None, "--examples", min=0, help="How many examples you have (instead of counting the data)."),
    knowledge: bool = typer.Option(False, "--knowledge", help="The answers need facts that are not in the prompt."),
    behaviour: bool = typer.Option(False, "--behaviour", "--behavior", help="The answers follow from the prompt (format, style, reasoning)."),
    base_pass_rate: Optional[float] = typer.Option(None, "--base-pass-rate", min=0.0, max=1.0, help="The base model's pass rate, 0-1, if you measured it elsewhere."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Model to size the method for (instead of the project's)."),
    params: Optional[str] = typer.Option(None, "--params", help="The base model's size when it cannot be read offline: 135M, 8B."),
    json_out: bool = typer.Option(False, "--json", help="Print the advice as JSON."),
) -> None:
    """Should you fine-tune? Task, examples, knowledge, baseline: the answer, and the command to run next."""
    from tunesmith.advise import AdviseFlags, advise
    from tunesmith.models.size import parse_params
    from tunesmith.errors import UsageError
    from tunesmith.project import find_project_dir

    if knowledge and behaviour:
        raise UsageError("--knowledge and --behaviour contradict each other", "pass one of them")
    shown = str(project) if project is not None else None
    if project is None and (found := find_project_dir(Path.cwd())) is not None:
        project, shown = found, os.path.relpath(found) if found != Path.cwd() else "."
    flags = AdviseFlags(task=task, task_kind=task_kind, examples=examples,
                        knowledge=True if knowledge else False if behaviour else None,
                        base_pass_rate=base_pass_rate, base_model=base_model,
                        params=parse_params(params) if params is not None else None)
    advice = advise(project, flags, shown_as=shown)
    if json_out:
        print_json(advice.to_dict())
        return
    _print(advice)


def _answer(q: Any) -> str:
    if q.answer is None:
        return "?"
    if q.id == "baseline":
        return f"{q.answer:.0%}"
    if q.id == "task":
        return "given"
    return str(q.answer)


def _print(advice: Any) -> None:
    from tunesmith.data.checks.size import SIZE_TABLE  # the guide's table, as `check` uses it

    rec = advice.recommendation
    print(f"advice for {advice.project or 'no project (from the flags)'}")
    for q in advice.questions:
        print(f"  {q.id:<12} {_answer(q):<10} {q.verdict:<14} ({q.source}) {q.detail}")
        if q.id == "examples":
            kind = advice.facts.get("task_kind")
            for k, ((lo, hi), (c_lo, c_hi)) in SIZE_TABLE.items():
                mark = "  <- this task" if k == kind else ""
                print(f"  {'':<12} {k:<10} minimum {f'{lo}-{hi}':<10} comfortable {c_lo}-{c_hi}{mark}")
        if q.next and q.next != rec.next:
            print(f"  {'':<12} next: {q.next}")
    print(f"recommendation: {rec.action}" + (f" with {rec.method}" if rec.method else ""))
    for reason in rec.why:
        print(f"  - {reason}")
    print(f"next: {rec.next}")
