"""The tests' standard project file says what the tests that use it assume."""

from datagen import SYSTEM, write_project_file

from tunesmith.project import load_project


def test_the_standard_project_file_is_a_json_answer_task(tmp_path):
    path = write_project_file(tmp_path / "p", "/models/tiny")
    project = load_project(path.parent)
    assert project.task == "Answer with one compact JSON object."
    assert project.base_model == "/models/tiny" and project.system_prompt == SYSTEM
    assert project.output.expects_json
    assert "output:\n  json: true\n" in path.read_text()  # tests edit it as text


def test_keywords_override_or_drop_top_level_keys_and_extra_is_appended(tmp_path):
    path = write_project_file(tmp_path, task="Label it: a JSON object with one key.", output=None, system_prompt=None,
                              eval={"max_new_tokens": 8}, extra="train:\n  time_budget: 5m\n")
    project = load_project(tmp_path)
    assert project.task == "Label it: a JSON object with one key." and project.system_prompt is None
    assert not project.output.expects_json and project.eval.max_new_tokens == 8
    assert project.train.time_budget == 300 and path.read_text().endswith("train:\n  time_budget: 5m\n")
