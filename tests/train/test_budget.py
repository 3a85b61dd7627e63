"""--time-budget: parsing, the steps that fit a measured step time, refusals, resume, and a real run cut short."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datagen import clean_examples, write_jsonl, write_project_file
from tunesmith.errors import ProjectError, UsageError
from tunesmith.project import load_project
from tunesmith.train.budget import costs_for, cut_epochs, format_budget, keep_recorded_budget, readable_ceiling
from tunesmith.train.device import DeviceInfo
from tunesmith.train.plan import FILE, FLAG, PlanInputs, TrainPlan, make_plan
from tunesmith.units import DURATION_FORMS, parse_duration

STEP_S = 20.0  # the "measured" step time: estimate_step_seconds is patched to return it
CPU = DeviceInfo("cpu", "test-cpu", False, None)


def _write_project(root: Path, model_dir: Path, extra: str = "", n: int = 150) -> Path:
    from tunesmith.data.split import split_file

    write_project_file(root, model_dir, extra=extra)
    write_jsonl(root / "data.jsonl", clean_examples(n))
    split_file(root / "data.jsonl", root / "data" / "train.jsonl", root / "data" / "test.jsonl")
    return root


@pytest.fixture(scope="module")
def project(tiny_model_dir, tmp_path_factory) -> Path:
    """About 110 training rows: 7 steps per epoch, 21 planned steps (3 epochs); planning only, no runs."""
    return _write_project(tmp_path_factory.mktemp("budget") / "p", tiny_model_dir)


@pytest.fixture
def measured(monkeypatch):
    import tunesmith.train.api as api

    monkeypatch.setattr(api, "estimate_step_seconds", lambda prep, steps=2: STEP_S)


def _plan(project: Path, flags: dict | None = None) -> dict:
    from tunesmith.train.api import plan_training

    return plan_training(load_project(project), dict(flags or {}))[1]


def expected_cost(d: dict, steps: int, *, eval_every: int | None = None, step_s: float = STEP_S) -> float:
    """The formula documented in tunesmith.train.budget, written out again."""
    rows_per_step = 4 * d["gradient_accumulation"]  # batch_size 4 on CPU
    eval_s = d["eval_examples"] * step_s / rows_per_step / 2  # LoRA: the forward is half a step
    save_s = 1.0 + d["disk"]["checkpoints_mb"] / 2 / 100
    final_s = 1.0 + 2 * d["disk"]["output_mb"] / 100
    # about 10 evaluations, at most a tenth of the training time
    every = eval_every or min(steps, max(1, steps // 10, math.ceil((eval_s + save_s) / (0.1 * step_s))))
    return steps * step_s + math.ceil(steps / every) * (eval_s + save_s) + final_s


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("10m", 600), ("90s", 90), ("1h", 3600), ("1h30m", 5400), ("600", 600), ("2.5m", 150),
    (" 1h 30m ", 5400), ("1H", 3600), ("1m30s", 90), (".5h", 1800), (600, 600), (2.5, 2.5),
])
def test_durations_in_every_accepted_form(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "10x", "m", "1m1h", "-5", "1e3", "10 min", "1.2.3", True, None, [10]])
def test_what_is_not_a_duration_says_what_is(bad):
    with pytest.raises(ValueError) as info:
        parse_duration(bad)
    assert str(info.value) == f"{bad!r} is not a duration: use {DURATION_FORMS}"


@pytest.mark.parametrize("zero", ["0", "0s", "0h0m", 0, -3, float("inf")])
def test_a_budget_must_be_longer_than_zero(zero):
    with pytest.raises(ValueError) as info:
        parse_duration(zero)
    assert str(info.value) == f"{zero!r} is no time to train in: a budget must be longer than 0 seconds"


def test_durations_read_back_and_round_up_to_what_one_would_type():
    assert [format_budget(s) for s in (600, 5400, 150, 45, 3600)] == ["10 min", "1 h 30 min", "2 min 30 s", "45 s", "1 h"]
    assert [format_budget(s, compact=True) for s in (600, 5400, 150, 45)] == ["10m", "1h30m", "2m30s", "45s"]
    assert all(parse_duration(format_budget(s, compact=True)) == s for s in (600, 5400, 150, 45, 3900))
    assert [readable_ceiling(s) for s in (3, 43, 61, 599, 601, 3599, 3601)] == [5, 45, 90, 600, 660, 3600, 3900]


@pytest.mark.parametrize("command", ["train", "run"])
@pytest.mark.parametrize("bad", ["soon", "0"])
def test_cli_bad_budget_names_the_flag_and_the_forms(tmp_path, command, bad):
    from tunesmith.cli import app

    args = [command, "-p", str(tmp_path), "--dry-run"] if command == "train" else [command, str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--time-budget", bad])
    assert result.exit_code == 2, result.output
    assert f"--time-budget {bad!r} is not a training time longer than zero" in result.stderr
    assert f"use {DURATION_FORMS}, e.g. --time-budget 10m" in result.stderr


def test_run_hands_the_budget_to_the_train_stage(tmp_path, monkeypatch):
    import tunesmith.pipeline as pipeline
    from tunesmith.cli import app

    seen = []

    def pipeline_stub(project, **kw):
        seen.append(kw["train_flags"])
        raise UsageError("stub: the flags were seen")  # stops the command before any output of its own

    monkeypatch.setattr(pipeline, "run_pipeline", pipeline_stub)
    for args in (["--time-budget", "1h30m"], ["--time-budget", "90s", "--allow-unreviewed"], []):
        result = CliRunner().invoke(app, ["run", str(tmp_path), *args])
        assert result.exit_code == 2 and "stub: the flags were seen" in result.stderr
    assert seen == [{"time_budget": 5400.0}, {"allow_unreviewed": True, "time_budget": 90.0}, None]


def test_project_file_budget(tmp_path):
    (tmp_path / "tunesmith.yaml").write_text("task: 'Answer with one compact JSON object.'\ntrain:\n  time_budget: 1h30m\n")
    assert load_project(tmp_path).train.time_budget == 5400
    (tmp_path / "tunesmith.yaml").write_text("task: 'Answer with one compact JSON object.'\ntrain:\n  time_budget: 600\n")
    assert load_project(tmp_path).train.time_budget == 600
    for bad, says in (("soon", f"'soon' is not a duration: use {DURATION_FORMS}"),
                      ("0", "'0' is no time to train in: a budget must be longer than 0 seconds")):
        (tmp_path / "tunesmith.yaml").write_text(f"task: 'Answer with one compact JSON object.'\ntrain:\n  time_budget: '{bad}'\n")
        with pytest.raises(ProjectError) as info:
            load_project(tmp_path)
        assert any(d.startswith("train.time_budget:") and says in d for d in info.value.details), info.value.details


def test_library_flag_strings_are_checked_like_the_file():
    from tunesmith.train.prepare import validated_flags

    assert validated_flags({"time_budget": 600.0}) == {"time_budget": 600.0}
    with pytest.raises(UsageError) as info:
        validated_flags({"time_budget": "soon"})
    assert "--time-budget:" in str(info.value) and "'soon' is not a duration" in str(info.value)
    # make_plan itself (library callers) reads "10m" and refuses nonsense with the setting's name
    plan = make_plan(PlanInputs(200, [100] * 200, 2048, CPU, flags={"time_budget": "10m"}))
    assert (plan["time_budget"], plan.settings["time_budget"].source) == (600, FLAG)
    with pytest.raises(UsageError) as info:
        make_plan(PlanInputs(200, [100] * 200, 2048, CPU, file={"time_budget": "soon"}))
    assert str(info.value) == f"time_budget: 'soon' is not a duration: use {DURATION_FORMS}"
    assert info.value.hint == f"set train.time_budget (or --time-budget) to e.g. 10m; accepted: {DURATION_FORMS}"


# --- planning against a measured step time -------------------------------------------------------


def test_budget_cuts_epochs_to_the_most_steps_that_fit(project, measured):
    full = _plan(project)
    plan = _plan(project, {"time_budget": 300})
    d, s = plan["derived"], plan["settings"]
    planned, steps = full["derived"]["total_steps"], d["max_steps"]
    assert planned == 21 and d["planned_steps"] == planned and 7 <= steps < planned

    assert expected_cost(d, steps) <= 300 < expected_cost(d, steps + 1)  # the largest step count that fits
    assert d["budget_overhead_s"] == round(expected_cost(d, steps) - steps * STEP_S, 1)
    assert d["total_steps"] == d["budget_steps"] == steps
    assert d["estimated_minutes"] == round(steps * STEP_S / 60, 1)
    spe, train = d["steps_per_epoch"], d["train_examples"]
    assert d["example_passes"] == round(steps * train / spe) >= 100
    epochs = steps / spe
    assert (s["epochs"]["value"], s["epochs"]["source"]) == (round(epochs, 3), FLAG)
    assert s["epochs"]["why"] == f"the 5 min budget fits {epochs:.1f} of 3 epochs"
    # about 10 evaluations over the steps that run, at most a tenth of the training time
    eval_s = d["eval_examples"] * STEP_S / (4 * d["gradient_accumulation"]) / 2 + 1.0 + d["disk"]["checkpoints_mb"] / 200
    assert s["eval_every"]["value"] == min(steps, max(1, steps // 10, math.ceil(eval_s / (0.1 * STEP_S))))
    assert (s["time_budget"]["value"], s["time_budget"]["source"], s["time_budget"]["why"]) == (300, FLAG, "--time-budget")
    assert d["gave_up"] == (f"the 5 min budget fits {steps} of 21 steps ({d['example_passes']} of {train * 3} "
                            f"example passes; {epochs:.1f} of 3 epochs)")


def test_budget_keeps_an_eval_every_that_was_set(project, measured):
    plan = _plan(project, {"time_budget": 300, "eval_every": 5})
    d = plan["derived"]
    assert plan["settings"]["eval_every"]["value"] == 5
    assert expected_cost(d, d["max_steps"], eval_every=5) <= 300 < expected_cost(d, d["max_steps"] + 1, eval_every=5)


def test_budget_that_fits_the_whole_plan_changes_nothing(project, measured):
    full, roomy = _plan(project), _plan(project, {"time_budget": "10h"})
    assert {k: v for k, v in roomy["settings"].items() if k != "time_budget"} == full["settings"]
    added = {k: v for k, v in roomy["derived"].items() if k not in full["derived"]}
    assert {k: v for k, v in roomy["derived"].items() if k in full["derived"]} == full["derived"]
    assert set(added) == {"budget_steps", "example_passes", "budget_overhead_s", "gave_up"}
    assert added["budget_steps"] == full["derived"]["total_steps"] == 21
    assert added["gave_up"].startswith("nothing: the 10 h budget fits all 21 steps (")
    assert "max_steps" not in roomy["derived"]


def test_too_small_a_budget_is_refused_with_the_smallest_that_works(project, measured):
    with pytest.raises(UsageError) as info:
        _plan(project, {"time_budget": 60})
    err = info.value
    d = _plan(project)["derived"]
    least = math.ceil(100 * d["steps_per_epoch"] / d["train_examples"])  # 100 example passes
    cheapest = min(expected_cost(d, s) for s in range(least, d["total_steps"] + 1))
    enough = parse_duration("3m")
    assert enough - 30 < cheapest <= enough  # rounded up to the next half minute
    assert str(err) == (f"the 1 min budget fits 2 training step(s) at 20 s per step (measured), fewer than the "
                        f"{least} a run needs ({round(least * d['train_examples'] / d['steps_per_epoch'])} example passes)")
    assert err.hint == ("the smallest budget that works here is 3m (--time-budget 3m); shorter examples "
                        "(max_length) or a smaller model make steps cheaper")
    assert _plan(project, {"time_budget": "3m"})["derived"]["example_passes"] >= 100


def test_budget_from_the_project_file(tmp_path, tiny_model_dir, measured):
    root = _write_project(tmp_path / "p", tiny_model_dir, "train:\n  time_budget: 5m\n")
    s = _plan(root)["settings"]
    assert (s["time_budget"]["value"], s["time_budget"]["source"], s["time_budget"]["why"]) == (300, FILE, "train.time_budget")
    assert s["epochs"]["source"] == FILE
    assert _plan(root, {"time_budget": "10h"})["settings"]["time_budget"]["source"] == FLAG  # the flag wins
    (root / "tunesmith.yaml").write_text((root / "tunesmith.yaml").read_text().replace("5m", "1m"))
    with pytest.raises(UsageError) as info:
        _plan(root)
    assert "(train.time_budget: 3m)" in info.value.hint


def test_dry_run_prints_the_budget_line_and_json_carries_it(project, measured):
    from tunesmith.cli import app

    human = CliRunner().invoke(app, ["train", "-p", str(project), "--dry-run", "--time-budget", "5m"])
    assert human.exit_code == 0, human.output
    line = next(x for x in human.stdout.splitlines() if x.startswith("budget:"))
    assert line.startswith("budget: the 5 min budget fits ") and "of 21 steps" in line
    assert "s of it for evaluations and checkpoints" in line
    assert any(x.startswith("time: about ") for x in human.stdout.splitlines())
    out = CliRunner().invoke(app, ["train", "-p", str(project), "--dry-run", "--time-budget", "5m", "--json"])
    plan = json.loads(out.stdout.splitlines()[0])
    assert plan["event"] == "plan" and plan["settings"]["time_budget"]["value"] == 300
    assert plan["derived"]["gave_up"] in line and plan["derived"]["max_steps"] < 21
    assert not (project / "runs").exists() or not any(p.is_dir() for p in (project / "runs").iterdir())


# --- where the step time is not measured -----------------------------------------------------------


def test_several_processes_refuse_a_budget(project, monkeypatch):
    import tunesmith.cli.train as cli_train
    import tunesmith.train.api as api
    from tunesmith.cli import app

    monkeypatch.setattr(api, "world_size", lambda: 2)
    with pytest.raises(UsageError) as info:
        api.train_project(project, {"time_budget": 600}, progress=False)
    assert str(info.value) == ("a time budget (--time-budget) needs the step time measured in one process; "
                               "2 processes cannot check it")
    assert "drop --num-processes" in info.value.hint and "--epochs" in info.value.hint

    monkeypatch.setattr(cli_train, "_launch", lambda *a: pytest.fail("launched despite the budget"))
    result = CliRunner().invoke(app, ["train", "-p", str(project), "--num-processes", "3", "--time-budget", "10m"])
    assert result.exit_code == 2 and "3 processes cannot check it" in result.stderr


def test_hosted_training_refuses_a_budget(project):
    from tunesmith.cli import app

    result = CliRunner().invoke(app, ["train", "-p", str(project), "--backend", "openai", "--time-budget", "10m"])
    assert result.exit_code == 2
    assert "--time-budget limits local training; a hosted job runs as long as the provider takes" in result.stderr


def _budget_plan(flags: dict, *, measured: bool = True) -> TrainPlan:
    plan = make_plan(PlanInputs(300, [100] * 300, 2048, CPU, flags=flags))
    if measured and "time_budget" in plan.settings:
        cut_epochs(plan, costs_for(plan, STEP_S, {"output_mb": 1.0, "checkpoints_mb": 6.0}), plan["time_budget"])
    return plan


def test_a_resumed_run_keeps_its_recorded_budget():
    recorded = _budget_plan({"time_budget": 400}).to_dict()
    assert recorded["derived"]["max_steps"] < recorded["derived"]["planned_steps"] == 51
    again = _budget_plan({"time_budget": 400}, measured=False)  # a resume re-plans without measuring
    assert "max_steps" not in again.derived
    keep_recorded_budget(again, recorded)
    assert again.to_dict() == recorded

    # a budget added to tunesmith.yaml after the run started does not change it
    unbudgeted = _budget_plan({}).to_dict()
    later = make_plan(PlanInputs(300, [100] * 300, 2048, CPU, file={"time_budget": 400}))
    keep_recorded_budget(later, unbudgeted)
    assert later.to_dict() == unbudgeted
    keep_recorded_budget(later, {})  # no readable plan.json: nothing to keep, nothing breaks
    assert later.to_dict() == unbudgeted


# --- a real run -----------------------------------------------------------------------------------


def test_a_budgeted_run_stops_at_its_max_steps(tmp_path, tiny_model_dir, measured, one_torch_thread, isolated_cache):
    from tunesmith.train.api import train_project

    root = _write_project(tmp_path / "p", tiny_model_dir)
    # neither the overfitting guard nor the convergence stop may end it first ("converge" is ignored
    # where no such setting exists)
    out = train_project(root, {"time_budget": "5m", "patience": 100, "converge": False}, progress=False)
    d = out.plan["derived"]
    assert d["max_steps"] < d["planned_steps"] == 21
    assert out.metrics["steps"] == d["max_steps"] and "stopped_early" not in out.metrics
    steps = [json.loads(x) for x in (out.run_dir / "steps.jsonl").read_text().splitlines()]
    trained = [e for e in steps if e["event"] == "step" and "loss" in e]
    assert [e["step"] for e in trained] == list(range(1, d["max_steps"] + 1))
    # the cosine schedule spans the steps that run, not the 21 planned: it has decayed by the last one
    peak = max(e["learning_rate"] for e in trained)
    assert trained[-1]["learning_rate"] < 0.1 * peak
    assert json.loads((out.run_dir / "plan.json").read_text())["derived"]["max_steps"] == d["max_steps"]

    # as if killed before its last checkpoint: resumed, it keeps the recorded plan (a resume is not
    # measured) and stops at the same max_steps, not at the 21 steps a fresh unbudgeted plan would run
    import shutil

    shutil.rmtree(out.run_dir / "checkpoints" / f"checkpoint-{d['max_steps']}")
    assert list((out.run_dir / "checkpoints").glob("checkpoint-*"))
    again = train_project(root, {}, resume=out.run_id, progress=False)
    assert again.plan["derived"]["max_steps"] == d["max_steps"] and again.plan["settings"] == out.plan["settings"]
    assert again.metrics["steps"] == d["max_steps"]



# --- with LoRA on the top layers only, an evaluation is a larger share of a step ------------------------


def test_the_evaluation_cost_follows_the_forward_share_of_a_top_layers_step(tiny_model_dir, tmp_path, monkeypatch):
    """A top-2-of-6 step back-propagates through 2 layers: its forward is 6 / (6 + 2) of it, not a half."""
    import shutil

    import tunesmith.train.api as api

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 6}))
    project = _write_project(tmp_path / "p", model)
    monkeypatch.setattr(api, "estimate_step_seconds", lambda prep, steps=2: 8.0)
    plan = _plan(project, {"time_budget": 120, "layers": 2})
    d = plan["derived"]
    assert plan["settings"]["layers"]["value"] == 2 and d["layers_total"] == 6 and d["max_steps"] < 21
    costs = costs_for(TrainPlan.from_dict(plan), 8.0, d["disk"])
    assert costs.eval_s == pytest.approx(d["eval_examples"] * 8.0 / (4 * d["gradient_accumulation"]) * 0.75)
    every = costs_for(TrainPlan.from_dict(_plan(project, {"time_budget": 120})), 8.0, d["disk"])
    assert every.eval_s == pytest.approx(costs.eval_s / 0.75 / 2)


def test_without_a_budget_evaluations_are_spaced_to_a_tenth_of_the_measured_training_time(project, measured):
    from tunesmith.train.plan import DATA

    plan = _plan(project)
    d, s = plan["derived"], plan["settings"]
    rows_per_step = 4 * d["gradient_accumulation"]
    each = d["eval_examples"] * STEP_S / rows_per_step / 2 + 1.0 + d["disk"]["checkpoints_mb"] / 200
    every = min(d["total_steps"], max(d["total_steps"] // 10, math.ceil(each / (0.1 * STEP_S))))
    assert every > d["total_steps"] // 10  # the guide's ~10 evaluations would cost more than a tenth here
    assert s["eval_every"]["value"] == every and s["eval_every"]["source"] == DATA
    assert "kept under 10% of the training time" in s["eval_every"]["why"]
    assert _plan(project, {"eval_every": 1})["settings"]["eval_every"]["value"] == 1  # a set cadence stays
