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
    """A bar over answers generated; yields `update(done, total=None)` for the library to call."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console(stderr=True), transient=True) as bar:
        task = bar.add_task("gen", total=None)

        def update(done: int, total: int | None = None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@contextmanager
def stage_progress(enabled: bool = True) -> Iterator[Any]:
    """Progress over named stages; yields `update(stage, done, total, note="")`.

    On a terminal: a bar per stage with the count, the rate's ETA and `note` (a cost tally, say).
    Otherwise (a log file, CI): one line on stderr every tenth of a stage or every 30 s, so a long
    run piped to a file still shows that it moves.
    """
    import time

    if not enabled:
        yield lambda *_a, **_k: None
        return
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      TextColumn("{task.fields[note]}"), console=console(stderr=True), transient=False) as bar:
            tasks: dict[str, Any] = {}

            def update(stage: str, done: int, total: int, note: str = "") -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total, note=note)
                bar.update(tasks[stage], completed=done, total=total, note=note)

            yield update
        return
    state: dict[str, tuple[float, int, float]] = {}  # stage -> (started, last printed share step, last time)

    def update_plain(stage: str, done: int, total: int, note: str = "") -> None:
        now = time.monotonic()
        started, step, last = state.setdefault(stage, (now, -1, 0.0))
        share = done / total if total else 1.0
        this_step = int(share * 10)
        if this_step == step and now - last < 30 and done < total:
            return
        if done >= total and step == 10:
            return
        rate = done / (now - started) if now > started and done else 0.0
        eta = f", about {max(0.0, (total - done) / rate):.0f} s left" if rate and done < total else ""
        print(f"{stage}: {done}/{total} ({share:.0%}){eta}{'; ' + note if note else ''}", file=sys.stderr, flush=True)
        state[stage] = (started, 10 if done >= total else this_step, now)

    yield update_plain
