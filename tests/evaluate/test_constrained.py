"""Constrained decoding in eval and baseline: the four variants side by side, prompting before fine-tuning."""

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datagen import SYSTEM, clean_examples, words, write_jsonl, write_project_file
from tunesmith.cli import app
from tunesmith.data.split import split_file
from tunesmith.errors import UsageError
from tunesmith.evaluate.types import DecodeSettings, Generation

runner = CliRunner()
MAX_NEW = 48
#: a contract whose every valid answer is short: a constrained answer always finishes
LABEL_SCHEMA = {"type": "object", "properties": {"label": {"enum": ["yes", "no"]}, "ok": {"type": "boolean"}},
                "required": ["label", "ok"], "additionalProperties": False}
#: a contract with one valid answer: the base model constrained to it is always right
CONST_SCHEMA = {"type": "object", "properties": {"label": {"const": "ok"}}, "required": ["label"],
                "additionalProperties": False}


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def label_rows(n: int, seed: int = 0, answer=None) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        value = answer if answer is not None else {"label": rng.choice(["yes", "no"]), "ok": rng.random() < 0.5}
        rows.append({"messages": [{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": f"Review {i}: {words(rng, 10)}"},
                                  {"role": "assistant", "content": json.dumps(value, separators=(",", ":"))}]})
    return rows


def make_project(root: Path, model_dir: Path, rows: list, *, schema: dict | None = None, extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if schema is not None:
        (root / "schema.json").write_text(json.dumps(schema))
    write_project_file(root, model_dir, task="Label the review with one compact JSON object.",
                       output={"json_schema": "schema.json"} if schema is not None else None,
                       eval={"max_new_tokens": MAX_NEW}, extra=extra)
    write_jsonl(root / "data.jsonl", rows)
    split_file(root / "data.jsonl", root / "data" / "train.jsonl", root / "data" / "test.jsonl", test_fraction=0.25)
    return root


def load(root: Path):
    from tunesmith.project import load_project

    return load_project(root)


# -- few-shot --------------------------------------------------------------------------------------


def test_few_shot_chats_hold_k_train_examples_and_never_a_test_prompt(tmp_path):
    from tunesmith.evaluate.constrained import few_shot_pairs, with_few_shot
    from tunesmith.evaluate.items import test_items

    root = make_project(tmp_path / "p", tmp_path / "no-model", label_rows(40), schema=LABEL_SCHEMA)
    project = load(root)
    test = test_items(project)
    train_prompts = [json.loads(line)["messages"][1]["content"]
                     for line in (root / "data" / "train.jsonl").read_text().splitlines()]
    test_prompts = {it.prompt_text() for it in test}
    shots = few_shot_pairs(project, 3, test)
    assert len(shots) == 3 and len({s.prompt for s in shots}) == 3
    assert all(s.prompt in train_prompts and s.prompt not in test_prompts for s in shots)
    assert few_shot_pairs(project, 3, test) == shots  # deterministic
    chats = with_few_shot(test, shots)
    for item, chat in zip(test, chats):
        assert [t["role"] for t in chat.chat] == ["system"] + ["user", "assistant"] * 3 + ["user"]
        assert chat.chat[0] == item.chat[0] and chat.chat[-1] == item.chat[-1]
        assert chat.chat[1]["content"] == shots[0].prompt and chat.chat[2]["content"] == shots[0].answer
        assert chat.id == item.id and chat.expected == item.expected
    # a test row copied into the training split by hand is never shown as an example
    with open(root / "data" / "train.jsonl", "a") as fh:
        fh.write(json.dumps({"messages": [{"role": "user", "content": test[0].prompt_text()},
                                          {"role": "assistant", "content": test[0].expected}]}) + "\n")
    every = few_shot_pairs(project, 20, test)
    assert len(every) == 20 and not {s.prompt for s in every} & test_prompts
    assert few_shot_pairs(project, 0, test) == [] and with_few_shot(test, []) == test


def test_few_shot_needs_the_training_split(tmp_path):
    from tunesmith.evaluate.constrained import few_shot_pairs
    from tunesmith.evaluate.items import test_items

    root = make_project(tmp_path / "p", tmp_path / "no-model", label_rows(20), schema=LABEL_SCHEMA)
    project = load(root)
    test = test_items(project)
    (root / "data" / "train.jsonl").unlink()
    with pytest.raises(UsageError, match="few-shot examples come from the training split") as err:
        few_shot_pairs(project, 2, test)
    assert "tunesmith split" in err.value.hint
    (root / "data" / "train.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "a"}]}) + "\n")
    with pytest.raises(UsageError, match="no single-turn example"):
        few_shot_pairs(project, 2, test)


# -- settings and refusals -------------------------------------------------------------------------


def test_old_project_files_load_with_the_new_settings_off(tmp_path):
    from tunesmith.project import Project, load_project
    from tunesmith.settings_docs import project_template

    root = make_project(tmp_path / "p", tmp_path / "m", label_rows(20), schema=LABEL_SCHEMA)
    project = load_project(root)
    assert project.eval.constrained is False
    assert project.baseline.constrained is True and project.baseline.few_shot == 0
    with open(root / "tunesmith.yaml", "a") as fh:
        fh.write("  constrained: true\nbaseline:\n")  # eval.constrained, and an empty baseline section
    project = load_project(root)
    assert project.eval.constrained is True and project.baseline.few_shot == 0
    with open(root / "tunesmith.yaml", "a") as fh:
        fh.write("  few_shot: 21\n")
    with pytest.raises(Exception, match="problem"):
        load_project(root)
    import yaml

    template = project_template().format(task='"Answer with one compact JSON object."', base_model="m")
    assert "# baseline:" in template and "#   few_shot: 3" in template and "#   constrained: true" in template
    uncommented = (template.replace("# baseline:", "baseline:").replace("#   constrained: true", "  constrained: true")
                   .replace("#   few_shot: 3", "  few_shot: 3").replace("# eval:", "eval:"))
    project = Project.model_validate(yaml.safe_load(uncommented))
    assert project.baseline.few_shot == 3 and project.eval.constrained is True


def test_eval_constrained_without_an_output_contract_says_how_to_add_one(tmp_path, tiny_model_dir):
    root = make_project(tmp_path / "p", tiny_model_dir, clean_examples(20))
    result = cli("eval", "base", "-p", root, "--constrained")
    assert result.exit_code == 2
    assert "--constrained needs an output contract to constrain answers to, and this project has none" in result.stderr
    assert "json_schema: schema.json" in result.stderr
    with open(root / "tunesmith.yaml", "a") as fh:
        fh.write("  constrained: true\n")
    result = cli("eval", "base", "-p", root)
    assert result.exit_code == 2 and "eval.constrained: true needs an output contract" in result.stderr
    result = cli("baseline", "-p", root, "--constrained")
    assert result.exit_code == 2 and "--constrained needs an output contract" in result.stderr


def test_eval_constrained_on_an_endpoint_is_refused_or_skipped(tmp_path, tiny_model_dir, one_torch_thread):
    from fixtures.fake_openai import FakeOpenAI, Reply

    root = make_project(tmp_path / "p", tiny_model_dir, label_rows(16), schema=LABEL_SCHEMA)
    result = cli("eval", "some-model", "-p", root, "--endpoint", "http://127.0.0.1:9/v1", "--constrained")
    assert result.exit_code == 2
    assert "endpoint:some-model cannot be evaluated constrained: it answers through an endpoint" in result.stderr
    assert "response_format" in result.stderr and "tunesmith serve" in result.stderr
    # asked for by the project file instead: the evaluation runs, without the constrained variants
    with open(root / "tunesmith.yaml", "a") as fh:
        fh.write("  constrained: true\n")
    with FakeOpenAI(lambda req: Reply(content='{"label":"yes","ok":true}')) as server:
        result = cli("eval", "some-model", "-p", root, "--endpoint", server.base_url, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert "constrained" not in out["summary"]
    assert any("eval.constrained: skipped, endpoint:some-model answers through an endpoint" in w
               for w in out["warnings"])


# -- speed -----------------------------------------------------------------------------------------


class _Echo:
    fingerprint = "echo"

    def generate(self, chats, settings, progress=None):
        return [Generation("x" * 3, "stop", output_tokens=3) for _ in chats]


def test_tokens_per_second_counts_fresh_answers_and_says_cached_when_none_were(tmp_path):
    from tunesmith.evaluate.cache import CachedBackend, GenerationCache
    from tunesmith.evaluate.speed import SpeedMeter, speed_text

    backend = CachedBackend(_Echo(), GenerationCache(tmp_path / "c.sqlite"))
    chats = [[{"role": "user", "content": str(i)}] for i in range(4)]
    meter = SpeedMeter(backend)
    backend.generate(chats, DecodeSettings())
    first = meter.result()
    assert first["generated"] == 4 and first["output_tokens"] == 12 and first["cached"] is False
    assert first["tokens_per_s"] is not None and first["tokens_per_s"] > 0
    meter = SpeedMeter(backend)
    backend.generate(chats + [[{"role": "user", "content": "new"}]], DecodeSettings())
    second = meter.result()
    assert second["answers"] == 5 and second["generated"] == 1 and second["output_tokens"] == 3
    meter = SpeedMeter(backend)
    backend.generate(chats, DecodeSettings())
    third = meter.result()
    assert third["cached"] is True and third["tokens_per_s"] is None and speed_text(third) == "cached"
    assert speed_text(first) == f"{first['tokens_per_s']:.1f}" and speed_text(None) == "-"
    assert SpeedMeter(_Echo()).result()["tokens_per_s"] is None  # no cache in front: nothing counted


# -- the side-by-side table and the recommendation ---------------------------------------------------


def _est(mean, n=10):
    return {"mean": mean, "lo": max(0.0, mean - 0.1), "hi": min(1.0, mean + 0.1), "n": n}


def _summary():
    speed = {"tokens_per_s": 41.5, "answers": 10, "generated": 10, "output_tokens": 415, "seconds": 10.0,
             "cached": False}
    cached = {**speed, "tokens_per_s": None, "generated": 0, "cached": True}
    plain = {"exact_match": _est(0.1), "json_valid": _est(0.2), "schema_valid": _est(0.1), "field_accuracy": _est(0.3),
             "stop_rate": _est(0.5)}
    tight = {"exact_match": _est(0.6), "json_valid": _est(1.0), "schema_valid": _est(1.0), "field_accuracy": _est(0.7)}
    return {"test": {"n": 10, "metrics": {**plain, "exact_match": _est(0.8)}},
            "regression": {"passed": 0, "total": 0, "failing": []},
            "base": {"metrics": plain, "regression": {"passed": 0, "total": 0, "failing": []}},
            "speed": {"base": speed, "tuned": cached},
            "constrained": {"base": {"label": "base + constrained", "metrics": tight, "speed": cached},
                            "tuned": {"label": "tuned + constrained", "metrics": tight, "speed": speed}}}


def test_the_table_has_four_columns_and_a_tokens_per_second_row(capsys):
    from tunesmith.cli.evaluate import print_eval
    from tunesmith.evaluate.api import EvalOutcome
    from tunesmith.evaluate.constrained import variants_table

    table = variants_table(_summary())
    assert table["columns"] == ["base", "base + constrained", "tuned", "tuned + constrained"]
    assert [r["name"] for r in table["rows"]] == ["schema_valid", "field_accuracy", "exact_match"]
    assert table["rows"][2]["values"][2]["mean"] == 0.8
    assert table["tokens_per_s"] == ["41.5", "cached", "cached", "41.5"]
    print_eval(EvalOutcome("run-1", _summary()))
    out = capsys.readouterr().out
    assert "constrained to the output contract (test set, n=10)" in out
    for label in ("base + constrained", "tuned + constrained", "tokens/s", "cached", "41.5", "100% [90%, 100%]"):
        assert label in out
    # the base model as the subject: base and base + constrained only; no constrained run: no table
    only_base = {"test": _summary()["test"], "regression": _summary()["regression"],
                 "speed": {"base": _summary()["speed"]["base"]},
                 "constrained": {"base": _summary()["constrained"]["base"]}}
    assert variants_table(only_base)["columns"] == ["base", "base + constrained"]
    assert variants_table({"test": {"n": 1, "metrics": {}}}) is None


def test_the_report_shows_the_variants_escaped():
    from tunesmith.evaluate.constrained import variants_table
    from tunesmith.evaluate.report import render_report

    table = variants_table(_summary())
    page = render_report({"metrics": [], "variants": table})
    assert 'id="variants-table"' in page and "tuned + constrained" in page and "cached" in page
    assert 'data-metric="schema_valid"' in page and "1.00 [0.90, 1.00] (n=10)" in page
    table["columns"][0] = "<script>alert(1)</script>"
    assert "<script>alert(1)" not in render_report({"variants": table})
    assert 'id="variants-table"' not in render_report({"metrics": []})
    with pytest.raises(UsageError, match="one value per column"):
        render_report({"variants": {**table, "rows": [{"name": "x", "values": [1]}]}})


def test_recommendation_prefers_prompting_when_the_constrained_base_passes():
    from tunesmith.evaluate.prompting import recommendation

    variant = {"label": "base + constrained + 3-shot", "constrained": True, "few_shot": 3, "few_shot_lines": [4, 9, 2],
               "metrics": {"exact_match": _est(0.84)}}
    rec = recommendation(0.1, None, 0.8, variant)
    assert rec["fine_tune"] is False and rec["constrained_pass_rate"] == 0.84 and rec["few_shot"] == 3
    assert rec["message"] == (
        "the base model constrained to the output contract (with 3 few-shot examples) already answers 84% of the "
        "test set correctly (>= 80%; 10% without): use constrained decoding (response_format in `tunesmith serve`) "
        "and the prompt with those examples (lines 4, 9, 2 of the training split) instead of fine-tuning")
    # the regression suite failing is not something a prompt fixes
    assert recommendation(0.1, 0.5, 0.8, variant)["fine_tune"] is True
    low = recommendation(0.1, None, 0.8, {**variant, "metrics": {"exact_match": _est(0.5)}})
    assert low["fine_tune"] is True and low["message"] == (
        "the base model answers 10% of the test set correctly (< 80%; base + constrained + 3-shot: 50%): "
        "fine-tuning is worth trying")
    shots = {"label": "base + 2-shot", "constrained": False, "few_shot": 2, "few_shot_lines": [1, 5],
             "metrics": {"exact_match": _est(0.9)}}
    assert recommendation(0.0, None, 0.8, shots)["message"] == (
        "the base model shown 2 few-shot examples from the training split already answers 90% of the test set "
        "correctly (>= 80%; 0% without): put those examples (lines 1, 5 of the training split) in the prompt "
        "instead of fine-tuning")
    one = {**variant, "few_shot": 0, "few_shot_lines": [], "metrics": {"exact_match": _est(1.0)}}
    assert recommendation(None, None, 0.8, one)["message"] == (
        "the base model constrained to the output contract already answers 100% of the test set correctly "
        "(>= 80%; 0% without): use constrained decoding (response_format in `tunesmith serve`) and the prompt "
        "instead of fine-tuning")
    plain = recommendation(0.9, None, 0.8, variant)
    assert plain["fine_tune"] is False and plain["message"].startswith("the base model already answers 90%")
    assert recommendation(0.1, None, 0.8, None) == {
        "fine_tune": True, "threshold": 0.8, "base_pass_rate": 0.1, "base_regression_rate": None,
        "constrained_pass_rate": None, "constrained": False, "few_shot": 0, "variant": None,
        "message": "the base model answers 10% of the test set correctly (< 80%): fine-tuning is worth trying"}


# -- end to end on the tiny model -------------------------------------------------------------------


def test_baseline_few_shot_without_a_contract(tmp_path, tiny_model_dir, one_torch_thread):
    root = make_project(tmp_path / "p", tiny_model_dir, clean_examples(24), extra="baseline:\n  few_shot: 1\n")
    result = cli("baseline", "-p", root, "--few-shot", "2", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    variant = summary["constrained"]["base"]
    assert variant["label"] == "base + 2-shot" and variant["constrained"] is False and variant["few_shot"] == 2
    assert variant["n"] == summary["test"]["n"] and len(variant["few_shot_lines"]) == 2
    rec = summary["recommendation"]
    assert rec["fine_tune"] is True and rec["variant"] == "base + 2-shot" and rec["few_shot"] == 2
    assert "base + 2-shot: 0%" in rec["message"]
    human = cli("baseline", "-p", root)  # the project's few_shot: 1
    assert human.exit_code == 0 and "base + 1-shot" in human.stdout and "fine-tune: yes" in human.stdout
    assert "shown few-shot examples (test set, n=" in human.stdout
    assert "base + " not in cli("baseline", "-p", root, "--few-shot", "0").stdout


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, tiny_model_dir):
    """A project with a JSON-Schema contract the plain tiny model never meets, and a trained run."""
    from tunesmith.train.api import train_project

    root = make_project(tmp_path_factory.mktemp("constrained") / "p", tiny_model_dir, label_rows(64),
                        schema=LABEL_SCHEMA)
    run = train_project(root, {"epochs": 1}, progress=False)
    return root, run.run_id


def test_eval_constrained_answers_all_validate_and_four_variants_show(labelled, one_torch_thread):
    from tunesmith.evaluate.store import EvalStore

    root, run_id = labelled
    result = cli("eval", run_id, "-p", root, "--constrained", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    n = summary["test"]["n"]
    assert summary["base"]["metrics"]["schema_valid"]["mean"] <= 0.2  # unconstrained: (almost) never
    for role in ("base", "tuned"):
        variant = summary["constrained"][role]
        assert variant["label"] == f"{role} + constrained" and variant["n"] == n
        assert variant["metrics"]["schema_valid"] == {**variant["metrics"]["schema_valid"], "mean": 1.0, "n": n}
        assert variant["finish_reasons"] == {"stop": n}
        assert variant["speed"]["generated"] == n and variant["tokens_per_s"] > 0
        assert summary["speed"][role]["answers"] >= n
    store = EvalStore(load(root).registry())
    for name in ("base+constrained", f"{run_id}+constrained"):
        stored = store.latest(name, "test")
        assert stored is not None and len(stored.items) == n
        assert store.latest(name, "regression") is None  # regression prompts are not asked constrained
    assert store.latest(run_id, "test") is not None and store.latest("base", "test") is not None
    report = (root / "runs" / run_id / "report.html").read_text()
    assert 'id="variants-table"' in report and "tuned + constrained" in report
    # asked again: every answer is in the cache, and the table says so instead of showing a speed
    human = cli("eval", run_id, "-p", root, "--constrained")
    assert human.exit_code == 0, human.output
    for label in ("base + constrained", "tuned + constrained", "schema_valid", "tokens/s", "cached"):
        assert label in human.stdout
    assert "constrained to the output contract" not in cli("eval", run_id, "-p", root, "--no-constrained").stdout


def test_baseline_recommends_constrained_decoding_when_that_passes(tmp_path, tiny_model_dir, one_torch_thread):
    root = make_project(tmp_path / "p", tiny_model_dir, label_rows(48, answer={"label": "ok"}), schema=CONST_SCHEMA)
    result = cli("baseline", "-p", root, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    rec = summary["recommendation"]
    assert rec["base_pass_rate"] == 0.0 and rec["constrained_pass_rate"] == 1.0 and rec["fine_tune"] is False
    assert rec["message"].startswith("the base model constrained to the output contract already answers 100% of")
    assert summary["constrained"]["base"]["metrics"]["schema_valid"]["mean"] == 1.0
    human = cli("baseline", "-p", root, "--few-shot", "2")
    assert human.exit_code == 0, human.output
    assert "fine-tune: no" in human.stdout and "base + constrained + 2-shot" in human.stdout
    assert "(with 2 few-shot examples)" in human.stdout and "tokens/s" in human.stdout
    off = json.loads(cli("baseline", "-p", root, "--no-constrained", "--json").stdout)["summary"]
    assert "constrained" not in off and off["recommendation"]["fine_tune"] is True
    # `run` stops at the baseline stage with the same numbers; a changed few_shot measures again
    stopped = cli("run", root)
    assert stopped.exit_code == 1 and "baseline: the base model constrained to the output contract" in stopped.stderr
    with open(root / "tunesmith.yaml", "a") as fh:
        fh.write("baseline:\n  few_shot: 1\n")
    again = cli("run", root, "--until", "baseline", "--force", "--json")
    stage = [e for e in map(json.loads, again.stdout.splitlines()) if e.get("stage") == "baseline"][0]
    assert stage["status"] == "ok" and stage["variant"] == "base + constrained + 1-shot"


def test_baseline_says_fine_tune_when_constrained_is_not_enough(tmp_path, tiny_model_dir, one_torch_thread):
    root = make_project(tmp_path / "p", tiny_model_dir, label_rows(32, seed=3), schema=LABEL_SCHEMA)
    rec = json.loads(cli("baseline", "-p", root, "--json").stdout)["summary"]["recommendation"]
    assert rec["fine_tune"] is True and rec["variant"] == "base + constrained"
    assert rec["constrained_pass_rate"] < 0.8 and "; base + constrained: " in rec["message"]


def test_a_contract_the_grammar_cannot_enforce(tmp_path, tiny_model_dir, one_torch_thread):
    """Asked for on the command line it is an error naming the feature; by default it is skipped, said so."""
    root = make_project(tmp_path / "p", tiny_model_dir, label_rows(24), schema={"enum": ["yes", "no"]})
    from tunesmith.evaluate.api import EvalOptions, evaluate
    from tunesmith.inference.grammar import GrammarError

    with pytest.raises(GrammarError):  # its message and hint are the grammar engine's
        evaluate(root, "base", EvalOptions(constrained=True, report=False))
    result = cli("eval", "base", "-p", root, "--constrained")
    assert result.exit_code == 2 and "schema" in result.stderr and "hint:" in result.stderr
    out = json.loads(cli("baseline", "-p", root, "--json").stdout)
    assert "constrained" not in out["summary"] and out["summary"]["recommendation"]["fine_tune"] is True
    assert any(w.startswith("baseline.constrained: skipped, the output contract cannot be enforced: ")
               for w in out["warnings"])
    shots = json.loads(cli("baseline", "-p", root, "--few-shot", "1", "--json").stdout)["summary"]
    assert shots["constrained"]["base"]["label"] == "base + 1-shot"  # the examples are still measured
    with open(root / "tunesmith.yaml", "a") as fh:
        fh.write("  constrained: true\n")
    out = json.loads(cli("eval", "base", "-p", root, "--json").stdout)
    assert "constrained" not in out["summary"]
    skipped = "eval.constrained: skipped, the output contract cannot be enforced"
    assert any(w.startswith(skipped) for w in out["warnings"])
