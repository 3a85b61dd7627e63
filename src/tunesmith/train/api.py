"""`tunesmith train` as a library call: plan (dry run), train, resume, record in the registry."""

from __future__ import annotations

import errno

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError, UsageError
from tunesmith.project import Project, load_project
from tunesmith.runs import RunRegistry, library_versions, new_run_id
from tunesmith.train.distributed import is_main_process, shared_value, wait_for_everyone, world_size
from tunesmith.train.prepare import Prepared, prepare

Say = Callable[[str], None]


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


def registry_for(project: Project) -> RunRegistry:
    return RunRegistry(project.path(project.train.runs_dir))


def estimate_step_seconds(prep: Prepared, steps: int = 2) -> float:
    """Time a few real optimizer-free training steps on a median-length batch (not a guess)."""
    import torch

    from tunesmith.train.local import build_model
    from tunesmith.train.trainer import PadCollator, selective_lm_loss

    model = build_model(prep)
    model.train()
    rows = sorted(prep.train.rows, key=lambda r: len(r.enc.input_ids))
    mid = len(rows) // 2
    batch_rows = rows[max(0, mid - prep.plan["batch_size"] // 2):][: prep.plan["batch_size"]]
    pad = prep.tokenizer.pad_token_id if prep.tokenizer.pad_token_id is not None else prep.tokenizer.eos_token_id
    batch = PadCollator(pad)([{"input_ids": r.enc.input_ids, "labels": r.enc.labels} for r in batch_rows])
    use_bf16 = prep.plan["precision"] == "bf16" and prep.device.kind == "cpu"
    timings = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss = selective_lm_loss(model, batch, None)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i:  # the first step warms up allocators and kernels
            timings.append(time.perf_counter() - t0)
    micro = sum(timings) / len(timings)
    return micro * prep.plan.derived["gradient_accumulation"]


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


def plan_training(project: Project, flags: dict[str, Any], say: Say | None = None, *, measure: bool = True) -> tuple[Prepared, dict[str, Any]]:
    prep = prepare(project, flags, say)
    if measure:
        step_s = estimate_step_seconds(prep)
        prep.plan.derived["seconds_per_step"] = round(step_s, 2)
        prep.plan.derived["estimated_minutes"] = round(step_s * prep.plan.derived["total_steps"] / 60, 1)
    prep.plan.derived["disk"] = _disk_estimate(prep)
    return prep, prep.plan.to_dict()


def train_project(project_dir: Path | str, flags: dict[str, Any] | None = None, *, dry_run: bool = False,
                  resume: str | None = None, run_name: str | None = None, run_id: str | None = None,
                  json_events: bool = False,
                  progress: bool = True, say: Say | None = None,
                  on_plan: Callable[[dict[str, Any]], None] | None = None) -> TrainOutcome:
    from tunesmith.train.local import run_training, write_run_files

    flags = dict(flags or {})
    project = load_project(project_dir)
    registry = registry_for(project)
    if resume is not None:
        record = registry.get(resume)
        run_id, run_dir = record.id, Path(record.path)
        saved_flags = record.config.get("flags", {}) if isinstance(record.config, dict) else {}
        asked = {k: v for k, v in flags.items() if v is not None}
        if asked and asked != saved_flags:
            raise UsageError("--resume continues a run with its own settings; flags cannot change them",
                             "drop the flags, or start a new run")
        flags = saved_flags
    prep, plan = plan_training(project, flags, say, measure=dry_run or (resume is None and world_size() == 1))
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
    if not is_main_process():
        run_training(prep, run_dir, resume=resume is not None, json_events=False, progress=False)
        return TrainOutcome(run_id, run_dir, plan)
    write_run_files(run_dir, prep)
    registry.set_status(run_id, "running")
    try:
        result = run_training(prep, run_dir, resume=resume is not None, json_events=json_events, progress=progress)
    except KeyboardInterrupt:
        registry.set_status(run_id, "interrupted", error="interrupted; resume with `tunesmith train --resume " + run_id + "`")
        raise
    except (TunesmithError, RuntimeError, OSError) as exc:
        registry.set_status(run_id, "failed", error=str(exc)[:2000])
        if getattr(exc, "errno", None) == errno.ENOSPC:  # an OSError, or an OutputError of ours
            raise TunesmithError(f"disk full while training run {run_id}",
                                 f"free space, then `tunesmith train --resume {run_id}` continues from the last checkpoint") from None
        raise
    summary = {"adapter": str(result.adapter_dir), "stopped_early": result.metrics.get("stopped_early")}
    registry.set_status(run_id, "completed", metrics=result.metrics, summary=summary)
    return TrainOutcome(run_id, run_dir, plan, result.metrics)
