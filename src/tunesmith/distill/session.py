"""The state of one `tunesmith generate` run: its settings, the teacher, the tally, the log, the counts.

`generate` (inputs, the output file) and `answers` (the teacher's answers) both work on a `Session`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.checks.contract import AnswerContract
from tunesmith.distill.teacher import Asked, Tally, Teacher, TeacherError
from tunesmith.inference.openai_client import ChatClient, RequestCache, RequestFailed, RetryPolicy
from tunesmith.project import Project

#: progress(stage, done, total): stage is "plan", "inputs" or "answers"
Progress = Callable[[str, int, int], None]


@dataclass
class GenerateOptions:
    """Resolved settings: defaults < tunesmith.yaml `generate:` < flags (`options_for`)."""

    teacher_model: str
    base_url: str | None
    api_key: str | None
    n: int
    output: Path
    inputs_file: Path | None = None
    concurrency: int = 8
    temperature: float = 0.9
    answer_temperature: float = 0.2
    max_attempts: int = 3
    max_tokens: int | None = None
    timeout: float = 120.0
    fewshot: int = 3
    seed: int = 0
    price: tuple[float, float] | None = None
    max_retries: int = 5
    #: first wait after a failed request, in seconds (doubles per retry, unless Retry-After says)
    backoff: float = 1.0
    #: replace a file whose reviewed rows this run would not reproduce
    force: bool = False


class Session:
    """One generate run's teacher, tally, log and answer counts (thread-safe where threads meet)."""

    def __init__(self, project: Project, opts: GenerateOptions, progress: Progress | None) -> None:
        from tunesmith.distill.prices import price_for

        self.project, self.opts = project, opts
        self.progress = progress or (lambda _stage, _done, _total: None)
        self.contract = AnswerContract.for_project(project)
        self.schema = project.load_schema()
        self.tally = Tally(price=price_for(opts.teacher_model, opts.price))
        self.log: list[dict[str, Any]] = []
        self.log_lock = threading.Lock()
        cache = RequestCache(project.root / ".tunesmith" / "teacher-cache.sqlite")
        client = ChatClient(opts.base_url, opts.teacher_model, api_key=opts.api_key, timeout=opts.timeout,
                            policy=RetryPolicy(max_retries=opts.max_retries, backoff=opts.backoff), cache=cache, what="teacher")
        self.teacher = Teacher(client, self.tally)
        self.answers: dict[str, int] = {"ok": 0, "dropped": 0, "retried_for_contract": 0, "truncated": 0, "empty": 0,
                                        "code_fences_removed": 0, "failed_requests": 0}
        self._count_lock = threading.Lock()

    def count(self, key: str, n: int = 1) -> None:
        with self._count_lock:
            self.answers[key] += n

    def close(self) -> None:
        self.teacher.client.close()
        if self.teacher.client.cache is not None:
            self.teacher.client.cache.close()

    def note(self, event: str, order: tuple[int, ...], **data: Any) -> None:
        """A log entry; `order` (stage, round, index) puts the log in request order, whatever order the
        threads finished in, so the same run writes the same log."""
        with self.log_lock:
            self.log.append({"event": event, "_order": order, **data})

    def ordered_log(self) -> list[dict[str, Any]]:
        entries = sorted(self.log, key=lambda e: e["_order"])
        return [{k: v for k, v in e.items() if k != "_order"} for e in entries]

    def first(self, messages: list[dict[str, str]], params: dict[str, Any], order: tuple[int, ...]) -> Asked | None:
        """The run's first request, sent alone: an endpoint that answers nothing (refused or timed out on
        every attempt) stops the run here, before anything else is sent."""
        try:
            return self.teacher.ask(messages, params)
        except RequestFailed as exc:
            if exc.unreachable:
                raise TeacherError(f"no answer from the teacher at {self.teacher.client.base_url}: {exc.reason}",
                                   "start the server or fix --base-url (an OpenAI-compatible base URL, usually "
                                   "ending in /v1); a slow one may need a longer --timeout") from None
            self.note("request_failed", order, reason=exc.reason)
            return None
