"""`--time-budget`: the optimizer steps that fit a wall-clock budget at the measured step time.

A budget pays for the training steps and for the run's evaluations and checkpoints:

    cost(steps)     = steps x seconds_per_step + overhead(steps)
    overhead(steps) = ceil(steps / eval_every) x (eval_s + save_s) + final_s
    eval_s          = eval rows x seconds_per_step / rows per step x forward share (LoRA 1/2, full 1/3)
    save_s          = SAVE_FIXED_S + one checkpoint's MB / WRITE_MB_PER_S
    final_s         = SAVE_FIXED_S + 2 x the output's MB / WRITE_MB_PER_S

The Trainer evaluates and saves every eval_every steps and once more at its last step (transformers'
DefaultFlowCallback), hence the ceil. An evaluation is forward-only, about a third of a training row's
cost per row. A checkpoint holds the trainable weights and Adam's two moments (the disk estimate's
figure); at the end the best checkpoint is read back and the output written. eval_every follows the step
count (about 10 evaluations, fewer when those would take more than MAX_EVAL_SHARE of the training time)
unless it was set. Model loading and tokenisation come before the clock.

When the whole plan does not fit, epochs are cut (fractionally): the largest step count whose cost fits
becomes the Trainer's max_steps, and the warmup and cosine schedule span those steps. A budget too small
for MIN_EXAMPLE_PASSES (or for the whole plan, when that is smaller) is refused with the smallest budget
that works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tunesmith.errors import UsageError
from tunesmith.train.plan import FILE, FLAG, MIN_EXAMPLE_PASSES, Setting, TrainPlan, eval_every_for

#: evaluations (and their checkpoints) take at most this share of the training time
MAX_EVAL_SHARE = 0.1
#: per checkpoint: trainer state, RNG state, tokenizer and config files, whatever the weights' size
SAVE_FIXED_S = 1.0
#: torch.save + safetensors to a local disk, conservatively
WRITE_MB_PER_S = 100.0

def format_budget(seconds: float, *, compact: bool = False) -> str:
    """600 -> "10 min" (compact: "10m"), 5400 -> "1 h 30 min" ("1h30m"), 150 -> "2 min 30 s" ("2m30s").
    A budget as one would type it back (zero parts dropped; the compact form parses): log lines use
    `tunesmith.progress.format_duration`, which keeps two units for steady columns."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    units = ("h", "m", "s") if compact else (" h", " min", " s")
    parts = [f"{v:g}{u}" for v, u in zip((int(h), int(m), round(s, 1)), units) if v]
    return ("" if compact else " ").join(parts) or ("0s" if compact else "0 s")


def readable_ceiling(seconds: float) -> float:
    """Rounded up to a budget one would type: 5 s steps to a minute, 30 s to 10 minutes, then minutes,
    then 5 minutes past an hour."""
    step = 5 if seconds <= 60 else 30 if seconds <= 600 else 60 if seconds <= 3600 else 300
    return float(math.ceil(seconds / step) * step)


def budget_of(plan: TrainPlan) -> float | None:
    setting = plan.settings.get("time_budget")
    return None if setting is None or setting.value is None else float(setting.value)


@dataclass(frozen=True)
class StepCosts:
    """What `steps` optimizer steps cost in seconds, evaluations and checkpoints included (see the module)."""

    seconds_per_step: float
    eval_s: float
    save_s: float
    final_s: float
    eval_every: int | None  # None: follows the step count (about 10 evaluations)

    def every(self, steps: int) -> int:
        if self.eval_every is not None:
            return self.eval_every
        # about 10 evaluations, but never more than MAX_EVAL_SHARE of the training time on them
        affordable = math.ceil((self.eval_s + self.save_s) / (MAX_EVAL_SHARE * self.seconds_per_step))
        return min(max(1, steps), max(eval_every_for(steps), affordable))

    def overhead(self, steps: int) -> float:
        return math.ceil(steps / self.every(steps)) * (self.eval_s + self.save_s) + self.final_s

    def total(self, steps: int) -> float:
        return steps * self.seconds_per_step + self.overhead(steps)


def costs_for(plan: TrainPlan, seconds_per_step: float, disk: dict[str, float]) -> StepCosts:
    """`disk`: the run's disk estimate (output_mb, checkpoints_mb for the two checkpoints kept)."""
    d = plan.derived
    rows_per_step = plan["batch_size"] * d["gradient_accumulation"]
    eval_rows = d["eval_examples"] / max(1, d.get("processes", 1))
    eval_s = eval_rows * seconds_per_step / rows_per_step * forward_share(plan)
    save_s = SAVE_FIXED_S + disk.get("checkpoints_mb", 0.0) / 2 / WRITE_MB_PER_S
    final_s = SAVE_FIXED_S + 2 * disk.get("output_mb", 0.0) / WRITE_MB_PER_S
    follows = plan.settings["eval_every"].source not in (FLAG, FILE)
    return StepCosts(seconds_per_step, eval_s, save_s, final_s, None if follows else int(plan["eval_every"]))


def forward_share(plan: TrainPlan) -> float:
    """The forward pass's share of a training step. Full fine-tuning: a third (the backward computes
    input and weight gradients, each about one forward). LoRA: frozen weights get no weight gradient,
    so the backward through a layer costs about one forward: a half, and L / (L + k) when only the top
    k of L layers back-propagate."""
    if "method" in plan.settings and plan.settings["method"].value == "full":
        return 1 / 3
    total = plan.derived.get("layers_total")
    layers = plan.settings["layers"].value if "layers" in plan.settings else "all"
    if not total or layers == "all":
        return 1 / 2
    return total / (total + min(int(layers), total))


def _passes(plan: TrainPlan, steps: int) -> int:
    d = plan.derived
    full = round(d["train_examples"] * plan["epochs"])
    return min(full, round(steps * d["train_examples"] / d["steps_per_epoch"]))


def _min_steps(plan: TrainPlan) -> int:
    """The fewest steps worth a run: MIN_EXAMPLE_PASSES, or the whole plan when it is smaller."""
    d = plan.derived
    return min(d["total_steps"], max(1, math.ceil(MIN_EXAMPLE_PASSES * d["steps_per_epoch"] / max(1, d["train_examples"]))))


def _label(budget: float) -> str:
    return f"the {format_budget(budget)} budget"


def _epochs(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if value < 0.1 else f"{value:.1f}".removesuffix(".0")


def fit_eval_cadence(plan: TrainPlan, costs: StepCosts) -> None:
    """The plan's own eval_every (not one that was set), spaced so that evaluations and their checkpoints
    take at most MAX_EVAL_SHARE of the training time at the measured step time."""
    if costs.eval_every is not None or not plan.derived.get("eval_examples"):
        return
    steps = plan.derived["total_steps"]
    every = costs.every(steps)
    if every != plan["eval_every"]:
        evals = math.ceil(steps / every)
        plan.settings["eval_every"] = Setting(every, plan.settings["eval_every"].source, (
            f"{evals} evaluation(s) (and checkpoints): each costs about {costs.eval_s + costs.save_s:.0f} s, "
            f"kept under {MAX_EVAL_SHARE:.0%} of the training time"))


def record_fit(plan: TrainPlan, costs: StepCosts, budget: float) -> None:
    """The whole plan fits: nothing changes; the plan says so."""
    d = plan.derived
    steps = d["total_steps"]
    spare = budget - costs.total(steps)
    d.update(budget_steps=steps, example_passes=_passes(plan, steps), budget_overhead_s=round(costs.overhead(steps), 1))
    d["gave_up"] = (f"nothing: {_label(budget)} fits all {steps:,} steps ({d['example_passes']:,} example passes, "
                    f"{_epochs(plan['epochs'])} epochs) with about {format_budget(round(spare))} to spare")


def cut_epochs(plan: TrainPlan, costs: StepCosts, budget: float) -> None:
    """The largest step count whose cost fits the budget becomes max_steps; too few steps are refused."""
    d = plan.derived
    planned = d["total_steps"]
    fitted = next((s for s in range(planned, 0, -1) if costs.total(s) <= budget), 0)
    least = _min_steps(plan)
    if fitted < least:
        _refuse(plan, costs, budget, fitted, least)
    budget_setting = plan.settings["time_budget"]
    full_epochs, epochs = plan["epochs"], fitted / d["steps_per_epoch"]
    passes, full_passes = _passes(plan, fitted), _passes(plan, planned)
    plan.settings["epochs"] = Setting(round(epochs, 3), budget_setting.source,
                                      f"{_label(budget)} fits {_epochs(epochs)} of {_epochs(full_epochs)} epochs")
    if costs.eval_every is None:
        every = costs.every(fitted)
        plan.settings["eval_every"] = Setting(every, plan.settings["eval_every"].source,
                                              f"{math.ceil(fitted / every)} evaluation(s) (and checkpoints) over the "
                                              f"{fitted} steps that fit, under {MAX_EVAL_SHARE:.0%} of the time")
    d.update(planned_steps=planned, total_steps=fitted, max_steps=fitted, budget_steps=fitted, example_passes=passes,
             budget_overhead_s=round(costs.overhead(fitted), 1))
    d["gave_up"] = (f"{_label(budget)} fits {fitted:,} of {planned:,} steps ({passes:,} of {full_passes:,} example "
                    f"passes; {_epochs(epochs)} of {_epochs(full_epochs)} epochs)")


def _refuse(plan: TrainPlan, costs: StepCosts, budget: float, fitted: int, least: int) -> None:
    cheapest = min(costs.total(s) for s in range(least, plan.derived["total_steps"] + 1))
    enough = format_budget(readable_ceiling(cheapest), compact=True)
    source = plan.settings["time_budget"].source
    how = f"--time-budget {enough}" if source == FLAG else f"train.time_budget: {enough}"
    raise UsageError(
        f"{_label(budget)} fits {fitted} training step(s) at {costs.seconds_per_step:g} s per step (measured), "
        f"fewer than the {least} a run needs ({_passes(plan, least):,} example passes)",
        f"the smallest budget that works here is {enough} ({how}); shorter examples (max_length) or a smaller "
        f"model make steps cheaper",
    )


def keep_recorded_budget(plan: TrainPlan, recorded: dict[str, Any]) -> None:
    """A resumed run keeps the steps its recorded plan chose: a new measurement would move the goalposts
    (and resumes are not measured)."""
    if not recorded.get("settings"):
        return  # no readable plan.json: nothing recorded to keep
    old = TrainPlan.from_dict(recorded)
    if "time_budget" not in old.settings and "time_budget" not in plan.settings:
        return
    for name in ("time_budget", "epochs", "eval_every", "layers"):
        if name in old.settings:
            plan.settings[name] = old.settings[name]
        else:
            plan.settings.pop(name, None)
    for key in ("total_steps", "planned_steps", "max_steps", "budget_steps", "example_passes", "budget_overhead_s",
                "gave_up", "seconds_per_step", "estimated_minutes"):
        if key in old.derived:
            plan.derived[key] = old.derived[key]
        else:
            plan.derived.pop(key, None)
