"""One tunesmith process at a time changes a project's state: an advisory lock on `.tunesmith/lock`.

Two `tunesmith run`s on one project would both resume the same training run into the same checkpoint
directory. `run` holds this lock for its whole run and local `train` for its training (see
`tunesmith.train.api.train_project`); a second one is refused with the first one's PID.

The lock is `fcntl.flock` on an open file: the OS drops it when the holding process ends, however it
ends (kill -9 included), so a crash never leaves a stale lock to clean up. The file's text (PID,
command, start time) only feeds the message; the flock is the lock. Within one process the lock is
re-entrant: `run`'s train stage calls `train_project`, which takes it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError

LOCK_NAME = "lock"

try:
    import fcntl
except ImportError:  # Windows: no flock; tunesmith runs unlocked there
    fcntl = None  # type: ignore[assignment]


class ProjectLockedError(TunesmithError):
    """Another tunesmith process holds the project's lock."""

    exit_code = 75  # EX_TEMPFAIL: try again once the other process is done


_held_lock = threading.Lock()
_held: dict[Path, list[int]] = {}  # lock file -> [fd, depth], for this process


def lock_path(root: Path | str) -> Path:
    # resolved: one project reached by two spellings of its path must be one lock, re-entrant in-process
    return Path(root).resolve() / ".tunesmith" / LOCK_NAME


@contextlib.contextmanager
def project_lock(root: Path | str, command: str) -> Iterator[None]:
    """Hold the project's lock for the `with` block; ProjectLockedError when another process has it."""
    path = lock_path(root)
    if fcntl is None:
        yield
        return
    with _held_lock:
        entry = _held.get(path)
        if entry is not None:
            entry[1] += 1
        else:
            _held[path] = [_acquire(path, command), 1]
    try:
        yield
    finally:
        with _held_lock:
            entry = _held[path]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[path]
                _release(entry[0])


def _acquire(path: Path, command: str) -> int:
    from tunesmith.io import cannot_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise cannot_write(path, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _locked(path.parent.parent, path, holder(path)) from None
    except BaseException:
        os.close(fd)
        raise
    info = {"pid": os.getpid(), "command": command, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    with contextlib.suppress(OSError):  # the message's details; the lock holds without them
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return fd


def _release(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)  # no PID of a finished process for the next one to read
    os.close(fd)  # closing the last descriptor drops the flock


def holder(path: Path) -> dict[str, Any]:
    """What the lock's holder wrote about itself; {} before it has written it (or if unreadable)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _locked(root: Path, path: Path, info: dict[str, Any]) -> ProjectLockedError:
    pid = info.get("pid")
    if pid is None:
        return ProjectLockedError(f"{root}: another tunesmith process is working on this project (it holds {path})",
                                  "wait for it to finish, or stop that process; the lock goes away when it exits")
    return ProjectLockedError(
        f"{root}: another tunesmith process is working on this project "
        f"(PID {pid}, `{info.get('command', 'tunesmith')}`, since {info.get('since', '?')})",
        f"wait for it to finish, or stop it (`kill {pid}`); the lock goes away when that process exits, "
        "even if it is killed")
