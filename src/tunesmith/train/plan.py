"""The training plan: every setting with its value, where it came from, and why.

Precedence is defaults < data-derived choices < tunesmith.yaml (`train:`) < command-line flags. The
rules are the guide's: rank from the dataset size, alpha = 2 x rank, learning rate 2e-4 for LoRA,
3 epochs kept within OpenAI's auto range of examples x epochs, an effective batch of 16, 10 %
warmup with a cosine schedule, and max length from the data's p99 token length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunesmith.errors import UsageError
from tunesmith.train.batching import pad_multiple, padding_share
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
    #: the base model's config.json (its text_config where nested), for the memory estimate
    shape: dict[str, Any] | None = None
    #: why QLoRA cannot run on a device kind here (device.qlora_blocker), asked only when the plan picks
    #: QLoRA; None: not checked (a plan for another machine)
    qlora_check: Callable[[str], str | None] | None = None
    #: share of a batch's tokens that carry a label (their logits are computed); None: all (worst case)
    label_share: float | None = None


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


def weight_bytes(kind: str) -> int:
    """Bytes per base weight as tunesmith loads it: 16-bit on a GPU, fp32 on a CPU (bf16 there is
    autocast over fp32 weights: 16-bit CPU weights are slower and change the answers)."""
    return 2 if kind == "cuda" else 4


def needs_qlora(dev: DeviceInfo, n_params: int | None) -> bool:
    """QLoRA when the base weights as loaded (16-bit on a GPU, fp32 on a CPU) would take more than half
    the memory the device has free (the rest is activations, the adapter and its optimizer state)."""
    if dev.kind not in ("cuda", "cpu") or not n_params or not dev.memory_gb:
        return False
    return n_params * weight_bytes(dev.kind) / 2**30 > 0.5 * dev.memory_gb


#: bytes per 4-bit NF4 weight with double quantisation: 0.5 + an 8-bit absmax per 64 weights + an
#: fp32 scale per 256 of those (bitsandbytes' layout)
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
#: what a training process holds besides its tensors: Python, torch, transformers, PEFT, bitsandbytes
#: (0.47 GiB of RSS after the imports) and the kernels' workspaces, fitted to the 0.5B cells of
#: benchmarks/memory_plans.py; on a GPU, the CUDA context
RUNTIME_GB = {"cpu": 0.65, "cuda": 1.0}
#: values kept for the backward pass per token and decoder layer, in units of (hidden, intermediate,
#: kv width): norms, residuals, q/k/v/o and their rotary copies; gate, up, the activation and its product
ACT_HIDDEN, ACT_INTERMEDIATE, ACT_KV = 8, 4, 3
#: logits of a labelled position live as the fp32 logits, their softmax and its gradient
LOGIT_COPIES = 3
#: allocator slack and short-lived copies (measured peaks over the sum of the parts above)
SLACK = 1.1


def _linear_params(shape: dict[str, Any]) -> tuple[int, int]:
    """(parameters in the decoder's linear layers, the rest: embeddings, untied LM head, norms)."""
    h, inter, n = shape["hidden_size"], shape.get("intermediate_size", 4 * shape["hidden_size"]), shape["num_hidden_layers"]
    heads = shape.get("num_attention_heads", 1)
    head_dim = shape.get("head_dim") or h // heads
    kv = shape.get("num_key_value_heads") or heads
    linear = n * (2 * h * heads * head_dim + 2 * h * kv * head_dim + 3 * h * inter)
    embed = shape["vocab_size"] * h * (1 if shape.get("tie_word_embeddings", True) else 2)
    return linear, embed + n * 2 * h + h


def _lora_params(shape: dict[str, Any], rank: int, target_modules: Any, layers: Any) -> int:
    h, inter, n = shape["hidden_size"], shape.get("intermediate_size", 4 * shape["hidden_size"]), shape["num_hidden_layers"]
    heads = shape.get("num_attention_heads", 1)
    head_dim = shape.get("head_dim") or h // heads
    kv_w = (shape.get("num_key_value_heads") or heads) * head_dim
    sizes = {"q_proj": (h, heads * head_dim), "k_proj": (h, kv_w), "v_proj": (h, kv_w), "o_proj": (heads * head_dim, h),
             "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    names = sizes if target_modules in ("all-linear", None) else [t for t in target_modules if t in sizes]
    n_layers = n if layers in ("all", None) else min(n, int(layers))
    return n_layers * sum(rank * sum(sizes[m]) for m in names)


def estimate_memory(shape: dict[str, Any], *, kind: str, method: str, batch: int, max_length: int, precision: str,
                    rank: int = 16, target_modules: Any = "all-linear", layers: Any = "all",
                    checkpointing: bool = False, label_share: float = 1.0) -> dict[str, float]:
    """Peak memory of a training step in GiB, by part: process RSS on a CPU, allocated memory on a GPU.

    Weights as loaded (fp32 on CPU, 16-bit on GPU, NF4 for QLoRA's linear layers), gradients and AdamW's
    two moments of what trains, the activations the backward pass keeps (only each layer's input with
    gradient checkpointing, plus one layer's worth while it is recomputed), and the logits of the labelled
    positions (`label_share` of the batch's tokens; 1.0 when unknown: the worst case). On a CPU the
    checkpoint file itself counts too: safetensors maps it, and its pages stay resident while training
    (measured: RSS after loading = runtime + weights + the file, on every 0.5B cell)."""
    linear, rest = _linear_params(shape)
    h, n = shape["hidden_size"], shape["num_hidden_layers"]
    inter = shape.get("intermediate_size", 4 * h)
    heads = shape.get("num_attention_heads", 1)
    kv_w = (shape.get("num_key_value_heads") or heads) * (shape.get("head_dim") or h // heads)
    wb = weight_bytes(kind) if not (kind == "cuda" and precision == "fp32") else 4
    gib = 2**30
    if method == "qlora":
        weights = (linear * NF4_BYTES + rest * 4) / gib  # prepare_model_for_kbit_training: the rest in fp32
    else:
        weights = (linear + rest) * wb / gib
    if method == "full":
        trained = (linear + rest) * wb * 3 / gib  # gradients and two AdamW moments in the weights' dtype
    else:
        trained = _lora_params(shape, rank, target_modules, layers) * 16 / gib  # fp32 weight, grad, 2 moments
    # autocast keeps the 16-bit copies the matmuls saw (measured on CPU too: ~2 bytes per value)
    act_bytes = 2 if precision in ("bf16", "fp16") else 4
    per_layer = (ACT_HIDDEN * h + ACT_INTERMEDIATE * inter + ACT_KV * kv_w) * act_bytes
    tokens = batch * max_length
    if checkpointing:
        activations = tokens * (n * h * act_bytes + per_layer) / gib
    else:
        activations = tokens * n * per_layer / gib
    logits = tokens * label_share * shape["vocab_size"] * 4 * LOGIT_COPIES / gib
    stored = 4 if str(shape.get("torch_dtype") or shape.get("dtype")) == "float32" else 2
    mapped = (linear + rest) * stored / gib if kind == "cpu" else 0.0
    parts = {"runtime": RUNTIME_GB.get(kind, 1.0), "checkpoint": mapped, "weights": weights, "trained": trained,
             "activations": activations, "logits": logits}
    fixed = parts["runtime"] + parts["checkpoint"]
    total = fixed + SLACK * sum(v for k, v in parts.items() if k not in ("runtime", "checkpoint"))
    return {**{k: round(v, 2) for k, v in parts.items()}, "total": round(total, 2)}


def choose_memory(choose: _Chooser, inputs: PlanInputs, method: str) -> dict[str, Any]:
    """Gradient checkpointing on when the step would not fit without it; a refusal, before anything
    loads, when it does not fit even so, naming what it needs and the options that would fit."""
    dev, shape = inputs.device, inputs.shape
    s = choose.settings
    usable = shape is not None and all(k in shape for k in ("hidden_size", "num_hidden_layers", "vocab_size"))
    if not usable or not dev.memory_gb:
        choose("gradient_checkpointing", False, DEFAULT, "off: no memory figure to plan against")
        return {}
    base = {"kind": dev.kind, "batch": s["batch_size"].value, "max_length": s["max_length"].value,
            "precision": s["precision"].value, "label_share": inputs.label_share or 1.0}
    lora = {} if method == "full" else {"rank": s["rank"].value, "target_modules": s["target_modules"].value,
                                          "layers": s["layers"].value}

    def need(**over: Any) -> float:
        args = {**base, "method": method, **lora, **over}
        return estimate_memory(shape, **args)["total"]

    have = dev.memory_gb
    plain = need(checkpointing=False)
    if plain <= have:
        on = choose("gradient_checkpointing", False, DEFAULT,
                    # not the free figure itself: it moves from one plan to the next (a resume re-plans)
                    f"off: a step needs about {plain:.1f} GiB, which fits in the {_memory_name(dev)}")
    else:
        on = choose("gradient_checkpointing", True, DEVICE,
                    f"on: without it a step needs about {plain:.1f} GiB, more than the {have:.1f} GiB "
                    f"{_memory_kind(dev)}; it recomputes each layer's activations in the backward pass (slower steps)")
    total = need(checkpointing=bool(on))
    if total > have:
        on_too = ", gradient checkpointing on" if on else ""
        raise UsageError(f"a training step would need about {total:.1f} GiB, more than the {have:.1f} GiB "
                         f"{_memory_kind(dev)} on this {dev.kind} (method {method}, batch_size {base['batch']}, "
                         f"max_length {base['max_length']}{on_too}); refused before loading the model",
                         _what_would_fit(need, method, base, have))
    return estimate_memory(shape, **{**base, "method": method, **lora, "checkpointing": bool(on)})


def _memory_name(dev: DeviceInfo) -> str:
    return "GPU memory" if dev.kind == "cuda" else "RAM available"


def _memory_kind(dev: DeviceInfo) -> str:
    return "of GPU memory" if dev.kind == "cuda" else "of RAM available"


def _what_would_fit(need: Any, method: str, base: dict[str, Any], have: float) -> str:
    """The options that fit, each with gradient checkpointing on (the plan turns it on by itself)."""
    options = []
    if method != "qlora" and need(method="qlora", rank=16, target_modules="all-linear", layers="all",
                                  checkpointing=True) <= have:
        options.append("method: qlora (4-bit base weights; --method qlora)")
    length = base["max_length"]
    while length > 64 and need(max_length=length, checkpointing=True) > have:
        length //= 2
    if length < base["max_length"] and need(max_length=length, checkpointing=True) <= have:
        options.append(f"max_length: {length} (--max-length {length})")
    if method != "full" and need(target_modules=["q_proj", "v_proj"], checkpointing=True) <= have:
        options.append("train.target_modules: [q_proj, v_proj]")
    if base["batch"] > 1 and need(batch=1, checkpointing=True) <= have:
        options.append("train.batch_size: 1 (gradient accumulation keeps the effective batch)")
    if not options:
        return "no setting makes it fit here: use a smaller base_model or a machine with more memory"
    return "what would fit: " + "; or ".join(options)


def _qlora_why(dev: DeviceInfo, n_params: int | None) -> str:
    bits = "16-bit" if dev.kind == "cuda" else "fp32"
    gb = (n_params or 0) * weight_bytes(dev.kind) / 2**30
    return (f"QLoRA: the {bits} weights ({gb:.1f} GiB) would take more than half of the {dev.memory_gb:.1f} GiB "
            f"{_memory_kind(dev)}; 4-bit NF4 base weights")


def refuse_unrunnable_qlora(dev: DeviceInfo, method: Setting, blocker: str | None) -> None:
    """QLoRA runs wherever the installed bitsandbytes runs a 4-bit layer on this device (CUDA, and CPU
    since bitsandbytes 0.50); elsewhere a UsageError naming the version it needs."""
    if blocker is None:
        return
    where = {FLAG: "--method qlora", FILE: "train.method: qlora in tunesmith.yaml"}.get(
        method.source, "the plan chose QLoRA because the model is large for this machine")
    fix = ("install it: pip install 'bitsandbytes>=" + _needed_bnb(dev.kind) + "'"
           if dev.kind in ("cpu", "cuda") else "train on a CUDA GPU or a CPU")
    raise UsageError(f"{blocker} ({where}; this machine trains on {dev.describe()})",
                     f"{fix}; or use method: lora (train.method in tunesmith.yaml or --method lora)")


def _needed_bnb(kind: str) -> str:
    from tunesmith.train.device import BNB_MIN_CPU, BNB_MIN_CUDA

    return BNB_MIN_CPU if kind == "cpu" else BNB_MIN_CUDA


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
    from tunesmith.units import DURATION_FORMS, parse_duration

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
                    _qlora_why(dev, inputs.n_params) if needs else "LoRA: adapter-only, close to full quality")
    if method == "qlora" and inputs.qlora_check is not None:
        refuse_unrunnable_qlora(dev, choose.settings["method"], inputs.qlora_check(dev.kind))
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
    memory = choose_memory(choose, inputs, method)
    truncated = int((lengths > choose.settings["max_length"].value).sum())
    tokens = int(np.minimum(lengths, choose.settings["max_length"].value).sum())
    padding_waste = padding_share([int(n) for n in np.minimum(lengths, choose.settings["max_length"].value)],
                                  per_device, pad_multiple(dev.kind))
    return TrainPlan(choose.settings, {
        "examples": n, "train_examples": n_train, "eval_examples": n_eval,
        "gradient_accumulation": grad_accum, "processes": world, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
        "tokens_per_epoch": tokens, "rows_truncated": truncated, "p99_tokens": p99,
        "batching": f"length-bucketed batches, no packing (padding {padding_waste:.1%} of tokens)",
        "device": dev.describe(), "layers_total": inputs.n_layers,
        **({"memory_gb": memory} if memory else {}),
    })
