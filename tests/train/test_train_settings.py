"""train.report_to, train.extra and train.chat_template: checked against transformers as the file loads,
then passed to the Trainer and the tokenizer."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from datagen import split_project, write_project_file
from tunesmith.errors import ProjectError, TunesmithError
from tunesmith.project import load_project


def _project(tmp_path: Path, model: Path | str = "builtin:smollm2-135m-instruct", **train) -> Path:
    write_project_file(tmp_path, model, train=train)
    return tmp_path


def _problems(tmp_path: Path, **train) -> list[str]:
    with pytest.raises(ProjectError) as info:
        load_project(_project(tmp_path, **train))
    return info.value.details


# --- train.report_to ------------------------------------------------------------------------------


def test_report_to_takes_any_tracker_transformers_knows(tmp_path):
    assert load_project(_project(tmp_path, report_to=["trackio", "comet_ml"])).train.report_to == ["trackio", "comet_ml"]
    assert load_project(_project(tmp_path, report_to="wandb")).train.report_to == ["wandb"]  # one name, as transformers takes it
    assert load_project(_project(tmp_path, report_to="all")).train.report_to == "all"
    assert load_project(_project(tmp_path, report_to="none")).train.report_to == "none"


def test_an_unknown_tracker_names_the_accepted_ones(tmp_path):
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    (problem,) = _problems(tmp_path, report_to=["wandb", "weights-and-biases"])
    accepted = ", ".join(sorted(INTEGRATION_TO_CALLBACK))
    assert problem == (f"train.report_to: Value error, 'weights-and-biases': not a tracker transformers knows; "
                       f"use {accepted}, all or none")
    assert "trackio" in accepted and "mlflow" in accepted


@pytest.mark.skipif(importlib.util.find_spec("trackio") is not None, reason="trackio is installed here")
def test_a_tracker_that_is_not_installed_says_how_to_install_it():
    from tunesmith.train.local import trackers

    with pytest.raises(TunesmithError) as info:
        trackers(["trackio", "comet_ml"])
    assert info.value.message == "train.report_to asks for trackio, comet_ml, which is not installed"
    assert info.value.hint == "pip install trackio comet-ml, or remove it from train.report_to"


def test_all_and_none_leave_tensorboard_to_the_run():
    """The run logs TensorBoard into its own directory: a second TensorBoard callback would log it twice."""
    from tunesmith.train.local import trackers

    assert trackers("none") == [] and trackers([]) == []
    assert "tensorboard" not in trackers("all")
    assert trackers(["tensorboard"]) == []


# --- train.extra ------------------------------------------------------------------------------------


def test_an_unknown_training_argument_names_the_closest(tmp_path):
    (problem,) = _problems(tmp_path, extra={"weight_decy": 0.1})
    assert problem == ("train.extra: Value error, 'weight_decy' is not a transformers TrainingArguments field; "
                       "closest: weight_decay")


def test_a_planned_argument_points_at_its_setting(tmp_path):
    (problem,) = _problems(tmp_path, extra={"num_train_epochs": 3})
    assert problem == "train.extra: Value error, 'num_train_epochs' is planned by tunesmith: set it as train.epochs, " \
                      "not in train.extra"


def test_an_argument_the_run_depends_on_is_refused(tmp_path):
    (problem,) = _problems(tmp_path, extra={"output_dir": "/tmp/elsewhere"})
    assert problem == ("train.extra: Value error, 'output_dir' is set by tunesmith itself (the run's checkpoints, "
                       "evaluation and events depend on it); remove it from train.extra")


@pytest.fixture(scope="module")
def extra_project(tmp_path_factory, tiny_model_dir) -> Path:
    return split_project(tmp_path_factory.mktemp("extra") / "p", tiny_model_dir)


def _prepared(project_dir: Path, say=None, **train):
    from tunesmith.train.api import plan_training

    write_project_file(project_dir, load_project(project_dir).base_model, train=train)
    prep, _ = plan_training(load_project(project_dir), {}, say, measure=False)
    return prep


def test_extra_reaches_the_training_arguments(extra_project, tmp_path):
    from tunesmith.train.local import training_arguments

    notes: list[str] = []
    prep = _prepared(extra_project, notes.append, extra={"weight_decay": 0.05, "max_grad_norm": 0.5,
                                                         "save_total_limit": 5})
    args = training_arguments(prep, tmp_path, report_to=[])
    assert (args.weight_decay, args.max_grad_norm, args.save_total_limit) == (0.05, 0.5, 5)
    assert notes == ["note: train.extra.save_total_limit = 5 replaces tunesmith's own value"]


def test_a_value_transformers_refuses_is_named(extra_project, tmp_path):
    from tunesmith.train.local import TrainingError, training_arguments

    prep = _prepared(extra_project, extra={"optim": "adamw_nonsense"})
    with pytest.raises(TrainingError) as info:
        training_arguments(prep, tmp_path, report_to=[])
    assert info.value.message.startswith("train.extra: transformers refused the training arguments: ")
    assert "adamw_nonsense" in info.value.message
    assert info.value.hint == "fix or remove the train.extra value(s) it names (optim)"


# --- train.chat_template ----------------------------------------------------------------------------

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_missing_template_file_is_named(extra_project):
    from tunesmith.models.chat_template import template_text

    write_project_file(extra_project, load_project(extra_project).base_model, train={"chat_template": "nope.jinja"})
    with pytest.raises(ProjectError) as info:
        template_text(load_project(extra_project))
    assert info.value.message == f"train.chat_template: {extra_project / 'nope.jinja'} does not exist"
    assert info.value.hint == "give a Jinja template file (relative to the project) or the template text itself"


def test_a_broken_template_names_its_line(extra_project):
    from tunesmith.models.chat_template import template_text

    (extra_project / "broken.jinja").write_text("{% for m in messages %}\n{{ m['content'] }\n")
    write_project_file(extra_project, load_project(extra_project).base_model, train={"chat_template": "broken.jinja"})
    with pytest.raises(ProjectError) as info:
        template_text(load_project(extra_project))
    assert info.value.message.startswith(f"{extra_project / 'broken.jinja'}:2: not a valid Jinja chat template: ")


def test_a_template_trains_a_base_without_one_and_is_saved_with_the_run(tmp_path, tiny_model_dir):
    """The run's tokenizer carries the template: eval (LocalBackend) renders with it from the adapter."""
    from tunesmith.inference.local import LocalBackend
    from tunesmith.train.api import train_project

    model = tmp_path / "completion"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    project = split_project(tmp_path / "p", model)
    (project / "chat.jinja").write_text(CHATML)
    write_project_file(project, model, train={"chat_template": "chat.jinja", "epochs": 0.2})
    outcome = train_project(project, {"converge": False}, progress=False)
    adapter = outcome.run_dir / "adapter"
    backend = LocalBackend(model, adapter_path=adapter)
    assert backend.tokenizer.chat_template == CHATML
