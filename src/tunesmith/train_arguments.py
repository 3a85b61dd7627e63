"""train.report_to and train.extra checked against transformers itself, as the project file loads.

transformers is imported only when one of them is set: loading a project that sets neither stays fast.
"""

from __future__ import annotations

import difflib
from typing import Any

#: TrainingArguments fields a train.* setting controls: train.extra refuses them and names the setting
SET_BY_SETTING: dict[str, str] = {
    "learning_rate": "learning_rate", "num_train_epochs": "epochs", "max_steps": "time_budget",
    "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "effective_batch",
    "lr_scheduler_type": "scheduler", "warmup_steps": "warmup_ratio", "warmup_ratio": "warmup_ratio",
    "eval_steps": "eval_every", "save_steps": "eval_every", "seed": "seed", "data_seed": "seed",
    "bf16": "precision", "fp16": "precision", "report_to": "report_to",
}
#: fields the run itself depends on (where it writes, what it evaluates and restores, what stdout carries)
SET_BY_TUNESMITH: frozenset[str] = frozenset({
    "output_dir", "eval_strategy", "save_strategy", "load_best_model_at_end", "metric_for_best_model",
    "greater_is_better", "use_cpu", "remove_unused_columns", "prediction_loss_only", "logging_steps",
    "disable_tqdm", "gradient_checkpointing", "resume_from_checkpoint",
})
#: tunesmith's own defaults that train.extra may replace (`train` prints a note when it does)
OVERRIDABLE: frozenset[str] = frozenset({
    "save_total_limit", "per_device_eval_batch_size", "train_sampling_strategy", "dataloader_num_workers",
    "ddp_find_unused_parameters",
})


def training_argument_names() -> list[str]:
    import dataclasses

    from transformers import TrainingArguments

    return sorted(f.name for f in dataclasses.fields(TrainingArguments) if f.init)


def check_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """train.extra as given, or a ValueError naming the first key transformers lacks or tunesmith sets."""
    if not extra:
        return extra
    known = training_argument_names()
    for key in extra:
        if not isinstance(key, str) or key not in known:
            close = difflib.get_close_matches(str(key), known, n=3)
            near = f"; closest: {', '.join(close)}" if close else ""
            raise ValueError(f"{key!r} is not a transformers TrainingArguments field{near}")
        if key in SET_BY_SETTING:
            raise ValueError(f"{key!r} is planned by tunesmith: set it as train.{SET_BY_SETTING[key]}, not in train.extra")
        if key in SET_BY_TUNESMITH:
            raise ValueError(f"{key!r} is set by tunesmith itself (the run's checkpoints, evaluation and events "
                             "depend on it); remove it from train.extra")
    return extra


def integrations() -> tuple[list[str], list[str]]:
    """(every tracker name transformers accepts, those whose package is installed)."""
    from transformers.integrations import integration_utils

    return sorted(integration_utils.INTEGRATION_TO_CALLBACK), integration_utils.get_available_reporting_integrations()


def check_report_to(value: list[str] | str) -> list[str] | str:
    """train.report_to as transformers takes it: names it knows, or all / none."""
    names = [value] if isinstance(value, str) else value
    if isinstance(value, str) and value in ("all", "none"):
        return value
    if not names:
        return names
    accepted, _ = integrations()
    unknown = [n for n in names if n not in accepted]
    if unknown:
        raise ValueError(f"{', '.join(map(repr, unknown))}: not a tracker transformers knows; "
                         f"use {', '.join(accepted)}, all or none")
    return list(names)
