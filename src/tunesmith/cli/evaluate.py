"""Evaluation commands: eval, baseline, compare, accept, spotcheck."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from tunesmith.cli import app
from tunesmith.cli._errors import handle_errors
from tunesmith.cli._output import console, generation_progress, print_json
from tunesmith.cli._settings import setting_option

PROJECT = typer.Option(Path("."), "--project", "-p", help="Project directory.")
JSON_OPT = typer.Option(False, "--json", help="Print the result as JSON.")
ENGINE_OPT = typer.Option("transformers", "--engine", help="Who answers: transformers (the checkpoint) or llamacpp (the GGUF export, through llama-cpp-python; exported first when missing).")
QUANT_OPT = typer.Option(None, "--quant", help="int8: weight-only int8 on the transformers engine (lossy, faster on a CPU; a run's adapter is merged first). With --engine llamacpp: the export to evaluate, f16 (default, exact), bf16, f32, q8_0, q5_0, q4_0; q4_1: the builtin model's own file (base only).")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def _fmt(est: dict[str, Any] | None) -> str:
    if not est or est.get("n", 0) == 0:
        return "-"
    return f"{est['mean']:.3f} [{est['lo']:.3f}, {est['hi']:.3f}] (n={est['n']})"


def _print_judge(out: Any, judge: dict[str, Any]) -> None:
    """Rubric scores (1-5) per criterion, base and tuned, with intervals; then the pairwise tally."""
    from rich.table import Table

    rubric = judge.get("rubric") or {}
    tuned, base = rubric.get("tuned") or {}, rubric.get("base") or {}
    table = Table(title=f"LLM judge {judge.get('model', '')}: rubric scores 1-5 (n={tuned.get('n', 0)})")
    for col in ("criterion", "base", "tuned"):
        table.add_column(col)
    for crit in ("correctness", "format", "completeness", "overall"):
        if crit in tuned:
            table.add_row(crit, _fmt(base.get(crit)), _fmt(tuned.get(crit)))
    out.print(table)
    failed = len(tuned.get("failures") or [])
    if failed:
        out.print(f"judge: {failed} answer(s) could not be scored (see the report)")
    pw = judge.get("pairwise")
    if pw:
        out.print(f"judge, side by side in both orders ({pw['judged']} judged): tuned better {pw['wins_tuned']}, "
                  f"base better {pw['wins_base']}, ties {pw['ties']}; the same verdict in both orders "
                  f"{pw['position_consistency_rate']:.0%} of the time")


def _pct(est: dict[str, Any] | None) -> str:
    if not est or est.get("n", 0) == 0:
        return "-"
    return f"{est['mean']:.0%} [{est['lo']:.0%}, {est['hi']:.0%}]"


def _print_variants(out: Any, summary: dict[str, Any]) -> None:
    """base, base + constrained, tuned, tuned + constrained side by side (mean [95 % interval])."""
    from rich.table import Table

    from tunesmith.evaluate.constrained import variants_table

    table_data = variants_table(summary)
    if table_data is None:
        return
    table = Table(title=f"{table_data['title']} (test set, n={summary['test']['n']})")
    table.add_column("metric")
    for label in table_data["columns"]:
        table.add_column(label)
    for row in table_data["rows"]:
        table.add_row(row["name"], *(_pct(v) for v in row["values"]))
    table.add_row("tokens/s", *table_data["tokens_per_s"])
    out.print(table)


def engine_line(summary: dict[str, Any]) -> str | None:
    """"answered by: tuned llama.cpp, f16 (model-f16.gguf); base ...", or None for the default engine at
    full precision. The report's wording (`engine_text`), so terminal and page say the same."""
    from tunesmith.evaluate.report.format import engine_text

    engines = summary.get("engine") or {}
    if all(e.get("engine", "transformers") == "transformers" and not e.get("quant") for e in engines.values()):
        return None
    return "answered by: " + "; ".join(f"{role} {engine_text(e)}" for role, e in engines.items())


def print_eval(outcome) -> None:
    from rich.table import Table

    out = console()
    s = outcome.summary
    if (line := engine_line(s)) is not None:
        out.print(line, markup=False, highlight=False)
    table = Table(title=f"{outcome.subject} on the sealed test set (n={s['test']['n']}): base vs tuned, paired")
    for col in ("metric", "base", "tuned", "tuned - base", "p", "verdict"):
        table.add_column(col)
    base = (s.get("base") or {}).get("metrics", {})
    comp = s.get("comparison", {})
    for name, est in s["test"]["metrics"].items():
        c = comp.get(name, {})
        p = c.get("p_value")
        table.add_row(name, _fmt(base.get(name)), _fmt(est), _fmt(c.get("diff")),
                      "-" if p is None else f"{p:.3g}", c.get("verdict", "-"))
    out.print(table)
    reg = s["regression"]
    if reg["total"]:
        line = f"regression suite: {reg['passed']}/{reg['total']} pass"
        if "base" in s:
            line += f" (base {s['base']['regression']['passed']}/{s['base']['regression']['total']})"
        out.print(line)
    _print_variants(out, s)
    if s.get("judge"):
        _print_judge(out, s["judge"])
    if outcome.gate:
        g = outcome.gate
        if g["status"] == "fail":
            out.print(f"[red]gate FAILED[/]: {len(g['new_failures'])} regression prompt(s) that {g['baseline']} passed now fail "
                      f"(allowed {g.get('threshold', 0)}): {', '.join(g['new_failures'])}")
        else:
            out.print(f"[green]gate passed[/] against {g['baseline'] or 'nothing yet'}" + (f" ({g['note']})" if g.get("note") else ""))
    for w in outcome.warnings:
        out.print(f"[yellow]warning:[/] {w}")
    if outcome.report:
        out.print(f"report: {outcome.report}")


@app.command("eval")
@handle_errors
def eval_command(
    run: str = typer.Argument("latest", help="A run id (or prefix, or 'latest'), 'base', a merged checkpoint dir, or with --endpoint a model name."),
    project: Path = PROJECT,
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="OpenAI-compatible base URL; RUN is then the model name."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable with the endpoint's key."),
    gate_flag: bool = typer.Option(False, "--gate", help="Exit 1 when a regression prompt the accepted run passed now fails."),
    no_judge: bool = typer.Option(False, "--no-judge", help="Skip the LLM judge even if one is configured."),
    allow_self_judging: bool = typer.Option(False, "--allow-self-judging", help="Let a model judge itself (not advised)."),
    max_new_tokens: Optional[int] = setting_option("eval.max_new_tokens", "--max-new-tokens", bounded=True),
    batch_size: Optional[int] = setting_option("eval.batch_size", "--batch-size", bounded=True),
    no_early_stop: bool = typer.Option(False, "--no-early-stop", help="Decode every answer to its end, even once it has broken the output contract."),
    constrained: Optional[bool] = typer.Option(None, "--constrained/--no-constrained", help="Also evaluate base and tuned constrained to the output contract (default: eval.constrained)."),
    engine: str = ENGINE_OPT,
    quant: Optional[str] = QUANT_OPT,
    gguf_adapter: bool = typer.Option(False, "--gguf-adapter", help="With --engine llamacpp: answer with the base model's GGUF plus the run's LoRA as a GGUF adapter (exported first when missing) instead of the merged export."),
    json_out: bool = JSON_OPT,
) -> None:
    """Evaluate a run (base vs tuned, paired) on the sealed test set and the regression suite."""
    from tunesmith.evaluate.api import EvalOptions, evaluate
    from tunesmith.inference.openai_client import api_key_from

    opts = EvalOptions(endpoint=endpoint, api_key=api_key_from(api_key_env), batch_size=batch_size,
                       max_new_tokens=max_new_tokens, judge=not no_judge, allow_self_judging=allow_self_judging,
                       gate=gate_flag, early_stop=not no_early_stop, constrained=constrained, engine=engine,
                       quant=quant, gguf_adapter=gguf_adapter)
    with generation_progress(not json_out) as progress:
        outcome = evaluate(project, run, opts, say=_say, progress=progress)
    if json_out:
        print_json(outcome.to_dict())
    else:
        print_eval(outcome)
    if gate_flag and outcome.gate and outcome.gate["status"] == "fail":
        if not json_out:
            print(f"failing prompts: {', '.join(outcome.gate['new_failures'])}", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
@handle_errors
def baseline(
    project: Path = PROJECT,
    max_new_tokens: Optional[int] = setting_option("eval.max_new_tokens", "--max-new-tokens", bounded=True),
    no_early_stop: bool = typer.Option(False, "--no-early-stop", help="Decode every answer to its end, even once it has broken the output contract."),
    constrained: Optional[bool] = typer.Option(None, "--constrained/--no-constrained", help="Also try the base model constrained to the output contract (default: baseline.constrained)."),
    few_shot: Optional[int] = setting_option("baseline.few_shot", "--few-shot", bounded=True),
    full: Optional[bool] = typer.Option(None, "--full/--no-full", help="Answer the whole test set and regression suite instead of stopping once the pass rate's interval clears the bar (default: baseline.full)."),
    engine: str = ENGINE_OPT,
    quant: Optional[str] = QUANT_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Should you fine-tune at all? Evaluate the base model first, plain and prompted (constrained, few-shot)."""
    from tunesmith.evaluate.api import EvalOptions, baseline as run_baseline
    from tunesmith.evaluate.sequential import sample_line

    opts = EvalOptions(max_new_tokens=max_new_tokens, report=False, early_stop=not no_early_stop,
                       constrained=constrained, few_shot=few_shot, full=full, engine=engine, quant=quant)
    with generation_progress(not json_out) as progress:
        outcome = run_baseline(project, opts, say=_say, progress=progress)
    if json_out:
        print_json(outcome.to_dict())
        return
    print_eval(outcome)
    line = sample_line(outcome.summary)
    if line:
        console().print(line, markup=False, highlight=False)
    rec = outcome.summary["recommendation"]
    console().print(("[green]fine-tune: yes[/] - " if rec["fine_tune"] else "[yellow]fine-tune: no[/] - ") + rec["message"])


@app.command()
@handle_errors
def accept(
    run: str = typer.Argument(..., help="Run id (or prefix, 'latest', 'base') to accept as the gate's baseline."),
    project: Path = PROJECT,
    json_out: bool = JSON_OPT,
) -> None:
    """Mark a run as the accepted baseline for the next regression gate."""
    from tunesmith.evaluate.api import accept as do_accept

    name = do_accept(project, run)
    if json_out:
        print_json({"accepted": name})
    else:
        print(f"accepted {name}: the next `tunesmith eval --gate` compares against it")


@app.command()
@handle_errors
def compare(
    run_a: str = typer.Argument(..., help="First run (or 'base')."),
    run_b: str = typer.Argument(..., help="Second run."),
    project: Path = PROJECT,
    json_out: bool = JSON_OPT,
) -> None:
    """Run vs run: per-prompt regression flips and paired test-set comparisons."""
    from rich.markup import escape

    from tunesmith.evaluate.api import compare_runs

    result = compare_runs(project, run_a, run_b)
    if json_out:
        print_json(result)
        return
    out = console()
    out.print(f"{result['a']} -> {result['b']} on {result['items']} test items")
    for w in result.get("warnings", []):
        out.print(f"[yellow]warning:[/] {escape(w)}")
    for metric, c in result["comparison"].items():
        p = c.get("p_value")
        out.print(f"  {metric}: difference {_fmt(c['diff'])}, p {'-' if p is None else f'{p:.3g}'}: {c['verdict']}")
    flips = result.get("regression_flips", [])
    if flips:
        out.print(f"regression flips ({len(flips)}):")
        for f in flips:
            arrow = "pass -> FAIL" if f["before"] and not f["after"] else "fail -> pass" if f["after"] else "changed"
            out.print(f"  {f['id']}: {arrow}")
    else:
        out.print("no regression flips")


@app.command()
@handle_errors
def spotcheck(
    run: str = typer.Argument("latest", help="The run to check against the base model."),
    project: Path = PROJECT,
    n: Optional[int] = typer.Option(None, "--n", help="How many test prompts (default 20)."),
    results: Optional[Path] = typer.Option(None, "--results", help="Unblind this answers file and apply the ship rule."),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Serve the page on 127.0.0.1 and save answers as they are made."),
    port: int = typer.Option(0, "--port", min=0, max=65535, help="Port for --serve (0 = any free port)."),
    json_out: bool = JSON_OPT,
) -> None:
    """Blinded side-by-side spot check of base and tuned outputs; then unblind with --results."""
    from tunesmith.evaluate.spotcheck.runs import build_for_run, unblind_for_run

    if results is not None:
        result = unblind_for_run(project, run, results)
        if json_out:
            print_json(result.to_dict())
        else:
            print(result.summary)
        if result.to_dict().get("verdict") == "do not ship":
            raise typer.Exit(1)
        return
    directory = build_for_run(project, run, n)
    page = directory / "spotcheck.html"
    if not serve:
        if json_out:
            print_json({"page": str(page), "key": str(directory / "key.json")})
        else:
            print(f"open {page} in a browser; answers are kept in the page and downloaded as JSON;\n"
                  f"then: tunesmith spotcheck {run} --results answers.json")
        return
    from tunesmith.evaluate.spotcheck import serve_spotcheck

    server, url = serve_spotcheck(directory, port=port)
    print(f"open {url} ; answers are saved to {directory / 'answers.json'} as you make them. Ctrl-C when done,\n"
          f"then: tunesmith spotcheck {run} --results {directory / 'answers.json'}", file=sys.stderr)
    if json_out:
        print_json({"url": url, "answers": str(directory / "answers.json")})
    try:
        import time

        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
