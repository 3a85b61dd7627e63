"""One request in the decoding engine: what it asks for (`Job`, `Sampling`) and its state while it decodes.

A `Row` samples its own next token (its own seeded generator, so an answer does not depend on which
other requests share its batch), applies its stop strings, its grammar (a constrained answer) and its
contract watch (an unconstrained answer that has already broken the output contract ends there), and
streams the text that became final.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunesmith.inference.constraints import Constraint
from tunesmith.inference.contract_stop import ContractSpec, ContractWatch

#: the row name PEFT's mixed-adapter batches use for "no adapter"
BASE_ROW = "__base__"
#: temperatures below this decode greedily (vLLM's _SAMPLING_EPS): dividing logits by 1e-38 gives inf
SAMPLING_EPS = 1e-5


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_tokens: int = 0  # end-of-turn is not sampled before this many tokens (vLLM's extension)
    #: enforced token by token (a grammar mask): the answer cannot break it
    constraint: Constraint | None = None
    #: watched: once the answer can no longer meet it, the row ends with finish_reason "contract"
    contract: ContractSpec | None = None
    #: a constrained answer still open at max_tokens (a string the model never closes) may take this many
    #: more tokens, steered to close its structure, so that it still parses; it finishes "length" all
    #: the same. 0: cut at max_tokens (the server: max_tokens is the client's hard limit)
    close_within: int = 0
    #: ... or starts closing this many tokens before max_tokens, so that it parses within the limit (the
    #: server's JSON answers: a client's max_tokens is a hard limit); such an answer finishes "length"
    close_reserve: int = 0


@dataclass
class Finished:
    text: str
    #: "stop" (end of turn, a stop string, or a complete constrained answer), "length" (max_tokens),
    #: "contract" (cut: it broke the output contract), "grammar" (the grammar allowed no next token)
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    #: prompt tokens whose keys/values came from the shared-prefix cache instead of a prefill
    cached_tokens: int = 0


#: what a job's `emit` receives, on the engine's thread: ("delta", str), ("done", Finished),
#: ("error", str), or ("cancelled", None) once the engine let go of a job its client abandoned
Event = tuple[str, Any]


@dataclass
class Job:
    prompt_ids: list[int]
    adapter: str | None  # None: the base model
    sampling: Sampling
    emit: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: deltas are emitted only for streamed jobs; the others get the whole text when done
    stream: bool = True
    #: set once its answer ("done") has been emitted
    done: bool = False


def dropped(job: Job) -> None:
    """Tell the handler of a job the engine let go (its client hung up) that nothing more will come."""
    job.emit(("cancelled", None))


class Row:
    """A request's state while it decodes."""

    def __init__(self, job: Job, eot: set[int], tokenizer: Any, device: str, matcher: Any = None) -> None:
        import torch

        self.job = job
        self.tokenizer = tokenizer
        self.eot = eot
        self.tokens: list[int] = []
        self.sent = 0  # characters of the answer already emitted
        self.pending: int | None = None  # sampled, not yet fed to the model
        self.position = len(job.prompt_ids)  # position of `pending`
        self.cached_tokens = 0
        self.steered = False  # set once the engine steered it to close (see `closing`)
        #: the grammar's state (`tunesmith.inference.grammar.RowMatcher`) for a constrained answer
        self.matcher = matcher
        s = job.sampling
        self.stop = tuple(x for x in s.stop if x)
        self.watch = ContractWatch(s.contract) if s.contract is not None and s.contract.active else None
        #: the most tokens this row may take (max_tokens, plus the closing allowance of a constrained row)
        self.limit = s.max_tokens + (max(0, s.close_within) if matcher is not None else 0)
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

    @property
    def closing(self) -> bool:
        """A constrained row at the end of its budget: its next tokens are steered to close the answer."""
        s = self.job.sampling
        return self.matcher is not None and len(self.tokens) >= s.max_tokens - max(0, s.close_reserve)

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
            drop[0] = False  # top_p 0 (allowed by OpenAI) would drop every token: softmax of all -inf is nan
            ordered = ordered.masked_fill(drop, float("-inf"))
            scores = torch.full_like(scores, float("-inf")).scatter(0, index, ordered)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def accept(self, token: int) -> bool:
        """Record a sampled token, stream what became final; True when the row has finished."""
        self.tokens.append(token)
        ended = token in self.eot
        complete = False
        if self.matcher is not None:
            if not self.matcher.accept(token):  # pragma: no cover - the mask only lets allowed tokens through
                self.finish_now("grammar")
                return True
            complete = self.matcher.done  # a constrained answer that nothing more can follow
        last = ended or complete or len(self.tokens) >= self.limit
        if not (last or self.job.stream or self.stop or self.watch):
            # nobody reads the text before the end: skip decoding it at every step
            self._advance(token)
            return False
        body = self.tokens[:-1] if ended else self.tokens
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        cut = _first_stop(text, self.stop)
        if cut is not None:
            self._send(text[:cut])
            self._finish(text[:cut], "stop")
            return True
        if ended or complete:
            self._send(text)
            # steered to a close by its budget: the answer parses, but the model did not end it by itself
            self._finish(text, "length" if self.steered else "stop")
            return True
        if len(self.tokens) >= self.limit:
            self._send(text)
            self._finish(text, "length")
            return True
        if self.watch is not None and not self.watch.alive(text):  # wrong whatever follows: stop paying for it
            self._send(text)
            self._finish(text, "contract")
            return True
        # hold back an unfinished UTF-8 sequence and anything that may still become a stop string
        safe = len(text) - held_back(text, self.stop)
        if safe > self.sent:
            self._send(text[:safe])
        self._advance(token)
        return False

    def finish_now(self, reason: str) -> None:
        """End the row with what it has (a grammar that allows no next token)."""
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        self._send(text)
        self._finish(text, reason)

    def _advance(self, token: int) -> None:
        self.pending = token
        self.position = len(self.job.prompt_ids) + len(self.tokens) - 1

    def _send(self, text: str) -> None:
        if self.job.stream and len(text) > self.sent:
            self.job.emit(("delta", text[self.sent:]))
            self.sent = len(text)

    def _finish(self, text: str, reason: str) -> None:
        self.job.done = True
        self.job.emit(("done", Finished(text, reason, len(self.job.prompt_ids), len(self.tokens),
                                        self.cached_tokens)))


def steer(logits: Any, rows: list[Row], eot_index: list[int], closing_bias: Callable[[Row], Any]) -> list[bool]:
    """Everything that shapes the rows' logits ([rows, vocab], in place) before a token is picked: no
    end-of-turn before `min_tokens`, each constrained row's grammar mask, and the steer to close for a
    row at the end of its budget (`closing_bias(row)`). Per row, whether the grammar allows any token.
    The transformers engine's batch and llama.cpp's one row both go through here."""
    if eot_index:
        for j, row in enumerate(rows):  # rows that have not reached their min_tokens cannot end yet
            if len(row.tokens) < row.job.sampling.min_tokens:
                logits[j, eot_index] = float("-inf")
    if not any(r.matcher is not None for r in rows):
        return [True] * len(rows)
    from tunesmith.inference.grammar import mask_batch

    allowed = mask_batch(logits, [r.matcher for r in rows])
    for j, row in enumerate(rows):
        if row.closing:
            logits[j] += closing_bias(row)
            row.steered = True
    return allowed


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def held_back(text: str, stops: tuple[str, ...]) -> int:
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
