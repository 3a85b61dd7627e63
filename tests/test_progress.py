"""Progress anyone can follow: timed plain lines off a terminal (rate-limited, with a heartbeat), a bar on one."""

from __future__ import annotations

import io
import re
import threading

import pytest

from tunesmith.progress import (EVERY_ENV, BarProgress, LineProgress, Progress, every_from_env,
                                format_duration)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Log(io.StringIO):
    """A log file (not a terminal) that remembers the fake time each line was written at."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock, self.times = clock, []

    def write(self, text: str) -> int:
        self.times.extend(self.clock.now for _ in range(text.count("\n")))
        return super().write(text)

    def lines(self) -> list[str]:
        return self.getvalue().splitlines()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(EVERY_ENV, raising=False)


def plain(stage="training", total=200, *, every=30.0, clock=None, **kw) -> tuple[Progress, Log, FakeClock]:
    clock = clock or FakeClock()
    log = Log(clock)
    return Progress.open(stage, total, stream=log, clock=clock, every=every, heartbeat=False, **kw), log, clock


def test_a_slow_stage_prints_a_line_every_30_s_with_count_rate_and_eta():
    p, log, clock = plain()
    for i in range(1, 201):  # 200 updates over 10 fake minutes
        clock.now = 3.0 * i
        p.update(i, note=f"loss {1 / i:.4f}")
    p.close()
    lines = log.lines()
    assert lines[0] == "training: started, 200 steps to do"
    assert lines[-1] == "training: done, 200/200 steps (100%) in 10 min 0 s (20.0 steps/min); loss 0.0050"
    middle = lines[1:-1]
    assert len(middle) == 20, middle
    for line in middle:
        assert re.match(r"training: \d+/200 steps \(\d+%\), 20\.0 steps/min, ETA [\d a-z]+, [\d a-z]+ elapsed; loss ",
                        line), line
    assert middle[0] == "training: 10/200 steps (5%), 20.0 steps/min, ETA 9 min 30 s, 30 s elapsed; loss 0.1000"
    times = log.times[1:-1]
    assert all(b - a >= 30 for a, b in zip(times, times[1:])), times


def test_a_fast_stage_is_rate_limited_too():
    p, log, clock = plain(total=5000, unit="answers")
    for i in range(1, 5001):  # 50 a second for 100 s
        clock.now = i / 50
        p.update(i)
    p.close()
    lines = log.lines()
    assert len(lines) == 2 + 3, lines  # start, 30 s, 60 s, 90 s, end
    assert lines[1].startswith("training: 1500/5000 answers (30%), 50.0 answers/s, ETA 1 min 10 s, 30 s elapsed")


def test_the_heartbeat_prints_after_every_seconds_of_silence_and_not_before():
    p, log, clock = plain(total=3, every=30)
    clock.now = 10
    p.update(1)  # the first step: 10 s after the start line, too soon for a line
    clock.now = 29.9
    p.tick()
    assert log.lines() == ["training: started, 3 steps to do"]
    clock.now = 30
    p.tick()
    assert log.lines()[-1] == "training: 1/3 steps (33%), 2.0 steps/min, ETA 1 min 0 s, 30 s elapsed"
    clock.now = 59
    p.tick()
    assert len(log.lines()) == 2
    clock.now = 60
    p.tick()
    # a step slower than `every`: the line says how long the current one has been running
    assert log.lines()[-1] == "training: 1/3 steps (33%), 1.0 steps/min, ETA 2 min 0 s, 1 min 0 s elapsed, last step 50 s ago"
    p.close()
    assert log.lines()[-1] == "training: ended at 1/3 steps (33%) after 1 min 0 s (1.0 steps/min)"
    clock.now = 1000
    p.tick()  # closed: the heartbeat has nothing more to say
    assert len(log.lines()) == 4 and log.times == [0, 30, 60, 60]


def test_the_heartbeat_says_so_before_the_first_step():
    p, log, clock = plain(total=36)
    clock.now = 45
    p.tick()
    assert log.lines()[-1] == "training: 0/36 steps (0%), no step done yet, 45 s elapsed"


def test_the_heartbeat_thread_prints_on_its_own_and_stops_on_close():
    got = threading.Event()

    class Watched(io.StringIO):
        def write(self, text: str) -> int:
            if "elapsed" in text:
                got.set()
            return super().write(text)

    log = Watched()
    p = Progress.open("training", 10, stream=log, every=0.05)
    assert isinstance(p, LineProgress) and p._thread is not None and p._thread.is_alive()
    assert got.wait(timeout=10), log.getvalue()
    p.close()
    assert not p._thread.is_alive()
    assert log.getvalue().splitlines()[-1].startswith("training: ended at 0/10 steps (0%) after")


def test_a_bar_on_a_terminal_and_lines_elsewhere():
    term = Terminal()
    bar = Progress.open("training", 10, stream=term)
    assert isinstance(bar, BarProgress)
    bar.update(4, note="loss 1.0")
    bar.close()
    assert "training" in term.getvalue() and "started" not in term.getvalue()
    log = io.StringIO()
    with Progress.open("training", 10, stream=log, heartbeat=False) as lines:
        assert isinstance(lines, LineProgress)
    assert log.getvalue().startswith("training: started")
    off = Progress.open("training", 10, stream=log, enabled=False)
    assert type(off) is Progress
    off.update(3)
    off.tick()
    off.close()
    assert log.getvalue().count("\n") == 2  # only the plain reporter's start and end lines


def test_every_from_the_environment(monkeypatch):
    monkeypatch.setenv(EVERY_ENV, "0")
    p, log, clock = plain(total=3, every=None)
    for step in (1, 2, 3):
        clock.now = step
        p.update(step)
    p.close()
    assert [line.split(",")[0] for line in log.lines()] == [
        "training: started", "training: 1/3 steps (33%)", "training: 2/3 steps (67%)", "training: 3/3 steps (100%)",
        "training: done"]
    monkeypatch.setenv(EVERY_ENV, "12.5")
    assert every_from_env() == 12.5


@pytest.mark.parametrize("raw", ["soon", "-3", "inf"])
def test_every_that_is_not_a_number_of_seconds_is_said_and_ignored(monkeypatch, raw):
    monkeypatch.setenv(EVERY_ENV, raw)
    out = io.StringIO()
    assert every_from_env(stream=out) == 30.0
    assert out.getvalue() == (f"warning: TUNESMITH_PROGRESS_EVERY={raw!r} is not a number of seconds (0 or more); "
                              "using 30\n")


def test_generation_passes_restart_the_rate_and_add_up_at_the_end():
    p, log, clock = plain("eval", 40, every=0, unit="answers", passes=True)
    for t, done in [(10, 20), (20, 40), (30, 10), (40, 20)]:  # the tuned model, then the base model
        clock.now = t
        p.update(done)
    p.close()
    lines = log.lines()
    assert lines[3] == "eval: 10/40 answers (25%), 1.0 answers/s, ETA 30 s, 30 s elapsed, pass 2"
    assert lines[-1] == "eval: done, 60 answers over 2 passes in 40 s (1.5 answers/s)"


def test_a_count_that_goes_back_without_passes_just_goes_back():
    p, log, clock = plain("inputs", 50, every=0, unit="")
    clock.now = 10
    p.update(30)
    clock.now = 20
    p.update(25)  # duplicates dropped
    p.close()
    assert log.lines()[2] == "inputs: 25/50 (50%), 1.2 done/s, ETA 20 s, 20 s elapsed"
    assert log.lines()[-1].startswith("inputs: ended at 25/50 (50%) after 20 s")


def test_a_stage_that_raises_says_where_it_stopped():
    p, log, clock = plain(total=3, every=0)
    with pytest.raises(KeyboardInterrupt), p:
        clock.now = 5
        p.update(1, note="loss 2.0")
        raise KeyboardInterrupt
    assert log.lines()[-1] == "training: stopped at 1/3 steps (33%) after 5 s; loss 2.0"


def test_a_resumed_count_starts_where_it_was_and_rates_only_the_new_steps():
    p, log, clock = plain(total=40, every=0, done=30)
    clock.now = 20
    p.update(32)
    p.close()
    assert log.lines()[0] == "training: started at 30/40 steps"
    assert log.lines()[1] == "training: 32/40 steps (80%), 6.0 steps/min, ETA 1 min 20 s, 20 s elapsed"


def test_a_closed_stream_does_not_break_the_stage():
    log = io.StringIO()
    p = Progress.open("training", 3, stream=log, every=0, heartbeat=False)
    log.close()
    p.update(1)
    p.close()
    assert p._closed


@pytest.mark.parametrize("seconds, text", [(0.2, "0 s"), (1, "1 s"), (59.6, "1 min 0 s"), (112, "1 min 52 s"),
                                           (726, "12 min 6 s"), (7500, "2 h 5 min")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_cli_helpers_print_plain_lines_off_a_terminal(monkeypatch, capsys):
    from tunesmith.cli._output import generation_progress, stage_progress

    monkeypatch.setenv(EVERY_ENV, "0")
    with generation_progress(True, "verifying") as update:
        update(1)
        update(2)
    with generation_progress(False) as nothing:
        assert nothing is None
    with stage_progress(True) as stage:
        stage("plan", 0, 1)
        stage("plan", 1, 1)
        stage("answers", 5, 10, "5 sent, $0.0010")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "verifying: started" and err[1].startswith("verifying: 1 answers, ")
    assert err[3].startswith("verifying: done, 2 answers in")
    assert "plan: started, 1 to do" in err and any(line.startswith("plan: done, 1/1 (100%) in") for line in err)
    assert "answers: started, 10 to do" in err
    assert any(line.startswith("answers: 5/10 (50%)") and line.endswith("; 5 sent, $0.0010") for line in err)
    assert err[-1].startswith("answers: ended at 5/10 (50%) after")
