"""Multi-process training through accelerate: one run id and one writer across ranks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import UsageError, one_line


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def shared_value(value: str) -> str:
    """Rank 0's value, on every rank (so `accelerate launch -m tunesmith train` agrees on a run id)."""
    if world_size() <= 1:
        return value
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    PartialState()  # initialises the process group the Trainer will use
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def wait_for_everyone() -> None:
    if world_size() > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


#: set in the processes `tunesmith train` launches: they train, they do not launch again
LAUNCHED_ENV = "TUNESMITH_LAUNCHED"
#: the accelerate config file they were launched with, for the run's recorded topology
CONFIG_ENV = "TUNESMITH_ACCELERATE_CONFIG"
#: the `tunesmith train` process that launched them: they end when it is gone (end_with_launcher)
LAUNCHER_PID_ENV = "TUNESMITH_LAUNCHER_PID"


@dataclass(frozen=True)
class Launch:
    """How `tunesmith train` starts its processes: accelerate's own config and multi-node flags."""

    num_processes: int | None = None  # None: the config file's (else 1)
    config: Path | None = None
    num_machines: int | None = None
    machine_rank: int | None = None
    main_process_ip: str | None = None
    main_process_port: int | None = None

    def machine_options(self) -> list[str]:
        pairs = [("--num_machines", self.num_machines), ("--machine_rank", self.machine_rank),
                 ("--main_process_ip", self.main_process_ip), ("--main_process_port", self.main_process_port)]
        return [part for flag, value in pairs if value is not None for part in (flag, str(value))]


def launched() -> bool:
    return os.environ.get(LAUNCHED_ENV) == "1"


def read_accelerate_config(path: Path, where: str) -> dict[str, Any]:
    """The accelerate config file as a mapping; `where` names the option or setting that gave it."""
    import yaml

    if not path.is_file():
        raise UsageError(f"{where}: {path} does not exist",
                         "write one with `accelerate config --config_file FILE`, or fix the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.suffix != ".json" else \
            json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise UsageError(f"{where}: {path} is not an accelerate config file ({one_line(exc)})",
                         "write one with `accelerate config --config_file FILE`") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where}: {path} is not an accelerate config file (no mapping of settings)",
                         "write one with `accelerate config --config_file FILE`")
    return data


def refuse_missing_backend(config: dict[str, Any], path: Path) -> None:
    """DeepSpeed is a separate package: say so before every process fails to import it."""
    import importlib.util

    if str(config.get("distributed_type", "")).upper() == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise UsageError(f"{path}: distributed_type DEEPSPEED needs the deepspeed package, which is not installed",
                         "pip install deepspeed (it needs a CUDA toolchain), or use an FSDP config")


def launch_command(launch: Launch | int, argv: list[str], *, cpu: bool) -> list[str]:
    """`accelerate launch` re-running this same train command in each process: with the user's config
    file when there is one, else data-parallel (DDP) over N processes."""
    launch = Launch(num_processes=launch) if isinstance(launch, int) else launch
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    base = [accelerate] if accelerate else [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate:
        base.append("launch")
    if launch.config is not None:  # the file says how; a flag given here overrides its value
        opts = ["--config_file", str(launch.config)]
        if launch.num_processes is not None:
            opts += ["--num_processes", str(launch.num_processes)]
        return [*base, *opts, *launch.machine_options(), "-m", "tunesmith", *argv]
    n = launch.num_processes or 1
    # `--multi_gpu` selects the torchrun launcher, which also runs N CPU processes (gloo) when there is no
    # GPU; accelerate's `--cpu` would start a single process (multi-CPU there means mpirun).
    opts = ["--multi_gpu", "--num_processes", str(n), *(launch.machine_options() or ["--num_machines", "1"]),
            "--mixed_precision", "no", "--dynamo_backend", "no"]
    if cpu:
        threads = max(1, (os.cpu_count() or 1) // n)
        opts += ["--num_cpu_threads_per_process", str(threads)]
    return [*base, *opts, "-m", "tunesmith", *argv]


def topology() -> dict[str, Any]:
    """How this run is spread: processes, machines, and the distributed type the launch asked for (read in a
    launched process). What accelerate really runs is known only once the Trainer's Accelerator exists:
    `distributed_type`, added then (local.run_training)."""
    processes = world_size()
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", processes) or processes)
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        kind = "FSDP"
    elif os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        kind = "DEEPSPEED"
    else:
        kind = "DDP" if processes > 1 else "NO"
    return {"processes": processes, "machines": max(1, processes // max(1, per_machine)),
            "processes_per_machine": per_machine, "requested": kind,
            "accelerate_config": os.environ.get(CONFIG_ENV)}


#: accelerate's types that shard the model or its optimizer state; the MULTI_* types replicate it on every rank
_SHARDING = ("FSDP", "DEEPSPEED", "MEGATRON_LM")


def what_ran_line(requested: str | None, ran: str, device_kind: str) -> str | None:
    """The line to say when accelerate runs a sharding config as something else (accelerate 1.x runs an FSDP
    config on CPU as MULTI_CPU, without the FSDP plugin); None when it runs what was asked. A plain launch
    ("DDP") asks for no particular type: any MULTI_* is it."""
    if requested not in _SHARDING or ran == requested:
        return None
    where = " on the CPU" if device_kind == "cpu" else ""
    return f"accelerate runs this {requested} config as {ran}{where}" + ("" if ran in _SHARDING else ": no sharding")


#: how often a launched process looks for its launcher where the kernel cannot tell it (not Linux)
_WATCH_SECONDS = 0.2


def end_with_launcher() -> None:
    """End this process (SIGKILL, as its launcher got) when the process that started it dies.

    torchrun starts every rank in a session of its own, so a kill -9 of the launch's process group (or a
    closed terminal) never reaches the ranks: they trained on as orphans into the same run directory,
    and a resume then raced them for its checkpoints and its port. Linux signals it at the parent's
    death; a watcher thread covers other systems and a parent that died before this call.
    """
    import signal
    import threading

    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    launcher = os.environ.get(LAUNCHER_PID_ENV, "")

    def orphaned() -> bool:
        return os.getppid() != parent or (launcher.isdigit() and not _exists(int(launcher)))

    def watch() -> None:
        while not orphaned():
            time.sleep(_WATCH_SECONDS)
        os.kill(os.getpid(), signal.SIGKILL)

    if orphaned():
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="end-with-launcher", daemon=True).start()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
