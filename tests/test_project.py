from pathlib import Path

import pytest

from tunesmith.errors import ProjectError
from tunesmith.project import build_data, load_project
from tunesmith.scaffold import init_project

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_init_scaffold_loads_and_explains(tmp_path):
    path = init_project(tmp_path, task="Always answer with a JSON object with key answer.")
    text = path.read_text()
    assert "# One sentence" in text and "task_kind" in text
    project = load_project(tmp_path)
    assert project.task.startswith("Always answer")
    assert project.output.expects_json
    assert project.data.test_fraction == 0.15


def test_init_comments_are_the_field_descriptions(tmp_path):
    import re

    from tunesmith.settings_docs import TEMPLATE, help_text

    text = init_project(tmp_path, task="Always answer with a JSON object with key answer.").read_text()
    comments = " ".join(line.split("# ", 1)[1].lstrip("# ") for line in text.splitlines() if "# " in line)
    comments = re.sub(r"\s+", " ", comments)
    written = {path for path, _, _ in TEMPLATE} | {path.split(".")[0] for path, _, _ in TEMPLATE}
    assert {"task", "output.json", "data.test_fraction", "baseline.few_shot", "generate.price"} <= written
    for path in sorted(written):
        assert help_text(path, default=False) in comments, path


def test_init_refuses_to_overwrite(tmp_path):
    init_project(tmp_path, task="Always answer with a JSON object.")
    with pytest.raises(ProjectError, match="already exists") as exc:
        init_project(tmp_path, task="Always answer with a JSON object.")
    assert "--force" in exc.value.hint


def test_every_error_at_once_with_field_paths(tmp_path):
    (tmp_path / "tunesmith.yaml").write_text(
        "task: short\n"
        "task_kind: poetry\n"
        "data:\n  test_fraction: 2\n  sourse: x.jsonl\n"
        "output:\n  regex: '(unclosed'\n"
    )
    with pytest.raises(ProjectError) as exc:
        load_project(tmp_path)
    details = "\n".join(exc.value.details)
    assert "4 problem" in exc.value.message or "5 problem" in exc.value.message
    for field in ("task:", "task_kind:", "data.test_fraction:", "data.sourse:", "output.regex:"):
        assert field in details, details


def test_yaml_syntax_error_names_line(tmp_path):
    (tmp_path / "tunesmith.yaml").write_text("task: 'ok ok ok ok'\nbase_model: [unclosed\n")
    with pytest.raises(ProjectError, match=r"tunesmith.yaml:\d+:\d+: not valid YAML"):
        load_project(tmp_path)


def test_missing_project_file_hint(tmp_path):
    with pytest.raises(ProjectError) as exc:
        load_project(tmp_path)
    assert "tunesmith init" in exc.value.hint


def test_overrides_beat_file(tmp_path):
    init_project(tmp_path, task="Always answer with a JSON object.")
    project = load_project(tmp_path, {"data.test_fraction": 0.2, "max_length": 64})
    assert project.data.test_fraction == 0.2 and project.max_length == 64
    assert project.resolved()["output"]["json"] is True


def test_missing_schema_file_reported(tmp_path):
    (tmp_path / "tunesmith.yaml").write_text("task: 'Answer with JSON always.'\noutput:\n  json_schema: nope.json\n")
    with pytest.raises(ProjectError) as exc:
        load_project(tmp_path)
    assert any("nope.json" in d for d in exc.value.details)


@pytest.mark.parametrize("project_dir", sorted(p.parent for p in EXAMPLES.glob("*/tunesmith.yaml")))
def test_every_example_config_loads(project_dir):
    project = load_project(project_dir)
    assert project.task and project.base_model


def test_build_data_runs_build_command(tmp_path):
    (tmp_path / "make.py").write_text("open('data.jsonl', 'w').write('{}\\n')\n")
    (tmp_path / "tunesmith.yaml").write_text("task: 'Answer with JSON always.'\nbuild: python make.py\n")
    project = load_project(tmp_path)
    assert build_data(project) is True
    assert (tmp_path / "data.jsonl").exists()
    assert build_data(project) is False  # already built


def test_build_failure_is_clear(tmp_path):
    (tmp_path / "make.py").write_text("raise SystemExit('boom: no source here')\n")
    (tmp_path / "tunesmith.yaml").write_text("task: 'Answer with JSON always.'\nbuild: python make.py\n")
    with pytest.raises(ProjectError, match="failed with exit status 1") as exc:
        build_data(load_project(tmp_path))
    assert any("boom" in d for d in exc.value.details)


def test_missing_data_without_build(tmp_path):
    (tmp_path / "tunesmith.yaml").write_text("task: 'Answer with JSON always.'\n")
    with pytest.raises(ProjectError, match="does not exist") as exc:
        build_data(load_project(tmp_path))
    assert "build" in exc.value.hint


def test_a_relative_base_model_path_is_relative_to_the_project(tmp_path: Path, monkeypatch) -> None:
    project_dir = tmp_path / "proj"
    (project_dir / "models" / "mine").mkdir(parents=True)
    (project_dir / "tunesmith.yaml").write_text("task: 'label the sentiment of a review'\nbase_model: ./models/mine\n")
    monkeypatch.chdir(tmp_path)  # not the project directory
    assert load_project("proj").base_model == str((project_dir / "models" / "mine").resolve())
    # a hub id stays a hub id; a directory of that name inside the project wins, as paths do
    (project_dir / "tunesmith.yaml").write_text("task: 'label the sentiment of a review'\nbase_model: org/name\n")
    assert load_project("proj").base_model == "org/name"
    (project_dir / "org" / "name").mkdir(parents=True)
    assert load_project("proj").base_model == str((project_dir / "org" / "name").resolve())
    # a missing ./path still names the project-relative place in later errors
    (project_dir / "tunesmith.yaml").write_text("task: 'label the sentiment of a review'\nbase_model: ./gone.gguf\n")
    assert load_project("proj").base_model == str((project_dir / "gone.gguf").resolve())
    for kept in ("builtin:smollm2-135m-instruct", "/abs/model.gguf"):
        (project_dir / "tunesmith.yaml").write_text(f"task: 'label the sentiment of a review'\nbase_model: {kept}\n")
        assert load_project("proj").base_model == kept


def test_init_writes_any_task_and_model_text_so_that_it_reads_back(tmp_path: Path, monkeypatch) -> None:
    task = 'Translate C:\\new\\path and \\d+ "quoted" text: keep # and ü as they are'
    model = "./my models/#1: best.gguf"
    monkeypatch.chdir(tmp_path)  # typed in the project directory itself
    init_project(tmp_path, task=task, base_model=model)
    project = load_project(tmp_path)
    assert project.task == task
    assert project.base_model == str((tmp_path / model).resolve())


def test_init_refuses_values_the_project_file_would_reject(tmp_path: Path) -> None:
    with pytest.raises(ProjectError) as ei:
        init_project(tmp_path, task="Classify")
    assert "was not written" in ei.value.message and any("task" in d for d in ei.value.details)
    assert not (tmp_path / "tunesmith.yaml").exists()
    a_file = tmp_path / "data.jsonl"
    a_file.write_text("{}\n")
    with pytest.raises(ProjectError, match="is a file, not a directory"):
        init_project(a_file, task="Always answer with a JSON object.")


@pytest.mark.parametrize("data, fields", [
    ("  train: data/train.jsonl\n  test: ./data/train.jsonl\n", "data.train and data.test"),
    ("  source: data/all.jsonl\n  train: data/all.jsonl\n", "data.source and data.train"),
    ("  test: data/test.jsonl\n  regression: data/test.jsonl\n", "data.test and data.regression"),
])
def test_data_paths_must_differ(tmp_path, data, fields):
    (tmp_path / "tunesmith.yaml").write_text("task: 'Always answer with a JSON object.'\ndata:\n" + data)
    with pytest.raises(ProjectError) as exc:
        load_project(tmp_path)
    assert any(f"{fields} are the same file" in d for d in exc.value.details), exc.value.details


def test_test_fraction_bounds_are_the_fields():
    from pydantic import ValidationError

    from tunesmith.project import TEST_FRACTION_MAX, TEST_FRACTION_MIN, DataPaths

    DataPaths(test_fraction=TEST_FRACTION_MIN)
    DataPaths(test_fraction=TEST_FRACTION_MAX)
    for outside in (TEST_FRACTION_MIN / 2, TEST_FRACTION_MAX + 0.01):
        with pytest.raises(ValidationError):
            DataPaths(test_fraction=outside)


def test_a_section_with_every_key_commented_out_means_its_defaults(tmp_path: Path) -> None:
    (tmp_path / "tunesmith.yaml").write_text("task: 'label the sentiment of a review'\noutput:\n  # json: true\n"
                                             "eval:\n")
    project = load_project(tmp_path)
    assert project.output.expects_json is False and project.eval.baseline_threshold == 0.8


def test_a_data_file_passed_as_the_project_is_named(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    with pytest.raises(ProjectError, match="is not a project file") as ei:
        load_project(data)
    assert "-p" in ei.value.hint


def test_init_rewrites_a_model_path_typed_here_for_the_project(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "models" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    init_project(Path("proj"), task="label the sentiment of a review", base_model="./models/m")
    assert load_project(tmp_path / "proj").base_model == str((tmp_path / "models" / "m").resolve())
    assert "base_model: \"../models/m\"" in (tmp_path / "proj" / "tunesmith.yaml").read_text()


def test_init_scaffolds_generate_settings_that_load_once_uncommented(tmp_path: Path) -> None:
    path = init_project(tmp_path, task="Always answer with a JSON object with key answer.")
    text = path.read_text()
    assert "# generate:" in text
    lines = text.splitlines()
    start = lines.index("# generate:")
    block = [ln[2:] for ln in lines[start:] if ln.startswith("# ") and (ln.startswith("# generate:") or ln.startswith("#   "))]
    path.write_text(text + "\n" + "\n".join(block) + "\n")
    g = load_project(tmp_path).generate
    assert (g.teacher_model, g.n, g.concurrency, g.price.input, g.price.output) == ("gpt-4o-mini", 500, 8, 0.15, 0.6)
    assert g.base_url == "https://api.openai.com/v1" and g.output == "generated.jsonl"


def test_the_readme_project_file_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### `tunesmith.yaml`", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "tunesmith.yaml").write_text(block, encoding="utf-8")
    project = load_project(tmp_path)
    assert project.generate.teacher_model == "gpt-4o-mini" and project.generate.max_attempts == 3
    assert project.generate.price is not None and project.generate.price.output == 0.6


def test_generate_settings_are_checked_with_their_field_paths(tmp_path: Path) -> None:
    (tmp_path / "tunesmith.yaml").write_text(
        "task: 'Always answer with a JSON object.'\n"
        "generate:\n  n: 0\n  concurrency: 1000\n  price: {input: -1}\n  teacher: gpt-4o\n")
    with pytest.raises(ProjectError) as exc:
        load_project(tmp_path)
    joined = "\n".join(exc.value.details)
    for where in ("generate.n", "generate.concurrency", "generate.price.input", "generate.price.output",
                  "generate.teacher"):
        assert where in joined, joined


# --- what a hand-edited project file can hold: every case a ProjectError with the file and the line ----

TASK = "task: 'Answer with one compact JSON object.'\n"


def _load_text(tmp_path: Path, text: str) -> ProjectError:
    (tmp_path / "tunesmith.yaml").write_text(text)
    with pytest.raises(ProjectError) as exc:
        load_project(tmp_path)
    return exc.value


def test_a_duplicated_key_names_the_key_and_both_lines(tmp_path):
    error = _load_text(tmp_path, TASK + "data:\n  source: a.jsonl\n  test: t.jsonl\n  source: b.jsonl\n")
    assert error.message == (f"{tmp_path / 'tunesmith.yaml'}:5:3: key 'source' is given twice "
                             "(first on line 3); YAML would keep only the last")
    assert error.hint == "delete the line you do not mean, or merge the two"


def test_a_duplicated_top_level_key(tmp_path):
    error = _load_text(tmp_path, TASK + "base_model: a\n" + TASK)
    assert error.message.endswith(":3:1: key 'task' is given twice (first on line 1); YAML would keep only the last")


def test_a_merge_key_is_no_duplicate(tmp_path):
    (tmp_path / "tunesmith.yaml").write_text(
        TASK + "x-defaults: &d {concurrency: 2, model: judge}\neval:\n  judge:\n    <<: *d\n    base_url: http://h/v1\n"
        "    model: real\n")
    with pytest.raises(ProjectError) as exc:  # an unknown top-level key, but not a duplicate
        load_project(tmp_path)
    assert "x-defaults" in "\n".join(exc.value.details) and "twice" not in exc.value.message


def test_a_huge_integer_names_its_line(tmp_path):
    error = _load_text(tmp_path, TASK + "max_length: 1024\ntrain:\n  seed: " + "9" * 5000 + "\n")
    assert error.message == (f"{tmp_path / 'tunesmith.yaml'}:4:9: a number 5,000 digits long; "
                             "no setting takes one that long")
    assert error.hint == "write the number the setting needs (`tunesmith init` writes a commented example)"


def test_an_impossible_date_names_its_line(tmp_path):
    error = _load_text(tmp_path, TASK + "system_prompt: 2024-13-45\n")
    assert error.message.startswith(f"{tmp_path / 'tunesmith.yaml'}:2:16: cannot read '2024-13-45' (")
    assert "quote it" in error.hint


def test_a_deeply_nested_file(tmp_path):
    error = _load_text(tmp_path, TASK + "x: " + "[" * 20_000 + "]" * 20_000 + "\n")
    assert error.message == (f"{tmp_path / 'tunesmith.yaml'}: nested too deeply to read; "
                             "a project file is a few levels deep")
    assert error.hint == "look for a runaway run of [ { or - (`tunesmith init` writes a commented example)"


def test_a_deep_block_list(tmp_path):
    text = TASK + "x:\n" + "".join("  " * i + "-\n" for i in range(1500))  # deeper than the recursion limit
    error = _load_text(tmp_path, text)
    assert "nested too deeply to read" in error.message


def test_a_project_file_that_is_a_symlink_loop(tmp_path):
    (tmp_path / "tunesmith.yaml").symlink_to(tmp_path / "tunesmith.yaml")
    with pytest.raises(ProjectError) as exc:
        load_project(tmp_path)
    assert exc.value.message == f"{tmp_path / 'tunesmith.yaml'} is a symlink loop ({tmp_path / 'tunesmith.yaml'} -> {tmp_path / 'tunesmith.yaml'})"
    assert "ls -l" in exc.value.hint


def test_a_project_folder_that_is_a_symlink_loop(tmp_path):
    (tmp_path / "proj").symlink_to(tmp_path / "proj")
    with pytest.raises(ProjectError) as exc:
        load_project(tmp_path / "proj")
    assert exc.value.message == f"{tmp_path / 'proj'} is a symlink loop ({tmp_path / 'proj'} -> {tmp_path / 'proj'})"


def test_a_base_model_path_that_is_a_symlink_loop(tmp_path):
    (tmp_path / "model").symlink_to(tmp_path / "model")
    error = _load_text(tmp_path, TASK + "base_model: ./model\n")
    assert error.message == f"base_model: {tmp_path / 'model'} is a symlink loop ({tmp_path / 'model'} -> {tmp_path / 'model'})"


def test_a_base_model_under_an_unknown_home(tmp_path):
    error = _load_text(tmp_path, TASK + "base_model: ~nosuchuser-tunesmith/model\n")
    assert error.message == "base_model: ~nosuchuser-tunesmith/model: no user nosuchuser-tunesmith to expand ~ for"


def test_a_schema_with_a_huge_integer_or_deep_nesting(tmp_path):
    for name, text in (("big.json", '{"maxLength": ' + "9" * 5000 + "}"), ("deep.json", "[" * 100_000 + "]" * 100_000)):
        (tmp_path / name).write_text(text)
        (tmp_path / "tunesmith.yaml").write_text(TASK + f"output:\n  json_schema: {name}\n")
        with pytest.raises(ProjectError) as exc:
            load_project(tmp_path).load_schema()
        error = exc.value
        assert error.message.startswith(f"{tmp_path / name}: not valid JSON ("), error.message
        assert error.hint == "fix the schema file"


def test_finding_the_project_of_a_file_behind_a_symlink_loop_is_no_crash(tmp_path):
    from tunesmith.project import find_project_dir

    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert find_project_dir(tmp_path / "loop" / "data.jsonl") is None
