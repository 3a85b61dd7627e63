"""`tunesmith cost`: the price and token arithmetic against hand-computed examples.

The hand-computed project: 10 training rows and 4 test rows, each a user word and an assistant word
that are one token each in cl100k_base (the encoding of gpt-4 / gpt-3.5-turbo, the models used here,
so the count is the same online and offline). With no system prompt, one row is, in the chat format:
3 (reply priming) + 2 messages x (3 + 1 role token + 1 content token) = 13 tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datagen import clean_examples, write_jsonl, write_project_file
from tunesmith.cost import CostOptions, cost_line_for_training, estimate_costs
from tunesmith.cost_tables import usd_text
from tunesmith.project import load_project

#: one token each in cl100k_base (checked by test_the_hand_counts_hold)
WORDS = ("hello world cat dog yes no red blue green one two three sun moon tree book fish bird car road apple water "
         "house river light stone bread chair table door window paper pen cup rice salt snow rain wind fire gold "
         "silver iron wood glass sand rock hill lake sea ship boat train plane horse cow pig duck frog bear wolf "
         "lion king queen baby girl boy man woman city town").split()
TASK = "Answer with one word only."  # "The task: " + TASK is 9 tokens (checked below)
SENTINEL = "zqxj-sealed-row-7781"


def _enc():
    from tunesmith.train.hosted.tokens import counter_for

    return counter_for("gpt-4").encoding


def _row(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def words_project(root: Path, extra: str = "") -> Path:
    """40 rows of one user word and one assistant word, split and sealed (about 34 train, 6 test); no
    system prompt, no output contract. Every row is 13 tokens in the chat format."""
    from tunesmith.data.split import split_file

    root.mkdir(parents=True, exist_ok=True)
    (root / "tunesmith.yaml").write_text(f"task: {json.dumps(TASK)}\n" + extra, encoding="utf-8")
    write_jsonl(root / "data.jsonl", [_row(WORDS[i], WORDS[40 + i % 31]) for i in range(40)])
    split_file(root / "data.jsonl", root / "data" / "train.jsonl", root / "data" / "test.jsonl")
    return root


def rows_of(project: Path, split: str) -> list[dict]:
    return [json.loads(x) for x in (project / "data" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def line(report, line_id: str):
    [found] = [ln for ln in report.lines if ln.id == line_id]
    return found


def test_the_hand_counts_hold():
    enc = _enc()
    assert len(WORDS) == 71 and len(set(WORDS)) == 71
    assert all(len(enc.encode(w)) == 1 for w in WORDS + ["system", "user", "assistant"])
    assert len(enc.encode("The task: " + TASK)) == 9


# --- hosted training: billed tokens x price ---------------------------------------------------------


def test_hosted_training_is_tokens_times_epochs_times_the_dated_price(tmp_path):
    project = words_project(tmp_path / "p", "hosted:\n  model: gpt-3.5-turbo\n  n_epochs: 3\n"
                            "  validation_fraction: 0\n")
    n = len(rows_of(project, "train"))
    assert n >= 30
    hosted = line(estimate_costs(project, CostOptions(no_model=True)), "train_hosted")
    assert hosted.inputs["train_tokens"] == n * 13
    assert hosted.inputs["billed_tokens"] == n * 13 * 3
    assert hosted.usd == pytest.approx(n * 39 * 8.00 / 1e6, abs=1e-12)  # gpt-3.5-turbo: $8.00 per 1M in the table
    assert "2026-06" in hosted.source and f"{n * 39:,} billed tokens" in hosted.formula


def test_hosted_price_override_validation_slice_and_auto_epochs(tmp_path):
    project = words_project(tmp_path / "p", "hosted:\n  model: gpt-3.5-turbo\n"
                            "  price: {training: 25.0, input: 1.5, output: 3.0}\n")
    n = len(rows_of(project, "train"))
    report = estimate_costs(project, CostOptions(no_model=True))
    hosted = line(report, "train_hosted")
    # hosted.validation_fraction 0.1 of train goes in the validation file, which is not billed
    trained = n - round(0.1 * n)
    # no n_epochs: OpenAI's auto rule, at least 100 example passes: 31 rows -> 4 epochs
    epochs = max(3, math.ceil(100 / trained))
    assert (hosted.inputs["train_examples"], hosted.inputs["validation_examples"]) == (trained, n - trained)
    assert hosted.inputs["epochs"] == epochs and epochs > 3
    assert hosted.inputs["billed_tokens"] == trained * 13 * epochs
    assert hosted.usd == pytest.approx(trained * 13 * epochs * 25.0 / 1e6, abs=1e-12)
    assert hosted.source == "tunesmith.yaml hosted.price"
    # inference per 1M tokens at this project's mix: prompt = 3 + (3 + 1 + 1) = 8 tokens, answer 1 token per row
    inference = line(report, "inference_hosted")
    assert inference.inputs["prompt_share"] == pytest.approx(8 / 9, abs=1e-4)
    assert inference.usd == pytest.approx(8 / 9 * 1.5 + 1 / 9 * 3.0, abs=1e-9)


# --- teacher generation -------------------------------------------------------------------------------


TEACHER = "generate:\n  teacher_model: gpt-4\n  n: 100\n  fewshot: 0\n  price: {input: 1.0, output: 2.0}\n"


def test_teacher_line_labelling_only_by_hand(tmp_path):
    project = words_project(tmp_path / "p", TEACHER)
    teacher = line(estimate_costs(project, CostOptions(no_model=True, labelling_only=True)), "teacher")
    # one request: system "The task: ..." (9 tokens) + the seed's user word:
    # 3 priming + (3 + 1 + 9) + (3 + 1 + 1) = 21 prompt tokens; the answer is 1 token
    assert teacher.inputs["prompt_tokens_per_answer"] == 21
    assert teacher.inputs["answer_tokens_per_answer"] == 1
    assert (teacher.inputs["prompt_tokens"], teacher.inputs["completion_tokens"]) == (2100, 100)
    assert teacher.usd == pytest.approx((2100 * 1.0 + 100 * 2.0) / 1e6, abs=1e-12)
    assert teacher.source == "tunesmith.yaml generate.price" and teacher.per == "once"


def test_teacher_line_counts_the_input_writing_requests(tmp_path):
    project = words_project(tmp_path / "p", TEACHER)
    only = line(estimate_costs(project, CostOptions(no_model=True, labelling_only=True)), "teacher")
    full = line(estimate_costs(project, CostOptions(no_model=True)), "teacher")
    writing = full.inputs["input_writing"]
    assert writing["plan_requests"] == 1 and writing["input_requests"] == math.ceil(100 * 1.25 / 8) == 16
    assert full.inputs["prompt_tokens"] == 2100 + writing["prompt_tokens"] > only.inputs["prompt_tokens"]
    assert full.inputs["completion_tokens"] == 100 + writing["completion_tokens"]
    assert full.usd == pytest.approx((full.inputs["prompt_tokens"] + 2 * full.inputs["completion_tokens"]) / 1e6)
    assert "17 input-writing requests" in full.formula


# --- judge -------------------------------------------------------------------------------------------


def test_judge_line_is_rubric_twice_and_pairwise_in_both_orders(tmp_path):
    from tunesmith.cost_tables import TYPICAL_PAIRWISE_REPLY, TYPICAL_RUBRIC_REPLY
    from tunesmith.judge.prompts import RUBRIC_SYSTEM

    judge = "eval:\n  judge: {base_url: 'http://127.0.0.1:9/v1', model: gpt-4, pairwise: false}\n"
    project = words_project(tmp_path / "p", judge)
    rubric_only = line(estimate_costs(project, CostOptions(no_model=True, judge_price=(2.0, 4.0))), "judge")
    enc = _enc()
    # a rubric request for item i: system RUBRIC_SYSTEM, user = the template around prompt, reference, answer
    per_item, test = [], rows_of(project, "test")
    for row in test:
        q, a = (m["content"] for m in row["messages"])
        user = (f"[User prompt]\n{q}\n[End of user prompt]\n\n[Reference answer]\n{a}\n[End of reference answer]\n\n"
                f"[The assistant's answer]\n{a}\n[End of the assistant's answer]")
        per_item.append(3 + (3 + 1 + len(enc.encode(RUBRIC_SYSTEM))) + (3 + 1 + len(enc.encode(user))))
    assert rubric_only.inputs["calls_per_item"] == 2  # tuned and base
    assert rubric_only.inputs["prompt_tokens"] == 2 * sum(per_item)
    assert rubric_only.inputs["completion_tokens"] == len(test) * 2 * len(enc.encode(TYPICAL_RUBRIC_REPLY))
    tokens_in, tokens_out = rubric_only.inputs["prompt_tokens"], rubric_only.inputs["completion_tokens"]
    assert rubric_only.usd == pytest.approx((tokens_in * 2.0 + tokens_out * 4.0) / 1e6, abs=1e-12)
    assert rubric_only.source == "--judge-price"

    project = words_project(tmp_path / "q", judge.replace("pairwise: false", "pairwise: true"))
    both = line(estimate_costs(project, CostOptions(no_model=True, judge_price=(2.0, 4.0))), "judge")
    assert both.inputs["calls_per_item"] == 4
    assert both.inputs["completion_tokens"] == tokens_out + len(test) * 2 * len(enc.encode(TYPICAL_PAIRWISE_REPLY))
    assert both.inputs["prompt_tokens"] > tokens_in
    # --judge-model with the dated table's price (gpt-4.1: $2.00 in, $8.00 out per 1M)
    table = line(estimate_costs(project, CostOptions(no_model=True, judge_model="gpt-4.1")), "judge")
    assert table.inputs["judge_model"] == "gpt-4.1" and table.inputs["price_per_1m"] == {"input": 2.0, "output": 8.0}
    assert table.usd == pytest.approx((table.inputs["prompt_tokens"] * 2.0 + table.inputs["completion_tokens"] * 8.0) / 1e6)
    assert "2026-03" in table.source and "--judge-price" in table.source


def test_no_judge_or_teacher_configured_costs_nothing(tmp_path):
    report = estimate_costs(words_project(tmp_path / "p"), CostOptions(no_model=True))
    judge, teacher = line(report, "judge"), line(report, "teacher")
    assert judge.usd == 0.0 and "eval.judge" in judge.formula
    assert teacher.usd == 0.0 and "generate.teacher_model" in teacher.formula
    assert "teacher" not in report.missing and "judge" not in report.missing


# --- the sums --------------------------------------------------------------------------------------


def test_subtotal_and_the_three_iterations(tmp_path):
    extra = TEACHER + "hosted:\n  model: gpt-3.5-turbo\n  n_epochs: 3\n" + \
        "eval:\n  judge: {base_url: 'http://127.0.0.1:9/v1', model: gpt-4, pairwise: false}\n"
    project = words_project(tmp_path / "p", extra)
    report = estimate_costs(project, CostOptions(no_model=True, labelling_only=True, judge_price=(2.0, 4.0),
                                                 backend="openai"))
    teacher, judge, hosted = (line(report, i).usd for i in ("teacher", "judge", "train_hosted"))
    n = len(rows_of(project, "train")) - round(0.1 * len(rows_of(project, "train")))  # less the validation slice
    assert teacher == pytest.approx(0.0023) and hosted == pytest.approx(n * 13 * 3 * 8.0 / 1e6)
    assert report.subtotal_usd == pytest.approx(teacher + judge + hosted, abs=1e-12)
    # the teacher is paid once (its replies are cached); training and judging three times
    assert report.total_usd == pytest.approx(teacher + 3 * (judge + hosted), abs=1e-12)
    assert report.iterations == 3 and not report.missing
    assert {ln.id for ln in report.lines if ln.counted} == {"teacher", "judge", "train_hosted"}
    five = estimate_costs(project, CostOptions(no_model=True, labelling_only=True, judge_price=(2.0, 4.0),
                                               backend="openai", iterations=5))
    assert five.total_usd == pytest.approx(teacher + 5 * (judge + hosted), abs=1e-12)


def test_unknown_prices_are_null_with_the_setting_that_fixes_them(tmp_path):
    extra = "generate: {teacher_model: my-teacher}\nhosted: {model: my-hosted-base}\n" + \
        "eval:\n  judge: {base_url: 'http://127.0.0.1:9/v1', model: my-judge}\n"
    report = estimate_costs(words_project(tmp_path / "p", extra), CostOptions(no_model=True, backend="openai"))
    for line_id, fix in (("teacher", "generate.price"), ("judge", "--judge-price"), ("train_hosted", "hosted.price"),
                         ("inference_hosted", "hosted.price")):
        ln = line(report, line_id)
        assert ln.usd is None, line_id
        assert any(n.startswith(line_id + ":") and fix in n for n in report.notes), (line_id, report.notes)
    assert set(report.missing) == {"teacher", "judge", "train_hosted"}
    assert report.to_dict()["complete"] is False and report.total_usd == 0


def test_no_split_yet_says_so_instead_of_guessing(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / "tunesmith.yaml").write_text(f"task: {json.dumps(TASK)}\n{TEACHER}", encoding="utf-8")
    report = estimate_costs(root, CostOptions(no_model=True))
    assert line(report, "teacher").usd is None and line(report, "train_hosted").usd is None
    assert any("tunesmith split" in n for n in report.notes)


# --- local training ----------------------------------------------------------------------------------


@pytest.fixture
def tiny_project(tmp_path, tiny_model_dir, isolated_cache):
    from tunesmith.data.split import split_file

    root = tmp_path / "tiny"
    write_project_file(root, tiny_model_dir, system_prompt=None)
    write_jsonl(root / "data.jsonl", clean_examples(60))
    split_file(root / "data.jsonl", root / "data" / "train.jsonl", root / "data" / "test.jsonl")
    return root


def test_local_training_from_the_gpu_table(tiny_project):
    report = estimate_costs(tiny_project, CostOptions(gpu="A100", gpu_dollars_per_hour=2.0))
    local = line(report, "train_local")
    ins = local.inputs
    assert ins["epochs"] == 3 and ins["tokens_per_epoch"] > 0 and ins["size_class"] == "1B"
    assert ins["trained_tokens"] == ins["tokens_per_epoch"] * 3
    # A100: 312 TFLOP/s x 0.30 / (4 FLOPs x 1e9 parameters) = 23,400 tokens/s
    assert ins["tokens_per_s"] == 23400
    assert local.usd == pytest.approx(ins["trained_tokens"] / 23400 / 3600 * 2.0, rel=1e-12)
    assert local.source == "--gpu-dollars-per-hour" and local.counted
    # the default GPU is the guide's RTX 4090 at the table's $2.25/hour: 0.30 x 165e12 / 4e9 = 12,375 tokens/s
    default = line(estimate_costs(tiny_project), "train_local")
    assert default.inputs["gpu"] == "RTX 4090" and default.inputs["dollars_per_hour"] == 2.25
    assert default.usd == pytest.approx(ins["trained_tokens"] / 12375 / 3600 * 2.25, rel=1e-12)
    assert "2026-06" in default.source
    self_hosted = line(report, "inference_self_hosted")
    assert self_hosted.usd is not None and self_hosted.usd > 0 and self_hosted.inputs["gpu"] == "A100"


def test_cost_line_for_training_local_and_hosted(tiny_project):
    from tunesmith.train.api import plan_training

    project = load_project(tiny_project)
    _, plan = plan_training(project, {}, measure=False)
    text = cost_line_for_training(project, plan, gpu="A100", gpu_dollars_per_hour=2.0)
    hours = plan["derived"]["tokens_per_epoch"] * 3 / 23400 / 3600
    assert text.startswith("this run: about ") and "GPU-hours on A100" in text and "$2.00/hour" in text
    assert "/ 23,400 tokens/s" in text and f"= ~{usd_text(hours * 2.0)} (--gpu-dollars-per-hour" in text, text
    hosted = cost_line_for_training(project, plan, backend="openai")
    assert hosted.startswith("this job: ") and "billed tokens" in hosted and "$8.00/1M" in hosted  # gpt-4o-mini


def test_cost_line_for_the_embedded_model_and_a_measured_gpu(tmp_path):
    project = words_project(tmp_path / "p", "base_model: builtin:smollm2-135m-instruct\n")
    plan = {"settings": {"epochs": {"value": 3}, "method": {"value": "lora"}},
            "derived": {"tokens_per_epoch": 87_362, "total_steps": 87, "device": "cpu (x86_64)"}}
    text = cost_line_for_training(project, plan)
    assert text.startswith("this run: about 8 min on this CPU") and "no GPU cost" in text  # the README's 8 minutes
    plan["derived"]["seconds_per_step"] = 12.0  # measured: 87 x 12 s = 17.4 min
    assert cost_line_for_training(project, plan).startswith("this run: about 17 min on this CPU (measured")
    gpu_project = words_project(tmp_path / "q", "base_model: some/hub-model\n")
    plan["derived"].update(seconds_per_step=2.0, total_steps=90, device="cuda (NVIDIA H100 80GB HBM3, 80 GB)")
    text = cost_line_for_training(gpu_project, plan)  # 90 x 2 s = 0.05 GPU-hours x $3.24 = $0.162
    assert "0.05 GPU-hours on H100" in text and "~$0.16 " in text, text
    plan["derived"]["device"] = "cuda (NVIDIA H200, 139 GB)"  # measured, but the price table has no H200
    unknown = cost_line_for_training(gpu_project, plan)
    assert "unknown" in unknown and "0.05 GPU-hours" in unknown and "--gpu-dollars-per-hour" in unknown
    assert "~$" not in unknown, unknown
    priced = cost_line_for_training(gpu_project, plan, gpu_dollars_per_hour=4.0)
    assert "0.05 GPU-hours" in priced and "= ~$0.20 (--gpu-dollars-per-hour)" in priced, priced


# --- the command -------------------------------------------------------------------------------------


def test_cli_json_shape_and_human_table(tmp_path):
    from tunesmith.cli import app

    extra = TEACHER + "hosted:\n  model: gpt-3.5-turbo\n  n_epochs: 3\n  validation_fraction: 0\n" + \
        "eval:\n  judge: {base_url: 'http://127.0.0.1:9/v1', model: gpt-4}\n"
    project = words_project(tmp_path / "p", extra)
    n = len(rows_of(project, "train"))
    runner = CliRunner()
    res = runner.invoke(app, ["cost", "-p", str(project), "--no-model", "--json", "--judge-price", "2,4"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data) >= {"lines", "subtotal_usd", "iterations", "total_usd", "notes"} and data["iterations"] == 3
    assert [ln["id"] for ln in data["lines"]] == ["teacher", "judge", "train_local", "train_hosted",
                                                  "inference_self_hosted", "inference_hosted"]
    for ln in data["lines"]:
        assert set(ln) >= {"id", "what", "inputs", "usd", "source"}
    assert line_json(data, "train_hosted")["usd"] == pytest.approx(n * 39 * 8.0 / 1e6, abs=1e-6)

    res = runner.invoke(app, ["cost", "-p", str(project), "--no-model"])
    assert res.exit_code == 0, res.output
    for what in ("teacher generation", "LLM-judge evaluation", "local training", "hosted training",
                 "inference, self-hosted", "inference, hosted fine-tune", "budget for 3 runs"):
        assert what in res.stdout, what
    for date in ("2026-03", "2026-06"):
        assert date in res.stdout

    # the sealed test set is counted, never shown
    write_jsonl(project / "data" / "test.jsonl", [_row(f"{SENTINEL} question", f"{SENTINEL} answer")])
    for args in (["--json"], []):
        res = runner.invoke(app, ["cost", "-p", str(project), "--no-model", *args])
        assert res.exit_code == 0 and "LLM-judge" in res.stdout and SENTINEL not in res.output, res.output

    bad = runner.invoke(app, ["cost", "-p", str(project), "--judge-price", "two"])
    assert bad.exit_code != 0 and "--judge-price" in bad.output


def line_json(data: dict, line_id: str) -> dict:
    [found] = [ln for ln in data["lines"] if ln["id"] == line_id]
    return found
