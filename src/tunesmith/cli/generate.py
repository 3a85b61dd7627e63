"""`tunesmith generate`: training data from a stronger teacher model, for a person to review."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from tunesmith.cli import app
from tunesmith.cli._errors import handle_errors
from tunesmith.cli._output import console, print_json, stage_progress
from tunesmith.cli._settings import setting_option


@app.command()
@handle_errors
def generate(
    project: Path = typer.Option(Path("."), "--project", "-p", help="Project directory."),
    teacher_model: Optional[str] = setting_option("generate.teacher_model", "--teacher-model"),
    base_url: Optional[str] = setting_option("generate.base_url", "--base-url"),
    n: Optional[int] = setting_option("generate.n", "--n", bounded=True),
    inputs: Optional[Path] = typer.Option(None, "--inputs", help="Your own unlabelled inputs (JSONL chats or one text per line): the teacher only answers them."),
    output: Optional[Path] = setting_option("generate.output", "--output", "-o"),
    concurrency: Optional[int] = setting_option("generate.concurrency", "--concurrency", bounded=True),
    # at least a second, stricter than the field's > 0: a shorter wait only turns slow replies into retries
    timeout: Optional[float] = setting_option("generate.timeout", "--timeout", bounded=True, min=1),
    force: bool = typer.Option(False, "--force", help="Replace an output whose reviewed rows this run would not reproduce."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Distil examples from a teacher: new inputs (or --inputs), answers under the output contract."""
    from tunesmith.distill.generate import generate as run_generate
    from tunesmith.distill.generate import options_for
    from tunesmith.errors import UsageError
    from tunesmith.project import load_project

    if n is not None and inputs is not None:
        raise UsageError("--n and --inputs are exclusive: with --inputs the teacher answers every input given",
                         "drop --n, or drop --inputs to let the teacher write new inputs")
    proj = load_project(project)
    opts = options_for(proj, {"teacher_model": teacher_model, "base_url": base_url, "n": n, "inputs_file": inputs,
                              "output": output, "concurrency": concurrency, "timeout": timeout, "force": force})
    with stage_progress(enabled=True) as update:
        state: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            tally = state.get("tally")
            update(stage, done, total, _tally_note(tally) if tally is not None else "")

        result = run_generate(proj, opts, progress=progress, on_start=lambda tally: state.__setitem__("tally", tally))
    if json_out:
        print_json(result.to_dict())
        return
    _print_result(result)


def _tally_note(tally: Any) -> str:
    cost = tally.cost
    money = f", ${cost:.4f}" if cost is not None else ""
    paid = tally.sent
    return f"{paid.replies} sent, {tally.cached.replies} cached, {paid.prompt_tokens + paid.completion_tokens:,} tokens{money}"


def _print_result(result: Any) -> None:
    out = console()
    u = result.tally.to_dict()
    ins = result.inputs
    dropped = {k: v for k, v in ins.items() if k.startswith("duplicate_of_") and v}
    out.print(f"wrote {result.rows} example(s) to {result.output} (generation {result.generation}, review status: unreviewed)",
              markup=False)
    out.print(f"inputs: {ins['kept']} kept from {ins['source']}"
              + (" (" + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in dropped.items()) + " dropped)" if dropped else ""),
              markup=False)
    a = result.answers
    out.print(f"answers: {a['ok']} met the contract, {a['dropped']} dropped (reasons in {result.log}); "
              f"{a['retried_for_contract']} retried for the contract, {a['truncated']} cut off, {a['empty']} empty",
              markup=False)
    cost = "unknown (no price for this model: set generate.price in tunesmith.yaml)" if u["cost_usd"] is None else (
        f"${u['cost_usd']:.4f} ({u['price']['source']})")
    out.print(f"requests: {u['requests_sent']} sent, {u['replies_from_cache']} answered from the cache; tokens: "
              f"{u['prompt_tokens']:,} in, {u['completion_tokens']:,} out; cost: {cost}", markup=False)
    if u["problems"]:
        out.print("teacher problems: " + ", ".join(f"{k} x{v}" for k, v in sorted(u["problems"].items())), markup=False)
    if result.kept_reviews:
        out.print(f"kept {result.kept_reviews} review decision(s) of the file this run replaced", markup=False)
    for w in result.warnings:
        out.print(f"warning: {w}", markup=False)
    out.print(f"next: read the most diverse ones first: tunesmith review {result.output}", markup=False)
