"""`tunesmith review FILE`: the review page on 127.0.0.1; `--export OUT`: the reviewed rows, ready for split."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from tunesmith.cli import app
from tunesmith.cli._errors import handle_errors
from tunesmith.cli._output import print_json
from tunesmith.errors import UsageError


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


@app.command("review")
@handle_errors
def review(
    file: Path = typer.Argument(..., help="JSONL file of chat rows to review (e.g. what `tunesmith generate` wrote)."),
    project: Optional[Path] = typer.Option(None, "--project", "-p", help="Project directory (default: found next to FILE)."),
    export: Optional[Path] = typer.Option(None, "--export", help="Write the accepted and edited rows to this file (no page)."),
    include_unreviewed: bool = typer.Option(False, "--include-unreviewed",
                                            help="With --export: write the unreviewed rows too (never the rejected ones)."),
    port: int = typer.Option(0, "--port", min=0, max=65535, help="Port for the page on 127.0.0.1 (0 = any free port)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result (or the page's URL) as JSON."),
) -> None:
    """Read the examples, most diverse first: accept, edit or reject each; every decision is saved at once."""
    if export is not None:
        _export(file, export, project, include_unreviewed, json_out)
        return
    if include_unreviewed:
        raise UsageError("--include-unreviewed only goes with --export OUT", f"tunesmith review {file} --export OUT --include-unreviewed")
    from tunesmith.distill.review import open_review
    from tunesmith.distill.review_app import ReviewServer, require_web_libraries

    require_web_libraries()
    store = open_review(file, project)
    server = ReviewServer(store, port)
    progress = store.progress()
    _say(f"reviewing {file} ({progress.rows} rows; {progress.text()}): open {server.url}\n"
         f"every decision is saved to {file} at once. Ctrl-C when done, then: tunesmith review {file} --export OUT")
    if json_out:
        sys.stdout.write(json.dumps({"url": server.url, "file": str(file), **progress.to_dict()}) + "\n")
        sys.stdout.flush()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    _say(f"stopped: {store.progress().text()}")


def _export(file: Path, out: Path, project: Optional[Path], include_unreviewed: bool, json_out: bool) -> None:
    from tunesmith.distill.review_export import export_review

    result = export_review(file, out, project, include_unreviewed=include_unreviewed)
    data = result.to_dict()
    if json_out:
        print_json(data)
        return
    print(f"exported {data['exported']} row(s) to {out}: {data['accepted']} accepted, {data['edited']} edited"
          + (f", {data['unreviewed_written']} unreviewed" if data["unreviewed_written"] else ""))
    left_out = [f"{data['rejected_left_out']} rejected"]
    if data["unreviewed_left_out"]:
        left_out.append(f"{data['unreviewed_left_out']} unreviewed (--include-unreviewed writes them too: "
                        "review the most diverse 10 %, train on the cleaned whole)")
    print("left out: " + ", ".join(left_out))
    if not data["target_met"]:
        print(f"review target not met: {data['reviewed']} of {data['target']} reviewed, "
              f"{data['left_to_review']} row(s) left to review: tunesmith review {file}")
