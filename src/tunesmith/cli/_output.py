"""Printing helpers shared by commands: JSON for scripts, rich for people, progress on stderr."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def console(stderr: bool = False):
    import os

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # piped or logged output (CI, `| tee`) gets room for the tables instead of rich's 80 columns
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 120
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def format_lines(lines: list[int], limit: int = 12) -> str:
    if not lines:
        return ""
    shown = ", ".join(map(str, lines[:limit]))
    more = f" and {len(lines) - limit} more" if len(lines) > limit else ""
    return f"line{'s' if len(lines) > 1 else ''} {shown}{more}"


@contextmanager
def byte_progress(description: str, total: int, enabled: bool = True) -> Iterator[Any]:
    """A progress bar over bytes of a file; yields a callback taking the offset reached (-1 = done)."""
    if not enabled or total < 2_000_000:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def update(offset: int) -> None:
            bar.update(task, completed=total if offset < 0 else offset)

        yield update


@contextmanager
def generation_progress(enabled: bool, label: str = "generating") -> Iterator[Any]:
    """Progress over answers generated (tunesmith.progress: a bar on a terminal, timed lines in a log);
    yields `update(done, total=None)` for the library to call, or None when switched off."""
    if not enabled:
        yield None
        return
    from tunesmith.progress import Progress

    with Progress.open(label, None, unit="answers", passes=True, transient=True) as reporter:
        yield reporter.update


@contextmanager
def stage_progress(enabled: bool = True) -> Iterator[Any]:
    """Progress over named stages that follow one another; yields `update(stage, done, total, note="")`.

    Each stage gets its own reporter (tunesmith.progress): on a terminal a bar with the count, the ETA
    and `note` (a cost tally, say); otherwise a start line, a line at least every 30 s
    (TUNESMITH_PROGRESS_EVERY) and an end line, so a long run piped to a file still shows that it moves.
    """
    if not enabled:
        yield lambda *_a, **_k: None
        return
    from tunesmith.progress import Progress

    current: dict[str, Any] = {}

    def update(stage: str, done: int, total: int, note: str = "") -> None:
        if current.get("stage") != stage:  # the next stage began: the last one is over
            if current:
                current["reporter"].close()
            current.update(stage=stage, reporter=Progress.open(stage, total, unit=""))
        current["reporter"].update(done, total, note)

    try:
        yield update
    finally:
        if current:
            current["reporter"].close()
