"""`check` warns when the base model looks like a completion model: no chat template, or a template whose
assistant turn ends in no end-of-turn token (the guide's "wrong base model" pitfall)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from datagen import clean_examples, write_jsonl, write_project_file
from tunesmith.data.checks import run_check
from tunesmith.data.checks.setup import check_context
from tunesmith.project import load_project

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def completion_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its chat template removed: what a pretrained-only checkpoint looks like."""
    out = tmp_path_factory.mktemp("completion") / "model"
    shutil.copytree(tiny_model_dir, out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def _check(root: Path, model: Path, **train):
    write_project_file(root, model, **({"train": train} if train else {}))
    data = write_jsonl(root / "data.jsonl", clean_examples(60))
    project = load_project(root)
    return run_check(check_context(data, project))


def _warnings(report) -> list:
    return [f for f in report.findings if f.check == "completion_model"]


def test_completion_model(tmp_path, completion_model):
    """No chat template: one warning naming it, and no crash in the token pass (it is skipped)."""
    report = _check(tmp_path, completion_model)
    (warning,) = _warnings(report)
    assert warning.severity == "warning"
    assert warning.message == ("the base model has no chat template: it looks like a completion (pretrained-only) "
                               "model, not a chat model")
    assert warning.hint.startswith("use the model's instruct/chat variant as base_model, or give train.chat_template")
    assert report.stats["tokens_skipped"] == "the base model has no chat template"
    assert "tokens" not in report.stats


def test_train_chat_template_silences_it_and_counts_tokens(tmp_path, completion_model):
    (tmp_path / "chatml.jinja").write_text(CHATML)
    report = _check(tmp_path, completion_model, chat_template="chatml.jinja")
    assert _warnings(report) == []
    assert report.stats["tokens"]["max"] > 0  # rendered with the project's template


def test_serve_renders_with_the_projects_chat_template(tmp_path, completion_model):
    """A base without a template, trained with train.chat_template: the server renders prompts with it too."""
    from tunesmith.serve.api import ServeConfig, build_state

    (tmp_path / "chatml.jinja").write_text(CHATML)
    write_project_file(tmp_path, completion_model, train={"chat_template": "chatml.jinja"})
    state = build_state(ServeConfig(project_dir=tmp_path))
    try:
        assert state.tokenizer.chat_template == CHATML
        assert state.engine.decoder.tokenizer.chat_template == CHATML
    finally:
        state.engine.close()


def test_a_template_without_an_end_of_turn_token_is_warned(tmp_path, completion_model):
    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
            "{% if add_generation_prompt %}assistant: {% endif %}"
    report = _check(tmp_path, completion_model, chat_template=plain)
    (warning,) = _warnings(report)
    assert warning.message == ("the base model's chat template ends an assistant turn with '\\n', not an end-of-turn "
                               "token: a model tuned on it does not learn to stop")


def test_a_chat_model_is_not_warned(tmp_path, tiny_model_dir):
    assert _warnings(_check(tmp_path, tiny_model_dir)) == []
