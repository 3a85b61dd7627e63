"""Everything before the first training step: guards, tokenisation, the audit, the plan.

All of it runs before any long work starts, so bad input fails in seconds with a clear message and
nothing half-written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.checks import run_check
from tunesmith.data.checks.setup import check_context
from tunesmith.data.split import seal_path_for, verify_seal
from tunesmith.errors import DataError, SealError, UsageError
from tunesmith.io import sha256_file
from tunesmith.project import Project
from tunesmith.train.dataset import (
    LabelAudit, TrainingData, audit, encode_examples, load_examples, truncate_rows, validation_split,
)
from tunesmith.train.device import DeviceInfo, detect_device
from tunesmith.train.distributed import world_size
from tunesmith.train.plan import PlanInputs, TrainPlan, make_plan

Say = Callable[[str], None]


@dataclass
class Prepared:
    project: Project
    plan: TrainPlan
    audit: LabelAudit
    train: TrainingData
    eval: TrainingData
    model_path: Path
    tokenizer: Any
    device: DeviceInfo
    data_hashes: dict[str, str]


def guard_data(project: Project) -> tuple[Path, dict[str, str]]:
    """The training file exists and is clean; the sealed test set is intact and does not overlap it."""
    train = project.path(project.data.train)
    test = project.path(project.data.test)
    if not train.exists():
        raise DataError(f"{train}: no training split yet", f"run `tunesmith split -p {project.root}` first")
    if not test.exists() or not seal_path_for(test).exists():
        raise SealError(f"{test}: no sealed test set", f"run `tunesmith split -p {project.root}`: evaluation needs it")
    seal = verify_seal(test)
    if not seal.ok:
        raise SealError(
            f"{test}: the sealed test set changed since it was sealed "
            f"({len(seal.changed)} changed, {len(seal.added)} added, {seal.removed} removed)",
            "restore it from version control, or re-split with `tunesmith split` (old results become incomparable)",
        )
    report = run_check(check_context(train, project, tokens=False))
    if report.errors:
        details = [f"{f.check}: {f.message} (lines {', '.join(map(str, f.lines[:10]))})" for f in report.errors]
        raise DataError(f"{train}: `check` found {len(report.errors)} error(s); not training on it",
                        f"run `tunesmith check {train}` and `tunesmith fix` first", details=details)
    hashes = {"train_sha256": sha256_file(train), "test_seal_sha256": sha256_file(seal_path_for(test))}
    return train, hashes


def prepare(project: Project, flags: dict[str, Any], say: Say | None = None) -> Prepared:
    from tunesmith.models.resolve import load_tokenizer, resolve_model

    say = say or (lambda _msg: None)
    train_path, hashes = guard_data(project)
    resolved = resolve_model(project.base_model, progress=say)
    tokenizer = load_tokenizer(resolved)
    device = detect_device()
    examples = load_examples(train_path)
    task = encode_examples(tokenizer, examples, project.system_prompt, max_length=None)
    mixed = TrainingData()
    if project.train.mix is not None:
        from tunesmith.train.mixing import mixed_rows

        mixed = mixed_rows(len(task.rows), project, tokenizer, resolved.path, say)
    model_max = _model_max_length(resolved.path)
    file_settings = {k: v for k, v in project.train.model_dump().items() if v is not None and k not in ("mix", "runs_dir", "report_to")}
    plan = make_plan(PlanInputs(
        n_examples=len(task.rows) + len(mixed.rows), token_lengths=task.lengths() + mixed.lengths(),
        model_max_length=model_max, device=device, n_params=_param_count(resolved.path), file=file_settings,
        flags=validated_flags(flags), project_max_length=project.max_length, world_size=world_size(),
        n_held_out_pool=len(task.rows),
    ))
    data = truncate_rows(task, plan["max_length"], tokenizer)
    label_audit = audit(data)
    if label_audit.no_trainable_lines:
        lines = label_audit.no_trainable_lines
        raise DataError(
            f"{len(lines)} example(s) have no trainable token after truncation to {plan['max_length']} tokens "
            f"(lines {', '.join(map(str, lines[:20]))}{' ...' if len(lines) > 20 else ''})",
            "raise max_length (tunesmith.yaml or --max-length), or shorten those prompts",
        )
    # Validation comes from the task rows only: mixed general rows say nothing about the task.
    train, held = validation_split(data, plan.derived["eval_examples"])
    mixed = truncate_rows(mixed, plan["max_length"], tokenizer)
    train.rows += [r for r in mixed.rows if r.enc.trainable > 0]
    plan.derived["audit"] = label_audit.to_dict()
    plan.derived["mixed_examples"] = len(mixed.rows)
    return Prepared(project, plan, label_audit, train, held, resolved.path, tokenizer, device, hashes)


def validated_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """Flags get the same range checks as tunesmith.yaml, reported with the flag's name."""
    from pydantic import ValidationError

    from tunesmith.project import TrainSettings

    given = {k: v for k, v in flags.items() if v is not None}
    problems = []
    train_keys = {k: v for k, v in given.items() if k in TrainSettings.model_fields}
    try:
        TrainSettings.model_validate(train_keys)
    except ValidationError as exc:
        problems += [f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()]
    if "max_length" in given:
        low, high = 16, 131072
        if not isinstance(given["max_length"], int) or not low <= given["max_length"] <= high:
            problems.append(f"--max-length: must be between {low} and {high}")
    if problems:
        raise UsageError("flag value(s) out of range: " + "; ".join(problems), "fix the flags named above")
    return given


def _model_max_length(path: Path) -> int | None:
    import json

    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    cfg = cfg.get("text_config", cfg)
    return cfg.get("max_position_embeddings")


def _param_count(path: Path) -> int | None:
    """Parameters from the safetensors headers (no weights loaded)."""
    try:
        from safetensors import safe_open

        total = 0
        for f in path.glob("*.safetensors"):
            with safe_open(str(f), "pt") as st:
                for k in st.keys():
                    n = 1
                    for d in st.get_slice(k).get_shape():
                        n *= d
                    total += n
        return total or None
    except Exception:  # noqa: BLE001 - an estimate only
        return None
