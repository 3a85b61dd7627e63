"""Fault injection for `tunesmith run` (issue #14): kill -9 at random points then a re-run ends with the
uninterrupted run's artifacts (a seeded 2-trial cut of benchmarks/fault_campaign.py), and two processes
on one project: the second is refused by the project lock and damages nothing."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.project_lock import lock_path

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _campaign():
    spec = importlib.util.spec_from_file_location("fault_campaign", ROOT / "benchmarks" / "fault_campaign.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(600)
def test_kill_dash_nine_at_random_points_then_a_rerun_gives_the_same_artifacts(tmp_path):
    campaign = _campaign()
    # seeded kill times over the measured reference run (which stage each hits follows the machine's speed)
    _, trials = campaign.campaign(2, seed=3, workdir=tmp_path, epochs=4, report=lambda _m: None)
    for t in trials:
        assert t.resumed and t.same, t.row()
        assert not any("left running" in note for note in t.notes), t.row()


def _hold_lock(root: Path) -> subprocess.Popen:
    """Another process holding the project's lock, as a `tunesmith run` would."""
    code = ("import sys, time\nfrom tunesmith.project_lock import project_lock\n"
            "with project_lock(sys.argv[1], 'tunesmith run'):\n    print('held', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_by_the_project_lock_and_a_killed_holder_leaves_no_lock(tmp_path, tiny_model_dir):
    from test_pipeline import make_project

    root = make_project(tmp_path / "p", tiny_model_dir)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    holder = _hold_lock(root)
    try:
        for args in (["run", str(root)], ["train", "-p", str(root)], ["split", "-p", str(root)]):
            refused = runner.invoke(app, args)
            assert refused.exit_code == 75, refused.output
            assert (f"error: {root}: another tunesmith process is working on this project "
                    f"(PID {holder.pid}, `tunesmith run`, since ") in refused.stderr, args
            assert (f"hint: wait for it to finish, or stop it (`kill {holder.pid}`); the lock goes away when that "
                    "process exits, even if it is killed") in refused.stderr
        as_json = runner.invoke(app, ["run", str(root), "--json"])
        error = json.loads(as_json.stdout)
        assert error["event"] == "error" and error["error"]["type"] == "ProjectLockedError"
        # nothing written: no pipeline state, no runs, no split
        assert sorted(p.relative_to(root) for p in root.rglob("*")) == sorted(
            {*before, Path(".tunesmith"), Path(".tunesmith/lock")})
        dry = runner.invoke(app, ["train", "-p", str(root), "--dry-run"])  # reads only: not locked out
        assert "another tunesmith process" not in dry.output
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no cleanup runs: the OS drops the flock
        holder.wait(timeout=30)
    result = runner.invoke(app, ["run", str(root), "--until", "split", "--json"])
    assert result.exit_code == 0, result.output


def test_a_lock_whose_holder_wrote_nothing_yet_is_still_refused(tmp_path, tiny_model_dir):
    """Between taking the flock and writing its PID, a holder has said nothing about itself."""
    from test_pipeline import make_project

    root = make_project(tmp_path / "p", tiny_model_dir)
    lock = lock_path(root)
    lock.parent.mkdir()
    code = ("import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = runner.invoke(app, ["run", str(root)])
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    assert refused.exit_code == 75
    assert f"error: {root}: another tunesmith process is working on this project (it holds {lock})" in refused.stderr
    assert "hint: wait for it to finish, or stop that process; the lock goes away when it exits" in refused.stderr


def test_two_runs_on_one_project_the_second_is_refused_the_first_finishes_unharmed(tmp_path, tiny_model_dir):
    from test_pipeline import events, make_project

    root = make_project(tmp_path / "p", tiny_model_dir, train="train:\n  epochs: 1\n")
    first = subprocess.Popen([sys.executable, "-m", "tunesmith", "run", str(root), "--force", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while (root / ".tunesmith" / "pipeline.json").exists() is False and time.time() < deadline:
        time.sleep(0.1)  # the check stage records its result under the lock
    assert json.loads(lock_path(root).read_text())["pid"] == first.pid
    second = runner.invoke(app, ["run", str(root), "--force", "--json"])
    assert second.exit_code == 75
    assert f"(PID {first.pid}, `tunesmith run`, since " in second.stderr
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    ev = events(out)
    assert [ev[s]["status"] for s in ("check", "split", "baseline", "train", "eval", "report")] == ["ok"] * 6
    assert lock_path(root).read_text() == ""  # released: no PID of a finished process left behind
    again = events(runner.invoke(app, ["run", str(root), "--force", "--json"]).stdout)
    assert again["train"]["status"] == "skipped" and again["train"]["run_id"] == ev["train"]["run_id"]
