"""`tunesmith advise`: one test per branch of the guide's tree, on real project files."""

import json

import pytest
from typer.testing import CliRunner

from datagen import SYSTEM, clean_examples, write_jsonl, write_project_file
from tunesmith import advise as adv
from tunesmith.advise import AdviseFlags, advise
from tunesmith.cli import app
from tunesmith.train.device import DeviceInfo

TASK = "Given one item, answer with one compact JSON object with keys first, last and item_id."
CPU = DeviceInfo("cpu", "test cpu", False, None)


def behaviour_rows(n, seed=0):
    """Answers made of the prompt's own words: a format task, no knowledge needed."""
    rows = clean_examples(n, seed=seed)
    for row in rows:
        words = row["messages"][1]["content"].split(": ", 1)[1].split()
        row["messages"][2]["content"] = json.dumps({"first": words[0], "last": words[-1], "n": len(words)})
    return rows


def knowledge_rows(n):
    """clean_examples' summaries are random words no prompt holds: answers carrying facts."""
    return clean_examples(n)


def make_project(tmp_path, rows=None, extra="", task=TASK):
    write_project_file(tmp_path, task=task, extra=extra)
    if rows is not None:
        write_jsonl(tmp_path / "data.jsonl", rows)
    return tmp_path


def split(project_dir):
    from tunesmith.data.split import split_file

    d = project_dir
    (d / "data").mkdir(exist_ok=True)
    split_file(d / "data.jsonl", d / "data" / "train.jsonl", d / "data" / "test.jsonl", test_fraction=0.2)


@pytest.fixture
def cpu_machine(monkeypatch):
    """A CPU-only machine with 16 GB of RAM, whatever this one is."""
    monkeypatch.setattr("tunesmith.train.device.detect_device", lambda: CPU)
    monkeypatch.setattr(adv, "ram_gb", lambda: 16.0)


def question(advice, qid):
    return next(q for q in advice.questions if q.id == qid)


# --- is there a one-sentence task? ---------------------------------------------------------------


def test_no_task_at_all_says_write_the_task_first():
    advice = advise(None, AdviseFlags())
    q = question(advice, "task")
    assert (q.verdict, q.source, q.answer) == ("missing", "unknown", None)
    assert advice.recommendation.action == "write-the-task"
    assert advice.recommendation.next.startswith("tunesmith init DIR --task")
    assert advice.recommendation.method is None


def test_a_vague_task_is_not_a_sentence_but_a_concrete_one_is(tmp_path):
    advice = advise(make_project(tmp_path, behaviour_rows(300), task="Better code reviews."))
    q = question(advice, "task")
    assert (q.verdict, q.source) == ("vague", "project") and "3 words" in q.detail
    assert advice.recommendation.action == "write-the-task"
    assert "tunesmith.yaml" in advice.recommendation.next
    assert adv.task_question("Summarize support tickets.", "flag", "p").verdict == "vague"  # a label, not a task
    long_but_vague = adv.task_question("Make the model write better and more helpful code reviews for the team", "flag", "p")
    assert long_but_vague.verdict == "vague"
    concrete = adv.task_question(TASK, "flag", "p")
    assert (concrete.verdict, concrete.action) == ("ok", None)


# --- how many examples? ----------------------------------------------------------------------------


def test_under_30_examples_means_few_shot_prompting(tmp_path, cpu_machine):
    advice = advise(make_project(tmp_path, behaviour_rows(20) + ["{broken"]), shown_as="proj")
    q = question(advice, "examples")
    assert (q.answer, q.source, q.verdict) == (20, "data", "few-shot")  # the broken row is not counted
    rec = advice.recommendation
    assert rec.action == "few-shot" and rec.method is None
    assert rec.next.startswith("prompt it: put these 20 examples in the prompt as few-shot examples")
    assert any("fewer than 30" in w for w in rec.why)


def test_under_the_task_kind_minimum_means_collect_data_with_generate(tmp_path, cpu_machine):
    advice = advise(make_project(tmp_path, behaviour_rows(40), "generate:\n  teacher_model: gpt-4o-mini\n"),
                    shown_as="proj")
    q = question(advice, "examples")
    assert q.verdict == "collect-data" and "below the minimum of 50-100 for a format task" in q.detail
    rec = advice.recommendation
    assert rec.action == "collect-data"
    assert rec.next.startswith("tunesmith generate -p proj --teacher-model gpt-4o-mini --n 160")
    assert rec.next.endswith("`tunesmith review proj/generated.jsonl`")
    # the same 40 examples are plenty... for nothing: a style task needs 100-300 at least
    assert question(advise(tmp_path, AdviseFlags(task_kind="style")), "examples").detail.count("100-300") == 1
    # 60 examples clear the format minimum
    enough = advise(tmp_path, AdviseFlags(examples=60))
    assert question(enough, "examples").verdict == "enough" and question(enough, "examples").source == "flag"


def test_no_usable_example_is_no_data(tmp_path):
    make_project(tmp_path, ["{broken", {"text": "no known format"}])
    q = question(advise(tmp_path, shown_as="proj"), "examples")
    assert (q.answer, q.verdict, q.action) == (0, "unknown", "collect-data") and "tunesmith check" in q.detail
    (tmp_path / "data.jsonl").unlink()
    (tmp_path / "tunesmith.yaml").write_text((tmp_path / "tunesmith.yaml").read_text() + "build: python build.py\n")
    q = question(advise(tmp_path, shown_as="proj"), "examples")
    assert (q.answer, q.source, q.next) == (None, "unknown", "tunesmith build proj")


# --- knowledge or behaviour? -------------------------------------------------------------------


def test_answers_with_facts_absent_from_the_prompt_point_to_rag(tmp_path, cpu_machine):
    advice = advise(make_project(tmp_path, knowledge_rows(300)), shown_as="proj")
    q = question(advice, "knowledge")
    assert (q.answer, q.source, q.verdict) == ("knowledge", "data", "rag")
    assert "appear nowhere in their prompts" in q.detail and "over 300 examples" in q.detail
    assert advice.recommendation.action == "rag"
    assert "--behaviour" in advice.recommendation.next
    # the same project with answers copied from the prompt is behaviour
    write_jsonl(tmp_path / "data.jsonl", behaviour_rows(300))
    q = question(advise(tmp_path), "knowledge")
    assert (q.answer, q.verdict, q.action) == ("behaviour", "behaviour", None)


def test_behaviour_flag_overrides_the_measurement(tmp_path, cpu_machine):
    make_project(tmp_path, knowledge_rows(300))
    advice = advise(tmp_path, AdviseFlags(knowledge=False))
    q = question(advice, "knowledge")
    assert (q.answer, q.source, q.verdict) == ("behaviour", "flag", "behaviour")
    assert advice.recommendation.action == "fine-tune"
    (tmp_path / "b").mkdir()
    flagged = advise(make_project(tmp_path / "b", behaviour_rows(300)), AdviseFlags(knowledge=True))
    assert question(flagged, "knowledge").source == "flag" and flagged.recommendation.action == "rag"


def test_which_verdict_wins_when_several_apply(tmp_path, cpu_machine):
    make_project(tmp_path, knowledge_rows(20))
    advice = advise(tmp_path)
    assert [question(advice, q).verdict for q in ("examples", "knowledge")] == ["few-shot", "rag"]
    assert advice.recommendation.action == "rag"  # more examples would not bring the facts
    assert advise(tmp_path, AdviseFlags(base_pass_rate=0.95)).recommendation.action == "prompt"  # cheapest fix first
    assert advise(tmp_path, AdviseFlags(task="Better answers.", base_pass_rate=0.95)).recommendation.action == (
        "write-the-task")


def test_no_data_and_no_flag_leaves_the_question_open_and_the_tree_runs_on(tmp_path):
    advice = advise(None, AdviseFlags(task=TASK, examples=10))
    q = question(advice, "knowledge")
    assert (q.answer, q.source, q.verdict) == (None, "unknown", "unknown") and "--knowledge" in q.next
    assert advice.recommendation.action == "few-shot"  # the examples question still answered


def test_knowledge_share_ignores_keys_labels_and_short_numbers():
    from tunesmith.data.formats import parse_record

    tickets = [row["messages"][1]["content"] for row in clean_examples(20)]

    def rows(summary):
        return [parse_record({"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": json.dumps(
            {"category": ("hardware", "billing")[i % 2], "priority": i % 5, "summary": summary(t, i)})}]}, i + 1)
            for i, t in enumerate(tickets)]

    # labels shared by many answers, keys and small numbers are the format; the summary copies the ticket
    copied = adv.knowledge_share(rows(lambda t, i: " ".join(t.split()[2:5])))
    assert (copied.share, copied.examples, copied.content) == (0.0, 20, 60)
    # a summary naming something the ticket does not say is knowledge: 1 word in 4 here
    added = adv.knowledge_share(rows(lambda t, i: " ".join(t.split()[2:5]) + f" serial{i}x"))
    assert added.share == pytest.approx(0.25) and added.novel == 20
    # too few answers for a shared vocabulary: the JSON keys still are not content
    two = adv.knowledge_share(rows(lambda t, i: t.split()[2])[:2])
    assert (two.content, two.novel) == (4, 2)  # the summaries (in the prompt) and the labels (not)


# --- the baseline ------------------------------------------------------------------------------


def _store_base_eval(project_dir, exact_match, n=40):
    from tunesmith.evaluate.store import EvalStore
    from tunesmith.runs import RunRegistry

    EvalStore(RunRegistry(project_dir / "runs")).save(
        subject="base", run_id=None, split="test", fingerprint="f", settings={},
        summary={"exact_match": {"mean": exact_match, "lo": 0.0, "hi": 1.0, "n": n}}, items=[])


def test_base_model_at_80_percent_or_more_means_prompt_it(tmp_path, cpu_machine):
    make_project(tmp_path, behaviour_rows(300))
    split(tmp_path)
    _store_base_eval(tmp_path, 0.85)
    advice = advise(tmp_path, shown_as="proj")
    q = question(advice, "baseline")
    assert (q.answer, q.source, q.verdict) == (0.85, "baseline", "prompt")
    assert "85%" in q.detail and "n=40" in q.detail
    rec = advice.recommendation
    assert rec.action == "prompt" and rec.method is None
    assert rec.next.startswith("prompt it") and "tunesmith baseline -p proj" in rec.next


def test_base_model_under_80_percent_means_fine_tune_with_the_train_command(tmp_path, cpu_machine, tiny_model_dir):
    make_project(tmp_path, behaviour_rows(300), f"base_model: {json.dumps(str(tiny_model_dir))}\n")
    split(tmp_path)
    _store_base_eval(tmp_path, 0.30)
    advice = advise(tmp_path, shown_as="proj")
    q = question(advice, "baseline")
    assert (q.answer, q.verdict, q.action) == (0.30, "fine-tune", None)
    rec = advice.recommendation
    assert (rec.action, rec.method) == ("fine-tune", "lora")
    assert rec.next == "tunesmith train -p proj --dry-run"


def test_the_pipeline_state_is_a_baseline_too(tmp_path, cpu_machine):
    make_project(tmp_path, behaviour_rows(300))
    split(tmp_path)
    (tmp_path / ".tunesmith").mkdir()
    (tmp_path / ".tunesmith" / "pipeline.json").write_text(json.dumps({"baseline": {"key": "k", "recommendation": {
        "fine_tune": False, "threshold": 0.8, "base_pass_rate": 0.92, "base_regression_rate": 1.0, "message": "m"}}}))
    q = question(advise(tmp_path), "baseline")
    assert (q.answer, q.source, q.verdict) == (0.92, "baseline", "prompt")


def test_no_baseline_yet_says_how_to_get_it(tmp_path, cpu_machine):
    make_project(tmp_path, behaviour_rows(300))
    advice = advise(tmp_path, shown_as="proj")
    q = question(advice, "baseline")
    assert (q.verdict, q.source) == ("no-split", "unknown")
    assert q.next == "tunesmith split -p proj && tunesmith baseline -p proj"
    split(tmp_path)
    advice = advise(tmp_path, shown_as="proj")
    q = question(advice, "baseline")
    assert q.verdict == "not-measured" and q.detail == "not measured yet: run `tunesmith baseline -p proj`"
    assert advice.recommendation.action == "fine-tune"
    assert advice.recommendation.next.startswith("tunesmith baseline -p proj  (then")


def test_a_flag_answers_the_baseline_without_a_project():
    advice = advise(None, AdviseFlags(task=TASK, examples=500, knowledge=False, base_pass_rate=0.9))
    q = question(advice, "baseline")
    assert (q.source, q.verdict) == ("flag", "prompt") and advice.recommendation.action == "prompt"


def test_constrained_decoding_not_measured_yet_says_how(tmp_path):
    q = question(advise(make_project(tmp_path)), "constrained")
    assert (q.answer, q.source, q.verdict, q.action) == (None, "unknown", "not-measured", None)
    assert "the contract is JSON" in q.detail and "has not been measured constrained" in q.detail
    assert q.next and q.next.startswith("tunesmith baseline -p ")


def test_constrained_decoding_without_a_contract_is_not_applicable(tmp_path):
    (tmp_path / "tunesmith.yaml").write_text(f"task: {json.dumps(TASK)}\nsystem_prompt: {json.dumps(SYSTEM)}\n")
    q = question(advise(tmp_path), "constrained")
    assert (q.verdict, q.action) == ("not-applicable", None) and "no output contract" in q.detail


def _store_constrained_eval(project_dir, name, exact_match, n=40):
    from tunesmith.evaluate.store import EvalStore
    from tunesmith.runs import RunRegistry

    EvalStore(RunRegistry(project_dir / "runs")).save(
        subject=name, run_id=None, split="test", fingerprint="f", settings={},
        summary={"exact_match": {"mean": exact_match, "lo": 0.0, "hi": 1.0, "n": n}}, items=[])


def test_a_constrained_base_that_passes_means_prompt_and_constrain(tmp_path, cpu_machine):
    make_project(tmp_path, behaviour_rows(300), extra="baseline:\n  few_shot: 3\n")
    _store_constrained_eval(tmp_path, "base+constrained+3shot", 0.9)
    advice = advise(tmp_path)
    q = question(advice, "constrained")
    assert (q.answer, q.source, q.verdict, q.action) == (0.9, "baseline", "prompt", "prompt")
    assert "constrained to JSON, the base model answers 90%" in q.detail and "3 few-shot examples" in q.detail
    assert "response_format" in q.next and advice.recommendation.action == "prompt"


def test_a_constrained_base_below_the_bar_leaves_fine_tuning_open(tmp_path, cpu_machine):
    make_project(tmp_path, behaviour_rows(300))
    _store_constrained_eval(tmp_path, "base+constrained", 0.4)
    q = question(advise(tmp_path), "constrained")
    assert (q.verdict, q.action) == ("fine-tune", None) and "the contract alone is not enough" in q.detail


# --- the method ----------------------------------------------------------------------------------


def _fine_tune_project(tmp_path, extra="", n=300):
    make_project(tmp_path, behaviour_rows(n), extra)
    split(tmp_path)
    _store_base_eval(tmp_path, 0.1)
    return tmp_path


def test_lora_for_a_small_model_sized_from_its_safetensors_headers(tmp_path, cpu_machine, tiny_model_dir):
    from safetensors import safe_open

    expected = 0
    for f in tiny_model_dir.glob("*.safetensors"):
        with safe_open(str(f), "np") as st:
            expected += sum(int(__import__("math").prod(st.get_slice(k).get_shape())) for k in st.keys())
    advice = advise(_fine_tune_project(tmp_path, f"base_model: {json.dumps(str(tiny_model_dir))}\n"))
    assert advice.recommendation.method == "lora"
    assert advice.facts["params"] == expected and advice.facts["params_from"] == "safetensors headers"
    assert any("LoRA fits" in w for w in advice.recommendation.why)


def test_qlora_when_a_cuda_gpu_is_too_small_for_16_bit_weights(tmp_path, monkeypatch):
    _fine_tune_project(tmp_path)
    monkeypatch.setattr("tunesmith.train.device.detect_device", lambda: DeviceInfo("cuda", "small gpu", True, 8.0))
    advice = advise(tmp_path, AdviseFlags(params=8_000_000_000), shown_as="proj")
    rec = advice.recommendation
    assert rec.method == "qlora" and rec.next == "tunesmith train -p proj --dry-run"
    assert any("16-bit weights would not fit in GPU memory" in w for w in rec.why)  # the plan's own words
    # the same model on an 80 GB card: LoRA
    monkeypatch.setattr("tunesmith.train.device.detect_device", lambda: DeviceInfo("cuda", "big gpu", True, 80.0))
    assert advise(tmp_path, AdviseFlags(params=8_000_000_000)).recommendation.method == "lora"
    # a 70B model on 8 GB does not fit even in 4 bits
    monkeypatch.setattr("tunesmith.train.device.detect_device", lambda: DeviceInfo("cuda", "small gpu", True, 8.0))
    assert advise(tmp_path, AdviseFlags(params=70_000_000_000)).recommendation.method == "hosted"


def test_full_fine_tuning_only_for_a_large_dataset_on_a_small_model(tmp_path, monkeypatch):
    monkeypatch.setattr("tunesmith.train.device.detect_device", lambda: DeviceInfo("cuda", "gpu", True, 80.0))
    _fine_tune_project(tmp_path, n=700)
    advice = advise(tmp_path, AdviseFlags(params=135_000_000), shown_as="proj")
    assert advice.recommendation.method == "full"
    assert advice.recommendation.next == "tunesmith train -p proj --dry-run --method full"
    assert advise(tmp_path, AdviseFlags(params=135_000_000, examples=300)).recommendation.method == "lora"


def test_the_projects_own_method_is_kept_unless_the_plan_would_refuse_it(tmp_path, cpu_machine, monkeypatch):
    _fine_tune_project(tmp_path, "train:\n  method: full\n")
    rec = advise(tmp_path, shown_as="proj").recommendation
    assert rec.method == "full" and rec.why[-1] == "train.method: full in tunesmith.yaml"
    (tmp_path / "tunesmith.yaml").write_text((tmp_path / "tunesmith.yaml").read_text().replace("full", "qlora"))
    monkeypatch.setattr("tunesmith.train.device.qlora_blocker", lambda kind: "QLoRA on cpu needs bitsandbytes >= 0.50.0")
    rec = advise(tmp_path).recommendation
    assert rec.method == "lora" and "QLoRA on cpu needs bitsandbytes >= 0.50.0" in rec.why[-1]
    monkeypatch.setattr("tunesmith.train.device.qlora_blocker", lambda kind: None)
    assert advise(tmp_path).recommendation.method == "qlora"  # where bitsandbytes runs, the project's choice stands


def test_hosted_when_the_project_configures_it(tmp_path, monkeypatch):
    def no_device():
        raise AssertionError("a hosted project needs no device probe")

    monkeypatch.setattr("tunesmith.train.device.detect_device", no_device)
    _fine_tune_project(tmp_path, "hosted:\n  model: gpt-4o-mini-2024-07-18\n")
    rec = advise(tmp_path, shown_as="proj").recommendation
    assert rec.method == "hosted"
    assert rec.next == "tunesmith train -p proj --backend openai --model gpt-4o-mini-2024-07-18"
    assert any("engineering time" in w for w in rec.why)


def test_hosted_when_nothing_local_fits(tmp_path, cpu_machine, monkeypatch):
    _fine_tune_project(tmp_path)
    rec = advise(tmp_path, AdviseFlags(params=8_000_000_000), shown_as="proj").recommendation
    assert rec.method == "hosted" and rec.next == "tunesmith train -p proj --backend openai --model gpt-4o-mini-2024-07-18"
    assert any("no CUDA GPU" in w and "takes days" in w for w in rec.why)
    # 3B fits in 64 GB of RAM, but a CPU would take days
    monkeypatch.setattr(adv, "ram_gb", lambda: 64.0)
    rec = advise(tmp_path, AdviseFlags(params=3_000_000_000)).recommendation
    assert rec.method == "hosted" and any("takes days" in w for w in rec.why)
    assert advise(tmp_path, AdviseFlags(params=500_000_000)).recommendation.method == "lora"


def test_qlora_on_a_cpu_whose_ram_cannot_hold_the_fp32_weights(tmp_path, cpu_machine, monkeypatch):
    _fine_tune_project(tmp_path)
    monkeypatch.setattr(adv, "ram_gb", lambda: 4.0)  # 900M fp32 weights: 3.4 GB > half of 4 GB
    monkeypatch.setattr("tunesmith.train.device.qlora_blocker", lambda kind: None)
    rec = advise(tmp_path, AdviseFlags(params=900_000_000)).recommendation
    assert rec.method == "qlora" and any("4-bit base weights" in w and "bitsandbytes on cpu" in w for w in rec.why)
    monkeypatch.setattr("tunesmith.train.device.qlora_blocker",
                        lambda kind: "QLoRA on cpu needs bitsandbytes >= 0.50.0, which is not installed")
    rec = advise(tmp_path, AdviseFlags(params=900_000_000)).recommendation
    assert rec.method == "hosted"
    assert any("QLoRA cannot help: QLoRA on cpu needs bitsandbytes >= 0.50.0" in w for w in rec.why)


def test_model_size_from_the_builtin_gguf_header_and_hub_names(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n, source = adv.model_params("builtin:smollm2-135m-instruct")
    assert 130e6 < n < 140e6 and source == "GGUF header"
    n, source = adv.model_params("no-such-org/Some-Model-8B-Instruct")
    assert n == 8_000_000_000 and "name" in source
    assert adv.model_params("no-such-org/some-model")[0] is None
    from tunesmith.models.size import parse_params

    assert [parse_params(t) for t in ("135M", "8B", "1.5e9")] == [135_000_000, 8_000_000_000, 1_500_000_000]


# --- the command -------------------------------------------------------------------------------------


def test_cli_json_shape(tmp_path, cpu_machine):
    make_project(tmp_path, behaviour_rows(20))
    result = CliRunner().invoke(app, ["advise", "-p", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) == {"project", "questions", "recommendation", "facts"}
    assert [q["id"] for q in out["questions"]] == ["task", "examples", "knowledge", "baseline", "constrained"]
    for q in out["questions"]:
        assert set(q) == {"id", "answer", "source", "detail", "verdict", "next"}
        assert q["source"] in ("data", "flag", "baseline", "project", "unknown")
    assert set(out["recommendation"]) == {"action", "method", "why", "next"}
    assert out["recommendation"]["action"] == "few-shot"


def test_cli_human_output_is_a_short_tree_and_finds_the_project_around_cwd(tmp_path, cpu_machine, monkeypatch):
    make_project(tmp_path, behaviour_rows(40))
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    result = CliRunner().invoke(app, ["advise", "--behaviour"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"advice for {tmp_path}"
    assert any(line.split()[:3] == ["examples", "40", "collect-data"] for line in lines)
    assert "               format     minimum 50-100     comfortable 200-500  <- this task" in lines
    assert any(line.split()[:2] == ["knowledge", "behaviour"] and "(flag)" in line for line in lines)
    assert "recommendation: collect-data" in result.stdout
    assert "next: tunesmith generate -p .. --teacher-model TEACHER --n 160" in result.stdout


def test_cli_errors_are_messages(tmp_path):
    result = CliRunner().invoke(app, ["advise", "--knowledge", "--behaviour", "-p", str(tmp_path)])
    assert result.exit_code == 2 and "contradict" in result.output
    result = CliRunner().invoke(app, ["advise", "-p", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no project file" in result.output
    result = CliRunner().invoke(app, ["advise", "--params", "lots"])
    assert result.exit_code == 2 and "135M, 8B" in result.output
