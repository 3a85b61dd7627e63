"""`tunesmith models resolve`: turn a model reference into a local trainable checkpoint, once."""

from __future__ import annotations

import sys

import typer

from tunesmith.cli import app
from tunesmith.cli._errors import handle_errors
from tunesmith.cli._output import print_json

models_app = typer.Typer(help="Base models: resolve builtin names, .gguf files, directories and hub ids.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("resolve")
@handle_errors
def resolve(
    ref: str = typer.Argument("builtin:smollm2-135m-instruct", help="builtin:NAME, a .gguf file, a directory or a hub id."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Resolve (and for GGUF, convert once and cache) a base model; print where it lives."""
    from tunesmith.models.resolve import resolve_model

    resolved = resolve_model(ref, progress=lambda msg: print(msg, file=sys.stderr))
    info = {"ref": resolved.ref, "kind": resolved.kind, "path": str(resolved.path),
            "converted_from": str(resolved.converted_from) if resolved.converted_from else None}
    if json_out:
        print_json(info)
    else:
        print(f"{resolved.ref} -> {resolved.path} ({resolved.kind})")
