"""Multi-process training through accelerate: one run id and one writer across ranks."""

from __future__ import annotations

import os
import shutil
import sys


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


def launch_command(num_processes: int, argv: list[str], *, cpu: bool) -> list[str]:
    """`accelerate launch` for N processes, re-running this same train command in each."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    base = [accelerate] if accelerate else [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate:
        base.append("launch")
    # `--multi_gpu` selects the torchrun launcher, which also runs N CPU processes (gloo) when there is no
    # GPU; accelerate's `--cpu` would start a single process (multi-CPU there means mpirun).
    opts = ["--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no"]
    if cpu:
        threads = max(1, (os.cpu_count() or 1) // num_processes)
        opts += ["--num_cpu_threads_per_process", str(threads)]
    return [*base, *opts, "-m", "tunesmith", *argv]
