"""Data commands: check, split, fix, convert, sample."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Optional

import typer

from tunesmith.cli import app
from tunesmith.cli._errors import handle_errors
from tunesmith.cli._output import byte_progress, console, format_lines, print_json
from tunesmith.cli._settings import choices, setting_option
from tunesmith.errors import UsageError

PROJECT_OPT = typer.Option(None, "--project", "-p", help="Project directory (default: found next to FILE).")
JSON_OPT = typer.Option(False, "--json", help="Print the result as JSON (for scripts and CI).")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def _report_stream(output: Path | None, json_out: bool):
    """Where a command's own report goes: stderr when its data goes to stdout (`-o -`), so a pipe gets only the data."""
    from tunesmith.io import writes_to_stdout

    if output is None or not writes_to_stdout(output):
        return sys.stdout
    if json_out:
        raise UsageError(f"--json and -o {output} both want stdout", "write the data to a file with -o FILE, or leave out --json")
    return sys.stderr


def _project_for(file: Path | None, project_dir: Path | None, overrides: dict | None = None):
    """The project named by --project, else the one next to FILE (or in the current directory)."""
    from tunesmith.project import find_project_dir, load_project

    if project_dir is not None:
        return load_project(project_dir, overrides)
    found = find_project_dir(file if file is not None else Path.cwd())
    return load_project(found, overrides) if found is not None else None


def _context(file: Path, project_dir: Path | None, *, schema=None, regex=None, model=None,
             max_length=None, task_kind=None, tokens=True, readable: Path | None = None):
    """`readable` is FILE as open_checked returned it (a stream is read once, into a temporary copy)."""
    from tunesmith.data.checks.setup import check_context
    from tunesmith.data.reader import open_checked

    readable = readable or open_checked(file)
    project = _project_for(file, project_dir)
    return project, check_context(readable, project, schema=schema, regex=regex, model=model,
                                  max_length=max_length, task_kind=task_kind, tokens=tokens, say=_say)


@app.command()
@handle_errors
def check(
    file: Path = typer.Argument(..., help="JSONL file to check (any of the four formats)."),
    project: Optional[Path] = PROJECT_OPT,
    schema: Optional[Path] = typer.Option(None, "--schema", help="JSON Schema every output must meet (overrides the project)."),
    regex: Optional[str] = typer.Option(None, "--regex", help="Regex every output must match in full."),
    model: Optional[str] = typer.Option(None, "--model", help="Model whose tokenizer and chat template measure lengths."),
    max_length: Optional[int] = setting_option("max_length", "--max-length", bounded=True),
    task_kind: Optional[str] = setting_option("task_kind", "--task-kind"),
    no_tokens: bool = typer.Option(False, "--no-tokens", help="Skip token statistics (no model needed)."),
    base: bool = typer.Option(False, "--base", help="Also list examples the base model already answers correctly."),
    json_out: bool = JSON_OPT,
) -> None:
    """Validate a dataset: structure, duplicates, contradictions, output contract, prompts, size, leaks."""
    from tunesmith.data.checks import run_check
    from tunesmith.data.reader import open_checked

    readable = open_checked(file)
    if task_kind is not None and task_kind not in (kinds := choices("task_kind")):
        raise UsageError(f"--task-kind {task_kind!r} is not a task kind", f"use {', '.join(kinds[:-1])} or {kinds[-1]}")
    proj, ctx = _context(file, project, schema=schema, regex=regex, model=model, max_length=max_length,
                         task_kind=task_kind, tokens=not no_tokens, readable=readable)
    with byte_progress(f"checking {file.name}", readable.stat().st_size, enabled=not json_out) as progress:
        report = run_check(ctx, progress)
    if base:
        _add_base_findings(report, readable, proj)
    if json_out:
        print_json(report.to_dict())
    else:
        _print_report(report, proj)
    if report.errors:
        raise typer.Exit(1)


def _add_base_findings(report, file: Path, project) -> None:
    from tunesmith.data.checks.base import finding
    from tunesmith.evaluate.api import base_correct_lines

    if project is None:
        raise UsageError("--base needs a project (its base model, system prompt and chat template)",
                         "pass --project DIR")
    lines, total = base_correct_lines(project.root, file, say=_say)
    report.stats["base_correct"] = {"lines": len(lines), "of": total}
    if lines:
        report.findings.append(finding(
            "base_correct", lines,
            f"the base model already answers {len(lines)} of {total} examples exactly ({len(lines) / total:.0%})"))


def _print_report(report, project) -> None:
    from rich.markup import escape

    # messages quote the user's data and paths: "[INST]" or "[bold]" in them is text, not markup
    out = console()
    stats = report.stats
    where = f" (project {escape(str(project.root))})" if project is not None else ""
    out.print(f"[bold]{escape(str(report.file))}[/]: {report.examples} examples, "
              f"{stats.get('valid_examples', 0)} well-formed{where}")
    colors = {"error": "red", "warning": "yellow", "info": "cyan"}
    for f in report.findings:
        lines = format_lines(f.lines)
        out.print(f"[{colors[f.severity]}]{f.severity:7}[/] [bold]{f.check}[/] {escape(f.message)}"
                  + (f" ({lines})" if lines else ""))
        if f.hint:
            out.print(f"        hint: {f.hint}", style="dim", markup=False)
    if stats.get("formats"):
        out.print("formats: " + ", ".join(f"{k} {v}" for k, v in stats["formats"].items()))
    if "tokens" in stats:
        t = stats["tokens"]
        out.print(f"tokens per example: min {t['min']}, p50 {t['p50']}, p90 {t['p90']}, p99 {t['p99']}, max {t['max']}; "
                  f"{t['per_epoch']:,} tokens per epoch")
    for sp in stats.get("system_prompts", [])[:3]:
        text = sp["prompt"] if len(sp["prompt"]) <= 80 else sp["prompt"][:79] + "…"
        out.print(f"system prompt x{sp['count']}: {text!r}", markup=False)
    if "size_verdict" in stats:
        out.print(f"size: {stats['size_verdict']['message']}", markup=False)
    n_err = len(report.errors)
    n_warn = sum(f.severity == "warning" for f in report.findings)
    verdict = "[red]not ready to train[/]" if n_err else "[green]no errors[/]"
    out.print(f"{n_err} error(s), {n_warn} warning(s): {verdict}")


@app.command()
@handle_errors
def split(
    file: Optional[Path] = typer.Argument(None, help="All examples (default: the project's data.source)."),
    project: Optional[Path] = PROJECT_OPT,
    test_fraction: Optional[float] = typer.Option(None, "--test-fraction", help="Share sealed for testing, 0.05-0.5 (default 0.15)."),
    train: Optional[Path] = typer.Option(None, "--train", help="Where to write the training split."),
    test: Optional[Path] = typer.Option(None, "--test", help="Where to write the sealed test split."),
    verify: bool = typer.Option(False, "--verify", help="Only verify the sealed test set against its seal."),
    reseal: bool = typer.Option(False, "--reseal", help="Seal a new test set even if rows of the old one move into train."),
    json_out: bool = JSON_OPT,
) -> None:
    """Split once, before curation, and seal the test set (SHA-256 of the file and of every row)."""
    from tunesmith.data.split import check_test_fraction, split_file, verify_seal

    if test_fraction is not None and not verify:
        check_test_fraction(test_fraction, "--test-fraction")  # before a build command runs for nothing
    proj = _project_for(file, project)
    if file is None and proj is not None and not verify:
        from tunesmith.project import build_data

        if build_data(proj):
            _say(f"built {proj.path(proj.data.source)} with `{proj.build}`")
    source = file or (proj.path(proj.data.source) if proj else None)
    if source is None and not (verify and test):
        raise UsageError("no input file and no project", "pass FILE or --project DIR (with data.source in tunesmith.yaml)")
    test_path = test or (proj.path(proj.data.test) if proj else source.with_name("test.jsonl"))
    if verify:
        report = verify_seal(test_path)
        if json_out:
            print_json(report.to_dict())
        elif report.ok:
            print(f"{test_path}: seal intact ({report.rows} rows)")
        else:
            print(f"{test_path}: SEAL BROKEN: {_seal_differences(report)}")
        if not report.ok:
            raise typer.Exit(1)
        return
    from tunesmith.data.reader import is_stream, open_checked
    from tunesmith.project_lock import project_lock

    if is_stream(source) and not (proj or (train and test)):
        raise UsageError(f"split reads {source} as a stream: there is no folder beside it to write train and test into",
                         "pass --train FILE and --test FILE (or --project DIR)")
    source = open_checked(source)  # a stream is read once, into a temporary copy
    train_path = train or (proj.path(proj.data.train) if proj else source.with_name("train.jsonl"))
    fraction = test_fraction if test_fraction is not None else (proj.data.test_fraction if proj else 0.15)
    threshold = proj.checks.near_duplicate_threshold if proj else 0.8
    # a project's split is its state: not while a `run` or `train` of it is going
    with project_lock(proj.root, "tunesmith split") if proj else contextlib.nullcontext():
        result = split_file(source, train_path, test_path, test_fraction=fraction, near_threshold=threshold,
                            reseal=reseal)
    if json_out:
        print_json(result.to_dict())
        return
    print(f"{result.train_rows} train rows -> {result.train}")
    print(f"{result.test_rows} test rows -> {result.test} (sealed in {result.seal}; do not look at them)")
    if result.unparsed_rows:
        print(f"{result.unparsed_rows} malformed row(s) went to train, where `tunesmith check` reports them")
    for warning in result.warnings:
        print(f"warning: {warning}")


def _seal_differences(report) -> str:
    """What a broken seal's test file differs in, by line number (never by content: the set is sealed)."""
    copies = set(report.duplicated)
    new = [ln for ln in report.added if ln not in copies]
    parts = []
    if report.changed:
        parts.append(f"changed {format_lines(report.changed)}")
    if new:
        parts.append(f"added {format_lines(new)}")
    if report.duplicated:
        parts.append(f"extra copies of sealed rows at {format_lines(report.duplicated)}")
    if report.missing:
        parts.append(f"missing {format_lines(report.missing)} of the sealed file ({report.removed} row(s))")
    if report.moved:
        parts.append(f"rows out of their sealed order at {format_lines(report.moved)}")
    return "; ".join(parts)


@app.command()
@handle_errors
def fix(
    file: Path = typer.Argument(..., help="JSONL file to clean."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the cleaned file (never the input; - for stdout)."),
    project: Optional[Path] = PROJECT_OPT,
    schema: Optional[Path] = typer.Option(None, "--schema", help="JSON Schema every output must meet."),
    json_out: bool = JSON_OPT,
) -> None:
    """Drop errors and duplicates (keeping the first of each cluster); log every dropped line and why."""
    from tunesmith.data.fix import fix_file
    from tunesmith.io import writes_over

    report_to = _report_stream(output, json_out)
    _, ctx = _context(file, project, schema=schema, tokens=False)
    if writes_over(output, file):
        raise UsageError(f"fix never writes over its input ({file})", "pass another path with -o, e.g. data.fixed.jsonl")
    result = fix_file(ctx, output)
    if json_out:
        print_json(result.to_dict())
    else:
        why = (f"why: {result.log}" if result.log else
               "no log of the dropped lines: -o is not a file; `tunesmith check` lists them")
        print(f"kept {result.kept}, dropped {result.dropped} -> {result.output} ({why})", file=report_to)


@app.command()
@handle_errors
def convert(
    file: str = typer.Argument(..., help="Input: JSONL in any supported format, a JSON array, .parquet, .csv, "
                                          ".tsv, or hf:ORG/NAME[:CONFIG] (a Hugging Face dataset)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output JSONL (- for stdout)."),
    to: str = typer.Option("messages", "--to", help="messages | instruction | sharegpt | prompt_completion."),
    column_map: Optional[str] = typer.Option(
        None, "--map", help="Format fields from your columns, e.g. instruction=question,output=answer[,input=..,system=..]; "
                            "prompt=..,completion=..; or user=..,assistant=..[,system=..] for chat."),
    split: str = typer.Option("train", "--split", help="The split of an hf: dataset."),
    json_out: bool = JSON_OPT,
) -> None:
    """Convert between formats, or from parquet, CSV or a Hub dataset; name the lines (rows) it cannot."""
    from tunesmith.data.convert import convert_file

    report_to = _report_stream(output, json_out)
    result = convert_file(file, output, to, column_map=column_map, split=split)
    if json_out:
        print_json(result.to_dict())
    else:
        print(f"wrote {result.written} example(s) as {to} -> {result.output}", file=report_to)
        for line, why in result.failed[:50]:
            print(f"  {result.unit} {line}: not converted: {why}", file=sys.stderr)
        if len(result.failed) > 50:
            print(f"  ... and {len(result.failed) - 50} more", file=sys.stderr)
    if result.failed:
        raise typer.Exit(1)


@app.command()
@handle_errors
def sample(
    file: Path = typer.Argument(..., help="JSONL file to sample from (never the sealed test set)."),
    diverse: Optional[int] = typer.Option(None, "--diverse", help="How many (default: max(50, 10%))."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the chosen examples here (- for stdout)."),
    project: Optional[Path] = PROJECT_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Pick the most diverse examples for human review (k-center greedy over hashed n-grams)."""
    from tunesmith.data.sample import sample_diverse

    from tunesmith.data.reader import open_checked

    report_to = _report_stream(output, json_out)
    readable = open_checked(file)
    proj = _project_for(file, project)
    if proj is not None:
        test = proj.path(proj.data.test)
        if test is not None and test.exists() and test.resolve() == readable.resolve():
            raise UsageError(f"{file} is the sealed test set", "sample the training data; the test set is not for looking at")
    result = sample_diverse(readable, diverse, output)
    if json_out:
        print_json(result.to_dict())
    else:
        where = f" -> {result.output}" if result.output else ""
        print(f"{len(result.lines)} most diverse of {result.candidates} examples{where}", file=report_to)
        print(format_lines(result.lines, limit=len(result.lines)), file=report_to)


@app.command()
@handle_errors
def build(
    project: Path = typer.Argument(Path("."), help="Project directory."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if data.source exists."),
    json_out: bool = JSON_OPT,
) -> None:
    """Run the project's `build:` command to make its data (when missing, or with --force)."""
    from tunesmith.project import build_data, load_project

    proj = load_project(project)
    ran = build_data(proj, force=force)
    source = proj.path(proj.data.source)
    if json_out:
        print_json({"built": ran, "source": str(source)})
    else:
        print(f"{'built' if ran else 'already built'}: {source}")
