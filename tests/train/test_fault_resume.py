"""Resume after a crash ends where the uninterrupted run ends (found by benchmarks/fault_campaign.py):
the stopping rules keep what they saw before the checkpoint, a run that had already stopped does not
train on, a resumed run keeps its planned checkpoint cadence, and a checkpoint whose trainer state
was cut off mid-write is never picked."""

import json
from pathlib import Path

import pytest

from datagen import split_project
from tunesmith.runs import RunRegistry
from tunesmith.train.api import train_project
from tunesmith.train.trainer import TunesmithTrainer


def _project(root: Path, model_dir: Path, n: int = 60) -> Path:
    return split_project(root, model_dir, n)


def _adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _crash_after_save(monkeypatch, saves: int) -> None:
    """The process dies right after its `saves`-th complete checkpoint (what a kill -9 leaves)."""
    real = TunesmithTrainer._save_checkpoint
    calls = {"n": 0}

    def save_then_die(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == saves:
            raise KeyboardInterrupt

    monkeypatch.setattr(TunesmithTrainer, "_save_checkpoint", save_then_die)


# epochs 8, a checkpoint every 3 steps: this tiny run stops by convergence at step 9 of 24
CONVERGING = {"epochs": 8, "eval_every": 3}


def test_a_resumed_run_stops_where_the_uninterrupted_run_stopped(tmp_path, tiny_model_dir, monkeypatch,
                                                                   one_torch_thread):
    root = _project(tmp_path / "p", tiny_model_dir)
    whole = train_project(root, CONVERGING, run_name="whole", progress=False)
    assert whole.metrics.get("converged") and whole.metrics["steps"] < whole.plan["derived"]["total_steps"]

    _crash_after_save(monkeypatch, saves=1)
    with pytest.raises(KeyboardInterrupt):
        train_project(root, CONVERGING, run_name="cut", progress=False)
    monkeypatch.undo()
    cut = RunRegistry(root / "runs").get("latest")
    assert cut.id.endswith("-cut") and cut.status == "interrupted"
    resumed = train_project(root, None, resume=cut.id, progress=False)

    assert resumed.metrics["resumed_from_step"] == 3
    assert resumed.metrics["steps"] == whole.metrics["steps"]
    assert resumed.metrics["converged"]["at_step"] == whole.metrics["converged"]["at_step"]
    assert _same_weights(_adapter(resumed.run_dir), _adapter(whole.run_dir))


def test_a_run_killed_after_it_stopped_does_not_train_on(tmp_path, tiny_model_dir, one_torch_thread):
    """Killed after the stopping rule decided but before the adapter was written: the last checkpoint is
    the one it stopped at, and the resume must finish there, not train to the epoch ceiling."""
    import shutil

    root = _project(tmp_path / "p", tiny_model_dir)
    whole = train_project(root, CONVERGING, progress=False)
    stopped = whole.metrics["steps"]
    assert whole.metrics.get("converged") and stopped < whole.plan["derived"]["total_steps"]
    expected = _adapter(whole.run_dir)
    # what the kill leaves: checkpoints up to the stop, no adapter, the registry row still "running"
    shutil.rmtree(whole.run_dir / "adapter")
    RunRegistry(root / "runs").set_status(whole.run_id, "running")

    resumed = train_project(root, None, resume=whole.run_id, progress=False)
    assert resumed.metrics["steps"] == stopped and resumed.metrics["resumed_from_step"] == stopped
    assert resumed.metrics["converged"]["at_step"] == stopped
    assert _same_weights(_adapter(whole.run_dir), expected)
    assert RunRegistry(root / "runs").get(whole.run_id).status == "completed"


def test_a_resumed_run_keeps_the_checkpoint_cadence_its_plan_measured(tmp_path, tiny_model_dir, monkeypatch,
                                                                        one_torch_thread):
    """eval_every left to the plan follows the measured step time; a resume measures nothing, and must
    keep the recorded cadence instead of falling back to the step count's default."""
    monkeypatch.setattr("tunesmith.train.api.estimate_step_seconds", lambda prep: 0.5)  # a fixed measurement
    root = _project(tmp_path / "p", tiny_model_dir)
    flags = {"epochs": 12, "converge": False}
    _crash_after_save(monkeypatch, saves=1)
    with pytest.raises(KeyboardInterrupt):
        train_project(root, flags, progress=False)
    monkeypatch.undo()  # a resume measures nothing: the fixed step time is not needed any more
    record = RunRegistry(root / "runs").get("latest")
    planned = record.plan
    every = planned["settings"]["eval_every"]["value"]
    total = planned["derived"]["total_steps"]
    assert total // 10 < every < total, planned["settings"]["eval_every"]  # the measured cadence, not the default

    resumed = train_project(root, None, resume=record.id, progress=False)
    assert resumed.plan["settings"]["eval_every"] == planned["settings"]["eval_every"]
    assert json.loads((resumed.run_dir / "plan.json").read_text())["settings"]["eval_every"]["value"] == every
    assert resumed.metrics["resumed_from_step"] == every
    # every `every` steps, and at the last step (the Trainer evaluates and saves there too)
    assert [e["step"] for e in resumed.metrics["eval_losses"]] == sorted({*range(every, total + 1, every), total})


@pytest.mark.parametrize("state", ["", '{"global_step": 4, "log_history": [{"loss": 1.2', "not json"])
def test_a_checkpoint_whose_trainer_state_was_cut_off_is_not_picked(tmp_path, state):
    """trainer_state.json is the Trainer's last write: killed (or out of disk) while writing it, the
    file exists but is empty or cut; that checkpoint must not be resumed from."""
    from tunesmith.train.local import last_checkpoint

    ckpts = tmp_path / "checkpoints"
    (ckpts / "checkpoint-2").mkdir(parents=True)
    (ckpts / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2, "log_history": []}')
    (ckpts / "checkpoint-4").mkdir()
    (ckpts / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    (ckpts / "checkpoint-4" / "trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == ckpts / "checkpoint-2"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2"]


def _complete_checkpoints(run_dir: Path) -> list[int]:
    """Checkpoints whose trainer state is whole JSON (the Trainer's last write), by step."""
    steps = []
    for ckpt in (run_dir / "checkpoints").glob("checkpoint-*"):
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        steps.append(int(ckpt.name.split("-")[1]))
    return sorted(steps)


def test_a_full_disk_while_saving_a_checkpoint_says_so_and_the_last_good_one_resumes(tmp_path, tiny_model_dir,
                                                                                      monkeypatch, one_torch_thread):
    """safetensors reports a full disk as its own SafetensorError ("... (os error 28)"), not an OSError:
    it must still read as a full disk, mark the run failed, and leave it resumable."""
    import peft.peft_model
    from safetensors import SafetensorError
    from typer.testing import CliRunner

    from tunesmith.cli import app

    root = _project(tmp_path / "p", tiny_model_dir)
    real = peft.peft_model.safe_save_file
    calls = {"n": 0}

    def save_until_the_disk_fills(tensors, filename, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] < 3:
            return real(tensors, filename, *args, **kwargs)
        Path(filename).write_bytes(b"\0" * 64)  # what the write got onto the disk
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(peft.peft_model, "safe_save_file", save_until_the_disk_fills)
    runner = CliRunner()
    first = runner.invoke(app, ["train", "-p", str(root), "--epochs", "4", "--eval-every", "3", "--no-converge"])
    assert first.exit_code == 2, first.output
    run = RunRegistry(root / "runs").get("latest")
    assert (f"error: training run {run.id} stopped: cannot write {run.path / 'checkpoints' / 'checkpoint-9'}: "
            "the disk is full (or its quota or file size limit reached)") in first.stderr
    assert f"hint: free some space, then `tunesmith train --resume {run.id}`" in first.stderr
    assert run.status == "failed" and "disk is full" in run.error
    assert _complete_checkpoints(run.path) == [3, 6]

    monkeypatch.undo()
    again = runner.invoke(app, ["train", "-p", str(root), "--resume", run.id, "--json"])
    assert again.exit_code == 0, again.output
    done = json.loads(again.stdout.strip().splitlines()[-1])
    assert done["metrics"]["resumed_from_step"] == 6 and done["metrics"]["steps"] == 12
    assert RunRegistry(root / "runs").get(run.id).status == "completed"


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MB tmpfs (root with mount rights only): a disk that really fills up."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1000k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root with mount rights")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_real_full_disk_during_training_is_a_clear_error_and_the_run_resumes(tmp_path, tiny_model_dir, small_disk,
                                                                                one_torch_thread):
    """The runs directory on a 1 MB tmpfs: a checkpoint is ~330 kB, so the third one cannot be written
    (torch.save says only "unexpected pos"; the free space tells). Grown to 8 MB, the run resumes."""
    import subprocess

    from typer.testing import CliRunner

    from tunesmith.cli import app

    root = _project(tmp_path / "p", tiny_model_dir)
    with open(root / "tunesmith.yaml", "a") as fh:
        fh.write(f"train:\n  runs_dir: {small_disk / 'runs'}\n")
    runner = CliRunner()
    first = runner.invoke(app, ["train", "-p", str(root), "--epochs", "4", "--eval-every", "3", "--no-converge"])
    assert first.exit_code == 2, first.output
    assert "the disk is full" in first.stderr and "--resume" in first.stderr, first.stderr
    run_dir = next((small_disk / "runs").glob("2*"))
    good = _complete_checkpoints(run_dir)
    assert good and good[-1] < 12

    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    again = runner.invoke(app, ["train", "-p", str(root), "--resume", run_dir.name, "--json"])
    assert again.exit_code == 0, again.output
    done = json.loads(again.stdout.strip().splitlines()[-1])
    assert done["metrics"]["resumed_from_step"] == good[-1] and done["metrics"]["steps"] == 12


def test_a_registry_on_a_full_disk_says_the_disk_is_full(tmp_path, small_disk):
    """SQLite reports a write with no room as "database or disk is full" or as a "disk I/O error"; either
    way the registry must not call itself damaged (its hint would be to move it away)."""
    from tunesmith.runs import RegistryError

    registry = RunRegistry(small_disk / "runs")
    registry.create_run("r0", project_root=tmp_path, base_model="m", method="lora", config={}, plan={}, data={})
    with open(small_disk / "filler", "wb") as fh:  # fill what is left
        with pytest.raises(OSError):
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
    with pytest.raises(RegistryError) as caught:
        for i in range(1, 50):  # the first writes may still fit in pages SQLite already holds
            registry.set_status("r0", "failed", error="x" * 20000 * i)
    assert caught.value.message.startswith(f"cannot write {registry.db_path}: the disk is full (")
    assert caught.value.hint == "free some space and run the command again"
