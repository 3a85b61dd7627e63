"""`tunesmith train --accelerate-config FILE` (and train.accelerate_config): launched through
`accelerate launch --config_file`, FSDP on 2 CPU processes matching one, DeepSpeed where it is installed."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from datagen import split_project, write_project_file

FSDP = """compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_processes: 2
num_machines: 1
machine_rank: 0
mixed_precision: 'no'
use_cpu: true
fsdp_config:
  fsdp_version: 1
  fsdp_sharding_strategy: FULL_SHARD
  fsdp_auto_wrap_policy: NO_WRAP
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_use_orig_params: true
  fsdp_offload_params: false
  # torch refuses sync_module_states on CPU ("not supported on cpu"); every rank loads the same weights anyway
  fsdp_sync_module_states: false
  fsdp_cpu_ram_efficient_loading: false
"""
DEEPSPEED = """compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
num_processes: 2
mixed_precision: 'no'
deepspeed_config:
  zero_stage: 2
  gradient_accumulation_steps: 1
  offload_optimizer_device: none
  offload_param_device: none
"""


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunesmith", *args], capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture
def project(tmp_path, tiny_model_dir) -> Path:
    return split_project(tmp_path / "p", tiny_model_dir)


def test_print_command_shows_the_launch_with_the_config_and_machines(project, tmp_path):
    config = tmp_path / "fsdp.yaml"
    config.write_text(FSDP)
    done = _cli("train", "-p", str(project), "--accelerate-config", str(config), "--num-machines", "2",
                "--machine-rank", "1", "--main-process-ip", "10.0.0.1", "--main-process-port", "29500",
                "--epochs", "2", "--print-command")
    assert done.returncode == 0, done.stderr
    cmd = shlex.split(done.stdout.strip())
    assert cmd[cmd.index("--config_file") + 1] == str(config.resolve())
    launcher = cmd[:cmd.index("-m")]
    for flag, value in (("--num_machines", "2"), ("--machine_rank", "1"), ("--main_process_ip", "10.0.0.1"),
                        ("--main_process_port", "29500")):
        assert launcher[launcher.index(flag) + 1] == value
    inner = cmd[cmd.index("-m") + 1:]
    assert inner[:3] == ["tunesmith", "train", "-p"] and "--epochs" in inner and "--run-id" in inner
    for own in ("--accelerate-config", "--num-machines", "--machine-rank", "--print-command", "--main-process-ip"):
        assert own not in inner  # the launched processes train; they do not launch again
    assert not (project / "runs").exists()


def test_the_setting_launches_too_relative_to_the_project(project):
    (project / "fsdp.yaml").write_text(FSDP)
    write_project_file(project, _base_model(project), train={"accelerate_config": "fsdp.yaml"})
    done = _cli("train", "-p", str(project), "--num-processes", "4", "--print-command")
    assert done.returncode == 0, done.stderr
    cmd = shlex.split(done.stdout.strip())
    assert cmd[cmd.index("--config_file") + 1] == str((project / "fsdp.yaml").resolve())
    assert cmd[cmd.index("--num_processes") + 1] == "4"


def _base_model(project: Path) -> str:
    from tunesmith.project import load_project

    return load_project(project).base_model


def test_a_missing_config_file_is_named(project, tmp_path):
    done = _cli("train", "-p", str(project), "--accelerate-config", str(tmp_path / "none.yaml"))
    assert done.returncode != 0
    assert f"--accelerate-config: {tmp_path / 'none.yaml'} does not exist" in done.stderr
    assert "accelerate config --config_file FILE" in done.stderr


def test_print_command_for_one_process_says_there_is_none(project):
    done = _cli("train", "-p", str(project), "--print-command")
    assert done.returncode != 0
    assert "--print-command shows the `accelerate launch` command, and this train runs in one process" in done.stderr


def test_deepspeed_print_command_works_without_deepspeed(project, tmp_path):
    config = tmp_path / "ds.yaml"
    config.write_text(DEEPSPEED)
    done = _cli("train", "-p", str(project), "--accelerate-config", str(config), "--print-command")
    assert done.returncode == 0, done.stderr
    cmd = shlex.split(done.stdout.strip())
    assert cmd[cmd.index("--config_file") + 1] == str(config.resolve())


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed here")
def test_deepspeed_without_the_package_is_refused_before_launching(project, tmp_path):
    config = tmp_path / "ds.yaml"
    config.write_text(DEEPSPEED)
    done = _cli("train", "-p", str(project), "--accelerate-config", str(config))
    assert done.returncode != 0
    assert f"{config.resolve()}: distributed_type DEEPSPEED needs the deepspeed package, which is not installed" in done.stderr
    assert not (project / "runs").exists()


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="deepspeed is not installed (pip install deepspeed; it needs a CUDA toolchain)")
def test_deepspeed_zero2_trains(project, tmp_path):
    config = tmp_path / "ds.yaml"
    config.write_text(DEEPSPEED)
    done = _cli("train", "-p", str(project), "--accelerate-config", str(config), "--epochs", "1", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    plan = json.loads(next((project / "runs").glob("2*")).joinpath("plan.json").read_text())
    assert plan["derived"]["topology"]["distributed_type"] == "DEEPSPEED"


def _step_losses(run_dir: Path) -> dict[int, float]:
    events = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in events if e["event"] == "step" and "loss" in e}


def test_fsdp_on_two_cpu_processes_matches_one(project, tmp_path):
    """FSDP (FULL_SHARD, gloo) over 2 CPU processes with the same global batch ends at the same loss as
    one process, within 1 %; the run records its topology."""
    config = tmp_path / "fsdp.yaml"
    config.write_text(FSDP)
    common = ["train", "-p", str(project), "--epochs", "1", "--lr", "3e-3", "--no-converge", "--json"]
    sharded = _cli(*common, "--name", "fsdp", "--accelerate-config", str(config))
    if sharded.returncode != 0 and "not supported on cpu" in sharded.stderr:
        pytest.skip("FSDP on CPU is not supported by this torch/accelerate: " + sharded.stderr.strip().splitlines()[-1])
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    single = _cli(*common, "--name", "one")
    assert single.returncode == 0, single.stderr[-2000:]
    two, one = (next((project / "runs").glob(f"*-{n}")) for n in ("fsdp", "one"))
    losses_two, losses_one = _step_losses(two), _step_losses(one)
    assert losses_two.keys() == losses_one.keys() and len(losses_one) >= 3
    last = max(losses_one)
    assert losses_one[last] < losses_one[1] - 0.02  # it learned something, so the comparison means something
    assert abs(losses_two[last] - losses_one[last]) < 0.01 * losses_one[last]
    topology = json.loads((two / "plan.json").read_text())["derived"]["topology"]
    assert topology == {"processes": 2, "machines": 1, "processes_per_machine": 2, "distributed_type": "FSDP",
                        "accelerate_config": str(config.resolve())}
    assert (two / "adapter" / "adapter_model.safetensors").is_file()
