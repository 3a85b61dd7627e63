"""`tunesmith baseline` stops once the pass rate's interval decides; `--full` answers everything; `eval`
and `advise` after a partial baseline still see (and compare on) the whole test set."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datagen import SYSTEM, clean_examples, write_jsonl, write_project_file
from tunesmith.cli import app
from tunesmith.data.split import split_file
from tunesmith.evaluate.generate import LocalBackend
from tunesmith.evaluate.sequential import look_level, percent
from tunesmith.evaluate.stats import wilson_interval
from tunesmith.evaluate.types import DecodeSettings

runner = CliRunner()
MAX_NEW = 12


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def make_project(root: Path, model_dir: Path, rows: list, *, contract: bool = True, extra: str = "") -> Path:
    write_project_file(root, model_dir, output={"json": True} if contract else None, eval={"max_new_tokens": MAX_NEW},
                       extra=extra)
    write_jsonl(root / "data.jsonl", rows)
    split_file(root / "data.jsonl", root / "data" / "train.jsonl", root / "data" / "test.jsonl", test_fraction=0.25)
    return root


def count_test_rows(root: Path) -> int:
    return len((root / "data" / "test.jsonl").read_text().splitlines())


def store(root: Path):
    from tunesmith.evaluate.store import EvalStore
    from tunesmith.runs import RunRegistry

    return EvalStore(RunRegistry(root / "runs"))


@pytest.fixture
def generated(monkeypatch):
    """(model directory, constrained?, prompts) for every call that reaches a model (cache misses)."""
    calls: list[tuple[str, bool, int]] = []
    real = LocalBackend.generate

    def spy(self, chats, settings, progress=None, **kw):
        calls.append((self.model_path.name, settings.constraint is not None, len(chats)))
        return real(self, chats, settings, progress, **kw)

    monkeypatch.setattr(LocalBackend, "generate", spy)
    return calls


def test_a_hopeless_base_stops_after_the_minimum_sample_and_eval_still_compares_on_everything(
        tmp_path, tiny_model_dir, lively_model, generated, one_torch_thread):
    from tunesmith.advise import advise

    root = make_project(tmp_path / "p", tiny_model_dir, clean_examples(120),
                        extra="data:\n  regression: regression.jsonl\n  test_fraction: 0.25\n")
    write_jsonl(root / "regression.jsonl", [{"id": f"r{i}", "prompt": f"regression {i}",
                                             "assertions": [{"type": "not_contains", "value": "ZZZZ"}]}
                                            for i in range(5)])
    n = count_test_rows(root)
    level = look_level(n)  # alpha split over the looks, at 16, 32, ... below n
    hi = wilson_interval(0, 16, level=level)[1]
    assert n > 16 and hi < 0.8
    result = cli("baseline", "-p", root, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    why = f"the {percent(level)} interval [0.00, {hi:.2f}] is below the 0.80 bar"
    assert summary["sample"] == {"evaluated": 16, "of": n, "stopped": why, "look": {
        "passed": 0, "n": 16, "interval": [0.0, hi], "level": level, "side": "below"}}
    assert summary["test"]["n"] == 16 and summary["test"]["metrics"]["exact_match"]["n"] == 16
    variant = summary["constrained"]["base"]  # the base constrained to JSON: judged on the same prompts
    assert variant["sample"]["evaluated"] == 16 and variant["sample"]["stopped"] == why and variant["n"] == 16
    rec = summary["recommendation"]
    assert rec["fine_tune"] is True and (rec["evaluated"], rec["of"], rec["stopped"]) == (16, n, why)
    assert rec["message"].startswith(f"the base model answers 0% of a random 16 of the {n} test prompts correctly")
    # the regression suite cannot change "fine-tune" (the bar holds for both): not asked
    assert summary["regression"] == {"passed": 0, "total": 0, "failing": [], "not_asked": 5}
    base = tiny_model_dir.name
    assert generated == [(base, False, 16), (base, True, 16)]
    stored = store(root)
    assert len(stored.latest("base", "test").items) == 16 and stored.latest("base", "regression") is None
    assert len(stored.latest("base+constrained", "test").items) == 16

    # advise reads the partial baseline as what it is: a rate on 16 prompts
    advice = advise(root, shown_as="p")
    baseline_q = next(q for q in advice.questions if q.id == "baseline")
    constrained_q = next(q for q in advice.questions if q.id == "constrained")
    assert (baseline_q.answer, baseline_q.verdict) == (0.0, "fine-tune") and "n=16" in baseline_q.detail
    assert (constrained_q.answer, constrained_q.verdict) == (0.0, "fine-tune") and "n=16" in constrained_q.detail

    # the human output says what was answered in one line
    human = cli("baseline", "-p", root)
    assert human.exit_code == 0, human.output
    line = [ln for ln in human.stdout.splitlines() if ln.startswith("base: 16 of")]
    assert line == [f"base: 16 of {n} test prompts, stopped early: {why}; base + constrained: 16 of {n} test "
                    f"prompts, stopped early: {why}; regression suite (5 prompts) not asked: no pass rate "
                    "reached the bar, so it cannot change the answer (--full asks everything)"]
    assert "fine-tune: yes" in human.stdout
    assert len(generated) == 2  # asked again: the same prompts, all from the cache

    # eval compares base and tuned on the whole test set: the base's 16 answers come from the cache
    generated.clear()
    result = cli("eval", lively_model, "-p", root, "--json")
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)["summary"]
    assert evaluated["test"]["n"] == n and evaluated["base"]["metrics"]["exact_match"]["n"] == n
    assert evaluated["comparison"]["exact_match"]["n"] == n and evaluated["base"]["regression"]["total"] == 5
    base_calls = [c for c in generated if c[0] == base]
    assert base_calls == [(base, False, n - 16), (base, False, 5)]  # the rest of the test set, the suite
    assert len(stored.latest("base", "test").items) == n

    # now every plain base answer is cached: the whole test set is free, and counts
    generated.clear()
    again = json.loads(cli("baseline", "-p", root, "--json").stdout)["summary"]
    assert again["sample"] == {"evaluated": n, "of": n, "stopped": None} and again["test"]["n"] == n
    assert again["constrained"]["base"]["sample"]["evaluated"] == 16 and generated == []
    assert len(stored.latest("base", "test").items) == n

    # --full answers everything, as before
    full = json.loads(cli("baseline", "-p", root, "--full", "--json").stdout)["summary"]
    assert full["sample"] == {"evaluated": n, "of": n, "stopped": None}
    assert full["test"]["n"] == n and full["constrained"]["base"]["n"] == n
    assert full["regression"]["total"] == 5 and full["recommendation"]["stopped"] is None
    assert full["recommendation"]["message"].startswith("the base model answers 0% of the test set correctly")
    assert generated == [(base, True, n - 16)]  # only the constrained answers not given yet
    assert "stopped early" not in cli("baseline", "-p", root, "--full").stdout


def test_baseline_full_in_the_project_and_its_flag(tmp_path, tiny_model_dir, one_torch_thread):
    root = make_project(tmp_path / "p", tiny_model_dir, clean_examples(80), contract=False,
                        extra="baseline:\n  full: true\n")
    n = count_test_rows(root)
    assert n > 16
    sampled = json.loads(cli("baseline", "-p", root, "--no-full", "--json").stdout)["summary"]
    assert sampled["sample"]["evaluated"] == 16 and sampled["sample"]["stopped"]
    assert sampled["regression"] == {"passed": 0, "total": 0, "failing": []}  # no suite: nothing left out
    full = json.loads(cli("baseline", "-p", root, "--json").stdout)["summary"]  # baseline.full: true
    assert full["sample"]["evaluated"] == n and full["sample"]["stopped"] is None and "constrained" not in full


def test_a_base_near_the_bar_answers_the_whole_test_set(tmp_path, talkative_model_dir, one_torch_thread):
    """Four in five expected answers are what the base model says: a real pass rate near 80 %, which
    no look can tell from the bar, so every test prompt is answered."""
    prompts = [r["messages"][1]["content"] for r in clean_examples(140, seed=11)]
    chats = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}] for p in prompts]
    said = [g.text for g in LocalBackend(talkative_model_dir).generate(chats, DecodeSettings(max_new_tokens=MAX_NEW))]
    assert all(a.strip() for a in said)
    rows = [{"messages": c + [{"role": "assistant", "content": a if i % 5 else "no model says this"}]}
            for i, (c, a) in enumerate(zip(chats, said))]
    root = make_project(tmp_path / "p", talkative_model_dir, rows, contract=False)
    n = count_test_rows(root)
    assert n > 32  # two looks, at 16 and 32 (97.5 % intervals)
    result = cli("baseline", "-p", root, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    sample, rate = summary["sample"], summary["recommendation"]["base_pass_rate"]
    assert 0.6 < rate < 0.95 and summary["test"]["n"] == n
    assert (sample["evaluated"], sample["of"], sample["stopped"]) == (n, n, None)
    assert sample["look"]["n"] == 32 and sample["look"]["side"] is None and sample["look"]["level"] == 0.975
    lo, hi = sample["look"]["interval"]
    assert lo < 0.8 < hi
    assert summary["recommendation"]["fine_tune"] is (rate < 0.8)  # the whole test set's rate decides
    human = cli("baseline", "-p", root)
    assert human.exit_code == 0 and "stopped early" not in human.stdout and f"(n={n})" in human.stdout
