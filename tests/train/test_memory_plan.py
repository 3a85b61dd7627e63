"""The plan's memory estimate on real model shapes: refusals before anything loads, gradient checkpointing
turned on when a step needs it, and the estimate held to measured peaks (benchmarks/memory_plans.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tunesmith.errors import UsageError
from tunesmith.train.device import DeviceInfo
from tunesmith.train.plan import DEVICE, PlanInputs, Setting, estimate_memory, make_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from memory_plans import LABEL_SHARE, SHAPES  # noqa: E402

#: peak RSS (GiB) measured by benchmarks/memory_plans.py on this CPU (bf16 autocast, batch 1, a quarter
#: of each row labelled): (shape, method, sequence length) -> peak. The estimate must stay within ±25 %.
MEASURED = {
    ("qwen2.5-0.5b", "lora", 256): 4.21,
    ("qwen2.5-0.5b", "qlora", 256): 2.85,
    ("qwen2.5-0.5b", "full", 256): 9.95,
    ("qwen2.5-0.5b", "lora", 1024): 5.67,
    ("qwen2.5-0.5b", "qlora", 1024): 4.67,
    ("qwen2.5-0.5b", "full", 1024): 10.84,
    ("qwen2.5-1.5b", "lora", 256): 10.47,
    ("qwen2.5-1.5b", "qlora", 256): 5.53,
    ("qwen2.5-1.5b", "lora", 1024): 13.78,
    ("qwen2.5-1.5b", "qlora", 1024): 9.39,
}
TOLERANCE = 0.25


def _plan(shape: str, method: str, length: int, memory_gb: float, batch: int = 1, **flags):
    dev = DeviceInfo("cpu", "x86_64", True, memory_gb)
    cfg = SHAPES[shape]
    return make_plan(PlanInputs(
        n_examples=100, token_lengths=[length] * 100, model_max_length=cfg["max_position_embeddings"], device=dev,
        flags={"method": method, "batch_size": batch, "effective_batch": batch, "max_length": length, **flags},
        n_layers=cfg["num_hidden_layers"], shape=cfg, label_share=LABEL_SHARE))


def test_a_3b_full_fine_tune_is_refused_before_loading_with_what_it_needs_and_what_would_fit():
    with pytest.raises(UsageError) as err:  # the config alone: nothing is allocated
        _plan("qwen2.5-3b", "full", 1024, 16.0)
    message = str(err.value)
    assert message.startswith("a training step would need about ") and message.endswith(
        " GiB, more than the 16.0 GiB of RAM available on this cpu (method full, batch_size 1, max_length 1024, "
        "gradient checkpointing on); refused before loading the model")
    need = float(message.split("about ")[1].split(" GiB")[0])
    assert 45 < need < 60  # 3.1B weights, gradients and AdamW moments in fp32: 16 bytes per parameter
    assert err.value.hint == "what would fit: method: qlora (4-bit base weights; --method qlora)"


def test_a_refusal_lists_every_option_that_fits():
    with pytest.raises(UsageError) as err:
        _plan("qwen2.5-1.5b", "lora", 1024, 12.0, batch=4)
    assert err.value.hint == ("what would fit: method: qlora (4-bit base weights; --method qlora); or max_length: 512 "
                              "(--max-length 512); or train.batch_size: 1 (gradient accumulation keeps the effective "
                              "batch)")


def test_nothing_fits_says_so():
    with pytest.raises(UsageError) as err:
        _plan("qwen2.5-3b", "full", 1024, 2.0)
    assert err.value.hint == "no setting makes it fit here: use a smaller base_model or a machine with more memory"


def test_gradient_checkpointing_turns_on_when_the_step_needs_it_and_the_plan_says_so():
    roomy = _plan("qwen2.5-0.5b", "lora", 1024, 16.0)
    assert roomy["gradient_checkpointing"] is False
    assert roomy.settings["gradient_checkpointing"].why == (
        f"off: a step needs about {roomy.derived['memory_gb']['total']:.1f} GiB, which fits in the RAM available")
    plain = roomy.derived["memory_gb"]["total"]
    tight = _plan("qwen2.5-0.5b", "lora", 1024, plain - 0.2)
    setting = tight.settings["gradient_checkpointing"]
    assert setting.value is True and setting.source == DEVICE
    assert setting.why == (f"on: without it a step needs about {plain:.1f} GiB, more than the {plain - 0.2:.1f} GiB "
                           "of RAM available; it recomputes each layer's activations in the backward pass (slower steps)")
    assert tight.derived["memory_gb"]["total"] < plain - 0.2


def test_no_memory_figure_no_checkpointing():
    plan = make_plan(PlanInputs(n_examples=100, token_lengths=[100] * 100, model_max_length=2048,
                                device=DeviceInfo("cpu", "x86_64", False, None), shape=SHAPES["qwen2.5-3b"]))
    assert plan["gradient_checkpointing"] is False and "memory_gb" not in plan.derived


@pytest.mark.parametrize("cell", sorted(MEASURED))
def test_the_estimate_stays_within_25_percent_of_the_measured_peak(cell):
    shape, method, length = cell
    plan = _plan(shape, method, length, 16.0)
    estimate = plan.derived["memory_gb"]["total"]
    measured = MEASURED[cell]
    assert abs(estimate - measured) <= TOLERANCE * measured, f"{cell}: plan {estimate} GiB, measured {measured} GiB"


@pytest.mark.parametrize("method", ["lora", "full"])
def test_build_model_turns_gradient_checkpointing_on_when_the_plan_does(tiny_model_dir, one_torch_thread, method):
    from tunesmith.train.local import build_model

    plan = make_plan(PlanInputs(n_examples=100, token_lengths=[100] * 100, model_max_length=2048,
                                device=DeviceInfo("cpu", "x86_64", False, None), flags={"method": method}))
    plan.settings["gradient_checkpointing"] = Setting(True, DEVICE, "on")
    model = build_model(SimpleNamespace(plan=plan, device=DeviceInfo("cpu", "x86_64", False, None),
                                        model_path=tiny_model_dir))
    assert model.is_gradient_checkpointing
    plan.settings["gradient_checkpointing"] = Setting(False, DEVICE, "off")
    assert not build_model(SimpleNamespace(plan=plan, device=DeviceInfo("cpu", "x86_64", False, None),
                                           model_path=tiny_model_dir)).is_gradient_checkpointing


def test_qlora_weights_are_about_a_quarter_of_fp32_on_a_3b_shape():
    common = dict(kind="cpu", batch=1, max_length=256, precision="bf16")
    lora = estimate_memory(SHAPES["qwen2.5-3b"], method="lora", **common)["weights"]
    qlora = estimate_memory(SHAPES["qwen2.5-3b"], method="qlora", **common)["weights"]
    assert 0.2 < qlora / lora < 0.35  # NF4 linear layers; embeddings stay fp32
