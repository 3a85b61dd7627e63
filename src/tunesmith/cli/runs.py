"""`tunesmith runs list|show`: what has been trained in a project, and what each run holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from tunesmith.cli._errors import handle_errors
from tunesmith.cli._output import console, print_json

runs_app = typer.Typer(help="Runs: list a project's training runs and show what each one holds.", no_args_is_help=True)

RUNS_PROJECT_OPT = typer.Option(None, "--project", "-p", help="Project directory (default: the current directory).")
JSON_OPT = typer.Option(False, "--json", help="Print the result as JSON (for scripts and CI).")

DOCUMENTS = ("config", "plan", "data", "metrics", "summary")
STATUS_STYLES = {"created": "cyan", "running": "blue", "interrupted": "yellow", "failed": "red", "completed": "green"}


def _project(project_dir: Path | None) -> tuple[Path, Any]:
    """--project (default: the project around the current directory, else the directory) and its
    loaded tunesmith.yaml, or None when there is none or it does not load."""
    from tunesmith.errors import ProjectError, UsageError
    from tunesmith.project import PROJECT_FILE, find_project_dir, load_project

    if project_dir is None:
        project_dir = find_project_dir(Path.cwd()) or Path.cwd()
    elif not project_dir.is_dir():
        raise UsageError(f"--project {project_dir}: no such directory", "pass the directory that holds tunesmith.yaml")
    if not (project_dir / PROJECT_FILE).is_file():
        return project_dir, None
    try:
        return project_dir, load_project(project_dir)
    except ProjectError:
        return project_dir, None


def _registry(project_dir: Path | None):
    """The registry of --project.

    Honors `train.runs_dir` from tunesmith.yaml when the file loads; a broken project file still lets you
    look at runs in the default place.
    """
    from tunesmith.runs import RunRegistry, runs_root

    project_dir, project = _project(project_dir)
    return project.registry() if project is not None else RunRegistry(runs_root(project_dir))


def _seal(registry: Any, record: Any, project_dir: Path | None) -> dict[str, Any]:
    """The seal the run was trained on, the one its latest test-set evaluation was scored on, the
    project's current one, and whether its scores stand on a different test set than the current one
    (None: unknown). A run never evaluated is judged by the seal it was trained on."""
    from tunesmith.runs import seal_sha256

    project = _project(project_dir)[1]
    current = seal_sha256(project.path(project.data.test)) if project is not None else None
    scored = registry.scored_on(record.id)
    scored_on = scored.seal_sha256 if scored is not None else None
    basis = scored_on or record.test_seal_sha256
    changed = None if current is None or basis is None else basis != current
    return {"trained_on": record.test_seal_sha256, "scored_on": scored_on, "current": current, "changed": changed}


def _print_seal(out: Any, seal: dict[str, Any]) -> None:
    from tunesmith.runs import short_seal

    def line(label: str, sha: str | None, what: str) -> None:
        now = "; the current seal" if sha is not None and sha == seal["current"] else ""
        out.print(f"{label}{short_seal(sha)}" + (f" ({what}{now})" if sha else ""), markup=False)

    line("test seal:  ", seal["trained_on"], "trained on")
    if seal["scored_on"]:
        line("scored on:  ", seal["scored_on"], "latest eval")
    if seal["changed"]:
        out.print("[yellow]warning:[/] the test set changed since this run: its scores are not comparable with runs "
                  f"on the current seal (current seal {short_seal(seal['current'])})")
    elif seal["changed"] is False and seal["trained_on"] not in (None, seal["current"]):
        out.print("[yellow]note:[/] trained before the test set changed: its training data may hold rows of the "
                  "current test set")


def _when(iso: str | None) -> str:
    """An ISO timestamp as local 'YYYY-MM-DD HH:MM:SS' for people."""
    if not iso:
        return "-"
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def _duration(start: str | None, end: str | None) -> str | None:
    from datetime import datetime

    if not start or not end:
        return None
    try:
        seconds = int((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())
    except ValueError:
        return None
    h, rest = divmod(max(seconds, 0), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@runs_app.command("list")
@handle_errors
def list_runs(
    project: Optional[Path] = RUNS_PROJECT_OPT,
    limit: int = typer.Option(50, "--limit", "-n", min=0, help="Show at most this many runs, newest first (0: all)."),
    json_out: bool = JSON_OPT,
) -> None:
    """List runs, newest first: id, status, method, base model, when, headline metrics."""
    from tunesmith.runs import key_metrics

    registry = _registry(project)
    records = registry.list(limit=limit)
    if json_out:
        print_json([r.to_dict() for r in records])
        return
    out = console()
    if not records:
        out.print(f"no runs yet in {registry.root}")
        return
    from rich.markup import escape
    from rich.table import Table

    shown = [key_metrics(r.metrics) for r in records]
    metric_names = [name for name in ("eval_loss", "train_loss") if any(name in m for m in shown)]
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("method", no_wrap=True)
    table.add_column("base model", overflow="fold", min_width=12)
    table.add_column("created", no_wrap=True)
    for name in metric_names:
        table.add_column(name, justify="right", no_wrap=True)
    for r, m in zip(records, shown):
        style = STATUS_STYLES.get(r.status, "")
        table.add_row(escape(r.id), f"[{style}]{r.status}[/]" if style else escape(r.status), escape(r.method),
                      escape(r.base_model), _when(r.created_at)[:16], *(_num(m[n]) if n in m else "-" for n in metric_names))
    if not out.is_terminal:  # piped or captured: never fold a row to fit an imaginary 80 columns
        from rich.measure import Measurement

        out.width = max(out.width, Measurement.get(out, out.options.update(width=10_000), table).maximum)
    out.print(table)


def _files(run_dir: Path) -> list[dict[str, Any]]:
    if not run_dir.is_dir():
        return []
    files = []
    for p in sorted(run_dir.rglob("*")):
        if p.is_file():
            try:
                size = p.stat().st_size
            except OSError:
                size = None
            files.append({"path": p.relative_to(run_dir).as_posix(), "bytes": size})
    return files


def _documents(run_dir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    docs: dict[str, Any] = {}
    unreadable: dict[str, str] = {}
    for name in DOCUMENTS:
        path = run_dir / f"{name}.json"
        if not path.is_file():
            continue
        try:
            docs[name] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            unreadable[f"{name}.json"] = str(exc)
    return docs, unreadable


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@runs_app.command("show")
@handle_errors
def show(
    run: str = typer.Argument(..., help="Run id, a unique prefix of one, or `latest`."),
    project: Optional[Path] = RUNS_PROJECT_OPT,
    json_out: bool = JSON_OPT,
) -> None:
    """Show one run: its record, its config/plan/data/metrics/summary files, and every file it holds."""
    registry = _registry(project)
    record = registry.get(run)
    files = _files(record.path)
    docs, unreadable = _documents(record.path)
    seal = _seal(registry, record, project)
    if json_out:
        result: dict[str, Any] = {"run": record.to_dict(), "seal": seal, "files": files, "documents": docs}
        if unreadable:
            result["unreadable"] = unreadable
        print_json(result)
        return
    from rich.markup import escape

    out = console()
    style = STATUS_STYLES.get(record.status, "")
    status = f"[{style}]{record.status}[/]" if style else escape(record.status)
    out.print(f"[bold]{escape(record.id)}[/]  {status}")
    out.print(f"directory:  {escape(str(record.path))}" + ("" if record.path.is_dir() else "  (missing)"))
    out.print(f"method:     {escape(record.method)}")
    out.print(f"base model: {escape(record.base_model)}")
    out.print(f"created:    {_when(record.created_at)}")
    out.print(f"updated:    {_when(record.updated_at)}")
    if record.finished_at:
        took = _duration(record.created_at, record.finished_at)
        out.print(f"finished:   {_when(record.finished_at)}" + (f" (after {took})" if took else ""))
    if record.error:
        out.print(f"[red]error:[/]      {escape(record.error)}")
    if record.metrics:
        out.print("metrics:    " + ", ".join(f"{k} {_num(v)}" for k, v in record.metrics.items()), markup=False)
    _print_seal(out, seal)
    if record.method.startswith("hosted"):
        from tunesmith.train.hosted.job import read_state

        state = read_state(record.path)
        out.print(f"hosted:     job {state.get('job_id') or '(not created)'} at {state.get('base_url')}, "
                  f"status {state.get('status') or '-'}, fine-tuned model {state.get('fine_tuned_model') or '-'}",
                  markup=False)
    provenance = record.data.get("provenance")
    if isinstance(provenance, dict):
        from tunesmith.distill.provenance import describe

        out.print(f"train data: {describe(provenance)}", markup=False)
    for name, doc in docs.items():
        out.print(f"\n[bold]{name}.json[/]")
        out.print(json.dumps(doc, indent=2, ensure_ascii=False), markup=False, highlight=False)
    for name, why in unreadable.items():
        out.print(f"\n[bold]{name}[/]: [yellow]unreadable[/] ({escape(why)})")
    out.print(f"\n[bold]files[/] ({len(files)})")
    if not files:
        out.print("  (none)")
    for f in files:
        out.print(f"  {f['path']}  {_size(f['bytes'])}", markup=False)
