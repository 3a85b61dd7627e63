"""The `tunesmith` command line: thin typer commands over library functions.

Heavy libraries are imported inside commands so `tunesmith --help` stays instant.
"""

from __future__ import annotations

import typer

from tunesmith import __version__

app = typer.Typer(
    name="tunesmith",
    help="From a pile of examples to a small fine-tuned model that does one task reliably, and proves it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"tunesmith {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """tunesmith: decide, curate, train, evaluate, ship."""


from tunesmith.cli import data as _data  # noqa: E402,F401  (registers commands)
from tunesmith.cli import generate as _generate  # noqa: E402,F401
from tunesmith.cli import review as _review  # noqa: E402,F401
from tunesmith.cli import project as _project  # noqa: E402,F401
from tunesmith.cli import cost as _cost  # noqa: E402,F401
from tunesmith.cli import advise as _advise  # noqa: E402,F401
from tunesmith.cli import models as _models  # noqa: E402,F401
from tunesmith.cli import train as _train  # noqa: E402,F401
from tunesmith.cli import evaluate as _evaluate  # noqa: E402,F401
from tunesmith.cli import run as _run  # noqa: E402,F401
from tunesmith.cli import ship as _ship  # noqa: E402,F401
from tunesmith.cli import serve as _serve  # noqa: E402,F401
from tunesmith.cli.runs import runs_app  # noqa: E402

app.add_typer(runs_app, name="runs")


def main() -> None:
    app()
