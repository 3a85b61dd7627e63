"""Progress of a long stage that anyone can follow: a bar on a terminal, plain timed lines elsewhere.

`make demo > log`, CI and nohup have no terminal; a rich bar there prints nothing until the stage
ends, which for training can be half an hour of silence. Off a terminal the reporter prints a start
line, a line at least every `every` seconds (30, or TUNESMITH_PROGRESS_EVERY) with done/total, the
rate and the ETA, and an end line with the elapsed time. A training step can take longer than
`every` on a slow CPU, so a heartbeat thread repeats the current state when nothing was printed for
that long. Lines are rate-limited to one per `every` seconds (0: one per update, no heartbeat), the
start and end lines aside.

    with Progress.open("training", 36, unit="steps") as p:
        for step in ...:
            p.update(step, note="loss 1.23")

With `passes=True` a count that goes back (generation starting over: the base model, then the tuned
one, then a variant) starts a new pass: the rate and ETA restart, and the end line counts all passes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable, TextIO

EVERY_ENV = "TUNESMITH_PROGRESS_EVERY"
DEFAULT_EVERY = 30.0
Clock = Callable[[], float]
#: where a library function sends the one-line messages a person follows ("converting ...")
Say = Callable[[str], None]


def format_duration(seconds: float) -> str:
    """1 min 52 s, 0 s, 2 h 5 min: what a person reads in a log line."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def every_from_env(default: float = DEFAULT_EVERY, stream: TextIO | None = None) -> float:
    """TUNESMITH_PROGRESS_EVERY as seconds, or `default`; a value that is not one is said and ignored
    (a typo in a progress setting must not stop a training run)."""
    raw = os.environ.get(EVERY_ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if 0 <= value < float("inf"):
        return value
    print(f"warning: {EVERY_ENV}={raw!r} is not a number of seconds (0 or more); using {default:g}",
          file=stream or sys.stderr, flush=True)
    return default


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class Progress:
    """The reporter's interface; this base class reports nothing (progress switched off)."""

    def __init__(self, stage: str, total: int | None = None, *, unit: str = "steps", done: int = 0) -> None:
        self.stage, self.total, self.unit = stage, total, unit
        self.done = done

    @classmethod
    def open(cls, stage: str, total: int | None = None, *, unit: str = "steps", enabled: bool = True,
             stream: TextIO | None = None, clock: Clock = time.monotonic, every: float | None = None,
             done: int = 0, passes: bool = False, transient: bool = False, heartbeat: bool = True) -> Progress:
        """A started reporter: a rich bar when `stream` (default stderr) is a terminal, plain lines otherwise.

        `done` is where the count starts (a resumed training run); `every` defaults to
        TUNESMITH_PROGRESS_EVERY or 30 s; with `passes`, a count that goes back starts a new pass
        (generation over several models) instead of merely going back (deduplication); `transient`
        removes the bar once closed; `heartbeat=False` leaves out the thread (tests call `tick()`).
        """
        if not enabled:
            return Progress(stage, total, unit=unit, done=done)
        stream = stream if stream is not None else sys.stderr
        if _is_terminal(stream):
            return BarProgress(stage, total, unit=unit, done=done, stream=stream, transient=transient)
        lines = LineProgress(stage, total, unit=unit, done=done, stream=stream, clock=clock, passes=passes,
                             every=every_from_env(stream=stream) if every is None else every)
        if heartbeat:
            lines.start_heartbeat()
        return lines

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        self.done = done
        if total is not None:
            self.total = total

    def tick(self) -> None:
        """The heartbeat's check: print the current state if nothing was printed for a while."""

    def close(self, failed: bool = False) -> None:
        """End the stage: `failed` when it raised (the end line then says where it stopped)."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(failed=exc_type is not None)


class LineProgress(Progress):
    """Plain lines: a start line, a state line at least (and at most) every `every` s, an end line."""

    def __init__(self, stage: str, total: int | None = None, *, unit: str = "steps", done: int = 0,
                 stream: TextIO, clock: Clock = time.monotonic, every: float = DEFAULT_EVERY,
                 passes: bool = False) -> None:
        super().__init__(stage, total, unit=unit, done=done)
        self.stream, self.clock, self.every, self.count_passes = stream, clock, every, passes
        self.note = ""
        self.passes = 1
        self.finished_before = 0  # what earlier passes counted
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.started = clock()
        self._pass_started, self._pass_from = self.started, done  # the rate counts this pass only
        self._last_print = self.started
        self._last_update = self.started
        unit_text = f" {unit}" if unit else ""
        where = f" at {done}/{total}{unit_text}" if total and done else f", {total}{unit_text} to do" if total else ""
        self._print(f"{stage}: started{where}", self.started)

    def start_heartbeat(self) -> None:
        if self.every <= 0:
            return  # a line per update already; a heartbeat would only repeat it
        poll = min(max(self.every / 10, 0.05), 1.0)

        def beat() -> None:
            while not self._stop.wait(poll):
                self.tick()

        self._thread = threading.Thread(target=beat, name=f"progress-{self.stage}", daemon=True)
        self._thread.start()

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        with self._lock:
            if self._closed:
                return
            now = self.clock()
            if self.count_passes and done < self.done:  # the count started over: a new pass
                self.finished_before += self.done
                self.passes += 1
                # it began when the last pass last moved: this update already counts its first answers
                self._pass_started, self._pass_from = self._last_update, 0
            if done != self.done:
                self._last_update = now
            self.done = done
            if total is not None:
                self.total = total
            if note:
                self.note = note
            if now - self._last_print >= self.every:
                self._print(self.state_line(now), now)

    def tick(self) -> None:
        with self._lock:
            if self._closed or self.every <= 0:
                return
            now = self.clock()
            if now - self._last_print >= self.every:
                self._print(self.state_line(now), now)

    def close(self, failed: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            now = self.clock()
            self._print(self.end_line(now, failed), now)
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    # --- the lines ---------------------------------------------------------------------------

    def _rate(self, now: float) -> float | None:
        counted, seconds = self.done - self._pass_from, now - self._pass_started
        return counted / seconds if counted > 0 and seconds > 0 else None

    def _count(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if not self.total:
            return f"{self.done}{unit}"
        return f"{self.done}/{self.total}{unit} ({min(1.0, self.done / self.total):.0%})"

    def state_line(self, now: float) -> str:
        parts = [self._count()]
        rate = self._rate(now)
        if rate is None:
            parts.append(f"no {_singular(self.unit) or 'item'} done yet")
        else:
            parts.append(_rate_text(rate, self.unit))
            if self.total:
                parts.append(f"ETA {format_duration(max(0, self.total - self.done) / rate)}")
        parts.append(f"{format_duration(now - self.started)} elapsed")
        if rate is not None and now - self._last_update >= max(self.every, 1.0):  # a heartbeat during a slow step
            parts.append(f"last {_singular(self.unit) or 'one'} {format_duration(now - self._last_update)} ago")
        if self.passes > 1:
            parts.append(f"pass {self.passes}")
        return f"{self.stage}: " + ", ".join(parts) + (f"; {self.note}" if self.note else "")

    def end_line(self, now: float, failed: bool = False) -> str:
        """`done, 36/36 steps in ...` or, short of the total, `ended at 30/36 steps after ...` (an early
        stop, a sample that sufficed), or `stopped at ...` when the stage raised."""
        elapsed = format_duration(now - self.started)
        seconds = now - self.started
        unit = f" {self.unit}" if self.unit else ""
        if failed:
            head, rate = f"stopped at {self._count()} after {elapsed}", None
        elif self.passes > 1:
            count = self.finished_before + self.done
            head = f"done, {count}{unit} over {self.passes} passes in {elapsed}"
            rate = count / seconds if count and seconds > 0 else None
        else:
            complete = not self.total or self.done >= self.total
            head = (f"done, {self._count()} in {elapsed}" if complete
                    else f"ended at {self._count()} after {elapsed}")
            rate = self._rate(now)
        tail = f" ({_rate_text(rate, self.unit)})" if rate else ""
        return f"{self.stage}: {head}{tail}" + (f"; {self.note}" if self.note else "")

    def _print(self, line: str, now: float) -> None:
        self._last_print = now
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (ValueError, OSError):  # the stream went away (closed, a broken pipe): progress is not worth a crash
            pass


def _singular(unit: str) -> str:
    return unit[:-1] if unit.endswith("s") else unit


def _rate_text(per_s: float, unit: str) -> str:
    unit = unit or "done"
    if per_s >= 1:
        return f"{per_s:.1f} {unit}/s"
    per_min = per_s * 60
    return f"{per_min:.1f} {unit}/min" if per_min >= 1 else f"{per_min:.2f} {unit}/min"


class BarProgress(Progress):
    """A rich bar on the terminal: the count, the time left and the note (loss, cost so far)."""

    def __init__(self, stage: str, total: int | None = None, *, unit: str = "steps", done: int = 0,
                 stream: TextIO, transient: bool = False) -> None:
        super().__init__(stage, total, unit=unit, done=done)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichBar

        self._bar = RichBar(TextColumn(stage), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[note]}"), console=Console(file=stream, highlight=False),
                            transient=transient)
        self._bar.start()
        self._task = self._bar.add_task(stage, total=total, completed=done, note="")
        self._closed = False

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        super().update(done, total)
        fields: dict[str, Any] = {"note": note} if note else {}
        self._bar.update(self._task, completed=done, total=self.total, **fields)

    def close(self, failed: bool = False) -> None:
        if not self._closed:
            self._closed = True
            self._bar.stop()
