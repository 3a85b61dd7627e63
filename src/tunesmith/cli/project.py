"""`tunesmith init` and `tunesmith schema`: the project file and its JSON Schema."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tunesmith.cli import app
from tunesmith.cli._errors import handle_errors
from tunesmith.cli._output import print_json
from tunesmith.cli._settings import setting_option


@app.command()
@handle_errors
def init(
    directory: Path = typer.Argument(Path("."), help="Project directory (created if missing)."),
    task: str = setting_option(
        "task", "--task", default="Always answer with one compact JSON object with keys summary, issues and score."),
    base_model: Optional[str] = setting_option("base_model", "--base-model"),
    force: bool = typer.Option(False, help="Overwrite an existing tunesmith.yaml."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Scaffold a tunesmith.yaml that explains each field."""
    from tunesmith.project import DEFAULT_MODEL
    from tunesmith.scaffold import init_project

    path = init_project(directory, task=task, base_model=base_model or DEFAULT_MODEL, force=force)
    if json_out:
        print_json({"project_file": str(path)})
    else:
        print(f"wrote {path}; next: put your examples in {directory / 'data.jsonl'} and run `tunesmith check`")


@app.command()
@handle_errors
def schema(
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the schema to FILE instead of printing it."),
    json_out: bool = typer.Option(False, "--json", help="With -o: print the result as JSON."),
) -> None:
    """Print the JSON Schema of tunesmith.yaml: editors check the file and explain each key as you type."""
    from tunesmith.io import write_json_atomic
    from tunesmith.settings_docs import project_schema

    if output is None or str(output) == "-":
        print_json(project_schema())
        return
    write_json_atomic(output, project_schema())
    if json_out:
        print_json({"schema_file": str(output)})
    else:
        print(f"wrote {output}; make this the first line of tunesmith.yaml (the path is relative to it):\n"
              f"# yaml-language-server: $schema={output}")
