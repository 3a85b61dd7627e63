"""`tunesmith init`."""

from __future__ import annotations

from pathlib import Path

import typer

from tunesmith.cli import app
from tunesmith.cli._errors import handle_errors
from tunesmith.cli._output import print_json


@app.command()
@handle_errors
def init(
    directory: Path = typer.Argument(Path("."), help="Project directory (created if missing)."),
    task: str = typer.Option("Always answer with one compact JSON object with keys summary, issues and score.",
                             help="One sentence: exactly what the tuned model must do."),
    base_model: str = typer.Option("builtin:smollm2-135m-instruct", help="Base model reference."),
    force: bool = typer.Option(False, help="Overwrite an existing tunesmith.yaml."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Scaffold a tunesmith.yaml that explains each field."""
    from tunesmith.project import init_project

    path = init_project(directory, task=task, base_model=base_model, force=force)
    if json_out:
        print_json({"project_file": str(path)})
    else:
        print(f"wrote {path}; next: put your examples in {directory / 'data.jsonl'} and run `tunesmith check`")
