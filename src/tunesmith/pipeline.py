"""`tunesmith run`: the guide's whole workflow for one project, resumable and idempotent.

Stages: check -> split -> baseline -> train -> eval -> report. Each stage records the content hash
of its inputs in `.tunesmith/pipeline.json`; on a re-run a stage whose inputs did not change is
skipped, and an interrupted training run is resumed from its last checkpoint instead of restarted.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError, UsageError
from tunesmith.io import sha256_file, write_json_atomic
from tunesmith.project import Project, build_data, load_project

STAGES = ("check", "split", "baseline", "train", "eval", "report")
Emit = Callable[[dict[str, Any]], None]


class StageStopped(TunesmithError):
    """A stage decided the pipeline must not go on (errors in the data, a base model that is good enough)."""

    exit_code = 1


@dataclass
class PipelineResult:
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_id: str | None = None
    report: str | None = None
    summary: dict[str, Any] | None = None
    #: wall seconds per stage run ("skipped" for one with nothing to do) and "total"
    timings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"stages": self.stages, "run_id": self.run_id, "report": self.report, "summary": self.summary,
                "timings": self.timings}

    def time_line(self) -> str:
        """Where the time went: `time: check 1 s, split skipped, ..., train 8 min 10 s; total 12 min 6 s`."""
        from tunesmith.progress import Say, format_duration

        parts = [f"{stage} {v if isinstance(v, str) else format_duration(v)}"
                 for stage, v in self.timings.items() if stage != "total"]
        return f"time: {', '.join(parts)}; total {format_duration(self.timings.get('total', 0.0))}"


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


class State:
    def __init__(self, project: Project) -> None:
        self.path = project.root / ".tunesmith" / "pipeline.json"
        self.data: dict[str, Any] = {}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError:
                self.data = {}

    def done(self, stage: str, key: str) -> dict[str, Any] | None:
        entry = self.data.get(stage)
        return entry if entry and entry.get("key") == key else None

    def record(self, stage: str, key: str, result: dict[str, Any]) -> None:
        self.data[stage] = {"key": key, **result}
        write_json_atomic(self.path, self.data)


def _selected(until: str | None, start: str | None) -> list[str]:
    for name in (until, start):
        if name is not None and name not in STAGES:
            raise UsageError(f"unknown stage {name!r}", f"stages are {', '.join(STAGES)}")
    lo = STAGES.index(start) if start else 0
    hi = STAGES.index(until) if until else len(STAGES) - 1
    if lo > hi:
        raise UsageError(f"--from {start} comes after --until {until}", "pick a --from stage before --until")
    return list(STAGES[lo : hi + 1])


def run_pipeline(project_dir: Path | str, *, until: str | None = None, start: str | None = None, force: bool = False,
                 train_flags: dict[str, Any] | None = None, emit: Emit | None = None,
                 say: Say | None = None, progress: bool = True) -> PipelineResult:
    from tunesmith.project_lock import project_lock

    emit = emit or (lambda _e: None)
    say = say or (lambda _m: None)
    project = _load(project_dir)
    selected = _selected(until, start)
    # held to the end: a second `run` would resume the same training run into the same checkpoints
    with project_lock(project.root, "tunesmith run"):
        state = State(project)
        result = PipelineResult()
        began = time.monotonic()
        for stage in STAGES:
            if stage not in selected:
                continue
            fn = _STAGE_FUNCS[stage]
            stage_began = time.monotonic()
            info = fn(project, state, result, force=force, train_flags=train_flags or {}, say=say, progress=progress)
            info["seconds"] = round(time.monotonic() - stage_began, 1)
            result.timings[stage] = "skipped" if info.get("status") == "skipped" else info["seconds"]
            result.stages[stage] = info
            emit({"event": "stage", "stage": stage, **info})
            project = load_project(project.root)  # a stage may have built files the next one reads
        result.timings["total"] = round(time.monotonic() - began, 1)
    return result


def _load(project_dir: Path | str) -> Project:
    d = Path(project_dir)
    if not d.exists():
        raise UsageError(f"{d}: no such project directory", f"create one with `tunesmith init {d}`")
    return load_project(d)


def _stage_check(project: Project, state: State, result: PipelineResult, *, force: bool, say,
                 train_flags: dict[str, Any], **_: Any) -> dict[str, Any]:
    from tunesmith.data.checks import run_check
    from tunesmith.data.checks.setup import check_context
    from tunesmith.train.prepare import reviewed_provenance

    if build_data(project):
        say(f"built {project.path(project.data.source)} with `{project.build}`")
    source = project.path(project.data.source)
    # before any long stage: teacher rows nobody reviewed stop the run here, not after the baseline
    provenance = reviewed_provenance(project, source, allow_unreviewed=bool(train_flags.get("allow_unreviewed")))
    key = _digest(sha256_file(source), project.resolved()["output"], project.system_prompt, project.task_kind)
    if (done := state.done("check", key)) is not None:
        return {"status": "skipped", "why": "data unchanged since the last check", **done.get("result", {})}
    ctx = check_context(source, project, tokens=False)
    # data.source holds the sealed test rows by construction (split drew them from it): overlap with the
    # test set is train's matter, which the train stage guards; here it would refuse every re-run
    ctx.test_file = None
    report = run_check(ctx)
    errors = report.errors
    info = {"examples": report.examples, "errors": len(errors),
            "warnings": sum(f.severity == "warning" for f in report.findings)}
    if provenance is not None:
        info["generated"] = provenance["generated"]
        info["reviewed"] = provenance["reviewed"]
    if errors:
        details = [f"{f.check}: {f.message} (lines {', '.join(map(str, f.lines[:8]))})" for f in errors[:20]]
        raise StageStopped(f"check: {len(errors)} error(s) in {source}", f"see `tunesmith check {source}`; `tunesmith fix` drops them",
                           details=details)
    state.record("check", key, {"result": info})
    return {"status": "ok", **info}


def _stage_split(project: Project, state: State, result: PipelineResult, **_: Any) -> dict[str, Any]:
    from tunesmith.data.split import seal_path_for, split_file, verify_seal

    source, train, test = (project.path(project.data.source), project.path(project.data.train),
                           project.path(project.data.test))
    key = _digest(sha256_file(source), project.data.test_fraction, project.checks.near_duplicate_threshold)
    if state.done("split", key) is not None and train.exists() and test.exists() and seal_path_for(test).exists():
        seal = verify_seal(test)
        if not seal.ok:
            from tunesmith.errors import SealError

            raise SealError(f"{test}: the sealed test set changed since it was sealed",
                            "restore it, or delete it and run again to re-split")
        return {"status": "skipped", "why": "source unchanged; the seal is intact", "test_rows": seal.rows}
    out = split_file(source, train, test, test_fraction=project.data.test_fraction,
                     near_threshold=project.checks.near_duplicate_threshold)
    state.record("split", key, {"train_sha256": sha256_file(train)})
    return {"status": "ok", "train_rows": out.train_rows, "test_rows": out.test_rows}


def _eval_key(project: Project, subject: str) -> str:
    from tunesmith.data.split import seal_path_for

    regression = project.path(project.data.regression)
    return _digest(subject, sha256_file(seal_path_for(project.path(project.data.test))),
                   sha256_file(regression) if regression is not None and regression.exists() else None,
                   project.eval.model_dump(), project.system_prompt, project.base_model)


def _prompt_counts(project: Project) -> tuple[int, int]:
    """Test and regression prompts, counted by non-blank line: enough to size the progress, no parsing."""
    def rows(path: Path | None) -> int:
        if path is None or not path.is_file():
            return 0
        with open(path, encoding="utf-8", errors="replace") as fh:
            return sum(1 for line in fh if line.strip())

    return rows(project.path(project.data.test)), rows(project.path(project.data.regression))


def _answers_progress(project: Project, stage: str, who: str, say: Say, progress: bool) -> Any:
    """Say what the stage will generate, and open its progress over answers (a count that starts over
    is the next model or prompted variant). No estimate in time: that would cost model time itself."""
    from tunesmith.progress import Progress

    test, regression = _prompt_counts(project)
    say(f"{stage}: {who} {test} test + {regression} regression prompts"
        + ("; the rate and ETA follow in the progress lines" if progress else ""))
    return Progress.open(stage, test + regression, unit="answers", enabled=progress, passes=True, transient=True)


def _stage_baseline(project: Project, state: State, result: PipelineResult, *, force: bool, say, progress, **_: Any) -> dict[str, Any]:
    from tunesmith.evaluate.api import EvalOptions, baseline
    from tunesmith.evaluate.sequential import RULE

    # baseline's own settings (baseline.full among them), the contract it constrains to and the rule
    # that stops it early are part of what it measured
    key = _digest(_eval_key(project, "base"), project.baseline.model_dump(), project.resolved()["output"],
                  project.load_schema(), None if project.baseline.full else RULE)
    done = state.done("baseline", key)
    if done is None:
        with _answers_progress(project, "baseline", "the base model answers up to", say, progress) as reporter:
            outcome = baseline(project.root, EvalOptions(report=False), say=say, progress=reporter.update)
        rec = outcome.summary["recommendation"]
        done = {"recommendation": rec, "metrics": outcome.summary["test"]["metrics"],
                "regression": outcome.summary["regression"], "constrained": outcome.summary.get("constrained"),
                "sample": outcome.summary.get("sample")}
        state.record("baseline", key, done)
        status = "ok"
    else:
        status = "skipped"
    rec = done["recommendation"]
    if not rec["fine_tune"] and not force:
        raise StageStopped(f"baseline: {rec['message']}", "fine-tune anyway with `tunesmith run --force`")
    info = {"status": status, "base_pass_rate": rec["base_pass_rate"], "message": rec["message"]}
    if rec.get("stopped"):  # answered part of the test set: the interval had already decided
        info.update(evaluated=rec["evaluated"], of=rec["of"], stopped=rec["stopped"])
    if rec.get("variant"):  # the base model constrained to the contract and/or shown few-shot examples
        info.update(variant=rec["variant"], constrained_pass_rate=rec.get("constrained_pass_rate"))
    return info


def _stage_train(project: Project, state: State, result: PipelineResult, *, train_flags: dict[str, Any], say,
                 progress: bool, **_: Any) -> dict[str, Any]:
    from tunesmith.train.api import train_project

    # --allow-unreviewed lets data through the gate; it does not change what a finished run learned
    settings = {k: v for k, v in train_flags.items() if k != "allow_unreviewed"}
    key = _digest(sha256_file(project.path(project.data.train)), project.resolved()["train"], project.base_model,
                  project.system_prompt, project.max_length, settings)
    entry = state.data.get("train")
    registry = project.registry()
    record = None
    if entry and entry.get("key") == key and entry.get("run_id"):
        from tunesmith.errors import RunNotFoundError

        try:
            record = registry.get(entry["run_id"])
        except RunNotFoundError:
            record = None  # the last attempt stopped before its run existed (a guard refused the data)
    if record is not None:
        if record.status == "completed":
            result.run_id = record.id
            return {"status": "skipped", "why": "training inputs unchanged", "run_id": record.id}
        say(f"resuming run {record.id} from its last checkpoint")
        out = train_project(project.root, {}, resume=record.id, say=say, progress=progress,
                            on_plan=lambda plan: say(_train_estimate(plan)))
        result.run_id = out.run_id
        return {"status": "resumed", "run_id": out.run_id, "metrics": _short(out.metrics)}
    from tunesmith.runs import new_run_id

    run_id = new_run_id("run")
    # Recorded before training starts, so a killed process is resumed, not restarted.
    state.record("train", key, {"run_id": run_id})
    from tunesmith.cost import cost_line_for_training

    def on_plan(plan: dict[str, Any]) -> None:
        say(f"cost: {cost_line_for_training(project, plan)}")
        say(_train_estimate(plan))

    out = train_project(project.root, train_flags, run_id=run_id, say=say, progress=progress, on_plan=on_plan)
    result.run_id = out.run_id
    return {"status": "ok", "run_id": out.run_id, "metrics": _short(out.metrics)}


def _train_estimate(plan: dict[str, Any]) -> str:
    """`training: 36 steps ≈ 13 min 44 s (22.9 s per step, measured)`, from the plan's own measurement."""
    from tunesmith.progress import format_duration

    d = plan.get("derived", {})
    steps, per_step = d.get("total_steps"), d.get("seconds_per_step")
    if per_step is None or steps is None:
        return f"training: {steps} steps (step time not measured; the rate and ETA follow in the progress lines)"
    return f"training: {steps} steps ≈ {format_duration(per_step * steps)} ({per_step:g} s per step, measured)"


def _short(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in ("train_loss", "best_eval_loss", "steps", "wall_seconds", "trained_tokens_per_s")}


def _stage_eval(project: Project, state: State, result: PipelineResult, *, say, progress: bool = True,
                **_: Any) -> dict[str, Any]:
    from tunesmith.evaluate.api import EvalOptions, evaluate

    run_id = result.run_id or (state.data.get("train") or {}).get("run_id")
    if run_id is None:
        raise UsageError("no trained run to evaluate", "run the train stage first (`tunesmith run` without --from eval)")
    key = _eval_key(project, run_id)
    if (done := state.done("eval", key)) is not None:
        result.run_id, result.summary, result.report = run_id, done["summary"], done.get("report")
        return {"status": "skipped", "why": "run and test set unchanged", "gate": done.get("gate", {}).get("status")}
    with _answers_progress(project, "eval", "the tuned and the base model each answer", say, progress) as reporter:
        outcome = evaluate(project.root, run_id, EvalOptions(gate=True), say=say, progress=reporter.update)
    result.run_id, result.summary = run_id, outcome.summary
    result.report = str(outcome.report) if outcome.report else None
    state.record("eval", key, {"summary": outcome.summary, "gate": outcome.gate, "report": result.report})
    return {"status": "ok", "gate": (outcome.gate or {}).get("status"),
            "new_failures": (outcome.gate or {}).get("new_failures", [])}


def _stage_report(project: Project, state: State, result: PipelineResult, **_: Any) -> dict[str, Any]:
    entry = state.data.get("eval") or {}
    result.report = result.report or entry.get("report")
    result.summary = result.summary or entry.get("summary")
    if result.summary is None:
        raise UsageError("nothing to report yet", "run the eval stage first")
    return {"status": "ok", "report": result.report}


_STAGE_FUNCS = {"check": _stage_check, "split": _stage_split, "baseline": _stage_baseline,
                "train": _stage_train, "eval": _stage_eval, "report": _stage_report}
