"""The decoding engine: one base model, any number of LoRA adapters, continuous batching.

Everything that answers prompts with a local transformers model runs through here: `LocalBackend`
(eval, baseline, check --base, mixing's self-replay, merge and export verification) drives a
`BatchDecoder` to the end in the calling thread (`decode_all`); `tunesmith serve` wraps one in an
`inference.worker.Engine`, a worker thread HTTP handlers hand jobs to.

Every request is a row of one shared batch, whichever adapter it names: PEFT's mixed adapter batches
(`adapter_names=`, one name per row, "__base__" for the base model) apply each row's own LoRA weights
inside the same forward pass, so rows cannot pick up another adapter's weights and still share the
base's matrix multiplications. A new request is prefilled alone (no compute spent on padding, and the
arithmetic a lone ``model.generate`` does), reusing the keys/values of the prompt prefix it shares
with the previous prompt of its adapter (`prefix.PrefixStore`), then left-padded into the running
batch; a finished row leaves at once, so a short answer never waits for a long one. Each row samples
with its own generator and applies its own grammar mask (`grammar.mask_batch`: constrained and free
rows share a batch), so an answer is the one the same request gets alone. Greedy answers equal plain
``model.generate`` one prompt at a time, token for token (tests and ``benchmarks/eval_generation.py``).
One-token steps of a plain Llama/Mistral/Qwen2 model (the base, a merged run, int8, or plain LoRA adapters
when a batch's rows all use one) go through `lean_step.LeanStep`, the forward's own ops without its Python
plumbing: the same logits, bit for bit.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterable
from typing import Any

from tunesmith.errors import ModelError, TunesmithError
from tunesmith.inference.kv_cache import new_cache, plain_layers
from tunesmith.inference.lean_step import LeanStep
from tunesmith.inference.loading import accepts, free_memory, is_oom
from tunesmith.inference.prefix import PrefixStore
from tunesmith.inference.rows import BASE_ROW, Event, Finished, Job, Row, Sampling, dropped, steer

__all__ = ["BASE_ROW", "BatchDecoder", "Event", "Finished", "Job", "Sampling", "decode_all"]

#: positions a (re)built batch cache reserves ahead; it grows by doubling past that
ROOM = 256




def logits_width(model: Any) -> int:
    """How many logits the model's head gives: `out_features`, which an `Int8Linear` head (no `weight`) has too."""
    head = model.get_output_embeddings()
    width = getattr(head, "out_features", None)
    return int(width if width is not None else head.weight.shape[0])


class BatchDecoder:
    """The running batch: its rows, their key/value cache and attention mask. Single-threaded."""

    def __init__(self, model: Any, tokenizer: Any, *, device: str = "cpu", max_batch: int = 16,
                 prefix_reuse: bool = True) -> None:
        from tunesmith.models.chat import end_of_turn_ids

        self.tokenizer = tokenizer
        self.device = device
        self.max_batch = max(1, max_batch)
        self.eot = end_of_turn_ids(tokenizer)
        self._eot_index = sorted(self.eot)
        self.prefixes = PrefixStore(prefix_reuse)
        self.rows: list[Row] = []
        self._cache: Any = None
        self._mask: Any = None  # [rows, cache length], 1 = a real position
        self.joinable = True  # False for caches that cannot be re-padded: one request at a time
        self._grammar: Any = None
        self._bias: Any = None
        self.steps = 0
        self.peak_batch = 0
        self.model = model

    @property
    def model(self) -> Any:
        return self._model

    @model.setter
    def model(self, model: Any) -> None:
        """A new or edited model (an adapter loaded or unloaded): cached prefixes no longer hold."""
        self._model = model
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.config = inner.config
        self.cache_kwarg = "cache" if accepts(inner.forward, "cache") else "past_key_values"
        self.keep_logits = accepts(inner.forward, "logits_to_keep")
        self.lean = LeanStep.for_model(model)  # one-token steps without the forward's Python (same logits)
        self.prefixes.clear()

    @property
    def grammar(self) -> Any:
        """The grammar compiler for this tokenizer and the model's logits width (built on first use)."""
        if self._grammar is None:
            from tunesmith.inference.grammar import GrammarCompiler

            width = logits_width(self._model)
            self._grammar = GrammarCompiler(self.tokenizer, int(width), self.eot)
        return self._grammar

    def _closing_bias(self, row: Row) -> Any:
        if self._bias is None:
            from tunesmith.inference.closing import ClosingBias

            width = logits_width(self._model)
            self._bias = ClosingBias(self.tokenizer, int(width), self._eot_index, self.device)
        return self._bias.for_row(row)

    def room(self) -> int:
        """How many more rows the batch takes now."""
        if not self.rows:
            return self.max_batch
        return self.max_batch - len(self.rows) if self.joinable else 0

    # -- forward ---------------------------------------------------------------------------------

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, adapters: list[str]) -> Any:
        import torch

        model = self._model
        mixed: list[str] | None = None
        if hasattr(model, "peft_config") and model.peft_config:
            names = set(adapters)
            if len(names) == 1 and BASE_ROW not in names:
                # one adapter for the whole batch: PEFT's plain path (and the lean step's). A mixed batch
                # costs ~20 % more per step on SmolLM2 (0.104 vs 0.084 s at 16 rows): every LoRA layer
                # gathers and scatters each adapter's rows, and PEFT re-registers its hooks at every call
                (name,) = names
                if model.active_adapter != name:
                    model.set_adapter(name)
            else:
                mixed = adapters
        if self.lean is not None and ids.shape[-1] == 1 and mixed is None:
            return self.lean(ids, mask, positions, cache)
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, self.cache_kwarg: cache,
                                  "use_cache": True, "return_dict": True, "position_ids": positions}
        if self.keep_logits:
            kwargs["logits_to_keep"] = 1
        if mixed is not None:
            kwargs["adapter_names"] = mixed
        out = model(**kwargs)
        return out.logits[:, -1, :].to(dtype=torch.float32, copy=True)

    def _prefill(self, row: Row) -> tuple[Any, Any]:
        """The prompt alone (batch 1, no padding), after the keys/values of its shared prefix."""
        import torch
        from transformers import DynamicCache

        ids = row.job.prompt_ids
        cache = DynamicCache(config=self.config)
        start, reused = self.prefixes.lookup(row.adapter_name, ids)
        for index, (keys, values) in enumerate(reused):
            cache.update(keys, values, index)  # copies: the stored prefix stays as it was
        tail = torch.tensor([ids[start:]], dtype=torch.long, device=self.device)
        positions = torch.arange(start, len(ids), dtype=torch.long, device=self.device)[None, :]
        logits = self._forward(tail, None, positions, cache, [row.adapter_name])
        row.cached_tokens = start
        self.prefixes.count(len(ids) - start, start)
        if plain_layers(cache):
            self.prefixes.remember(row.adapter_name, ids, [(l.keys, l.values) for l in cache.layers])
        return logits, cache

    # -- rows in and out -------------------------------------------------------------------------

    def join(self, jobs: Iterable[Job]) -> list[Job]:
        """Prefill each job, sample its first token, and add the rows still going to the batch (one
        cache rebuild for all of them); the jobs not taken, to try again later. A job that cannot start
        (its grammar does not compile) fails alone. A model whose cache cannot be re-padded (sliding
        windows, linear attention) decodes one request at a time: only a lone job is taken then."""
        import torch
        import torch.nn.functional as F

        pending = list(jobs)
        joining: list[tuple[Row, Any]] = []
        while pending:
            job = pending.pop(0)
            try:
                matcher = (self.grammar.compile(job.sampling.constraint).matcher()
                           if job.sampling.constraint is not None else None)
            except TunesmithError as exc:
                job.emit(("error", exc.message))
                continue
            row = Row(job, self.eot, self.tokenizer, self.device, matcher)
            logits, cache = self._prefill(row)
            if not plain_layers(cache):
                if self.rows or joining:  # pragma: no cover - room() is 0 once such a row runs
                    raise RuntimeError("this model's cache cannot take a request into a running batch")
                if not self._choose([row], logits)[0]:
                    self.joinable, self.rows, self._cache = False, [row], cache
                    self._mask = torch.ones((1, len(job.prompt_ids)), dtype=torch.long, device=self.device)
                    self.peak_batch = max(self.peak_batch, 1)
                    return pending
                continue
            if not self._choose([row], logits)[0]:
                joining.append((row, cache))
        if not joining:
            return []
        self.joinable = True
        old_len = self._mask.shape[1] if self.rows else 0
        width = max([old_len] + [len(r.job.prompt_ids) for r, _ in joining])

        def left_pad(t: Any, length: int) -> Any:
            return F.pad(t, (0, 0, width - length, 0))

        per_layer = []
        for index in range(len(joining[0][1].layers)):
            keys = [left_pad(self._cache.layers[index].keys, old_len)] if self.rows else []
            values = [left_pad(self._cache.layers[index].values, old_len)] if self.rows else []
            for row, cache in joining:
                n = len(row.job.prompt_ids)
                keys.append(left_pad(cache.layers[index].keys, n))
                values.append(left_pad(cache.layers[index].values, n))
            per_layer.append((torch.cat(keys), torch.cat(values)))
        masks = [F.pad(self._mask, (width - old_len, 0))] if self.rows else []
        for row, _ in joining:
            m = torch.zeros((1, width), dtype=torch.long, device=self.device)
            m[0, width - len(row.job.prompt_ids):] = 1
            masks.append(m)
        self.rows = self.rows + [r for r, _ in joining]
        self._cache = self._rebuilt(per_layer, width)
        self._mask = torch.cat(masks)
        self.peak_batch = max(self.peak_batch, len(self.rows))
        return []

    def step(self) -> None:
        """Feed every row its pending token, sample the next, let finished rows go."""
        import torch

        rows = self.rows
        ids = torch.tensor([[r.pending] for r in rows], dtype=torch.long, device=self.device)
        positions = torch.tensor([[r.position] for r in rows], dtype=torch.long, device=self.device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=-1)
        mask = None if bool((self._mask == 1).all()) else self._mask
        logits = self._forward(ids, mask, positions, self._cache, [r.adapter_name for r in rows])
        self.steps += 1
        finished = self._choose(rows, logits)
        keep = [j for j, done in enumerate(finished) if not done]
        if len(keep) < len(rows):
            self._evict(keep)

    def _choose(self, rows: list[Row], logits: Any) -> list[bool]:
        """Each row's next token from its logits (min_tokens, grammar, sampling); whether it finished."""
        import torch

        allowed = steer(logits, rows, self._eot_index, self._closing_bias)
        greedy = torch.argmax(logits, dim=-1).tolist()
        finished = []
        for j, row in enumerate(rows):
            if row.job.cancelled.is_set():
                dropped(row.job)
                finished.append(True)
                continue
            try:
                if not allowed[j]:
                    row.finish_now("grammar")
                    finished.append(True)
                    continue
                token = greedy[j] if row.generator is None else row.sample(logits[j])
                finished.append(row.accept(token))
            except Exception as exc:  # noqa: BLE001 - one request's sampling fails it alone, not the batch
                row.job.emit(("error", f"generation failed: {type(exc).__name__}: {exc}"))
                finished.append(True)
        return finished

    def _evict(self, keep: list[int]) -> None:
        import torch

        if not keep:
            self.rows, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        self.rows = [self.rows[j] for j in keep]
        # drop left padding no row needs any more
        first = int(self._mask.argmax(dim=-1).min()) if bool((self._mask.sum(-1) > 0).all()) else 0
        if first > 0 and self.joinable:
            self._cache = self._rebuilt([(l.keys[..., first:, :], l.values[..., first:, :])
                                         for l in self._cache.layers], self._mask.shape[1] - first)
            self._mask = self._mask[:, first:]

    def _rebuilt(self, keys_values: list[tuple[Any, Any]], length: int) -> Any:
        """A batch cache holding these per-layer (keys, values) of `length` positions, with room for the
        current rows' next tokens (up to ROOM; it grows by doubling past that)."""
        room = max(r.limit - len(r.tokens) for r in self.rows)
        cache = new_cache(self.config, length + min(room, ROOM) + 1)
        for index, (keys, values) in enumerate(keys_values):
            cache.update(keys, values, index)
        return cache

    def abandon(self) -> list[Job]:
        """Empty the batch without a word to its jobs (to retry them); the jobs it held, in order."""
        jobs = [r.job for r in self.rows]
        self.rows, self._cache, self._mask = [], None, None
        return jobs

    def fail_all(self, message: str) -> None:
        for job in self.abandon():
            with contextlib.suppress(Exception):
                job.emit(("error", message))


def decode_all(decoder: BatchDecoder, jobs: list[Job], *, refill: int | None = None) -> None:
    """Decode `jobs` to the end in this thread, in order, keeping the batch full.

    New jobs join once `refill` places are free (default a quarter of the batch: every join rebuilds
    the batch cache, so joining in groups copies it less often). Out of memory halves the batch and
    starts the jobs that were decoding again; a single job that does not fit raises `ModelError`.
    """
    import torch

    waiting = collections.deque(jobs)
    with torch.inference_mode():
        while waiting or decoder.rows:
            room = decoder.room()
            want = max(1, refill if refill is not None else decoder.max_batch // 4)
            taking: list[Job] = []
            if waiting and room and (not decoder.rows or room >= min(want, len(waiting))):
                taking = [waiting.popleft() for _ in range(min(room, len(waiting)))]
            try:
                if taking:
                    waiting.extendleft(reversed(decoder.join(taking)))
                if decoder.rows:
                    decoder.step()
            except Exception as exc:
                if not is_oom(exc):
                    raise
                unfinished = list({id(j): j for j in decoder.abandon() + taking if not j.done}.values())
                if decoder.max_batch == 1:
                    n = len(unfinished[0].prompt_ids) if unfinished else 0
                    raise ModelError(f"out of memory generating one answer on {decoder.device} (prompt of {n} "
                                     f"tokens, max_new_tokens {unfinished[0].sampling.max_tokens if unfinished else 0})",
                                     "lower max_new_tokens, use a bigger device, or evaluate on CPU") from exc
                free_memory(decoder.device)
                decoder.max_batch = max(1, min(decoder.max_batch, len(unfinished)) // 2)
                waiting.extendleft(reversed(unfinished))
