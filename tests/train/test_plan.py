"""make_plan: the guide's rules, precedence default < data < tunesmith.yaml < flags, and sources recorded."""

from __future__ import annotations

import json

import pytest

from tunesmith.errors import UsageError
from tunesmith.train.plan import (
    DATA,
    DEFAULT,
    DEVICE,
    FILE,
    FLAG,
    MAX_EXAMPLE_PASSES,
    MIN_EXAMPLE_PASSES,
    PlanInputs,
    TrainPlan,
    epochs_for,
    lora_rank_for,
    make_plan,
)
from tunesmith.train.device import DeviceInfo

CPU = DeviceInfo("cpu", "test-cpu", False, None)
CPU_BF16 = DeviceInfo("cpu", "test-cpu", True, None)
GPU = DeviceInfo("cuda", "test-gpu", True, 24.0)


def plan_for(n: int = 100, lengths: list[int] | None = None, *, device: DeviceInfo = CPU, **kw):
    return make_plan(PlanInputs(n_examples=n, token_lengths=lengths or [100] * max(1, n),
                                model_max_length=kw.pop("model_max_length", 2048), device=device, **kw))


@pytest.mark.parametrize(("n", "rank"), [(1, 8), (50, 8), (199, 8), (200, 16), (500, 16), (1000, 16), (1001, 32), (20000, 32)])
def test_rank_from_dataset_size_and_alpha_twice_rank(n, rank):
    plan = plan_for(n, [50] * min(n, 50))
    assert plan["rank"] == rank and plan.settings["rank"].source == DATA
    assert plan["alpha"] == 2 * rank and plan.settings["alpha"].source == DEFAULT
    assert lora_rank_for(n)[0] == rank


@pytest.mark.parametrize(("n", "epochs"), [(10, 10), (20, 5), (30, 4), (34, 3), (100, 3), (5000, 3), (8333, 3), (8334, 2), (20000, 1), (100000, 1)])
def test_epochs_keep_example_passes_in_range(n, epochs):
    plan = plan_for(n, [50] * 20)
    assert plan["epochs"] == epochs and plan.settings["epochs"].source == DATA
    assert epochs_for(n)[0] == epochs
    if n <= MAX_EXAMPLE_PASSES:
        assert MIN_EXAMPLE_PASSES <= n * epochs <= MAX_EXAMPLE_PASSES


def test_example_passes_in_range_for_every_size():
    for n in range(1, 25_001, 7):
        e = epochs_for(n)[0]
        assert e >= 1
        assert n * e <= MAX_EXAMPLE_PASSES
        assert n * e >= MIN_EXAMPLE_PASSES or n > MIN_EXAMPLE_PASSES


def test_defaults_and_their_sources():
    plan = plan_for(100)
    s = plan.settings
    assert plan["method"] == "lora" and s["method"].source == DEFAULT
    assert plan["learning_rate"] == 2e-4 and s["learning_rate"].source == DEFAULT
    assert plan["warmup_ratio"] == 0.1 and plan["scheduler"] == "cosine"
    assert plan["effective_batch"] == 16 and plan["batch_size"] == 4 and s["batch_size"].source == DEVICE
    assert plan["precision"] == "fp32" and s["precision"].source == DEVICE
    assert plan_for(100, device=CPU_BF16)["precision"] == "bf16"
    assert all(isinstance(v.why, str) for v in s.values())


def test_precedence_default_file_flag():
    plan = plan_for(100, file={"learning_rate": 1e-3, "rank": 4, "epochs": 2}, flags={"rank": 12})
    s = plan.settings
    assert (plan["learning_rate"], s["learning_rate"].source) == (1e-3, FILE)
    assert s["learning_rate"].why == "train.learning_rate"
    assert (plan["epochs"], s["epochs"].source) == (2, FILE)
    assert (plan["rank"], s["rank"].source) == (12, FLAG)
    assert s["rank"].why == "--rank"
    assert plan["alpha"] == 24  # follows the chosen rank
    # on CPU dropout is off (measured cost), and a file value still wins over the device choice
    assert (plan["dropout"], s["dropout"].source) == (0.0, DEVICE)
    assert plan_for(100, file={"dropout": 0.1})["dropout"] == 0.1
    gpu = plan_for(100, device=GPU)
    assert (gpu["dropout"], gpu.settings["dropout"].source) == (0.05, DEFAULT)

    flagged = plan_for(100, file={"learning_rate": 1e-3}, flags={"learning_rate": 5e-5, "alpha": 7})
    assert (flagged["learning_rate"], flagged.settings["learning_rate"].source) == (5e-5, FLAG)
    assert (flagged["alpha"], flagged.settings["alpha"].source) == (7, FLAG)
    # None flags and None file values do not override anything
    plain = plan_for(100, file={"learning_rate": None}, flags={"rank": None})
    assert plain.settings["learning_rate"].source == DEFAULT and plain.settings["rank"].source == DATA


def test_qlora_where_bitsandbytes_cannot_run_is_a_usage_error_pointing_at_lora():
    blocked = "QLoRA on cpu needs bitsandbytes >= 0.50.0, which is not installed"
    for kw in ({"flags": {"method": "qlora"}}, {"file": {"method": "qlora"}}):
        with pytest.raises(UsageError) as info:
            plan_for(100, qlora_check=lambda kind: blocked, **kw)
        assert blocked in str(info.value)
        assert "lora" in info.value.hint.lower() and "method" in info.value.hint
    assert plan_for(100, qlora_check=lambda kind: None, flags={"method": "qlora"})["method"] == "qlora"


def test_qlora_chosen_when_weights_do_not_fit_gpu():
    small = DeviceInfo("cuda", "g", True, 8.0)
    plan = plan_for(100, device=small, n_params=3_000_000_000)  # 6 GB of bf16 weights > half of 8 GB
    assert plan["method"] == "qlora" and plan.settings["method"].source == DEVICE
    assert plan_for(100, device=GPU, n_params=100_000_000)["method"] == "lora"


def test_max_length_from_p99_rounded_to_8():
    lengths = list(range(100, 200))  # p99 = 198.01 -> 198 -> 200
    plan = plan_for(100, lengths)
    assert plan["max_length"] == 200 and plan.settings["max_length"].source == DATA
    assert "198" in plan.settings["max_length"].why
    assert plan.derived["p99_tokens"] == 198
    assert plan.derived["rows_truncated"] == 0


def test_max_length_capped_at_model_limit():
    plan = plan_for(100, [3000] * 100, model_max_length=1024)
    assert plan["max_length"] == 1024
    assert "1024" in plan.settings["max_length"].why and "capped" in plan.settings["max_length"].why
    assert plan.derived["rows_truncated"] == 100
    assert plan.derived["tokens_per_epoch"] == 100 * 1024


def test_max_length_project_and_flag():
    plan = plan_for(100, [300] * 100, project_max_length=512)
    assert (plan["max_length"], plan.settings["max_length"].source) == (512, FILE)
    plan = plan_for(100, [300] * 100, project_max_length=512, flags={"max_length": 128})
    assert (plan["max_length"], plan.settings["max_length"].source) == (128, FLAG)
    assert plan.derived["rows_truncated"] == 100


def test_effective_batch_16_is_accumulation_4_of_batch_4():
    plan = plan_for(200)
    d = plan.derived
    assert plan["effective_batch"] == 16 and plan["batch_size"] == 4
    assert d["gradient_accumulation"] == 4 and d["processes"] == 1
    assert d["eval_examples"] == 20 and d["train_examples"] == 180
    assert d["steps_per_epoch"] == 12  # ceil(180 / 16)
    assert d["total_steps"] == 12 * plan["epochs"]
    assert plan["eval_every"] == max(1, d["total_steps"] // 10)


def test_world_size_two_halves_accumulation():
    one, two = plan_for(200), plan_for(200, world_size=2)
    assert one.derived["gradient_accumulation"] == 4 and two.derived["gradient_accumulation"] == 2
    assert two.derived["processes"] == 2
    assert two.derived["steps_per_epoch"] == one.derived["steps_per_epoch"]


def test_small_dataset_batches_and_impossible_batches():
    plan = plan_for(10)
    assert plan["effective_batch"] == 10 and plan.derived["gradient_accumulation"] == 3
    with pytest.raises(UsageError):
        plan_for(100, flags={"batch_size": 32})  # larger than effective batch 16
    with pytest.raises(UsageError):
        plan_for(100, flags={"batch_size": 16}, world_size=2)


def test_plan_round_trips_through_json():
    plan = plan_for(300, file={"learning_rate": 1e-3})
    again = TrainPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.to_dict() == plan.to_dict()
    assert again["learning_rate"] == 1e-3 and again.settings["learning_rate"].source == FILE


def test_project_file_and_flags_reach_the_plan(tmp_path, tiny_model_dir):
    """Through load_project + prepare: tunesmith.yaml `train:` values are `tunesmith.yaml`, flags `flag`."""
    from datagen import clean_examples, write_jsonl, write_project_file
    from tunesmith.data.split import split_file
    from tunesmith.project import load_project
    from tunesmith.train.api import plan_training

    write_project_file(tmp_path, tiny_model_dir, train={"learning_rate": 0.001, "epochs": 2})
    write_jsonl(tmp_path / "data.jsonl", clean_examples(45))
    split_file(tmp_path / "data.jsonl", tmp_path / "data" / "train.jsonl", tmp_path / "data" / "test.jsonl")
    _, plan = plan_training(load_project(tmp_path), {"epochs": 1, "rank": None}, measure=False)
    s = plan["settings"]
    assert (s["learning_rate"]["value"], s["learning_rate"]["source"]) == (0.001, FILE)
    assert (s["epochs"]["value"], s["epochs"]["source"]) == (1, FLAG)
    assert (s["rank"]["value"], s["rank"]["source"]) == (8, DATA)
    assert s["max_length"]["source"] == DATA and s["max_length"]["value"] % 8 == 0
    assert plan["derived"]["audit"]["end_of_turn_trained"] == plan["derived"]["audit"]["rows"]
    assert "seconds_per_step" not in plan["derived"] and plan["derived"]["disk"]["total_mb"] > 0


def test_trackers_only_when_asked_and_installed(monkeypatch):
    import importlib.util

    from tunesmith.errors import TunesmithError
    from tunesmith.train.local import trackers

    assert trackers([]) == []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(TunesmithError) as info:
        trackers(["wandb"])
    assert "pip install wandb" in info.value.hint


def test_the_selective_loss_runs_under_the_trainers_mixed_precision(tiny_model_dir, tmp_path):
    """The loss bypasses model.forward (where accelerate puts autocast), so it must enter autocast itself."""
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from tunesmith.train.trainer import TunesmithTrainer

    seen = []
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.lm_head.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    args = TrainingArguments(output_dir=str(tmp_path), bf16=True, use_cpu=True, report_to=[])
    trainer = TunesmithTrainer(model=model, args=args)
    batch = {"input_ids": torch.tensor([[1, 2, 3, 4]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.tensor([[-100, -100, 3, 4]])}
    trainer.compute_loss(trainer.model, batch)
    assert seen == [torch.bfloat16]


def test_time_budget_is_a_setting_only_when_given():
    """The budget is recorded here (in seconds) and applied once the step time is measured (test_budget.py)."""
    assert "time_budget" not in plan_for(200).settings
    from_file = plan_for(200, file={"time_budget": 600.0})
    assert (from_file["time_budget"], from_file.settings["time_budget"].source) == (600.0, FILE)
    assert from_file.settings["time_budget"].why == "train.time_budget"
    flagged = plan_for(200, file={"time_budget": 600.0}, flags={"time_budget": "1h30m"})
    assert (flagged["time_budget"], flagged.settings["time_budget"].source) == (5400.0, FLAG)
    assert flagged.settings["time_budget"].why == "--time-budget"
    # unmeasured, nothing is cut yet: the steps are the plan's own
    assert flagged.derived == plan_for(200).derived and "max_steps" not in flagged.derived


def test_tunesmith_cpu_bf16_0_plans_as_on_a_cpu_without_fast_bf16(monkeypatch):
    from pathlib import Path

    from tunesmith.train import device

    monkeypatch.setenv("TUNESMITH_CPU_BF16", "0")
    assert device.cpu_supports_bf16() is False
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "flags : fpu avx512_bf16 amx_bf16")
    assert device.cpu_supports_bf16() is False
    monkeypatch.delenv("TUNESMITH_CPU_BF16")
    assert device.cpu_supports_bf16() is True


def test_cpu_flags_are_the_flags_line_as_a_set(monkeypatch):
    from pathlib import Path

    from tunesmith.cpu import cpu_flags

    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "processor : 0\nflags\t\t: fpu avx512f amx_tile\n"
                                                                  "flags : other\n")
    assert cpu_flags() == frozenset({"fpu", "avx512f", "amx_tile"})

    def unreadable(self, *a, **k):
        raise OSError("no such file")

    monkeypatch.setattr(Path, "read_text", unreadable)
    assert cpu_flags() == frozenset()
