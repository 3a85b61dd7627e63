"""A hosted run: upload, create the job, watch it, record what it made; reattach after an interruption.

The run directory holds `hosted.json` from the start and rewrites it (atomically) at every step that
matters, so it knows the file ids once they exist and the job id once the job exists, whatever happens
to this process afterwards: `tunesmith train --resume RUN` carries on from there. Metric events become
the same `steps.jsonl` lines local training writes, so the report draws the same loss curves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.inference.openai_client import EndpointRefused, RequestFailed, RetryPolicy, api_key_from
from tunesmith.io import write_json_atomic, write_jsonl_atomic
from tunesmith.progress import Say
from tunesmith.project import Project
from tunesmith.runs import RunRecord, RunRegistry
from tunesmith.train.hosted.backend import HostedBackend, JobEvent, JobState
from tunesmith.train.hosted.plan import HostedPlan

METHOD = "hosted-openai"
#: a line while a job's status stays the same this long (queued jobs can wait for hours)
HEARTBEAT_SECONDS = 300.0
HOSTED_FILE = "hosted.json"


class HostedError(TunesmithError):
    """The hosted job cannot go on (failed on the provider's side, contact lost, refused)."""


def is_hosted(record: RunRecord) -> bool:
    return record.method.startswith("hosted")


def read_state(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / HOSTED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def backend_for(state: dict[str, Any], poll_timeout: float = 120.0) -> HostedBackend:
    from tunesmith.train.hosted.openai_backend import OpenAIFineTuning

    return OpenAIFineTuning(state.get("base_url"), api_key_from(state.get("api_key_env") or "OPENAI_API_KEY"),
                            timeout=poll_timeout, policy=RetryPolicy(max_retries=5, backoff=2.0))


class HostedRun:
    """One hosted run directory and its registry row; every change to the job is written down at once."""

    def __init__(self, registry: RunRegistry, record: RunRecord, backend: HostedBackend, say: Say,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.registry, self.record, self.backend, self.say = registry, record, backend, say
        self.dir = Path(record.path)
        self.state = read_state(self.dir)
        self.on_event = on_event or (lambda _e: None)

    def save(self, **changes: Any) -> None:
        self.state.update(changes)
        write_json_atomic(self.dir / HOSTED_FILE, self.state)

    # -- start -------------------------------------------------------------------------------------

    def submit(self) -> JobState:
        """Upload what is not uploaded yet and create the job unless it exists: safe to call again."""
        files = dict(self.state.get("files") or {})
        for role in ("train", "validation"):
            path = self.dir / f"{role}.jsonl"
            if role not in files and path.exists() and path.stat().st_size:
                self.say(f"uploading {path.name} to {self.backend.base_url}")
                files[role] = self.backend.upload(path)
                self.save(files=files)  # known before the job exists: a crash here re-uploads nothing
        if self.state.get("job_id"):
            return self.backend.job(self.state["job_id"])
        # a job on this very file already exists when an earlier create got through but its answer did not
        # (a timeout, a kill): reuse it rather than pay for a second one
        job = self.backend.find_job(files["train"])
        if job is None:
            plan = self.state["plan"]
            try:
                job = self.backend.create_job(model=plan["model"], training_file=files["train"],
                                              validation_file=files.get("validation"),
                                              hyperparameters=plan["hyperparameters"], suffix=plan.get("suffix"),
                                              seed=plan.get("seed"))
            except RequestFailed:
                job = self.backend.find_job(files["train"])  # sent, answer lost
                if job is None:
                    raise
        self.save(job_id=job.id, status=job.status)
        self.registry.set_status(self.record.id, "running")
        self.on_event({"event": "status", "job_id": job.id, "status": job.status})
        self.say(f"job {job.id} created ({job.status}); `tunesmith train --resume {self.record.id}` reattaches to it")
        return job

    # -- watch ---------------------------------------------------------------------------------------

    def watch(self, poll_seconds: float) -> JobState:
        """Poll until the job ends: status changes, events and losses as they come; backoff while quiet,
        and a line every few minutes while nothing changes (a job can sit queued for hours)."""
        job_id = self.state["job_id"]
        wait = poll_seconds
        last_status = self.state.get("status")
        since = last_said = time.monotonic()
        while True:
            job = self.backend.job(job_id)
            events = self.backend.new_events(job_id, self.state.get("last_event"))
            for ev in events:
                self._event(ev)
            if events:
                self.save(last_event=events[-1].id)
            now = time.monotonic()
            if job.status != last_status:
                self.say(f"job {job_id}: {job.status}")
                self.on_event({"event": "status", "job_id": job_id, "status": job.status})
                self.save(status=job.status)
                last_status, since, last_said = job.status, now, now
            elif events:
                last_said = now
            elif now - last_said >= HEARTBEAT_SECONDS:
                self.say(f"job {job_id}: still {job.status} ({(now - since) / 60:.0f} min)")
                last_said = now
            if job.finished:
                return job
            wait = poll_seconds if events else min(wait * 1.5, poll_seconds * 4)
            time.sleep(wait)

    def _last_step(self) -> int:
        """The last step whose losses are in steps.jsonl: events of a poll cut short by a kill come again."""
        if not hasattr(self, "_step_seen"):
            steps = self.dir / "steps.jsonl"
            seen = [json.loads(line).get("step") for line in steps.read_text().splitlines() if line.strip()] \
                if steps.exists() else []
            self._step_seen = max((s for s in seen if isinstance(s, int)), default=-1)
        return self._step_seen

    def _event(self, ev: JobEvent) -> None:
        if ev.type == "metrics" and ev.data:
            step = ev.data.get("step")
            if isinstance(step, int) and step <= self._last_step():
                return  # written before an interruption
            self._step_seen = step if isinstance(step, int) else self._last_step()
            lines = []
            if ev.data.get("train_loss") is not None:
                lines.append({"event": "step", "step": step, "loss": ev.data["train_loss"]})
            if ev.data.get("valid_loss") is not None:
                lines.append({"event": "eval", "step": step, "eval_loss": ev.data["valid_loss"]})
            with open(self.dir / "steps.jsonl", "a", encoding="utf-8") as fh:
                for line in lines:
                    fh.write(json.dumps(line) + "\n")
            shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in ev.data.items()
                              if k in ("step", "train_loss", "valid_loss", "total_steps"))
            self.say(f"  {shown}")
        else:
            self.say(f"  {ev.message}")
        self.on_event({"event": "job_event", "type": ev.type, "message": ev.message, "data": ev.data})

    # -- the end -------------------------------------------------------------------------------------

    def finish(self, job: JobState) -> dict[str, Any]:
        """Record a finished job: the model and its numbers, or the provider's error verbatim."""
        self.save(status=job.status, job=job.to_dict(), fine_tuned_model=job.fine_tuned_model)
        if job.status == "succeeded":
            results = self._result_files(job)
            metrics = _metrics(self.dir, job, self.state.get("price_per_1m"))
            summary = {"backend": "openai", "job_id": job.id, "fine_tuned_model": job.fine_tuned_model,
                       "base_url": self.state.get("base_url"), "result_files": results}
            self.registry.set_status(self.record.id, "completed", metrics=metrics, summary=summary)
            return metrics
        why = job.error.describe() if job.error is not None else job.status
        self.registry.set_status(self.record.id, "failed", error=f"job {job.id} {job.status} on the provider: {why}")
        raise HostedError(f"the fine-tuning job {job.id} {job.status}: {why}",
                          "fix what the provider's message names, then start a new run (`tunesmith train --backend openai`)")

    def _result_files(self, job: JobState) -> list[str]:
        saved = []
        for file_id in job.result_files:
            try:
                data = self.backend.file_content(file_id)
            except (RequestFailed, EndpointRefused) as exc:
                self.say(f"warning: result file {file_id} could not be downloaded ({exc})")
                continue
            name = f"result-{file_id}.csv"
            (self.dir / name).write_bytes(_csv(data))
            saved.append(name)
        return saved


def _csv(data: bytes) -> bytes:
    """A result file as CSV: OpenAI has served them base64-encoded; plain CSV passes through."""
    import base64
    import binascii

    if data[:5].lower().startswith(b"step"):
        return data
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return data
    return decoded if decoded[:5].lower().startswith(b"step") else data


def _metrics(run_dir: Path, job: JobState, price_per_1m: float | None) -> dict[str, Any]:
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines() if line.strip()] \
        if (run_dir / "steps.jsonl").exists() else []
    train = [s["loss"] for s in steps if s.get("event") == "step" and "loss" in s]
    valid = [s["eval_loss"] for s in steps if s.get("event") == "eval" and "eval_loss" in s]
    out: dict[str, Any] = {"fine_tuned_model": job.fine_tuned_model, "trained_tokens": job.trained_tokens,
                           "train_loss": train[-1] if train else None, "eval_loss": valid[-1] if valid else None,
                           "best_eval_loss": min(valid) if valid else None, "steps": len(train)}
    if price_per_1m is not None and job.trained_tokens:
        out["cost_usd"] = round(job.trained_tokens * price_per_1m / 1e6, 4)
    return out


def create_hosted_run(project: Project, registry: RunRegistry, run_id: str, plan: HostedPlan,
                      flags: dict[str, Any], config: dict[str, Any]) -> RunRecord:
    """The run directory, before anything leaves the machine: the exact files, the plan, the state."""
    registry.create_run(run_id, project_root=str(project.root), base_model=plan.model, method=METHOD,
                        config=config, plan=plan.to_dict(), data=plan.data_hashes)
    record = registry.get(run_id)
    run_dir = Path(record.path)
    write_jsonl_atomic(run_dir / "train.jsonl", plan.train_rows)
    if plan.validation_rows:
        write_jsonl_atomic(run_dir / "validation.jsonl", plan.validation_rows)
    (run_dir / "steps.jsonl").touch()
    from tunesmith.inference.openai_client import resolve_base_url

    write_json_atomic(run_dir / HOSTED_FILE, {
        "backend": "openai", "base_url": resolve_base_url(plan.base_url), "api_key_env": plan.api_key_env,
        "plan": {"model": plan.model, "suffix": plan.suffix, "hyperparameters": plan.api_hyperparameters(),
                 "seed": flags.get("seed")},
        "price_per_1m": plan.price.training_per_m if plan.price else None, "files": {}, "job_id": None})
    return record
