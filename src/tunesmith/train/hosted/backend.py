"""The boundary between tunesmith and a hosted fine-tuning API: a job's state, its events, and the
few calls a backend must answer. `openai_backend.OpenAIFineTuning` is the one implementation; another
OpenAI-compatible fine-tuning API (Together, Fireworks, a self-hosted one) would be a second class with
these methods, and nothing else in tunesmith changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

#: job states after which nothing changes any more
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass
class JobError:
    code: str
    message: str
    param: str | None = None

    def describe(self) -> str:
        return f"{self.code}: {self.message}" + (f" (param {self.param})" if self.param else "")


@dataclass
class JobState:
    id: str
    status: str
    model: str
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    result_files: list[str] = field(default_factory=list)
    error: JobError | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    training_file: str = ""
    validation_file: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JobEvent:
    id: str
    created_at: int
    level: str
    message: str
    #: "metrics" events carry step, train_loss, valid_loss, ... in `data`
    type: str = "message"
    data: dict[str, Any] = field(default_factory=dict)


class HostedBackend(Protocol):
    """What tunesmith needs from a hosted fine-tuning API. Every call raises `EndpointRefused` (key,
    access, unknown model or job) or `RequestFailed` (after the shared retry policy) on failure."""

    name: str
    base_url: str

    def upload(self, path: Path) -> str:
        """Upload a training or validation file; its id."""

    def create_job(self, *, model: str, training_file: str, validation_file: str | None,
                   hyperparameters: dict[str, Any], suffix: str | None, seed: int | None) -> JobState: ...

    def job(self, job_id: str) -> JobState: ...

    def find_job(self, training_file: str) -> JobState | None:
        """A job already created on this training file (the newest), or None."""

    def new_events(self, job_id: str, after: str | None) -> list[JobEvent]:
        """The job's events newer than the event `after` (all of them when None), oldest first."""

    def cancel(self, job_id: str) -> JobState: ...

    def file_content(self, file_id: str) -> bytes: ...
