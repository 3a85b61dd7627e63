"""`Engine`: one `BatchDecoder` on a worker thread, for `tunesmith serve`.

HTTP handlers `submit` decoding jobs and `call` model edits (loading or dropping an adapter) from any
thread; the worker alone touches the model, so an edit never lands in the middle of a decoding step.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.inference.engine import BatchDecoder
from tunesmith.inference.rows import BASE_ROW, Job, dropped


class EngineClosed(TunesmithError):
    """The engine is shutting down and takes no more work."""


def _editing(fn: Callable[[], Any], decoder: BatchDecoder) -> Callable[[], Any]:
    """`fn`, then the prefix cache emptied (even when `fn` failed half-way through an edit)."""
    def run() -> Any:
        try:
            return fn()
        finally:
            decoder.prefixes.clear()
    return run


class Engine:
    """A `BatchDecoder` on a worker thread: `submit` decoding jobs and `call` model edits from any thread."""

    def __init__(self, model: Any, tokenizer: Any, *, device: str = "cpu", max_batch: int = 16,
                 prefix_reuse: bool = True) -> None:
        self.decoder = BatchDecoder(model, tokenizer, device=device, max_batch=max_batch, prefix_reuse=prefix_reuse)
        self._inbox: queue.Queue[Job | tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._closing = threading.Event()
        #: taken from the inbox, not yet in the batch (it is full, or its cache cannot take more rows)
        self._waiting: collections.deque[Job] = collections.deque()
        self._grace_until = 0.0
        self._thread = threading.Thread(target=self._loop, name="tunesmith-engine", daemon=True)
        self._thread.start()

    @property
    def model(self) -> Any:
        return self.decoder.model

    @model.setter
    def model(self, model: Any) -> None:
        self.decoder.model = model

    @property
    def steps(self) -> int:
        return self.decoder.steps

    @property
    def peak_batch(self) -> int:
        return self.decoder.peak_batch

    @peak_batch.setter
    def peak_batch(self, value: int) -> None:
        self.decoder.peak_batch = value

    @property
    def grammar(self) -> Any:
        return self.decoder.grammar

    # -- public, any thread --------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        if self._closing.is_set():
            raise EngineClosed("the server is shutting down", "retry against a running server")
        self._inbox.put(job)
        if not self._thread.is_alive():  # closed between the check and the put
            self._drain_inbox()

    def call(self, fn: Callable[[], Any], *, edits_model: bool = True) -> Future[Any]:
        """Run `fn` on the worker thread between decoding steps (model edits never race a forward). A call
        that `edits_model` (loads or unloads an adapter) empties the shared-prefix cache: the keys and
        values it holds were computed with the weights as they were."""
        future: Future[Any] = Future()
        if self._closing.is_set():
            future.set_exception(EngineClosed("the server is shutting down", "retry against a running server"))
            return future
        self._inbox.put((fn if not edits_model else _editing(fn, self.decoder), future))
        if not self._thread.is_alive():
            self._drain_inbox()
        return future

    def active_adapters(self) -> set[str]:
        """Adapters of the rows decoding and of the jobs waiting for room (worker thread only)."""
        return {r.adapter_name for r in self.decoder.rows} | {j.adapter or BASE_ROW for j in self._waiting}

    def close(self, grace_s: float = 10.0) -> None:
        """Stop taking work; rows still decoding get `grace_s` to finish, then fail with an error."""
        self._grace_until = time.monotonic() + grace_s
        self._closing.set()
        self._inbox.put(None)
        self._thread.join(timeout=grace_s + 30)
        self._drain_inbox()  # anything submitted while the worker was stopping

    # -- worker --------------------------------------------------------------------------------

    def _loop(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                try:
                    if not self._admit():
                        break
                    if self.decoder.rows:
                        self.decoder.step()
                    if self._closing.is_set() and time.monotonic() > self._grace_until:
                        break
                except Exception as exc:  # noqa: BLE001 - a failing batch must not kill the server
                    self._fail_all(f"generation failed: {type(exc).__name__}: {exc}")
        self._fail_all("the server shut down before this request finished")
        self._drain_inbox()

    def _admit(self) -> bool:
        """Take queued work (blocking only while idle). False once closed with nothing left to do.

        Model calls run as they come; jobs wait in `_waiting` until the batch has room for them.
        """
        while True:
            room = self.decoder.room()
            if self._waiting and room:
                joining: list[Job] = []
                while self._waiting and len(joining) < room:
                    job = self._waiting.popleft()
                    if job.cancelled.is_set():
                        dropped(job)
                    else:
                        joining.append(job)
                try:
                    self._join(joining)
                except Exception as exc:  # noqa: BLE001 - these requests fail, the batch goes on
                    for job in joining:
                        job.emit(("error", f"generation failed: {type(exc).__name__}: {exc}"))
            busy = bool(self.decoder.rows)
            if not busy and self._closing.is_set() and self._inbox.empty():
                return False
            try:
                item = self._inbox.get_nowait() if busy else self._inbox.get(timeout=0.5)
            except queue.Empty:
                if busy:
                    return True
                continue
            if item is None:  # close()'s wake-up call
                continue
            if isinstance(item, tuple):
                fn, future = item
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        future.set_exception(exc)
                continue
            if item.cancelled.is_set():
                dropped(item)
                continue
            if self._closing.is_set():
                item.emit(("error", "the server is shutting down"))
                continue
            self._waiting.append(item)

    def _join(self, jobs: list[Job]) -> None:
        self._waiting.extendleft(reversed(self.decoder.join(jobs)))

    def _fail_all(self, message: str) -> None:
        self.decoder.fail_all(message)
        for job in list(self._waiting):
            with contextlib.suppress(Exception):
                job.emit(("error", message))
        self._waiting.clear()

    def _drain_inbox(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, tuple):
                item[1].set_exception(EngineClosed("the server shut down", "restart it"))
            elif item is not None:
                item.emit(("error", "the server shut down before this request started"))
