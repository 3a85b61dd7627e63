"""Running the judge over an OpenAI-compatible chat-completions endpoint.

Two modes:

* **Rubric** (single-answer grading): the judge sees the prompt, the reference (desired) output when there
  is one, and the model's output, and answers strict JSON
  ``{"correctness": 1-5, "format": 1-5, "completeness": 1-5, "notes": "..."}``.
* **Pairwise** (base vs tuned, MT-Bench practice): every item is judged twice, once with the base answer
  shown first and once with the tuned answer shown first. When the verdict flips with the position the
  item counts as a tie and as position-inconsistent.

HTTP goes through the shared `inference.openai_client.ChatClient`: its one retry policy (which statuses
are retried, ``Retry-After``, 401/403/404 stop the run) and its one SQLite request cache, which stores
every reply as it arrives. On top of it the judge adds what only it knows: a reply that does not parse
is re-asked with a follow-up saying what was wrong, and an item that still fails is a
:class:`JudgeFailure` *beside* the scores: never a zero, never dropped silently. A re-run replays each
item's conversation from the cache and takes it when it ends in a reply that parses, so re-judging costs
nothing; an item that failed is asked again rather than replayed.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tunesmith.inference.concurrent import run_concurrently
from tunesmith.inference.openai_client import (  # light: openai itself loads in ChatClient()
    ChatClient,
    EndpointRefused,
    RequestCache,
    RequestFailed,
)
from tunesmith.judge.config import JudgeConfig, check_not_self
from tunesmith.judge.parsing import JudgeParseError, parse_pairwise_reply, parse_rubric_reply
from tunesmith.judge.prompts import (
    PAIRWISE_SCHEMA,
    RUBRIC_SCHEMA,
    follow_up,
    pairwise_messages,
    rubric_messages,
)
from tunesmith.judge.results import (
    JudgeError,
    JudgeFailure,
    PairInput,
    PairVerdict,
    PairwiseResult,
    RubricInput,
    RubricResult,
    RubricScore,
)

log = logging.getLogger(__name__)

#: Every judge request's parameters: they are part of the cache key, so replay must use the same ones.
JUDGE_PARAMS: dict[str, Any] = {"temperature": 0, "response_format": {"type": "json_object"}}


@dataclass
class _Job:
    key: tuple[str, str]  # (item id, sub-call)
    messages: list[dict[str, str]]
    parse: Callable[[str | None], dict[str, Any]]
    schema: str


@dataclass
class _Outcome:
    value: dict[str, Any] | None = None
    reason: str = ""
    cached: bool = False
    unreachable: bool = False


class _Aborted(Exception):
    def __init__(self, error: JudgeError, outcomes: dict[tuple[str, str], _Outcome]) -> None:
        super().__init__(error.message)
        self.error = error
        self.outcomes = outcomes


def _snippet(text: str | None, limit: int = 160) -> str:
    if text is None:
        return "(no content)"
    t = " ".join(text.split())
    return json.dumps(t if len(t) <= limit else t[:limit] + "...")


def _refused_error(exc: EndpointRefused) -> JudgeError:
    return JudgeError(exc.message, "check --judge-url, --judge-model and OPENAI_API_KEY")


def _unreachable_error(cfg: JudgeConfig, reason: str) -> JudgeError:
    return JudgeError(reason, f"start the judge server or fix the judge URL: nothing answered at {cfg.base_url}")


class _Runner:
    """Judges one job at a time: HTTP retries and the cache are the shared client's, unusable replies are re-asked here."""

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg
        cache = RequestCache(cfg.cache_path) if cfg.cache_path is not None else None
        # "judge endpoint" names the caller in the client's messages ("cannot reach the judge endpoint at ...")
        self.client = ChatClient(cfg.base_url, cfg.model, api_key=cfg.resolved_api_key(), timeout=cfg.timeout,
                                 policy=cfg.retry_policy(), cache=cache, what="judge endpoint")

    def close(self) -> None:
        self.client.close()
        if self.client.cache is not None:
            self.client.cache.close()

    def replay(self, job: _Job) -> _Outcome | None:
        """The job answered from the cache alone, as its last run went; None when the cache lacks a step,
        or when that run ended in a failure (asked again, never replayed)."""
        cache = self.client.cache
        if cache is None:
            return None
        messages = job.messages
        for _ in range(self.cfg.max_retries + 1):
            reply = cache.get(self.client.request_key(messages, JUDGE_PARAMS))
            if reply is None:
                return None
            try:
                return _Outcome(value=job.parse(reply.content), cached=True)
            except JudgeParseError as e:
                messages = follow_up(job.messages, reply.content, str(e), job.schema)
        return None

    def run(self, job: _Job, stop: threading.Event | None = None) -> _Outcome:
        """Ask until the reply parses, at most 1 + max_retries times, each time saying what was wrong.

        Raises `EndpointRefused` (401/403/404), and `RequestFailed` when `stop` cut the job short
        (its outcome is no result: the run is stopping).
        """
        messages = job.messages
        attempts = self.cfg.max_retries + 1
        reason = ""
        for attempt in range(attempts):
            try:
                # refresh: `replay` took whatever the cache could answer, so a cached reply here led to a failure
                reply = self.client.create(messages, stop=stop, refresh=True, **JUDGE_PARAMS)
            except RequestFailed as exc:
                if stop is not None and stop.is_set():
                    raise
                # the client has already retried what retrying can fix
                return _Outcome(reason=exc.reason, unreachable=exc.unreachable)
            content = reply.content
            try:
                return _Outcome(value=job.parse(content))
            except JudgeParseError as e:
                reason = f"unusable judge reply ({e}): {_snippet(content)}"
                log.debug("item %s: %s (attempt %d/%d)", job.key[0], reason, attempt + 1, attempts)
                messages = follow_up(job.messages, content, str(e), job.schema)
        return _Outcome(reason=f"gave up after {attempts} attempt(s): {reason}")


def _run_jobs(jobs: list[_Job], cfg: JudgeConfig) -> tuple[dict[tuple[str, str], _Outcome], int]:
    """Run every job (cache first, then the endpoint); returns outcomes by job key and the cache hits.

    The first uncached call runs alone: if it cannot connect at all, the endpoint is declared
    unreachable (JudgeError) instead of every item failing one by one. Raises _Aborted on fatal errors,
    with the outcomes finished by then.
    """
    outcomes: dict[tuple[str, str], _Outcome] = {}
    runner = _Runner(cfg)
    try:
        pending: list[_Job] = []
        for job in jobs:
            hit = runner.replay(job)
            if hit is not None:
                outcomes[job.key] = hit
            else:
                pending.append(job)
        hits = len(outcomes)
        if not pending:
            return outcomes, hits

        first, rest = pending[0], pending[1:]
        try:
            out = runner.run(first)
        except EndpointRefused as exc:
            raise _Aborted(_refused_error(exc), outcomes) from None
        if out.unreachable:
            raise _Aborted(_unreachable_error(cfg, out.reason), outcomes)
        outcomes[first.key] = out

        def done(index: int, outcome: _Outcome) -> None:
            outcomes[rest[index].key] = outcome

        try:
            run_concurrently(rest, runner.run, concurrency=cfg.concurrency, on_done=done)
        except EndpointRefused as exc:
            raise _Aborted(_refused_error(exc), outcomes) from None
        return outcomes, hits
    finally:
        runner.close()


def _check_ids(ids: list[str]) -> None:
    seen: set[str] = set()
    dupes: set[str] = set()
    for i in ids:
        (dupes if i in seen else seen).add(i)
    if dupes:
        raise JudgeError(f"duplicate item id(s) given to the judge: {', '.join(sorted(dupes)[:5])}",
                         "give every evaluation item a unique id")


def judge_rubric(items: list[RubricInput], cfg: JudgeConfig, *,
                 subject_models: Sequence[str] = ()) -> RubricResult:
    """Grade each item's output against its prompt and reference on the 1-5 rubric.

    Items the judge could not score end up in `failures` (in input order), never in `scores`.
    `subject_models`, when given, are checked with :func:`check_not_self` first.
    Raises JudgeError when the endpoint is unreachable or refuses us (`err.partial` keeps what was done).
    """
    if subject_models:
        check_not_self(cfg.model, cfg.base_url, subject_models, cfg)
    _check_ids([it.id for it in items])
    jobs = [_Job(key=(it.id, "rubric"), messages=rubric_messages(it), parse=parse_rubric_reply,
                 schema=RUBRIC_SCHEMA) for it in items]

    def build(outcomes: dict[tuple[str, str], _Outcome], hits: int) -> RubricResult:
        result = RubricResult(cache_hits=hits)
        for it in items:
            out = outcomes.get((it.id, "rubric"))
            if out is None:
                continue
            if out.value is None:
                result.failures.append(JudgeFailure(it.id, out.reason))
            else:
                v = out.value
                result.scores.append(RubricScore(it.id, v["correctness"], v["format"], v["completeness"], v["notes"]))
        return result

    return _run_and_build(jobs, cfg, build)


def _run_and_build(jobs: Any, cfg: Any, build: Any) -> Any:
    """Run the jobs and build the result; an aborted run still hands back what it judged (`partial`)."""
    try:
        outcomes, hits = _run_jobs(jobs, cfg)
    except _Aborted as ab:
        ab.error.partial = build(ab.outcomes, sum(o.cached for o in ab.outcomes.values()))
        raise ab.error from None
    return build(outcomes, hits)


_TO_AB = {"a_first": {"first": "a", "second": "b", "tie": "tie"},
          "b_first": {"first": "b", "second": "a", "tie": "tie"}}


def judge_pairwise(items: list[PairInput], cfg: JudgeConfig, *,
                   subject_models: Sequence[str] = ()) -> PairwiseResult:
    """Compare base (`a`) and tuned (`b`) answers, each item judged in both orders.

    A verdict that flips with the order is a tie and counts against position consistency. An item
    with either order unjudgeable is a failure (not a tie).
    """
    if subject_models:
        check_not_self(cfg.model, cfg.base_url, subject_models, cfg)
    _check_ids([it.id for it in items])
    jobs: list[_Job] = []
    for it in items:
        jobs.append(_Job(key=(it.id, "a_first"), messages=pairwise_messages(it.prompt, it.reference, it.a, it.b),
                         parse=parse_pairwise_reply, schema=PAIRWISE_SCHEMA))
        jobs.append(_Job(key=(it.id, "b_first"), messages=pairwise_messages(it.prompt, it.reference, it.b, it.a),
                         parse=parse_pairwise_reply, schema=PAIRWISE_SCHEMA))

    def build(outcomes: dict[tuple[str, str], _Outcome], hits: int) -> PairwiseResult:
        result = PairwiseResult(cache_hits=hits)
        for it in items:
            o1, o2 = outcomes.get((it.id, "a_first")), outcomes.get((it.id, "b_first"))
            if o1 is None or o2 is None:
                done = [o for o in (o1, o2) if o is not None and o.value is None]
                if done:  # one order already failed: the item has failed whatever the other does
                    result.failures.append(JudgeFailure(it.id, done[0].reason))
                continue
            bad = [(name, o) for name, o in (("a shown first", o1), ("b shown first", o2)) if o.value is None]
            if bad:
                result.failures.append(JudgeFailure(it.id, "; ".join(f"{n}: {o.reason}" for n, o in bad)))
                continue
            assert o1.value is not None and o2.value is not None
            v1 = _TO_AB["a_first"][o1.value["winner"]]
            v2 = _TO_AB["b_first"][o2.value["winner"]]
            consistent = v1 == v2
            result.items.append(PairVerdict(it.id, v1 if consistent else "tie", consistent, v1, v2,
                                            o1.value["reason"], o2.value["reason"]))
        return result

    return _run_and_build(jobs, cfg, build)
