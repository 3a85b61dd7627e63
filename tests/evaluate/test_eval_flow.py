"""eval / baseline / accept / gate / compare / spotcheck / check --base, end to end on a tiny model."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datagen import SYSTEM, clean_examples, write_jsonl, write_project_file
from fixtures.fake_openai import FakeOpenAI, Reply
from tunesmith.cli import app
from tunesmith.data.split import split_file
from tunesmith.evaluate.generate import LocalBackend
from tunesmith.evaluate.types import DecodeSettings
from tunesmith.train.api import train_project

runner = CliRunner()
MAX_NEW = 12


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def base_answers(model_dir: Path, prompts: list[str]) -> list[str]:
    backend = LocalBackend(model_dir)
    chats = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}] for p in prompts]
    return [g.text for g in backend.generate(chats, DecodeSettings(max_new_tokens=MAX_NEW))]


def make_project(root: Path, model_dir: Path, rows: list, extra: str = "") -> Path:
    write_project_file(root, model_dir, eval={"max_new_tokens": MAX_NEW}, extra=extra)
    write_jsonl(root / "data.jsonl", rows)
    split_file(root / "data.jsonl", root / "data" / "train.jsonl", root / "data" / "test.jsonl", test_fraction=0.25)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    """A project whose regression suite asserts what the BASE model says on 3 prompts, and a trained run."""
    root = tmp_path_factory.mktemp("evalflow")
    prompts = [f"regression prompt {i} about rivers" for i in range(3)]
    said = base_answers(tiny_model_dir, prompts)
    suite = [{"id": f"reg-{i}", "prompt": p, "assertions": [{"type": "contains", "value": said[i][:6]}]}
             for i, p in enumerate(prompts)]
    suite.append({"id": "reg-always", "prompt": "anything", "assertions": [{"type": "not_contains", "value": "ZZZZZZ"}]})
    write_jsonl(root / "regression.jsonl", suite)
    make_project(root, tiny_model_dir, clean_examples(60), extra="")
    with open(root / "tunesmith.yaml", "a") as fh:
        fh.write("data:\n  regression: regression.jsonl\n  test_fraction: 0.25\n")
    # a run trained hard enough (full fine-tuning, high lr) that its answers change
    out = train_project(root, {"method": "full", "learning_rate": 1e-2, "epochs": 2}, progress=False)
    return root, out.run_id


def test_eval_reports_paired_comparison_and_stores_everything(project):
    root, run_id = project
    result = cli("eval", run_id, "-p", root, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["subject"] == run_id
    test_n = out["summary"]["test"]["n"]
    assert test_n > 5
    metrics = out["summary"]["test"]["metrics"]
    assert metrics["json_valid"]["n"] == test_n and 0 <= metrics["json_valid"]["lo"] <= metrics["json_valid"]["hi"] <= 1
    comp = out["summary"]["comparison"]["json_valid"]
    assert comp["verdict"] in ("better", "worse", "no detectable difference") and "p_value" in comp
    for descriptive in ("length_chars", "output_tokens"):  # no direction: never "better"/"worse"
        assert out["summary"]["comparison"][descriptive]["verdict"] in ("higher", "lower", "no detectable difference")
    assert out["summary"]["base"]["regression"]["passed"] == 4  # the suite was written from base answers
    report = Path(out["report"])
    assert report.exists() and "loss-chart" in report.read_text()
    # second evaluation costs nothing: every generation comes from the cache
    import sqlite3

    db = root / ".tunesmith" / "generations.sqlite"
    before = sqlite3.connect(db).execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    assert cli("eval", run_id, "-p", root, "--json").exit_code == 0
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM sqlite_master").fetchone() == before


def test_gate_fails_on_a_planted_regression_and_names_the_prompts(project):
    root, run_id = project
    assert cli("accept", "base", "-p", root).exit_code == 0
    result = cli("eval", run_id, "-p", root, "--gate", "--json")
    out = json.loads(result.stdout)
    gate = out["gate"]
    assert gate["baseline"] == "base"
    if not gate["new_failures"]:
        pytest.fail(f"the trained run still says what the base said: {out['summary']['regression']}")
    assert result.exit_code == 1
    assert set(gate["new_failures"]) <= {"reg-0", "reg-1", "reg-2"}
    human = cli("eval", run_id, "-p", root, "--gate")
    assert human.exit_code == 1 and "gate FAILED" in human.stdout
    for name in gate["new_failures"]:
        assert name in human.stdout
    # accepting the run makes it the baseline: now nothing is new
    assert cli("accept", run_id, "-p", root).exit_code == 0
    assert cli("eval", run_id, "-p", root, "--gate").exit_code == 0


def test_compare_shows_per_prompt_flips(project):
    root, run_id = project
    cli("eval", run_id, "-p", root)
    result = cli("compare", "base", run_id, "-p", root, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    flips = {f["id"]: f for f in out["regression_flips"]}
    assert flips and all(f["before"] is True and f["after"] is False for f in flips.values())
    assert "exact_match" in out["comparison"]
    human = cli("compare", "base", run_id, "-p", root)
    assert "pass -> FAIL" in human.stdout


def test_compare_reports_what_eval_reports_base_vs_tuned(project):
    """One paired comparison for both commands: the same metrics, the same differences and verdicts."""
    root, run_id = project
    evaluated = cli("eval", run_id, "-p", root, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    from_eval = json.loads(evaluated.stdout)["summary"]["comparison"]
    compared = json.loads(cli("compare", "base", run_id, "-p", root, "--json").stdout)["comparison"]
    assert {"stop_rate", "length_chars", "output_tokens"} <= set(from_eval)
    assert list(compared) == list(from_eval)
    for metric, c in from_eval.items():
        assert compared[metric]["verdict"] == c["verdict"], metric
        assert compared[metric]["diff"]["mean"] == pytest.approx(c["diff"]["mean"]), metric
        assert compared[metric]["n"] == c["n"], metric


def test_spotcheck_build_and_unblind(project):
    root, run_id = project
    cli("eval", run_id, "-p", root)
    result = cli("spotcheck", run_id, "-p", root, "--no-serve", "--json", "--n", "5")
    assert result.exit_code == 0, result.output
    page = Path(json.loads(result.stdout)["page"])
    html = page.read_text()
    assert "tuned" not in html.lower().replace("fine-tuned", "")
    key = json.loads((page.parent / "key.json").read_text())
    ids = list(key["key"])
    answers = {"answers": {i: {"ship_A": True, "ship_B": True, "preference": "A"} for i in ids}}
    (page.parent / "mine.json").write_text(json.dumps(answers))
    out = cli("spotcheck", run_id, "-p", root, "--results", page.parent / "mine.json")
    assert out.exit_code == 0 and "would ship 5/5 tuned vs 5/5 base" in out.stdout


def test_baseline_recommends_prompting_when_the_base_is_already_right(tmp_path, talkative_model_dir):
    prompts = [r["messages"][1]["content"] for r in clean_examples(40, seed=7)]
    said = base_answers(talkative_model_dir, prompts)
    assert all(a.strip() for a in said)
    rows = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p},
                          {"role": "assistant", "content": a}]} for p, a in zip(prompts, said)]
    root = make_project(tmp_path / "p", talkative_model_dir, rows)
    result = cli("baseline", "-p", root, "--json")
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)["summary"]["recommendation"]
    assert rec["fine_tune"] is False and rec["base_pass_rate"] == 1.0
    # ... and check --base names every training line as already answered by the base model
    result = cli("check", root / "data" / "train.jsonl", "-p", root, "--base", "--json", "--no-tokens")
    findings = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "base_correct"]
    n_train = len((root / "data" / "train.jsonl").read_text().splitlines())
    assert findings and len(findings[0]["lines"]) == n_train


def test_baseline_says_fine_tune_when_the_base_is_wrong(tmp_path, tiny_model_dir):
    root = make_project(tmp_path / "p", tiny_model_dir, clean_examples(40))
    rec = json.loads(cli("baseline", "-p", root, "--json").stdout)["summary"]["recommendation"]
    assert rec["fine_tune"] is True and rec["base_pass_rate"] == 0.0


def test_eval_with_a_position_biased_judge(tmp_path, tiny_model_dir):
    def judge(req):
        text = req["messages"][-1]["content"]
        if '"winner"' in text or "winner" in text:
            return Reply(content=json.dumps({"winner": "first", "reason": "always first"}))
        return Reply(content=json.dumps({"correctness": 3, "format": 4, "completeness": 2, "notes": "ok"}))

    with FakeOpenAI(judge) as server:
        root = make_project(tmp_path / "p", tiny_model_dir, clean_examples(60),
                            extra=f"  judge:\n    base_url: {server.base_url}\n    model: judge-model\n")
        run = train_project(root, {"epochs": 1}, progress=False)
        result = cli("eval", run.run_id, "-p", root, "--json")
    assert result.exit_code == 0, result.output
    judged = json.loads(result.stdout)["summary"]["judge"]
    assert judged["rubric"]["tuned"]["correctness"]["mean"] == 3.0
    pw = judged["pairwise"]
    assert pw["wins_base"] == 0 and pw["wins_tuned"] == 0 and pw["ties"] == pw["judged"] > 0
    assert pw["position_consistency_rate"] == 0.0


def test_bad_inputs(tmp_path, tiny_model_dir):
    root = make_project(tmp_path / "p", tiny_model_dir, clean_examples(40))
    # unknown run
    result = cli("eval", "nope", "-p", root)
    assert result.exit_code == 2 and "hint:" in result.stderr
    # a regression file with an unknown assertion names the line and the name
    write_jsonl(root / "regression.jsonl", [{"id": "a", "prompt": "x", "assertions": [{"type": "looks_good"}]}])
    with open(root / "tunesmith.yaml", "a") as fh:
        fh.write("data:\n  regression: regression.jsonl\n  test_fraction: 0.25\n")
    result = cli("baseline", "-p", root)
    assert result.exit_code == 2 and "regression.jsonl:1" in result.stderr and "looks_good" in result.stderr
    # a broken seal
    (root / "regression.jsonl").unlink()
    test = root / "data" / "test.jsonl"
    test.write_text(test.read_text().replace("Item", "ITEM", 1))
    result = cli("baseline", "-p", root)
    assert result.exit_code == 2 and "sealed" in result.stderr
    # an unreachable endpoint
    test_rows = test.read_text()
    result = cli("eval", "some-model", "-p", root, "--endpoint", "http://127.0.0.1:9/v1")
    assert result.exit_code == 2 and "hint:" in result.stderr
