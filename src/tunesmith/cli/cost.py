"""`tunesmith cost`: the guide's budget table for this project's real data."""

from __future__ import annotations

import sys

from pathlib import Path
from typing import Any, Optional

import typer

from tunesmith.cli import app
from tunesmith.cli._errors import handle_errors
from tunesmith.cli._output import console, print_json
from tunesmith.cli._settings import setting_option


def _price_pair(text: str | None) -> tuple[float, float] | None:
    from tunesmith.errors import UsageError

    if text is None:
        return None
    try:
        a, b = (float(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"--judge-price {text!r} is not INPUT,OUTPUT", "e.g. --judge-price 2.50,10.00 (US$ per 1M tokens)") from None
    if a < 0 or b < 0:
        raise UsageError(f"--judge-price {text!r}: prices cannot be negative", "e.g. --judge-price 2.50,10.00")
    return a, b


@app.command("cost")
@handle_errors
def cost(
    project: Path = typer.Option(Path("."), "--project", "-p", help="Project directory."),
    backend: str = typer.Option("local", "--backend", help="Training route the total counts: local or openai."),
    teacher_model: Optional[str] = setting_option("generate.teacher_model", "--teacher-model"),
    n: Optional[int] = setting_option("generate.n", "--n", bounded=True),
    labelling_only: bool = typer.Option(False, "--labelling-only", help="The teacher only answers your inputs (generate --inputs): no input-writing requests."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Judge to price (default: eval.judge.model)."),
    judge_price: Optional[str] = typer.Option(None, "--judge-price", help="INPUT,OUTPUT US$ per 1M tokens for the judge (default: the dated table)."),
    hosted_model: Optional[str] = typer.Option(None, "--hosted-model", help="Hosted base model (default: hosted.model, else gpt-4o-mini)."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU to rent: T4, L4, A10G, RTX 4090, A100, H100 (default: this machine's CUDA GPU, else RTX 4090, the guide's)."),
    gpu_dollars_per_hour: Optional[float] = typer.Option(None, "--gpu-dollars-per-hour", min=0, help="Rental price (default: the GPU table's)."),
    measure: bool = typer.Option(False, "--measure", help="Time real training steps here (loads the model: slow)."),
    no_model: bool = typer.Option(False, "--no-model", help="Do not load the base model's tokenizer (no local training tokens)."),
    iterations: int = typer.Option(3, "--iterations", min=1, max=100, help="Training runs to budget (the guide: 3)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """The budget: teacher, judge, local vs hosted training, x3 iterations, inference per 1M tokens."""
    from tunesmith.cost import CostOptions, estimate_costs
    from tunesmith.errors import UsageError

    if backend not in ("local", "openai"):
        raise UsageError(f"--backend {backend!r} is not a training route", "use local or openai")
    if measure and no_model:
        raise UsageError("--measure loads the model and --no-model forbids it", "drop one of them")
    opts = CostOptions(teacher_model=teacher_model, n=n, labelling_only=labelling_only, judge_model=judge_model,
                       judge_price=_price_pair(judge_price), hosted_model=hosted_model, backend=backend,  # type: ignore[arg-type]
                       gpu=gpu, gpu_dollars_per_hour=gpu_dollars_per_hour, measure=measure, no_model=no_model,
                       iterations=iterations)
    report = estimate_costs(project, opts, say=lambda m: print(m, file=sys.stderr, flush=True))
    if json_out:
        print_json(report.to_dict())
    else:
        print_report(report)


def print_report(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from tunesmith.cost_tables import usd_text as _usd

    out = console()
    table = Table(title="what this project costs (US$)", show_lines=True)
    for col in ("line", "inputs", "US$", "per"):
        table.add_column(col)
    for ln in report.lines:
        per = {"once": "once", "run": "per run", "1M tokens": "per 1M tokens"}[ln.per]
        name = ln.what + ("" if ln.counted or ln.per == "1M tokens" else " (not counted)")
        table.add_row(escape(name), escape(f"{ln.formula}\nprice: {ln.source}"), _usd(ln.usd), per)
    out.print(table)
    out.print(f"one run: {_usd(report.subtotal_usd)}; budget for {report.iterations} runs: {_usd(report.total_usd)}"
              + ("" if not report.missing else f" (leaves out {', '.join(report.missing)}: price unknown)"), markup=False)
    for note in report.notes:
        out.print(f"note: {note}", markup=False)
    out.print("tables: " + "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in report.tables.items()), markup=False)
