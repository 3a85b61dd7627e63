"""A real `kill -9` in the middle of training, then --resume; and 2 CPU processes (gloo) vs one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datagen import split_project


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunesmith", *args]


def _step_losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "steps.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "step" and "loss" in e:
            out[e["step"]] = e["loss"]
    return out


def test_kill_dash_nine_then_resume(tmp_path, tiny_model_dir):
    project = split_project(tmp_path / "p", tiny_model_dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_cli("train", "-p", str(project), "--epochs", "40", "--eval-every", "3", "--no-converge", "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    killed_after = None
    deadline = time.time() + 240
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("event") == "step" and event.get("step", 0) >= 8:
            os.kill(proc.pid, signal.SIGKILL)  # no cleanup, no atexit: a real crash
            killed_after = event["step"]
            break
        assert time.time() < deadline, "training never reached step 8"
    proc.wait(timeout=60)
    assert killed_after is not None and proc.returncode == -signal.SIGKILL
    run_dir = next((project / "runs").glob("2*"))
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and checkpoints[-1] >= 6  # checkpoints every 3 steps: at most 2 steps lost
    assert not (run_dir / "adapter").exists()  # never half-written

    done = subprocess.run(_cli("train", "-p", str(project), "--resume", "latest", "--json"),
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    final = json.loads(done.stdout.strip().splitlines()[-1])
    assert final["event"] == "done" and final["run_id"] == run_dir.name
    metrics = final["metrics"]
    assert metrics["resumed_from_step"] == checkpoints[-1]
    plan = json.loads((run_dir / "plan.json").read_text())
    assert metrics["steps"] == plan["derived"]["total_steps"]
    # the resumed run did not redo the steps before the checkpoint
    events = [json.loads(l) for l in done.stdout.strip().splitlines()]
    first_step = min(e["step"] for e in events if e.get("event") == "step" and "loss" in e)
    assert first_step == checkpoints[-1] + 1
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()


def test_two_processes_match_one(tmp_path, tiny_model_dir):
    """DDP over gloo on 2 CPU processes with the same global batch follows the same loss curve."""
    project = split_project(tmp_path / "p", tiny_model_dir)
    common = ["train", "-p", str(project), "--epochs", "3", "--lr", "3e-3", "--no-converge", "--json"]
    single = subprocess.run(_cli(*common, "--name", "one"), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    double = subprocess.run(_cli(*common, "--name", "two", "--num-processes", "2"), capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-2000:]
    one = _step_losses(next((project / "runs").glob("*-one")))
    two = _step_losses(next((project / "runs").glob("*-two")))
    assert one.keys() == two.keys() and len(one) >= 10
    assert one[max(one)] < one[1] - 0.05  # it learned something, so the comparison means something
    for step in one:
        assert abs(one[step] - two[step]) < 0.01 * abs(one[step]), (step, one[step], two[step])
    plan_two = json.loads(next((project / "runs").glob("*-two")).joinpath("plan.json").read_text())
    assert plan_two["derived"]["processes"] == 2 and plan_two["derived"]["gradient_accumulation"] == 2


def test_a_half_written_checkpoint_is_skipped(tmp_path):
    """kill -9 while the Trainer is saving leaves checkpoint-N without trainer_state.json."""
    from tunesmith.train.local import last_checkpoint

    ckpts = tmp_path / "checkpoints"
    (ckpts / "checkpoint-2").mkdir(parents=True)
    (ckpts / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (ckpts / "checkpoint-10").mkdir()
    (ckpts / "checkpoint-4").mkdir()
    (ckpts / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"partial")
    assert last_checkpoint(tmp_path) == ckpts / "checkpoint-2"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2"]
    assert last_checkpoint(tmp_path / "none") is None
