"""OpenAI's fine-tuning API through the official `openai` client, under tunesmith's one retry policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.inference.openai_client import RetryPolicy, call_with_retries, resolve_base_url, sdk_client
from tunesmith.train.hosted.backend import JobError, JobEvent, JobState

EVENTS_PAGE = 100


class OpenAIFineTuning:
    """`files` and `fine_tuning.jobs` at `base_url` (default OPENAI_BASE_URL, else OpenAI)."""

    name = "openai"

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 120.0,
                 policy: RetryPolicy | None = None) -> None:
        self.base_url = resolve_base_url(base_url)
        self.timeout = timeout
        self.policy = policy or RetryPolicy(max_retries=5, backoff=2.0)
        self._client = sdk_client(self.base_url, api_key, timeout)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return call_with_retries(lambda: fn(*args, **kwargs), policy=self.policy, what="fine-tuning API",
                                 base_url=self.base_url, timeout=self.timeout)

    def close(self) -> None:
        self._client.close()

    # -- the calls -----------------------------------------------------------------------------------

    def upload(self, path: Path) -> str:
        def send() -> Any:
            with open(path, "rb") as fh:  # reopened on a retry: a half-read handle would upload half a file
                return self._client.files.create(file=(path.name, fh.read()), purpose="fine-tune")

        return str(self._call(send).id)

    def create_job(self, *, model: str, training_file: str, validation_file: str | None,
                   hyperparameters: dict[str, Any], suffix: str | None, seed: int | None) -> JobState:
        kwargs: dict[str, Any] = {"model": model, "training_file": training_file,
                                  "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}}
        if validation_file:
            kwargs["validation_file"] = validation_file
        if suffix:
            kwargs["suffix"] = suffix
        if seed is not None:
            kwargs["seed"] = seed
        # sent once: a retry after a lost answer could start a second paid job (submit looks for the
        # first one instead)
        once = RetryPolicy(max_retries=0)
        return _state(call_with_retries(lambda: self._client.fine_tuning.jobs.create(**kwargs), policy=once,
                                        what="fine-tuning API", base_url=self.base_url, timeout=self.timeout))

    def find_job(self, training_file: str) -> JobState | None:
        page = self._call(self._client.fine_tuning.jobs.list, limit=100)  # newest first
        for job in getattr(page, "data", None) or []:
            if job.training_file == training_file:
                return _state(job)
        return None

    def job(self, job_id: str) -> JobState:
        return _state(self._call(self._client.fine_tuning.jobs.retrieve, job_id))

    def cancel(self, job_id: str) -> JobState:
        return _state(self._call(self._client.fine_tuning.jobs.cancel, job_id))

    def new_events(self, job_id: str, after: str | None) -> list[JobEvent]:
        """OpenAI lists events newest first, paged by `after` (the last id of the previous page): read
        pages until the event already seen, then give the new ones oldest first."""
        found: list[JobEvent] = []
        cursor: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": EVENTS_PAGE}
            if cursor is not None:
                kwargs["after"] = cursor
            page = self._call(self._client.fine_tuning.jobs.list_events, job_id, **kwargs)
            events = list(getattr(page, "data", None) or [])
            for ev in events:
                if after is not None and ev.id == after:
                    return found[::-1]
                found.append(_event(ev))
            if not events or not getattr(page, "has_more", False):
                return found[::-1]
            cursor = events[-1].id

    def file_content(self, file_id: str) -> bytes:
        return self._call(lambda: self._client.files.content(file_id).read())


def _state(job: Any) -> JobState:
    err = getattr(job, "error", None)
    error = None
    if err is not None and (getattr(err, "code", None) or getattr(err, "message", None)):
        error = JobError(str(err.code or "error"), str(err.message or ""), getattr(err, "param", None))
    hp = getattr(job, "hyperparameters", None)
    method = getattr(job, "method", None)
    supervised = getattr(method, "supervised", None) if method is not None else None
    if supervised is not None and getattr(supervised, "hyperparameters", None) is not None:
        hp = supervised.hyperparameters
    hyper = {k: getattr(hp, k, None) for k in ("n_epochs", "batch_size", "learning_rate_multiplier")} if hp else {}
    return JobState(id=job.id, status=job.status, model=job.model, fine_tuned_model=job.fine_tuned_model,
                    trained_tokens=job.trained_tokens, result_files=list(job.result_files or []), error=error,
                    hyperparameters=hyper, training_file=job.training_file, validation_file=job.validation_file)


def _event(ev: Any) -> JobEvent:
    data = getattr(ev, "data", None)
    if data is not None and not isinstance(data, dict):
        data = getattr(data, "model_dump", lambda: {})() or dict(data)
    return JobEvent(id=ev.id, created_at=int(ev.created_at or 0), level=str(getattr(ev, "level", "info")),
                    message=str(ev.message or ""), type=str(getattr(ev, "type", None) or "message"),
                    data=dict(data or {}))
