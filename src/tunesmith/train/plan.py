"""The training plan: every setting with its value, where it came from, and why.

Precedence is defaults < data-derived choices < tunesmith.yaml (`train:`) < command-line flags. The
rules are the guide's: rank from the dataset size, alpha = 2 x rank, learning rate 2e-4 for LoRA,
3 epochs kept within OpenAI's auto range of examples x epochs, an effective batch of 16, 10 %
warmup with a cosine schedule, and max length from the data's p99 token length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunesmith.errors import UsageError
from tunesmith.train.device import DeviceInfo

#: examples x epochs stays within this range (OpenAI's auto epochs do the same)
MIN_EXAMPLE_PASSES, MAX_EXAMPLE_PASSES = 100, 25_000
EFFECTIVE_BATCH = 16
FLAG, FILE, DATA, DEFAULT, DEVICE = "flag", "tunesmith.yaml", "data", "default", "device"


@dataclass
class Setting:
    value: Any
    source: str
    why: str = ""


@dataclass
class PlanInputs:
    n_examples: int
    token_lengths: list[int]
    model_max_length: int | None
    device: DeviceInfo
    n_params: int | None = None
    file: dict[str, Any] = field(default_factory=dict)   # project.train, unset keys omitted
    flags: dict[str, Any] = field(default_factory=dict)  # command-line overrides, unset keys omitted
    project_max_length: int | None = None
    world_size: int = 1
    #: rows the validation slice may come from (task rows; mixed general rows are excluded)
    n_held_out_pool: int | None = None
    #: decoder layers of the base model (config.json), for LoRA on the top layers only
    n_layers: int | None = None


@dataclass
class TrainPlan:
    settings: dict[str, Setting]
    derived: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.settings[name].value

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": {k: {"value": s.value, "source": s.source, "why": s.why} for k, s in self.settings.items()},
            "derived": self.derived,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainPlan:
        return cls({k: Setting(**v) for k, v in data["settings"].items()}, dict(data.get("derived", {})))


class _Chooser:
    def __init__(self, inputs: PlanInputs) -> None:
        self.inputs = inputs
        self.settings: dict[str, Setting] = {}

    def __call__(self, name: str, value: Any, source: str, why: str = "") -> Any:
        if self.inputs.flags.get(name) is not None:
            value, source, why = self.inputs.flags[name], FLAG, f"--{name.replace('_', '-')}"
        elif self.inputs.file.get(name) is not None:
            value, source = self.inputs.file[name], FILE
            why = "max_length" if name == "max_length" else f"train.{name}"
        self.settings[name] = Setting(value, source, why)
        return value


def lora_rank_for(n: int) -> tuple[int, str]:
    if n < 200:
        return 8, f"{n} examples < 200: r=8 (a higher rank would memorise)"
    if n <= 1000:
        return 16, f"{n} examples in 200-1000: r=16"
    return 32, f"{n} examples > 1000: r=32"


def epochs_for(n: int) -> tuple[int, str]:
    lo = math.ceil(MIN_EXAMPLE_PASSES / max(n, 1))
    hi = max(1, MAX_EXAMPLE_PASSES // max(n, 1))
    epochs = min(max(3, lo), hi)
    if epochs == 3:
        return 3, f"3 epochs: {n} x 3 = {3 * n} example passes is within {MIN_EXAMPLE_PASSES}-{MAX_EXAMPLE_PASSES:,}"
    return epochs, f"{epochs} epochs keep {n} x epochs within {MIN_EXAMPLE_PASSES}-{MAX_EXAMPLE_PASSES:,} example passes"


def needs_qlora(dev: DeviceInfo, n_params: int | None) -> bool:
    """QLoRA when 16-bit weights would take more than half the GPU's memory (the rest is activations,
    the adapter and its optimizer state)."""
    return bool(dev.kind == "cuda" and n_params and dev.memory_gb and n_params * 2 / 2**30 > 0.5 * dev.memory_gb)


def choose_layers(choose: _Chooser, inputs: PlanInputs) -> None:
    """`layers`: LoRA on the top k decoder layers, or all. Below the lowest adapted layer nothing needs a
    gradient, so backpropagation stops there: fewer layers, cheaper steps."""
    n = inputs.n_layers
    layers = choose("layers", "all", DEFAULT, "every decoder layer")
    if layers == "all":
        return
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        raise UsageError(f"layers must be a positive number of top decoder layers or 'all', not {layers!r}",
                         "set train.layers (or --layers) to e.g. 10, or to all")
    if n is not None and layers >= n:
        choose.settings["layers"] = Setting("all", choose.settings["layers"].source,
                                            f"{layers} >= the model's {n} layers: every layer")
        return
    setting = choose.settings["layers"]
    where = f"the top {layers} of {n} decoder layers" if n else f"the top {layers} decoder layers"
    setting.why = f"{setting.why}: LoRA on {where}; backpropagation stops below them" if setting.why else where


def eval_every_for(steps: int) -> int:
    return max(1, steps // 10)


def choose_time_budget(choose: _Chooser) -> None:
    """`time_budget` in seconds. It is applied once the step time is measured (tunesmith.train.budget):
    the plan's steps stay as planned here."""
    from tunesmith.train.budget import DURATION_FORMS, parse_duration

    value = choose("time_budget", None, DEFAULT)
    try:
        choose.settings["time_budget"].value = parse_duration(value)  # library callers may pass "10m"
    except ValueError as exc:
        raise UsageError(f"time_budget: {exc}", f"set train.time_budget (or --time-budget) to e.g. 10m; "
                                                f"accepted: {DURATION_FORMS}") from None


def make_plan(inputs: PlanInputs) -> TrainPlan:
    choose = _Chooser(inputs)
    dev = inputs.device
    n = inputs.n_examples

    needs = needs_qlora(dev, inputs.n_params)
    method = choose("method", "qlora" if needs else "lora", DEVICE if needs else DEFAULT,
                    "16-bit weights would not fit in GPU memory" if needs else "LoRA: adapter-only, close to full quality")
    if method == "qlora" and dev.kind != "cuda":
        raise UsageError(
            f"QLoRA needs a CUDA GPU (4-bit bitsandbytes kernels); this machine trains on {dev.describe()}",
            "use method: lora (train.method in tunesmith.yaml or --method lora); on a small model it is also faster",
        )
    if method == "full" and (inputs.flags.get("layers") or inputs.file.get("layers")) not in (None, "all"):
        raise UsageError("layers (LoRA on the top layers only) applies to method lora or qlora, not full",
                         "drop train.layers / --layers, or train with method: lora")
    if method != "full":
        rank, why = lora_rank_for(n)
        rank = choose("rank", rank, DATA, why)
        choose("alpha", 2 * rank, DEFAULT, "alpha = 2 x rank")
        if dev.kind == "cpu":
            # measured (benchmarks/train_throughput.py): drawing dropout masks is about a quarter of a CPU
            # step; the overfitting guard (validation loss, best checkpoint kept) does the regularising
            choose("dropout", 0.0, DEVICE, "no LoRA dropout on CPU: its masks cost ~25 % of a step; "
                                           "the overfitting guard keeps the best checkpoint instead")
        else:
            choose("dropout", 0.05, DEFAULT, "light regularisation")
        choose("target_modules", "all-linear", DEFAULT, "all linear projections (attention and MLP)")
        choose_layers(choose, inputs)
        choose("learning_rate", 2e-4, DEFAULT, "2e-4 for LoRA")
    else:
        choose("learning_rate", 2e-5, DEFAULT, "full fine-tuning moves every weight: 10x lower than LoRA")
    epochs, why = epochs_for(n)
    choose("epochs", epochs, DATA, why)
    if inputs.flags.get("time_budget") is not None or inputs.file.get("time_budget") is not None:
        choose_time_budget(choose)

    effective = choose("effective_batch", min(EFFECTIVE_BATCH, max(1, n)), DEFAULT,
                       f"{EFFECTIVE_BATCH} examples per optimizer step" if n >= EFFECTIVE_BATCH else f"the whole dataset ({n})")
    per_device = choose("batch_size", min(4 if dev.kind == "cpu" else 8, effective), DEVICE,
                        "small micro-batches on CPU; gradient accumulation makes up the rest")
    if per_device > effective:
        raise UsageError(f"batch_size {per_device} is larger than effective_batch {effective}",
                         "lower train.batch_size or raise train.effective_batch")
    choose("warmup_ratio", 0.1, DEFAULT, "10 % warmup")
    choose("scheduler", "cosine", DEFAULT, "cosine decay")

    lengths = np.asarray(inputs.token_lengths or [1])
    p99 = int(np.percentile(lengths, 99))
    limit = inputs.model_max_length or 131072
    fitted = min(limit, int(math.ceil(p99 / 8) * 8))
    if inputs.project_max_length is not None:
        inputs.file.setdefault("max_length", inputs.project_max_length)
    choose("max_length", fitted, DATA, f"p99 of the data is {p99} tokens" + (f", capped at the model's {limit}" if fitted == limit else ""))

    eval_fraction = choose("eval_fraction", 0.1 if n >= 100 else 0.15, DEFAULT, "a slice of train for validation loss (never the test set)")
    pool = inputs.n_held_out_pool if inputs.n_held_out_pool is not None else n
    n_eval = max(2, min(200, int(round(pool * eval_fraction)))) if pool >= 10 else 0
    world = max(1, inputs.world_size)
    if per_device * world > effective:
        raise UsageError(f"{world} processes x batch_size {per_device} exceed effective_batch {effective}",
                         "lower train.batch_size or use fewer processes")
    grad_accum = max(1, math.ceil(effective / (per_device * world)))
    n_train = n - n_eval
    steps_per_epoch = max(1, math.ceil(n_train / (per_device * grad_accum * world)))
    total_steps = max(1, math.ceil(steps_per_epoch * choose.settings["epochs"].value))
    choose("eval_every", eval_every_for(total_steps), DATA, "about 10 evaluations (and checkpoints) per run")
    choose("patience", 3, DEFAULT, "stop after 3 evaluations of rising eval loss while train loss falls")
    if n_eval:
        choose("converge", True, DEFAULT, "stop once validation loss and answer match stop improving "
                                          f"(after 1 epoch; the {choose.settings['epochs'].value} epochs are the ceiling)")
    else:
        choose("converge", False, DATA, "no validation slice to see convergence on")
    precision = choose("precision", "auto", DEFAULT, "")
    if precision == "auto":
        precision = "bf16" if dev.bf16 else "fp32"
        choose.settings["precision"] = Setting(precision, DEVICE, (
            "bf16 autocast: this CPU has AVX512-BF16/AMX" if dev.kind == "cpu" and dev.bf16 else
            "fp32: this CPU has no fast bf16" if dev.kind == "cpu" else f"{precision} on {dev.kind}"))
    choose("seed", 42, DEFAULT, "")
    truncated = int((lengths > choose.settings["max_length"].value).sum())
    tokens = int(np.minimum(lengths, choose.settings["max_length"].value).sum())
    padding_waste = _padding_waste(lengths, per_device)
    return TrainPlan(choose.settings, {
        "examples": n, "train_examples": n_train, "eval_examples": n_eval,
        "gradient_accumulation": grad_accum, "processes": world, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
        "tokens_per_epoch": tokens, "rows_truncated": truncated, "p99_tokens": p99,
        "batching": f"length-grouped batches, no packing (padding {padding_waste:.0%} of tokens)",
        "device": dev.describe(), "layers_total": inputs.n_layers,
    })


def _padding_waste(lengths: np.ndarray, batch: int) -> float:
    """Share of padded tokens when batches hold examples of similar length."""
    s = np.sort(lengths)
    padded = sum(int(s[i : i + batch].max()) * len(s[i : i + batch]) for i in range(0, len(s), batch))
    return 1 - s.sum() / padded if padded else 0.0
