"""`tunesmith run`: the whole path on a tiny model; unchanged stages skipped; a killed run resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datagen import SYSTEM, clean_examples, write_jsonl, write_project_file
from tunesmith.cli import app

runner = CliRunner()


def make_project(root: Path, model_dir: Path, *, n: int = 60, train: str = "") -> Path:
    write_project_file(root, model_dir, data={"regression": "regression.jsonl", "test_fraction": 0.2},
                       eval={"max_new_tokens": 8}, extra=train)
    write_jsonl(root / "data.jsonl", clean_examples(n))
    write_jsonl(root / "regression.jsonl", [
        {"id": f"r{i}", "prompt": f"regression {i}", "assertions": [{"type": "not_contains", "value": "ZZZZ"}]}
        for i in range(20)])
    return root


def events(stdout: str) -> dict[str, dict]:
    out = {}
    for line in stdout.strip().splitlines():
        e = json.loads(line)
        if e.get("event") == "stage":
            out[e["stage"]] = e
        elif e.get("event") == "done":
            out["done"] = e
    return out


def test_whole_run_then_everything_is_skipped(tmp_path, tiny_model_dir):
    root = make_project(tmp_path / "p", tiny_model_dir, train="train:\n  epochs: 1\n")
    first = runner.invoke(app, ["run", str(root), "--force", "--json"])
    assert first.exit_code == 0, first.output
    ev = events(first.stdout)
    assert [ev[s]["status"] for s in ("check", "split", "baseline", "train", "eval", "report")] == ["ok"] * 6
    run_id = ev["train"]["run_id"]
    run_dir = root / "runs" / run_id
    for name in ("adapter", "plan.json", "metrics.json", "steps.jsonl", "report.html"):
        assert (run_dir / name).exists(), name
    assert ev["done"]["summary"]["test"]["n"] > 0
    second = runner.invoke(app, ["run", str(root), "--force", "--json"])
    ev2 = events(second.stdout)
    assert [ev2[s]["status"] for s in ("check", "split", "baseline", "train", "eval")] == ["skipped"] * 5
    assert ev2["train"]["run_id"] == run_id
    # a changed training setting re-runs training (and what follows), nothing before it
    with open(root / "tunesmith.yaml", "a") as fh:
        fh.write("  seed: 7\n")
    third = events(runner.invoke(app, ["run", str(root), "--force", "--json"]).stdout)
    assert third["check"]["status"] == "skipped" and third["split"]["status"] == "skipped"
    assert third["train"]["status"] == "ok" and third["train"]["run_id"] != run_id
    assert third["eval"]["status"] == "ok"


def test_until_and_from(tmp_path, tiny_model_dir):
    root = make_project(tmp_path / "p", tiny_model_dir)
    result = runner.invoke(app, ["run", str(root), "--until", "split", "--json"])
    assert result.exit_code == 0
    assert set(events(result.stdout)) == {"check", "split", "done"}
    assert (root / "data" / "test.seal.json").exists()
    result = runner.invoke(app, ["run", str(root), "--from", "eval"])
    assert result.exit_code == 2 and "no trained run" in result.stderr
    result = runner.invoke(app, ["run", str(root), "--until", "deploy"])
    assert result.exit_code == 2 and "unknown stage" in result.stderr


def test_baseline_stops_without_force_when_base_is_good(tmp_path, tiny_model_dir):
    """The guide: a base model already right >= 80 % of the time should be prompted, not fine-tuned."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.evaluate.generate import LocalBackend
    from tunesmith.evaluate.types import DecodeSettings

    model_dir = tmp_path / "talkative"
    shutil.copytree(tiny_model_dir, model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(8.0)  # varied greedy text instead of newlines
    model.save_pretrained(model_dir)
    prompts = [r["messages"][1]["content"] for r in clean_examples(60, seed=3)]
    chats = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}] for p in prompts]
    said = [g.text for g in LocalBackend(model_dir).generate(chats, DecodeSettings(max_new_tokens=8))]
    root = make_project(tmp_path / "p", model_dir)
    write_jsonl(root / "data.jsonl", [{"messages": c + [{"role": "assistant", "content": a}]} for c, a in zip(chats, said)])
    (root / "tunesmith.yaml").write_text((root / "tunesmith.yaml").read_text().replace("output:\n  json: true\n", ""))
    result = runner.invoke(app, ["run", str(root)])
    assert result.exit_code == 1
    assert "baseline: the base model already answers 100%" in result.stderr and "--force" in result.stderr
    assert not (root / "runs").exists() or not list((root / "runs").glob("2*"))


def test_data_errors_stop_at_check(tmp_path, tiny_model_dir):
    root = make_project(tmp_path / "p", tiny_model_dir)
    with open(root / "data.jsonl", "a") as fh:
        fh.write("{broken\n")
    result = runner.invoke(app, ["run", str(root)])
    assert result.exit_code == 1 and "check: 1 error(s)" in result.stderr and "hint:" in result.stderr
    assert not (root / "data" / "train.jsonl").exists()


def test_missing_project_and_unbuilt_example(tmp_path, tiny_model_dir):
    result = runner.invoke(app, ["run", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such project directory" in result.stderr
    root = make_project(tmp_path / "p", tiny_model_dir)
    os.rename(root / "data.jsonl", root / "made.jsonl")
    (root / "build.py").write_text("import shutil; shutil.copy('made.jsonl', 'data.jsonl')\n")
    (root / "tunesmith.yaml").write_text((root / "tunesmith.yaml").read_text() + "build: python build.py\n")
    result = runner.invoke(app, ["run", str(root), "--until", "split"])
    assert result.exit_code == 0, result.output
    assert (root / "data.jsonl").exists() and "built" in result.stderr


def test_kill_during_training_then_run_resumes(tmp_path, tiny_model_dir):
    root = make_project(tmp_path / "p", tiny_model_dir, train="train:\n  epochs: 12\n  eval_every: 2\n")
    cmd = [sys.executable, "-m", "tunesmith", "run", str(root), "--force", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 300
    checkpoint = None
    while time.time() < deadline and proc.poll() is None:
        found = sorted((root / "runs").glob("*/checkpoints/checkpoint-*"))
        if len(found) >= 2:
            checkpoint = found
            break
        time.sleep(0.2)
    assert checkpoint, "training never wrote two checkpoints"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    run_dir = checkpoint[0].parent.parent
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    ev = events(result.stdout)
    assert ev["check"]["status"] == "skipped" and ev["split"]["status"] == "skipped"
    assert ev["train"]["status"] == "resumed" and ev["train"]["run_id"] == run_dir.name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= 2


def test_disk_full_during_training_then_run_resumes(tmp_path, tiny_model_dir, monkeypatch):
    """ENOSPC while saving a checkpoint: a clear message, the half-written checkpoint is not used, and the
    next `run` continues from the last complete one."""
    import errno

    from tunesmith.train.trainer import TunesmithTrainer

    root = make_project(tmp_path / "p", tiny_model_dir, train="train:\n  epochs: 3\n  eval_every: 2\n")
    real_save = TunesmithTrainer._save_checkpoint
    calls = {"n": 0}

    def save_until_disk_fills(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] < 3:
            return real_save(self, *args, **kwargs)
        partial = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        partial.mkdir(parents=True, exist_ok=True)
        (partial / "adapter_model.safetensors").write_bytes(b"\0" * 10)  # cut off mid-write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TunesmithTrainer, "_save_checkpoint", save_until_disk_fills)
    first = runner.invoke(app, ["run", str(root), "--force", "--json"])
    assert first.exit_code != 0
    assert "stopped: cannot write" in first.output and "the disk is full" in first.output
    assert "--resume" in first.output and "checkpoint-6" in first.output
    run_dir = next((root / "runs").glob("*-run"))
    from tunesmith.runs import RunRegistry

    assert RunRegistry(root / "runs").get(run_dir.name).status == "failed"
    monkeypatch.setattr(TunesmithTrainer, "_save_checkpoint", real_save)
    second = runner.invoke(app, ["run", str(root), "--force", "--json"])
    assert second.exit_code == 0, second.output
    ev = events(second.stdout)
    assert ev["train"]["status"] == "resumed" and ev["train"]["run_id"] == run_dir.name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 4  # the two complete checkpoints were at steps 2 and 4
    assert ev["eval"]["status"] == "ok"


def test_run_with_a_judge_prints_its_scores_in_the_final_table(tmp_path, tiny_model_dir):
    from fixtures.fake_openai import FakeOpenAI, Reply

    def judge(req):
        text = req["messages"][-1]["content"]
        if "winner" in text:
            return Reply(content=json.dumps({"winner": "second", "reason": "tuned is better"}))
        return Reply(content=json.dumps({"correctness": 4, "format": 5, "completeness": 3, "notes": "ok"}))

    with FakeOpenAI(judge) as server:
        judge_settings = f"  judge:\n    base_url: {server.base_url}\n    model: judge-model\n"  # under eval:
        root = make_project(tmp_path / "p", tiny_model_dir, train=judge_settings + "train:\n  epochs: 1\n")
        result = runner.invoke(app, ["run", str(root), "--force"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "LLM judge judge-model: rubric scores 1-5" in out
    assert "correctness" in out and "4.000 [4.000, 4.000]" in out
    # "second" in both orders: a position-biased judge, so every pair is a tie and consistency is 0 %
    assert "side by side in both orders" in out and "the same verdict in both orders 0%" in out


def test_a_split_made_before_run_does_not_stop_the_check_stage(tmp_path, tiny_model_dir):
    """`make demo-data` (split, check) then `make demo` (run): the source holds the sealed rows by
    construction, and the check stage must not call that an overlap."""
    root = make_project(tmp_path / "p", tiny_model_dir)
    assert runner.invoke(app, ["split", "-p", str(root)]).exit_code == 0
    result = runner.invoke(app, ["run", str(root), "--until", "split", "--json"])
    assert result.exit_code == 0, result.output
    ev = events(result.stdout)
    assert ev["check"]["status"] == "ok" and ev["check"]["errors"] == 0


def test_run_says_estimates_shows_progress_in_a_log_and_where_the_time_went(tmp_path, tiny_model_dir, monkeypatch,
                                                                              capsys):
    import re

    from tunesmith.pipeline import STAGES, run_pipeline

    monkeypatch.setenv("TUNESMITH_PROGRESS_EVERY", "0")  # a line per step / answer
    root = make_project(tmp_path / "p", tiny_model_dir, train="train:\n  epochs: 1\n")
    said: list[str] = []
    result = run_pipeline(root, force=True, say=said.append)
    err = capsys.readouterr().err.splitlines()  # stderr is no terminal here: plain lines

    tests = len((root / "data" / "test.jsonl").read_text().splitlines())
    assert (f"baseline: the base model answers up to {tests} test + 20 regression prompts; "
            "the rate and ETA follow in the progress lines") in said
    assert f"eval: the tuned and the base model each answer {tests} test + 20 regression prompts; " \
           "the rate and ETA follow in the progress lines" in said
    steps = result.stages["train"]["metrics"]["steps"]
    assert any(re.fullmatch(rf"training: {steps} steps ≈ \d+ s \([\d.]+ s per step, measured\)", m) for m in said), said
    for stage, unit in (("baseline", "answers"), ("training", "steps"), ("eval", "answers")):
        assert err.count(f"{stage}: started, {tests + 20 if unit == 'answers' else steps} {unit} to do") == 1, err
        assert any(re.match(rf"{stage}: \d+/\d+ {unit} \(\d+%\), [\d.]+ {unit}/(s|min), ETA ", line) for line in err)
        # the baseline may stop once its sample decides (evaluate.sequential): "ended at" short of the total
        assert any(line.startswith((f"{stage}: done, ", f"{stage}: ended at ")) for line in err), err

    for stage in STAGES:
        seconds = result.stages[stage]["seconds"]
        assert isinstance(seconds, float) and seconds >= 0 and result.timings[stage] == seconds
    assert result.timings["total"] >= sum(result.timings[s] for s in STAGES) - 0.5
    assert result.timings["train"] > 0 and result.timings["baseline"] > 0
    assert re.fullmatch(r"time: check \d+ s, split \d+ s, baseline [\d a-z]+, train [\d a-z]+, eval [\d a-z]+, "
                        r"report \d+ s; total [\d a-z]+", result.time_line()), result.time_line()

    again = runner.invoke(app, ["run", str(root), "--force", "--json"])
    assert again.exit_code == 0, again.output
    ev = events(again.stdout)
    assert all(isinstance(ev[s]["seconds"], float) for s in STAGES)
    timings = ev["done"]["timings"]
    assert list(timings) == [*STAGES, "total"]
    assert [timings[s] for s in STAGES[:-1]] == ["skipped"] * 5 and isinstance(timings["report"], float)
    assert re.search(r"^time: check skipped, split skipped, baseline skipped, train skipped, eval skipped, "
                     r"report \d+ s; total \d+ s$", again.stderr, re.M), again.stderr
    assert "started" not in again.stderr  # skipped stages generate and train nothing, and --json shows no progress


def test_the_baseline_stage_stops_early_and_keys_on_baseline_full_and_the_rule(tmp_path, tiny_model_dir, monkeypatch):
    """A hopeless base stops after the minimum sample (the stage says so); baseline.full and the
    stopping rule are part of the stage's key, so changing either measures again."""
    root = make_project(tmp_path / "p", tiny_model_dir, n=120)
    first = runner.invoke(app, ["run", str(root), "--until", "baseline", "--json"])
    assert first.exit_code == 0, first.output
    stage = events(first.stdout)["baseline"]
    tests = len((root / "data" / "test.jsonl").read_text().splitlines())
    assert tests > 16 and stage["status"] == "ok" and (stage["evaluated"], stage["of"]) == (16, tests)
    assert stage["stopped"].endswith("is below the 0.80 bar") and "of a random 16 of the" in stage["message"]
    recorded = json.loads((root / ".tunesmith" / "pipeline.json").read_text())["baseline"]
    assert recorded["sample"]["evaluated"] == 16 and recorded["regression"]["not_asked"] == 20
    again = events(runner.invoke(app, ["run", str(root), "--until", "baseline", "--json"]).stdout)["baseline"]
    assert again["status"] == "skipped" and again["stopped"] == stage["stopped"]
    monkeypatch.setattr("tunesmith.evaluate.sequential.RULE", "another rule")
    assert events(runner.invoke(app, ["run", str(root), "--until", "baseline", "--json"]).stdout)["baseline"][
        "status"] == "ok"
    with open(root / "tunesmith.yaml", "a") as fh:
        fh.write("baseline:\n  full: true\n")
    full = runner.invoke(app, ["run", str(root), "--until", "baseline", "--json"])
    stage = events(full.stdout)["baseline"]
    assert stage["status"] == "ok" and "stopped" not in stage and "of the test set" in stage["message"]
    recorded = json.loads((root / ".tunesmith" / "pipeline.json").read_text())["baseline"]
    assert recorded["sample"] == {"evaluated": tests, "of": tests, "stopped": None}
    assert recorded["regression"]["total"] == 20
