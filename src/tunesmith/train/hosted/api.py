"""`tunesmith train --backend openai` as a library call: plan, confirm, submit, watch, record; resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError, UsageError
from tunesmith.inference.openai_client import EndpointRefused, RequestFailed, api_key_from, endpoint_host, resolve_base_url
from tunesmith.progress import Say
from tunesmith.project import load_project
from tunesmith.train.hosted.job import HostedError, HostedRun, backend_for, create_hosted_run, is_hosted, read_state
from tunesmith.train.hosted.plan import HostedPlan, plan_hosted


class Stopped(TunesmithError):
    """Ctrl-C while a job runs: it was cancelled on the provider, or this process only stopped watching."""

    exit_code = 130


def train_hosted(project_dir: Path | str, flags: dict[str, Any], *, dry_run: bool = False, resume: str | None = None,
                 run_name: str | None = None, confirm: Callable[[HostedPlan], bool] | None = None,
                 on_plan: Callable[[HostedPlan], None] | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 on_interrupt: Callable[[str], str] | None = None, say: Say | None = None) -> Any:
    """Returns a `TrainOutcome`. `confirm(plan)` decides whether to spend (None: yes, as --yes);
    `on_interrupt(job_id)` answers "cancel" or "detach" on Ctrl-C (None: detach)."""
    from tunesmith.runs import library_versions, new_run_id
    from tunesmith.train.api import TrainOutcome

    say = say or (lambda _m: None)
    project = load_project(project_dir)
    registry = project.registry()
    if resume is not None:
        record = registry.get(resume)
        if not is_hosted(record):
            raise UsageError(f"run {record.id} trained on this machine, not on a hosted API",
                             f"resume it without --backend: `tunesmith train -p {project.root} --resume {record.id}`")
        say(f"reattaching to run {record.id}")
        return _run(registry, record, project.hosted.poll_seconds, say, on_event, on_interrupt, TrainOutcome)
    plan = plan_hosted(project, flags)
    if on_plan is not None:
        on_plan(plan)
    if dry_run:
        return TrainOutcome(None, None, plan.to_dict(), dry_run=True)
    url = resolve_base_url(plan.base_url)
    if api_key_from(plan.api_key_env) in (None, "none") and endpoint_host(url) == "api.openai.com":
        raise UsageError(f"{plan.api_key_env} is not set: {url} needs an API key; nothing was uploaded",
                         f"export {plan.api_key_env}=sk-...")
    if confirm is not None and not confirm(plan):
        raise UsageError("not started: nothing was uploaded and nothing was spent", "pass --yes to start without asking")
    run_id = new_run_id(run_name)
    config = {"project": project.resolved(), "flags": {k: v for k, v in flags.items() if v is not None},
              "versions": library_versions(), "backend": "openai"}
    record = create_hosted_run(project, registry, run_id, plan, flags, config)
    return _run(registry, record, project.hosted.poll_seconds, say, on_event, on_interrupt, TrainOutcome)


def _run(registry: Any, record: Any, poll: float, say: Say, on_event: Any, on_interrupt: Any, outcome_type: Any) -> Any:
    state = read_state(Path(record.path))
    if not state:
        raise UsageError(f"run {record.id} has no {Path(record.path) / 'hosted.json'}: it cannot be reattached",
                         "start a new run with `tunesmith train --backend openai`")
    run = HostedRun(registry, record, backend_for(state), say, on_event)
    try:
        job = run.submit()
        if not job.finished:
            job = run.watch(poll)
        metrics = run.finish(job)
    except EndpointRefused as exc:
        # once the job exists it may be fine (an expired key, another organisation): keep it resumable
        registry.set_status(record.id, "interrupted" if run.state.get("job_id") else "failed", error=exc.message)
        raise
    except RequestFailed as exc:
        job_id = run.state.get("job_id")
        if exc.status is not None and 400 <= exc.status < 500:  # the provider refused the request itself
            registry.set_status(record.id, "failed", error=exc.reason)
            raise HostedError(f"the fine-tuning API refused the job: {exc.reason}",
                              "fix what the provider's message names (a hyperparameter, the model, a file), then "
                              "start a new run") from None
        # the shared retry policy gave up: the network, or the provider, is down
        where = f"while job {job_id} runs; the job itself goes on" if job_id else "before the job was created"
        registry.set_status(record.id, "interrupted", error=f"lost contact {where}: {exc.reason}")
        raise HostedError(f"lost contact with the fine-tuning API {where} ({exc.reason})",
                          f"`tunesmith train --resume {record.id}` carries on from there when it is back") from None
    except KeyboardInterrupt:
        raise _interrupted(run, on_interrupt) from None
    return outcome_type(record.id, Path(record.path), registry.get(record.id).plan, metrics)


def _interrupted(run: HostedRun, on_interrupt: Callable[[str], str] | None) -> Stopped:
    job_id = run.state.get("job_id")
    if not job_id:
        run.registry.set_status(run.record.id, "interrupted", error="interrupted before the job was created")
        return Stopped("interrupted before the job was created; nothing runs on the provider",
                       f"`tunesmith train --resume {run.record.id}` uploads what is missing and creates it")
    choice = on_interrupt(job_id) if on_interrupt is not None else "detach"
    if choice == "cancel":
        try:
            job = run.backend.cancel(job_id)
        except (RequestFailed, EndpointRefused) as exc:
            run.registry.set_status(run.record.id, "interrupted", error=f"cancelling job {job_id} failed: {exc}")
            return Stopped(f"job {job_id} could not be cancelled ({exc}): it may still run (and bill) on the provider",
                           f"cancel it in the provider's dashboard, or `tunesmith train --resume {run.record.id}` "
                           "to watch it")
        run.save(status=job.status)
        run.registry.set_status(run.record.id, "failed", error=f"job {job_id} cancelled from tunesmith")
        return Stopped(f"job {job_id} cancelled on the provider ({job.status})", "start a new run when ready")
    run.registry.set_status(run.record.id, "interrupted", error=f"stopped watching job {job_id}; it keeps running")
    return Stopped(f"stopped watching job {job_id}: it keeps running (and billing) on the provider",
                   f"`tunesmith train --resume {run.record.id}` reattaches and records the model when it is done")
