"""The answer budget: eval.max_new_tokens when set, else measured from the training answers."""

from __future__ import annotations

from pathlib import Path

from tunesmith.evaluate.budget import FALLBACK, answer_token_budget
from tunesmith.models.resolve import load_tokenizer
from tunesmith.project import load_project
from datagen import clean_examples, write_jsonl


def _project(root: Path, model_dir: Path, extra: str = "") -> Path:
    (root / "tunesmith.yaml").write_text(
        f"task: answer with the label of the text\nbase_model: {model_dir}\n"
        "data:\n  source: data.jsonl\n  train: train.jsonl\n  test: test.jsonl\n" + extra)
    return root


def test_budget_follows_the_longest_training_answer(tmp_path, tiny_model_dir):
    rows = clean_examples(40)
    rows[3]["messages"][-1]["content"] = "word " * 60
    write_jsonl(tmp_path / "train.jsonl", rows)
    project = load_project(_project(tmp_path, tiny_model_dir))
    budget, why = answer_token_budget(project)
    longest = len(load_tokenizer(str(tiny_model_dir))("word " * 60, add_special_tokens=False)["input_ids"])
    assert budget >= longest + 16 and budget <= int(longest * 1.25) + 17
    assert str(longest) in why


def test_budget_from_the_file_wins_and_fallback_without_train(tmp_path, tiny_model_dir):
    project = load_project(_project(tmp_path, tiny_model_dir, "eval:\n  max_new_tokens: 7\n"))
    assert answer_token_budget(project) == (7, "eval.max_new_tokens in tunesmith.yaml")
    other = tmp_path / "other"
    other.mkdir()
    assert answer_token_budget(load_project(_project(other, tiny_model_dir)))[0] == FALLBACK


def test_eval_says_which_budget_it_used(tmp_path, tiny_model_dir):
    from tunesmith.evaluate.api import EvalOptions, _settings

    rows = clean_examples(40)
    write_jsonl(tmp_path / "train.jsonl", rows)
    said: list[str] = []
    settings = _settings(load_project(_project(tmp_path, tiny_model_dir)), EvalOptions(), said.append)
    assert len(said) == 1 and f"answers of up to {settings.max_new_tokens} new tokens" in said[0]
    assert "longest training answer" in said[0]
