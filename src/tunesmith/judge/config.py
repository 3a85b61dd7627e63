"""Which judge, where, and how hard to try; and the models it may not judge (itself, or its own base)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.inference.openai_client import RetryPolicy
from tunesmith.judge.results import JudgeError

log = logging.getLogger(__name__)

SELF_JUDGING_HINT = "use a stronger, different judge model, or pass --allow-self-judging"


@dataclass
class JudgeConfig:
    """Where the judge lives and how hard to try."""

    base_url: str
    model: str
    #: None: the OPENAI_API_KEY environment variable, else "none" (local servers ignore it).
    api_key: str | None = field(default=None, repr=False)
    concurrency: int = 4
    #: Extra attempts: for an unparseable reply (re-asked with a follow-up), and, within each of those,
    #: for an HTTP request that failed in a retryable way (the shared client's policy).
    max_retries: int = 3
    #: Seconds per HTTP request.
    timeout: float = 60.0
    allow_self_judging: bool = False
    #: SQLite file of the shared request cache (`inference.openai_client.RequestCache`); None disables it.
    cache_path: Path | None = None
    #: First backoff delay in seconds after an API error; doubles each retry (with up to 25 % jitter).
    #: 1 s, as the teacher's: both talk to hosted APIs whose rate limits a faster start only hits again.
    backoff_base: float = 1.0
    max_backoff: float = 30.0
    #: A Retry-After longer than this is not waited for: the request fails instead.
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        if self.cache_path is not None and not isinstance(self.cache_path, Path):
            self.cache_path = Path(self.cache_path)
        if int(self.concurrency) < 1:
            raise JudgeError(f"judge concurrency must be at least 1, got {self.concurrency}",
                             "pass a concurrency of 1 or more")
        if int(self.max_retries) < 0:
            raise JudgeError(f"judge max_retries must be 0 or more, got {self.max_retries}",
                             "pass max_retries=0 to disable retries")

    def resolved_api_key(self) -> str:
        return self.api_key or os.environ.get("OPENAI_API_KEY") or "none"

    def retry_policy(self) -> RetryPolicy:
        """The shared client's policy (which statuses are retried is its alone), with the judge's delays."""
        return RetryPolicy(max_retries=self.max_retries, backoff=self.backoff_base, max_backoff=self.max_backoff,
                           max_retry_after=self.max_retry_after)


_SNAPSHOT_DATE = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def _identities(name: str) -> set[str]:
    """The names a model goes by: itself, a fine-tune's base ("ft:BASE:org::id"), its last path part."""
    n = name.strip().lower().rstrip("/")
    if not n:
        return set()
    out = {n}
    if n.startswith("ft:"):
        base = n[3:].split(":", 1)[0]
        if base:
            out.add(base)
    for x in list(out):
        if "/" in x:
            out.add(x.rsplit("/", 1)[-1])
    for x in list(out):
        stripped = _SNAPSHOT_DATE.sub("", x)
        if stripped:
            out.add(stripped)
    return out


def check_not_self(judge_model: str, judge_base_url: str, subject_models: Sequence[str],
                   cfg: JudgeConfig) -> None:
    """Refuse a judge that is one of the models it would judge (or the base a fine-tune came from).

    Names compare case-insensitively; "ft:gpt-4o-mini-2024-07-18:org::abc" counts as gpt-4o-mini (and
    as gpt-4o-mini-2024-07-18). `cfg.allow_self_judging` turns the refusal into a logged warning.
    """
    judge_ids = _identities(judge_model)
    for subject in subject_models:
        if not subject or not (judge_ids & _identities(subject)):
            continue
        message = (f"the judge model {judge_model!r} at {judge_base_url} is also a model being evaluated "
                   f"({subject!r}): a model grading its own answers is biased in its own favour")
        if cfg.allow_self_judging:
            log.warning("%s (allowed by --allow-self-judging)", message)
            return
        raise JudgeError(message, SELF_JUDGING_HINT)
