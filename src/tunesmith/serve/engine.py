"""One base model, many LoRA adapters, continuous batching on a single worker thread.

Every request becomes a row of one shared decoding batch, whichever adapter it names: PEFT's mixed
adapter batches (`adapter_names=`, one name per row, "__base__" for the base model) apply each row's
own LoRA weights inside the same forward pass, so rows cannot pick up another adapter's weights and
requests for different adapters still share the matrix multiplications of the base.

A new request joins the running batch at the next step (it is prefilled alone, then its key/value
cache is left-padded into the batch), and a finished or abandoned row leaves it at once, so a short
answer never waits for a long one. Everything that touches the model — decoding, loading and
unloading adapters — runs on the worker thread, between steps; HTTP handlers only enqueue work.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from tunesmith.errors import TunesmithError

BASE_ROW = "__base__"
#: positions a (re)built batch cache reserves ahead; it grows by doubling past that
ROOM = 256


class EngineClosed(TunesmithError):
    """The engine is shutting down and takes no more work."""


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_tokens: int = 0  # end-of-turn is not sampled before this many tokens (vLLM's extension)


@dataclass
class Finished:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int


#: what a request's `emit` receives, on the worker thread: ("delta", str), ("done", Finished),
#: ("error", str), or ("cancelled", None) once the engine let go of a job its client abandoned
Event = tuple[str, Any]
#: temperatures below this decode greedily (vLLM's _SAMPLING_EPS): dividing logits by 1e-38 gives inf
SAMPLING_EPS = 1e-5


def _dropped(job: Job) -> None:
    """Tell the handler of a job the engine let go (its client hung up) that nothing more will come."""
    job.emit(("cancelled", None))


@dataclass
class Job:
    prompt_ids: list[int]
    adapter: str | None  # None: the base model
    sampling: Sampling
    emit: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: deltas are emitted only for streamed jobs; the others get the whole text when done
    stream: bool = True


class _Row:
    """A request's state while it decodes."""

    def __init__(self, job: Job, eot: set[int], tokenizer: Any, device: str) -> None:
        import torch

        self.job = job
        self.tokenizer = tokenizer
        self.eot = eot
        self.tokens: list[int] = []
        self.sent = 0  # characters of the answer already emitted
        self.pending: int | None = None  # sampled, not yet fed to the model
        self.position = len(job.prompt_ids)  # position of `pending`
        s = job.sampling
        self.stop = tuple(x for x in s.stop if x)
        self.generator = None
        if s.temperature >= SAMPLING_EPS:  # below it, logits / temperature overflow: greedy, as in vLLM
            self.generator = torch.Generator(device=device)
            if s.seed is not None:
                self.generator.manual_seed(int(s.seed))
            else:
                self.generator.seed()

    @property
    def adapter_name(self) -> str:
        return self.job.adapter or BASE_ROW

    def sample(self, logits: Any) -> int:
        """Next token from one row of float32 logits."""
        import torch

        s = self.job.sampling
        if self.generator is None:
            return int(torch.argmax(logits))
        scores = logits / float(s.temperature)
        if s.top_p < 1.0:
            ordered, index = torch.sort(scores, descending=True)
            cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
            # keep the smallest prefix whose probability reaches top_p (the top token always stays)
            drop = cumulative - torch.softmax(ordered, dim=-1) >= s.top_p
            ordered = ordered.masked_fill(drop, float("-inf"))
            scores = torch.full_like(scores, float("-inf")).scatter(0, index, ordered)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def accept(self, token: int) -> bool:
        """Record a sampled token, stream what became final; True when the row has finished."""
        self.tokens.append(token)
        ended = token in self.eot
        last = ended or len(self.tokens) >= self.job.sampling.max_tokens
        if not (last or self.job.stream or self.stop):
            # nobody reads the text before the end: skip decoding it at every step
            self.pending = token
            self.position = len(self.job.prompt_ids) + len(self.tokens) - 1
            return False
        body = self.tokens[:-1] if ended else self.tokens
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        cut = _first_stop(text, self.stop)
        if cut is not None:
            self._send(text[:cut])
            self._finish(text[:cut], "stop")
            return True
        if ended:
            self._send(text)
            self._finish(text, "stop")
            return True
        if len(self.tokens) >= self.job.sampling.max_tokens:
            self._send(text)
            self._finish(text, "length")
            return True
        # hold back an unfinished UTF-8 sequence and anything that may still become a stop string
        safe = len(text) - _held_back(text, self.stop)
        if safe > self.sent:
            self._send(text[:safe])
        self.pending = token
        self.position = len(self.job.prompt_ids) + len(self.tokens) - 1
        return False

    def _send(self, text: str) -> None:
        if self.job.stream and len(text) > self.sent:
            self.job.emit(("delta", text[self.sent:]))
            self.sent = len(text)

    def _finish(self, text: str, reason: str) -> None:
        self.job.emit(("done", Finished(text, reason, len(self.job.prompt_ids), len(self.tokens))))


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` not to stream yet: an unfinished multi-byte character (decoded
    as U+FFFD) and, before it, the longest tail that may still grow into a stop string."""
    broken = len(text) - len(text.rstrip("\ufffd"))
    return broken + _stop_prefix(text[: len(text) - broken], stops)


def _stop_prefix(text: str, stops: tuple[str, ...]) -> int:
    longest = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


class Engine:
    """Owns the model; `submit` decoding jobs and `call` model edits from any thread."""

    def __init__(self, model: Any, tokenizer: Any, *, device: str = "cpu", max_batch: int = 16) -> None:
        from tunesmith.evaluate.generate import _accepts
        from tunesmith.models.chat import end_of_turn_ids

        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_batch = max(1, max_batch)
        self.eot = end_of_turn_ids(tokenizer)
        self._eot_index = sorted(self.eot)
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.config = inner.config
        self.cache_kwarg = "cache" if _accepts(inner.forward, "cache") else "past_key_values"
        self.keep_logits = _accepts(inner.forward, "logits_to_keep")
        self._inbox: queue.Queue[Job | tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._closing = threading.Event()
        self._rows: list[_Row] = []
        #: taken from the inbox, not yet in the batch (it is full, or its cache cannot take more rows)
        self._waiting: collections.deque[Job] = collections.deque()
        self._cache: Any = None
        self._mask: Any = None  # [rows, cache length], 1 = a real position
        self._joinable = True  # False for caches that cannot be re-padded: one request at a time
        self._grace_until = 0.0
        self.steps = 0
        self.peak_batch = 0
        self._thread = threading.Thread(target=self._loop, name="tunesmith-engine", daemon=True)
        self._thread.start()

    # -- public, any thread --------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        if self._closing.is_set():
            raise EngineClosed("the server is shutting down", "retry against a running server")
        self._inbox.put(job)
        if not self._thread.is_alive():  # closed between the check and the put
            self._drain_inbox()

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run `fn` on the worker thread between decoding steps (model edits never race a forward)."""
        future: Future[Any] = Future()
        if self._closing.is_set():
            future.set_exception(EngineClosed("the server is shutting down", "retry against a running server"))
            return future
        self._inbox.put((fn, future))
        if not self._thread.is_alive():
            self._drain_inbox()
        return future

    def active_adapters(self) -> set[str]:
        """Adapters of the rows decoding and of the jobs waiting for room (worker thread only)."""
        return {r.adapter_name for r in self._rows} | {j.adapter or BASE_ROW for j in self._waiting}

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
                    if self._rows:
                        self._step()
                    if self._closing.is_set() and time.monotonic() > self._grace_until:
                        break
                except Exception as exc:  # noqa: BLE001 - a failing batch must not kill the server
                    self._fail_all(f"generation failed: {type(exc).__name__}: {exc}")
        self._fail_all("the server shut down before this request finished")
        self._drain_inbox()

    def _has_room(self) -> bool:
        return not self._rows or (self._joinable and len(self._rows) < self.max_batch)

    def _admit(self) -> bool:
        """Take queued work (blocking only while idle). False once closed with nothing left to do.

        Model calls run as they come; jobs wait in `_waiting` until the batch has room for them.
        """
        while True:
            while self._waiting and self._has_room():
                job = self._waiting.popleft()
                if job.cancelled.is_set():
                    _dropped(job)
                    continue
                try:
                    self._join(job)
                except Exception as exc:  # noqa: BLE001 - this request fails, the batch goes on
                    job.emit(("error", f"generation failed: {type(exc).__name__}: {exc}"))
            busy = bool(self._rows)
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
                _dropped(item)
                continue
            if self._closing.is_set():
                item.emit(("error", "the server is shutting down"))
                continue
            self._waiting.append(item)

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, adapters: list[str]) -> Any:
        import torch

        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, self.cache_kwarg: cache,
                                  "use_cache": True, "return_dict": True, "position_ids": positions}
        if self.keep_logits:
            kwargs["logits_to_keep"] = 1
        if hasattr(self.model, "peft_config") and self.model.peft_config:
            names = set(adapters)
            if len(names) == 1 and BASE_ROW not in names:
                # one adapter for the whole batch: PEFT's plain path. A mixed batch costs ~20 % more per
                # step on SmolLM2 (0.104 vs 0.084 s at 16 rows): every LoRA layer gathers and scatters
                # each adapter's rows, and PEFT re-registers its hooks at every call (~3 ms of that)
                (name,) = names
                if self.model.active_adapter != name:
                    self.model.set_adapter(name)
            else:
                kwargs["adapter_names"] = adapters
        out = self.model(**kwargs)
        return out.logits[:, -1, :].to(dtype=torch.float32)

    def _join(self, job: Job) -> None:
        """Prefill `job` alone, sample its first token, and add it to the batch."""
        import torch
        import torch.nn.functional as F
        import transformers.cache_utils as cache_utils
        from transformers import DynamicCache

        row = _Row(job, self.eot, self.tokenizer, self.device)
        n = len(job.prompt_ids)
        cache = DynamicCache(config=self.config)
        ids = torch.tensor([job.prompt_ids], dtype=torch.long, device=self.device)
        positions = torch.arange(n, dtype=torch.long, device=self.device)[None, :]
        logits = self._forward(ids, None, positions, cache, [row.adapter_name])
        self._hold_eot(logits, [row])
        if row.accept(row.sample(logits[0])):
            return
        plain = getattr(cache_utils, "DynamicLayer", None)
        layers = getattr(cache, "layers", None)
        joinable = bool(layers) and all(type(layer) is plain for layer in layers)
        if not self._rows:
            self._joinable = joinable
            self._rows = [row]
            self._cache = self._rebuilt(((l.keys, l.values) for l in cache.layers), n) if joinable else cache
            self._mask = torch.ones((1, n), dtype=torch.long, device=self.device)
            self.peak_batch = max(self.peak_batch, 1)
            return
        if not (joinable and self._joinable):  # pragma: no cover - _has_room() keeps such jobs waiting
            raise RuntimeError("this model's cache cannot take a request into a running batch")
        old_len = self._mask.shape[1]
        width = max(old_len, n)

        def left_pad(t: Any, length: int) -> Any:
            return F.pad(t, (0, 0, width - length, 0))

        self._rows.append(row)
        self._cache = self._rebuilt(((torch.cat([left_pad(old.keys, old_len), left_pad(new.keys, n)]),
                                      torch.cat([left_pad(old.values, old_len), left_pad(new.values, n)]))
                                     for old, new in zip(self._cache.layers, cache.layers)), width)
        mask_new = torch.zeros((1, width), dtype=torch.long, device=self.device)
        mask_new[0, width - n:] = 1
        self._mask = torch.cat([F.pad(self._mask, (width - old_len, 0)), mask_new])
        self.peak_batch = max(self.peak_batch, len(self._rows))

    def _step(self) -> None:
        """Feed every row its pending token, sample the next, let finished rows go."""
        import torch

        rows = self._rows
        ids = torch.tensor([[r.pending] for r in rows], dtype=torch.long, device=self.device)
        positions = torch.tensor([[r.position] for r in rows], dtype=torch.long, device=self.device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=-1)
        mask = None if bool((self._mask == 1).all()) else self._mask
        logits = self._forward(ids, mask, positions, self._cache, [r.adapter_name for r in rows])
        self.steps += 1
        self._hold_eot(logits, rows)
        greedy = torch.argmax(logits, dim=-1).tolist()
        keep: list[int] = []
        for j, row in enumerate(rows):
            if row.job.cancelled.is_set():
                _dropped(row.job)
                continue
            try:
                token = greedy[j] if row.generator is None else row.sample(logits[j])
                finished = row.accept(token)
            except Exception as exc:  # noqa: BLE001 - one request's sampling fails it alone, not the batch
                row.job.emit(("error", f"generation failed: {type(exc).__name__}: {exc}"))
                continue
            if not finished:
                keep.append(j)
        if len(keep) < len(rows):
            self._evict(keep)

    def _hold_eot(self, logits: Any, rows: list[_Row]) -> None:
        """Rows that have not reached their min_tokens cannot end yet."""
        if not self._eot_index:
            return
        for j, row in enumerate(rows):
            if len(row.tokens) < row.job.sampling.min_tokens:
                logits[j, self._eot_index] = float("-inf")

    def _evict(self, keep: list[int]) -> None:
        import torch

        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        self._rows = [self._rows[j] for j in keep]
        # drop left padding no row needs any more
        first = int(self._mask.argmax(dim=-1).min()) if bool((self._mask.sum(-1) > 0).all()) else 0
        if first > 0 and self._joinable:
            self._trim_left(first)

    def _trim_left(self, n: int) -> None:
        self._cache = self._rebuilt(((l.keys[..., n:, :].contiguous(), l.values[..., n:, :].contiguous())
                                     for l in self._cache.layers), self._mask.shape[1] - n)
        self._mask = self._mask[:, n:]

    def _rebuilt(self, keys_values: Any, length: int) -> Any:
        """A batch cache holding these per-layer (keys, values) of `length` positions, with room for the
        current rows' next tokens (up to ROOM; it grows by doubling past that)."""
        from tunesmith.evaluate.generate import _new_cache

        room = max(r.job.sampling.max_tokens - len(r.tokens) for r in self._rows)
        cache = _new_cache(self.config, length + min(room, ROOM) + 1)
        for index, (keys, values) in enumerate(keys_values):
            cache.update(keys, values, index)
        return cache

    def _fail_all(self, message: str) -> None:
        for job in [r.job for r in self._rows] + list(self._waiting):
            with contextlib.suppress(Exception):
                job.emit(("error", message))
        self._rows, self._cache, self._mask = [], None, None
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
