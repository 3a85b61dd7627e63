"""`tunesmith train` as a library call: plan (dry run), train, resume, record in the registry."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import OutputError, TunesmithError, UsageError
from tunesmith.progress import Say
from tunesmith.project import Project, load_project
from tunesmith.runs import library_versions, new_run_id
from tunesmith.train.distributed import is_main_process, shared_value, wait_for_everyone, world_size
from tunesmith.train.prepare import Prepared, prepare


@dataclass
class TrainOutcome:
    run_id: str | None
    run_dir: Path | None
    plan: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "run_dir": str(self.run_dir) if self.run_dir else None,
                "dry_run": self.dry_run, "plan": self.plan, "metrics": self.metrics}


def estimate_step_seconds(prep: Prepared, steps: int = 3) -> float:
    """Time a few real optimizer-free training steps (not a guess) on a median-length and a long batch,
    and scale the cost per padded token to the micro-batches the run will really see (`batching`: the
    sampler's length buckets, the collator's padding), rows longer than the median costing more per
    token (attention). Measured: a median batch alone underestimated a demo step by ~30 %."""
    import numpy as np
    import torch

    from tunesmith.train.batching import pad_multiple, padded_lengths
    from tunesmith.train.local import build_model
    from tunesmith.train.trainer import PadCollator, selective_lm_loss

    model = build_model(prep)
    model.train()
    rows = sorted(prep.train.rows, key=lambda r: len(r.enc.input_ids))
    size = prep.plan["batch_size"]
    pad = prep.tokenizer.pad_token_id if prep.tokenizer.pad_token_id is not None else prep.tokenizer.eos_token_id
    collate = PadCollator(pad, pad_multiple(prep.device.kind))
    use_bf16 = prep.plan["precision"] == "bf16" and prep.device.kind == "cpu"

    def per_token(at: int) -> tuple[float, float]:
        """(seconds per padded token, padded row length) of a batch of rows around position `at`."""
        start = min(max(0, at - size // 2), max(0, len(rows) - size))
        batch = collate([{"input_ids": r.enc.input_ids, "labels": r.enc.labels} for r in rows[start:start + size]])
        timings = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                loss = selective_lm_loss(model, batch, None)
            loss.backward()
            model.zero_grad(set_to_none=True)
            if i:  # the first step warms up allocators and kernels
                timings.append(time.perf_counter() - t0)
        median = sorted(timings)[len(timings) // 2]  # one slow step (a busy neighbour) does not count
        return median / batch["input_ids"].numel(), float(batch["input_ids"].shape[1])

    (cost_mid, len_mid), (cost_long, len_long) = per_token(len(rows) // 2), per_token(int(len(rows) * 0.9))
    padded = padded_lengths([len(r.enc.input_ids) for r in prep.train.rows], size, prep.plan["seed"],
                            pad_multiple(prep.device.kind)) or [1]
    slope = (cost_long - cost_mid) / (len_long - len_mid) if len_long > len_mid else 0.0
    micro = float(np.mean([n * size * max(cost_mid, cost_mid + slope * (n - len_mid)) for n in padded]))
    return micro * prep.plan.derived["gradient_accumulation"] * TRAINER_OVERHEAD


#: a Trainer step costs more than the same forward + backward timed alone (fresh data, the optimizer,
#: allocator churn): on the demo, fp32, 2-core Xeon, real steps took 1.23x and 1.0x the step measured
#: alone in two runs (a 2-core VM's measurement moves by ~20 %)
TRAINER_OVERHEAD = 1.1


def _disk_estimate(prep: Prepared) -> dict[str, float]:
    import json

    cfg = json.loads((prep.model_path / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    hidden, layers = cfg.get("hidden_size", 0), cfg.get("num_hidden_layers", 0)
    inter = cfg.get("intermediate_size", 4 * hidden)
    if prep.plan["method"] == "full":
        size_mb = sum(f.stat().st_size for f in prep.model_path.glob("*.safetensors")) / 2**20
    else:
        r = prep.plan["rank"]
        # q,k,v,o on hidden x hidden (k/v may be smaller: an upper bound) and gate/up/down on hidden x inter
        per_layer = r * (4 * 2 * hidden + 3 * (hidden + inter))
        size_mb = per_layer * layers * 4 / 2**20
    # two checkpoints kept, each weights + Adam's two moments
    return {"output_mb": round(size_mb, 1), "checkpoints_mb": round(size_mb * 3 * 2, 1),
            "total_mb": round(size_mb * 7, 1)}


def plan_training(project: Project, flags: dict[str, Any], say: Say | None = None, *, measure: bool = True,
                  fit_budget: bool = True) -> tuple[Prepared, dict[str, Any]]:
    """The plan; with `measure`, the step time is measured and a time budget (if any) applied to it.
    Without a measurement a budget stays unapplied: resumes keep their recorded plan instead
    (`keep_recorded_budget`; `fit_budget=False`) and multi-process runs refuse one (`refuse_unmeasured_budget`)."""
    prep = prepare(project, flags, say)
    prep.plan.derived["disk"] = _disk_estimate(prep)
    if measure:
        step_s = estimate_step_seconds(prep)
        if fit_budget:  # a resumed run keeps the cadence and the steps it was planned with
            from tunesmith.train.budget import costs_for, fit_eval_cadence

            fit_eval_cadence(prep.plan, costs_for(prep.plan, step_s, prep.plan.derived["disk"]))
            step_s = apply_time_budget(prep, step_s)
        prep.plan.derived["seconds_per_step"] = round(step_s, 2)
        prep.plan.derived["estimated_minutes"] = round(step_s * prep.plan.derived["total_steps"] / 60, 1)
    return prep, prep.plan.to_dict()


def apply_time_budget(prep: Prepared, step_s: float) -> float:
    """Fit the plan to its time budget at the measured step time (tunesmith.train.budget has the formula);
    the step time of the plan it settled on. Epochs are the lever: LoRA on the top layers only was
    measured as the cheaper-steps lever and cost too much quality to be pulled for the user (see
    benchmarks/README.md, `train_throughput.py --layers`); `--layers` stays the user's choice."""
    from tunesmith.train.budget import budget_of, costs_for, cut_epochs, record_fit

    budget = budget_of(prep.plan)
    if budget is None:
        return step_s
    costs = costs_for(prep.plan, step_s, prep.plan.derived["disk"])
    if costs.total(prep.plan.derived["total_steps"]) <= budget:
        record_fit(prep.plan, costs, budget)
        return step_s
    cut_epochs(prep.plan, costs, budget)
    return step_s


def keep_recorded_cadence(plan: Any, recorded: dict[str, Any]) -> None:
    """A resumed run evaluates and checkpoints at the steps its recorded plan chose: that cadence may have
    been fitted to a step time measured then, and a resume measures nothing (its default would differ)."""
    from tunesmith.train.plan import TrainPlan

    if "eval_every" in (recorded.get("settings") or {}):
        plan.settings["eval_every"] = TrainPlan.from_dict(recorded).settings["eval_every"]


def _disk_full(exc: Exception, run_id: str) -> OutputError | None:
    """The run's own "the disk is full" error (io's message, which names the file) with the way back."""
    from tunesmith.train.local import OUT_OF_SPACE

    if not isinstance(exc, OutputError) or exc.errno not in OUT_OF_SPACE:
        return None
    error = OutputError(f"training run {run_id} stopped: {exc.message}",
                        f"free some space, then `tunesmith train --resume {run_id}` (or `tunesmith run` again) "
                        "continues from the last complete checkpoint")
    error.errno = exc.errno
    return error


def refuse_unmeasured_budget(project: Project, flags: dict[str, Any], processes: int) -> None:
    """A budget is checked against the step time measured in one process; with several, each process's
    steps contend for the machine in ways one process cannot measure, so the budget is refused."""
    given = "--time-budget" if flags.get("time_budget") is not None else \
        "train.time_budget" if project.train.time_budget is not None else None
    if given is not None and processes > 1:
        raise UsageError(f"a time budget ({given}) needs the step time measured in one process; "
                         f"{processes} processes cannot check it",
                         "train in one process (drop --num-processes), or drop the budget and set --epochs "
                         "(`tunesmith train --dry-run` with the budget shows the epochs that fit)")


def train_project(project_dir: Path | str, flags: dict[str, Any] | None = None, *, dry_run: bool = False,
                  resume: str | None = None, run_name: str | None = None, run_id: str | None = None,
                  json_events: bool = False,
                  progress: bool = True, say: Say | None = None,
                  on_plan: Callable[[dict[str, Any]], None] | None = None) -> TrainOutcome:
    from tunesmith.project_lock import project_lock

    project = load_project(project_dir)
    if dry_run or not is_main_process():  # a plan writes nothing; rank 0 holds the lock for all ranks
        lock: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    else:  # two processes resuming one run would write into the same checkpoints
        lock = project_lock(project.root, "tunesmith train")
    with lock:
        return _train_project(project, dict(flags or {}), dry_run=dry_run, resume=resume, run_name=run_name,
                              run_id=run_id, json_events=json_events, progress=progress, say=say, on_plan=on_plan)


def _train_project(project: Project, flags: dict[str, Any], *, dry_run: bool, resume: str | None,
                   run_name: str | None, run_id: str | None, json_events: bool, progress: bool, say: Say | None,
                   on_plan: Callable[[dict[str, Any]], None] | None) -> TrainOutcome:
    from tunesmith.train.local import run_training, write_run_files

    registry = project.registry()
    if resume is not None:
        # `latest` on each rank separately could name different runs; rank 0's choice is the launch's
        record = registry.get(shared_value(registry.get(resume).id))
        run_id, run_dir = record.id, Path(record.path)
        saved_flags = record.config.get("flags", {}) if isinstance(record.config, dict) else {}
        asked = {k: v for k, v in flags.items() if v is not None}
        if asked and asked != saved_flags:
            raise UsageError("--resume continues a run with its own settings; flags cannot change them",
                             "drop the flags, or start a new run")
        flags = saved_flags
        if record.base_model and record.base_model != project.base_model:
            # its checkpoints continue the base they were trained from (RunRecord.model's rule)
            if say is not None:
                say(f"warning: run {run_id} was trained on {record.base_model!r}, not on the project's base_model "
                    f"{project.base_model!r}: resuming on {record.base_model!r}")
            project = project.model_copy(update={"base_model": record.base_model})
    if resume is None:
        refuse_unmeasured_budget(project, flags, world_size())
    prep, plan = plan_training(project, flags, say, measure=dry_run or (resume is None and world_size() == 1),
                               fit_budget=resume is None)
    if resume is not None:
        from tunesmith.train.budget import keep_recorded_budget

        keep_recorded_budget(prep.plan, record.plan)
        keep_recorded_cadence(prep.plan, record.plan)
        plan = prep.plan.to_dict()
    if on_plan is not None:
        on_plan(plan)
    if dry_run:
        return TrainOutcome(None, None, plan, dry_run=True)
    if resume is not None:
        if record.data.get("train_sha256") != prep.data_hashes["train_sha256"]:
            raise UsageError(f"the training data changed since run {run_id} started",
                             "start a new run (`tunesmith train`) instead of resuming")
    else:
        run_id = shared_value(run_id or new_run_id(run_name))
        run_dir = registry.run_dir(run_id)
        if is_main_process():
            config = {"project": project.resolved(), "flags": {k: v for k, v in flags.items() if v is not None},
                      "versions": library_versions(), "world_size": world_size()}
            registry.create_run(run_id, project_root=str(project.root), base_model=project.base_model,
                                method=prep.plan["method"], config=config, plan=plan, data=prep.data_hashes)
        wait_for_everyone()
    started_with = _started_with(record.config) if resume is not None else world_size()
    if not is_main_process():
        run_training(prep, run_dir, resume=resume is not None, json_events=False, progress=False,
                     started_with=started_with, say=say)
        return TrainOutcome(run_id, run_dir, plan)
    write_run_files(run_dir, prep)
    registry.set_status(run_id, "running")
    try:
        result = run_training(prep, run_dir, resume=resume is not None, json_events=json_events, progress=progress,
                              started_with=started_with, say=say)
    except KeyboardInterrupt:
        registry.set_status(run_id, "interrupted", error="interrupted; resume with `tunesmith train --resume " + run_id + "`")
        raise
    except Exception as exc:
        error = _disk_full(exc, run_id)
        # a full disk may refuse the registry's write too; a run left "running" resumes all the same
        with contextlib.suppress(TunesmithError):
            registry.set_status(run_id, "failed", error=str(error or exc)[:2000])
        if error is None:
            raise
        raise error from None
    summary = {"adapter": str(result.adapter_dir), "stopped_early": result.metrics.get("stopped_early"),
               "converged": result.metrics.get("converged")}
    registry.set_status(run_id, "completed", metrics=result.metrics, summary=summary)
    return TrainOutcome(run_id, run_dir, plan, result.metrics)


def _started_with(config: Any) -> int:
    """The processes a run was started with (its record), whose files its checkpoints hold."""
    n = config.get("world_size") if isinstance(config, dict) else None
    return n if isinstance(n, int) and n > 0 else 1
