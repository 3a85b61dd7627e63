"""Many requests at once: bounded concurrency, a stop that every worker sees, Ctrl-C that does not wait."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_concurrently(items: Sequence[T], work: Callable[[T, threading.Event], R], *, concurrency: int,
                     on_done: Callable[[int, R], None]) -> None:
    """`work(item, stop)` for every item, at most `concurrency` at a time; `on_done(index, result)` is
    called in this thread as each one finishes, in completion order.

    The first exception `work` raises (an `EndpointRefused`, say) sets `stop`: no item starts after it,
    the ones running finish (their replies still reach the cache and `on_done`), and it is raised here.
    Ctrl-C sets `stop` and returns at once: the workers are daemon threads, so an exit never waits for
    a request in flight (up to its timeout) before the shell gets its prompt back.
    """
    if not items:
        return
    stop = threading.Event()
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(len(items)):
        todo.put(i)
    done: queue.SimpleQueue[tuple[int, Any] | None] = queue.SimpleQueue()
    lock = threading.Lock()
    #: the exception that stopped the run; failures after it (a request cancelled by `stop`) are its effects
    first_error: list[BaseException] = []

    def worker() -> None:
        try:
            # `stop` is checked before each item: a worker that has just failed must not send another request
            while not stop.is_set():
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put((i, work(items[i], stop)))
                except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                    with lock:
                        if not stop.is_set():
                            first_error.append(exc)
                            stop.set()
                    return
        finally:
            done.put(None)

    workers = max(1, min(concurrency, len(items)))
    for n in range(workers):
        threading.Thread(target=worker, name=f"tunesmith-request-{n}", daemon=True).start()
    try:
        finished = 0
        while finished < workers:
            try:
                msg = done.get(timeout=0.25)  # a timeout keeps Ctrl-C responsive on every platform
            except queue.Empty:
                continue
            if msg is None:
                finished += 1
            else:
                on_done(*msg)
    except BaseException:
        stop.set()
        raise
    if first_error:
        raise first_error[0]
