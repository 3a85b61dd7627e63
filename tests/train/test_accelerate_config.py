"""`tunesmith train --accelerate-config FILE` (and train.accelerate_config): launched through
`accelerate launch --config_file`, FSDP on 2 CPU processes matching one and resumed after a kill -9 of the
whole launch, the checkpoints a multi-process resume may pick, DeepSpeed where it is installed."""

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
    assert plan["derived"]["topology"]["requested"] == plan["derived"]["topology"]["distributed_type"] == "DEEPSPEED"


#: what `tunesmith train` says when accelerate 1.x runs the FSDP config on CPU
_RAN_AS_MULTI_CPU = "accelerate runs this FSDP config as MULTI_CPU on the CPU: no sharding"


def test_the_line_says_when_accelerate_runs_another_type_than_asked():
    from tunesmith.train.distributed import what_ran_line

    assert what_ran_line("FSDP", "MULTI_CPU", "cpu") == _RAN_AS_MULTI_CPU
    assert what_ran_line("DEEPSPEED", "MULTI_GPU", "cuda") == \
        "accelerate runs this DEEPSPEED config as MULTI_GPU: no sharding"
    assert what_ran_line("FSDP", "FSDP", "cuda") is None
    assert what_ran_line("DDP", "MULTI_CPU", "cpu") is None  # plain data parallel is what DDP asks for
    assert what_ran_line("NO", "NO", "cpu") is None


def test_topology_before_training_holds_only_what_was_asked(monkeypatch):
    """A plan made before training (--dry-run in the launched processes) cannot know what accelerate will run."""
    from tunesmith.train.distributed import topology

    for name, value in (("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "2"), ("ACCELERATE_USE_FSDP", "true")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TUNESMITH_ACCELERATE_CONFIG", raising=False)
    assert topology() == {"processes": 2, "machines": 1, "processes_per_machine": 2, "requested": "FSDP",
                          "accelerate_config": None}


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
    kinds = [json.loads(line)["event"] for line in sharded.stdout.strip().splitlines()]
    assert kinds.count("plan") == 1 and kinds.count("done") == 1 and kinds[-1] == "done"  # rank 0 speaks alone
    single = _cli(*common, "--name", "one")
    assert single.returncode == 0, single.stderr[-2000:]
    two, one = (next((project / "runs").glob(f"*-{n}")) for n in ("fsdp", "one"))
    losses_two, losses_one = _step_losses(two), _step_losses(one)
    assert losses_two.keys() == losses_one.keys() and len(losses_one) >= 3
    last = max(losses_one)
    assert losses_one[last] < losses_one[1] - 0.02  # it learned something, so the comparison means something
    assert abs(losses_two[last] - losses_one[last]) < 0.01 * losses_one[last]
    topology = json.loads((two / "plan.json").read_text())["derived"]["topology"]
    # asked for FSDP; accelerate runs it on CPU as plain data parallel, and the record says both
    assert topology == {"processes": 2, "machines": 1, "processes_per_machine": 2, "requested": "FSDP",
                        "distributed_type": "MULTI_CPU", "accelerate_config": str(config.resolve())}
    assert sharded.stderr.count(_RAN_AS_MULTI_CPU) == 1, sharded.stderr[-2000:]
    assert (two / "adapter" / "adapter_model.safetensors").is_file()


def test_fsdp_run_killed_then_resumed_under_its_config(project, tmp_path):
    """kill -9 of the whole launch (launcher and both ranks), then --resume with the same config: it continues
    from the last checkpoint instead of starting over, and ends with an adapter."""
    import os
    import signal
    import time

    config = tmp_path / "fsdp.yaml"
    config.write_text(FSDP)
    cmd = [sys.executable, "-m", "tunesmith", "train", "-p", str(project), "--accelerate-config", str(config),
           "--epochs", "12", "--eval-every", "2", "--no-converge", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    killed_after, deadline = None, time.time() + 300
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("event") == "step" and event.get("step", 0) >= 5:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks: a real crash
            killed_after = event["step"]
            break
        assert time.time() < deadline, "training never reached step 5"
    proc.wait(timeout=60)
    assert killed_after is not None
    run_dir = next((project / "runs").glob("2*"))
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and checkpoints[-1] >= 4
    assert not (run_dir / "adapter").exists()

    done = _cli("train", "-p", str(project), "--resume", "latest", "--accelerate-config", str(config), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    events = [json.loads(line) for line in done.stdout.strip().splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["run_id"] == run_dir.name
    assert events[-1]["metrics"]["resumed_from_step"] == checkpoints[-1]
    assert min(e["step"] for e in events if e.get("event") == "step" and "loss" in e) == checkpoints[-1] + 1
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    topology = json.loads((run_dir / "plan.json").read_text())["derived"]["topology"]
    assert (topology["requested"], topology["distributed_type"]) == ("FSDP", "MULTI_CPU")


def test_ctrl_c_on_a_launch_lets_rank_0_record_the_interruption(project, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) during a 2-process launch: `tunesmith train` waits for
    the launch to pass it on instead of killing the launcher, whose ranks end with it, so the run is marked
    "interrupted" with its resume hint rather than left "running"."""
    import os
    import signal
    import time

    from tunesmith.project import load_project

    config = tmp_path / "ddp.yaml"
    config.write_text(FSDP)
    cmd = [sys.executable, "-m", "tunesmith", "train", "-p", str(project), "--accelerate-config", str(config),
           "--epochs", "12", "--no-converge", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    deadline = time.time() + 300
    for line in proc.stdout:
        if json.loads(line).get("event") == "step":
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the launcher's group, not the ranks' sessions
            break
        assert time.time() < deadline, "training never started"
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    assert "interrupted: waiting for the launched processes to stop" in err
    record = load_project(project).registry().list()[0]
    assert record.status == "interrupted", (record.status, err[-2000:])


_CHILD = """
import subprocess, sys, time
# like torchrun: each rank in a session of its own, out of reach of a signal to the launcher's process group
child = subprocess.Popen([sys.executable, "-c", "import sys, time\\n"
                          "from tunesmith.train.distributed import end_with_launcher\\n"
                          "end_with_launcher()\\nprint('ready', flush=True)\\ntime.sleep(120)"],
                         start_new_session=True, stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "ready"
print(child.pid, flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie lingers until init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


#: `tunesmith train` -> accelerate (here: _CHILD, left alive) -> the rank
_LAUNCHER = """
import os, subprocess, sys, time
os.environ["TUNESMITH_LAUNCHER_PID"] = str(os.getpid())
agent = subprocess.Popen([sys.executable, "-c", sys.argv[1]], start_new_session=True)
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("killed", ["its parent", "tunesmith train only"])
def test_a_launched_process_ends_with_its_launcher(tmp_path, killed):
    """torchrun starts every rank in a session of its own: a kill -9 of the launch's process group does not
    reach them, and without end_with_launcher they trained on as orphans into the run a resume then uses.
    Killing only `tunesmith train` (its accelerate process lives on) ends them too."""
    import os
    import signal
    import time

    script = [_CHILD] if killed == "its parent" else [_LAUNCHER, _CHILD]
    launcher = subprocess.Popen([sys.executable, "-c", *script], stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
    line = launcher.stdout.readline().strip()
    assert line.isdigit(), "the child never started"
    rank = int(line)
    assert _running(rank)
    agent = int(Path(f"/proc/{rank}/stat").read_text().rsplit(")", 1)[1].split()[1])
    try:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=30)
        deadline = time.time() + 5
        while _running(rank) and time.time() < deadline:
            time.sleep(0.05)
        assert not _running(rank), "the launched process outlived its launcher"
    finally:
        for pid in {rank, agent} - {launcher.pid}:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _rng_file(path: Path, *, cut: bool = False) -> None:
    import torch

    torch.save({"cpu": torch.random.get_rng_state()}, path)
    if cut:  # killed while torch.save wrote it
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _checkpoint(run_dir: Path, step: int, ranks: list[int] | None, *, cut: int | None = None) -> Path:
    """checkpoint-<step> as the Trainer leaves it: rank 0's trainer_state.json, one RNG file per rank in `ranks`
    (None: one process, rng_state.pth)."""
    ckpt = run_dir / "checkpoints" / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    for rank in ranks if ranks is not None else [None]:
        name = "rng_state.pth" if rank is None else f"rng_state_{rank}.pth"
        _rng_file(ckpt / name, cut=cut is not None and rank == cut)
    return ckpt


def test_a_checkpoint_one_rank_did_not_finish_is_not_picked(tmp_path):
    """Rank 0 writes trainer_state.json while the other ranks may still write their RNG state (their last
    write): killed then, the checkpoint has rank 0's state but not every rank's part."""
    from tunesmith.train.local import last_checkpoint

    two = _checkpoint(tmp_path, 2, [0, 1])
    _checkpoint(tmp_path, 4, [0])  # rank 1 killed before its RNG file
    _checkpoint(tmp_path, 6, [0, 1], cut=1)  # rank 1 killed while writing it
    _checkpoint(tmp_path, 8, [0, 2])  # rank 1's file missing between the others
    assert last_checkpoint(tmp_path, processes=2) == two
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-2"]


def test_a_checkpoint_short_of_the_runs_processes_is_skipped_not_removed(tmp_path):
    """4 processes started the run: a checkpoint with 3 RNG files may be one the last rank did not finish,
    or a whole one from a resume in 3 processes. Not resumed from while a whole one is older, nor removed."""
    from tunesmith.train.local import last_checkpoint

    two = _checkpoint(tmp_path, 2, [0, 1, 2, 3])
    _checkpoint(tmp_path, 4, [0, 1, 2])
    assert last_checkpoint(tmp_path, processes=4) == two
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert last_checkpoint(tmp_path, processes=3) == tmp_path / "checkpoints" / "checkpoint-4"


def test_when_only_short_checkpoints_are_left_the_newest_resumes_rather_than_step_0(tmp_path):
    """4 processes started the run, a resume in 2 followed, and rotation removed every 4-process checkpoint:
    rank 0's state in the 2-process ones is whole, so the run goes on from the newest, not from the start."""
    from tunesmith.train.local import last_checkpoint

    _checkpoint(tmp_path, 6, [0, 1])
    eight = _checkpoint(tmp_path, 8, [0, 1])
    assert last_checkpoint(tmp_path, processes=4) == eight


def test_one_process_checkpoints_and_model_only_checkpoints_are_complete(tmp_path):
    from tunesmith.train.local import last_checkpoint

    _checkpoint(tmp_path, 2, None)
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoints" / "checkpoint-2"
    four = _checkpoint(tmp_path, 4, [])  # save_only_model: no RNG state at all
    assert last_checkpoint(tmp_path, processes=2) == four
    _checkpoint(tmp_path, 6, None)
    (tmp_path / "checkpoints" / "checkpoint-6" / "rng_state.pth").write_bytes(b"PK\3\4")  # cut off
    assert last_checkpoint(tmp_path) == four


def test_a_sharded_fsdp_checkpoint_without_its_metadata_is_not_picked(tmp_path):
    """FSDP's SHARDED_STATE_DICT saves pytorch_model_fsdp_0/ and optimizer_0/ through torch.distributed.checkpoint:
    one .distcp file per rank, then .metadata once every rank's shard is written."""
    from tunesmith.train.local import last_checkpoint

    two = _checkpoint(tmp_path, 2, [0, 1])
    four = _checkpoint(tmp_path, 4, [0, 1])
    for ckpt in (two, four):
        for shard_dir in ("pytorch_model_fsdp_0", "optimizer_0"):
            (ckpt / shard_dir).mkdir()
            for rank in (0, 1):
                (ckpt / shard_dir / f"__{rank}_0.distcp").write_bytes(b"\0" * 8)
            (ckpt / shard_dir / ".metadata").write_bytes(b"\0" * 8)
    (four / "optimizer_0" / ".metadata").unlink()
    assert last_checkpoint(tmp_path, processes=2) == two
