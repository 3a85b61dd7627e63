"""Training progress off a terminal: plain lines on stderr with the count, rate, ETA and loss; none with --json."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from datagen import clean_examples, write_jsonl, write_project_file
from tunesmith.progress import EVERY_ENV
from tunesmith.train.api import train_project


@pytest.fixture(autouse=True)
def _setup(isolated_cache, one_torch_thread, monkeypatch):
    monkeypatch.setenv(EVERY_ENV, "0")  # a line per step


def make_project(root: Path, model_dir: Path) -> Path:
    from tunesmith.data.split import split_file

    write_project_file(root, model_dir)
    write_jsonl(root / "data.jsonl", clean_examples(44))
    split_file(root / "data.jsonl", root / "data" / "train.jsonl", root / "data" / "test.jsonl")
    return root


def test_training_writes_plain_progress_lines_to_stderr_off_a_terminal(tmp_path, tiny_model_dir, capsys):
    project = make_project(tmp_path / "p", tiny_model_dir)
    out = train_project(project, {"epochs": 2, "effective_batch": 8, "eval_every": 2, "converge": False, "patience": 50})
    total = out.plan["derived"]["total_steps"]
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("training: ")]
    assert lines[0] == f"training: started, {total} steps to do"
    steps = [line for line in lines[1:-1] if re.match(rf"training: \d+/{total} steps", line)]
    assert len(steps) >= total, lines  # every step, and the evaluations' lines on top
    for line in steps:
        assert re.search(r"steps/(s|min), ETA [^,]+, [^,]+ elapsed; loss \d+\.\d{4}", line), line
    assert any("eval loss" in line for line in steps)
    assert re.match(rf"training: done, {total}/{total} steps \(100%\) in .+; loss \d", lines[-1]), lines[-1]
    assert "training:" not in captured.out  # stdout is for --json events


def test_no_lines_without_progress_or_with_json_events(tmp_path, tiny_model_dir, capsys):
    project = make_project(tmp_path / "p", tiny_model_dir)
    train_project(project, {"epochs": 1, "effective_batch": 16}, progress=False)
    assert "training: " not in capsys.readouterr().err
    train_project(project, {"epochs": 1, "effective_batch": 16}, json_events=True)
    captured = capsys.readouterr()
    assert "training: " not in captured.err
    assert [json.loads(line)["event"] for line in captured.out.splitlines()][0] == "step"


def test_a_run_that_crashes_ends_its_progress_with_where_it_stopped(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from tunesmith.train.trainer import TunesmithTrainer

    monkeypatch.setenv(EVERY_ENV, "0.05")  # with a heartbeat thread, which must end with the run
    project = make_project(tmp_path / "p", tiny_model_dir)
    real_step = TunesmithTrainer.training_step

    def step_then_crash(self, *args, **kwargs):
        if self.state.global_step >= 2:
            raise RuntimeError("simulated crash in the training loop")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(TunesmithTrainer, "training_step", step_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_project(project, {"epochs": 2, "effective_batch": 8, "converge": False})
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("training: ")]
    assert re.match(r"training: stopped at 2/\d+ steps \(\d+%\) after \d+ s; loss \d", lines[-1]), lines
    assert not [t for t in threading.enumerate() if t.name == "progress-training"]  # the heartbeat ended too
