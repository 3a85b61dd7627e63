"""What the registry hands out: a run's record (its row plus its directory's documents), the model a
run means (RunModel), and the latest test-set evaluation of a subject (ScoredOn)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelError, UsageError


@dataclass(frozen=True)
class ScoredOn:
    """The latest test-set evaluation of a subject and the seal it was scored on."""

    evaluation_id: int
    created_at: str
    #: None: the evaluation predates seal recording
    seal_sha256: str | None


@dataclass
class RunRecord:
    id: str
    path: Path
    status: str
    created_at: str
    updated_at: str
    finished_at: str | None
    base_model: str
    method: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    summary: dict[str, Any] | None = None
    project_root: str = ""
    #: SHA-256 of the test seal when the run was created (None: not recorded, e.g. a hand-made run)
    test_seal_sha256: str | None = None

    def read_document(self, name: str) -> dict[str, Any]:
        """The JSON object in `<run dir>/<name>.json`; {} when it is missing or unreadable."""
        try:
            doc = json.loads((Path(self.path) / f"{name}.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return doc if isinstance(doc, dict) else {}

    @property
    def config(self) -> dict[str, Any]:
        """config.json of the run (read from the run directory on each access)."""
        return self.read_document("config")

    @property
    def plan(self) -> dict[str, Any]:
        """plan.json of the run."""
        return self.read_document("plan")

    @property
    def data(self) -> dict[str, Any]:
        """data.json of the run (hashes of the training file and the test seal)."""
        return self.read_document("data")

    def to_dict(self) -> dict[str, Any]:
        """The registry row as plain data (the run directory's documents are not included)."""
        return {
            "id": self.id,
            "path": str(self.path),
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "base_model": self.base_model,
            "method": self.method,
            "metrics": self.metrics,
            "error": self.error,
            "summary": self.summary,
            "project_root": self.project_root,
            "test_seal_sha256": self.test_seal_sha256,
        }

    def model(self, project_base: str) -> RunModel:
        """Which model this run means: what it trained, on the base it was trained on.

        The recorded base wins over `project_base` (the project's base_model now): an adapter only fits
        the base it was trained on, and a full fine-tune was tuned from it. A run that recorded no base
        (made by hand) means the project's.
        """
        run_dir = Path(self.path)
        adapter, model = run_dir / "adapter", run_dir / "model"
        base_ref = self.base_model or project_base
        if (adapter / "adapter_config.json").is_file():
            return RunModel(self.id, run_dir, self.trained_method(), base_ref, project_base, adapter, None)
        if (model / "config.json").is_file():
            return RunModel(self.id, run_dir, self.trained_method(), base_ref, project_base, None, model)
        raise UsageError(f"run {self.id} has no trained adapter or model yet (status {self.status})",
                         f"finish it with `tunesmith train --resume {self.id}`")

    def trained_method(self) -> str:
        """lora | qlora | full, from plan.json (`settings.method.value`), else the registry row."""
        settings = self.plan.get("settings")
        method = settings.get("method") if isinstance(settings, dict) else None
        value = method.get("value") if isinstance(method, dict) else None
        return str(value or self.method or "lora")


@dataclass(frozen=True)
class RunModel:
    """A run's output: its adapter and the base it was trained on, or a full fine-tune's checkpoint."""

    run_id: str
    run_dir: Path
    method: str
    #: the base the run was trained on (recorded when it started)
    base_ref: str
    #: the project's base_model now; it differs from base_ref when tunesmith.yaml was edited since
    project_base: str
    adapter_dir: Path | None
    model_dir: Path | None  # a full fine-tune's checkpoint, complete on its own

    @property
    def warning(self) -> str | None:
        """What to tell the user once when the project's base moved on since this run was trained."""
        if not self.project_base or self.base_ref == self.project_base:
            return None
        return (f"run {self.run_id} was trained on {self.base_ref!r}, not on the project's base_model "
                f"{self.project_base!r}: using {self.base_ref!r}")

    @functools.cached_property
    def base_path(self) -> Path | None:
        """The base's checkpoint directory for an adapter (resolved on first use); None for a full fine-tune."""
        return self.resolve_base() if self.adapter_dir is not None else None

    def resolve_base(self) -> Path:
        """The checkpoint directory of the base the run was trained on; an error naming both bases if it is gone."""
        from tunesmith.models.resolve import resolve_model

        try:
            return resolve_model(self.base_ref).path
        except ModelError as exc:
            now = f"; the project's base_model is now {self.project_base!r}" if self.warning else ""
            raise ModelError(
                f"run {self.run_id} was trained on {self.base_ref!r}, which cannot be loaded any more ({exc.message})"
                + now,
                f"put {self.base_ref!r} back (a run is only used on the base it was trained on), "
                "or train a new run on the project's base: tunesmith train") from None

    @property
    def tokenizer_dir(self) -> Path:
        """Where the tokenizer training used lives: saved next to the adapter / model, else the base's."""
        for candidate in (self.adapter_dir, self.model_dir):
            if candidate is not None and any((candidate / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
                return candidate
        return self.checkpoint_dir

    @property
    def checkpoint_dir(self) -> Path:
        """The directory holding the architecture's config.json (the base, or the full model)."""
        if self.model_dir is not None:
            return self.model_dir
        assert self.base_path is not None  # model() gives every run an adapter or a model
        return self.base_path
