"""`tunesmith run PROJECT`: check, split, baseline, train, eval, report in one resumable command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from tunesmith.cli import app
from tunesmith.cli._errors import handle_errors
from tunesmith.cli._output import console
from tunesmith.cli._settings import setting_option


@app.command("run")
@handle_errors
def run_command(
    project: Path = typer.Argument(Path("."), help="Project directory."),
    until: Optional[str] = typer.Option(None, "--until", help="Stop after this stage."),
    start: Optional[str] = typer.Option(None, "--from", help="Start at this stage (earlier ones must have run)."),
    force: bool = typer.Option(False, "--force", help="Train even when the base model already passes the bar."),
    allow_unreviewed: bool = typer.Option(False, "--allow-unreviewed", help="Train on teacher-generated rows whose review target was not met (the run records it)."),
    time_budget: Optional[str] = setting_option("train.time_budget", "--time-budget"),
    json_out: bool = typer.Option(False, "--json", help="One JSON event per stage on stdout."),
) -> None:
    """The whole workflow: check -> split -> baseline -> train -> eval -> report. Re-run to resume."""
    from tunesmith.pipeline import run_pipeline

    out = console()

    def emit(event: dict[str, Any]) -> None:
        if json_out:
            print(json.dumps(event, default=str), flush=True)
        else:
            from tunesmith.progress import format_duration

            details = {k: v for k, v in event.items() if k not in ("event", "stage", "status", "metrics", "seconds")}
            took = f" ({format_duration(event['seconds'])})" if "seconds" in event else ""
            out.print(f"[bold]{event['stage']:9}[/] {event['status']:8} "
                      + ", ".join(f"{k}={v}" for k, v in details.items()) + took)

    from tunesmith.cli.train import time_budget_flag

    given = {"allow_unreviewed": True if allow_unreviewed else None, "time_budget": time_budget_flag(time_budget)}
    train_flags = {k: v for k, v in given.items() if v is not None} or None
    result = run_pipeline(project, until=until, start=start, force=force, emit=emit, train_flags=train_flags,
                          say=lambda m: print(m, file=sys.stderr), progress=not json_out)
    if json_out:
        print(json.dumps({"event": "done", **result.to_dict()}, default=str))
        print(result.time_line(), file=sys.stderr)
        return
    if result.summary:
        from tunesmith.cli.evaluate import print_eval
        from tunesmith.evaluate.api import EvalOutcome

        print_eval(EvalOutcome(result.run_id or "", result.summary, None, Path(result.report) if result.report else None))
    print(result.time_line(), file=sys.stderr)
    gate = result.stages.get("eval") or {}
    if result.summary and gate.get("gate") == "fail":
        out.print(f"[red]regression gate failed[/]: {', '.join(gate.get('new_failures', []))}")
        raise typer.Exit(1)
