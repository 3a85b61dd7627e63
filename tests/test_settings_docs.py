"""tunesmith.yaml's fields are the one source: the README table, the CLI help, the JSON Schema and
`init`'s comments are generated from them, and a test fails when one of them falls behind."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator
from pydantic import BaseModel

from tunesmith import settings_docs
from tunesmith.errors import UsageError
from tunesmith.project import Project

ROOT = Path(__file__).resolve().parent.parent
FIX = "run `python -m tunesmith.settings_docs` and commit the result"


def _models(annotation: typing.Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, typing.Any]]:
    found = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue  # not part of the file (Project.root)
        path = prefix + (field.alias or name)
        found.append((path, field))
        for sub in _models(field.annotation):
            found += _fields(sub, path + ".")
    return found


def test_every_setting_has_a_description():
    missing = [path for path, field in _fields(Project) if not (field.description or "").strip()]
    assert missing == [], f"fields without a description: {missing}"


def test_every_setting_is_documented_once():
    paths = [s.path for s in settings_docs.settings()]
    assert paths == [path for path, _ in _fields(Project)]
    assert "output.json" in paths and "root" not in paths


def test_the_readme_table_is_the_fields():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert settings_docs.with_table(readme) == readme, f"README.md's settings table is stale: {FIX}"


def test_the_cli_help_is_the_fields():
    generated = ROOT / "src" / "tunesmith" / "cli" / "_settings_help.py"
    assert generated.read_text(encoding="utf-8") == settings_docs.help_module(), f"{generated} is stale: {FIX}"


def test_the_docs_step_rewrites_only_the_table_and_says_when_it_cannot(tmp_path):
    start, end = settings_docs.TABLE_START, settings_docs.TABLE_END
    stale = f"# Title\n\nbefore\n\n{start}\n| old | table |\n{end}\n\nafter\n"
    fresh = settings_docs.with_table(stale)
    assert fresh.startswith("# Title\n\nbefore\n\n" + start + "\n") and fresh.endswith(end + "\n\nafter\n")
    assert "| `train.rank` |" in fresh and "| old | table |" not in fresh
    with pytest.raises(UsageError) as info:
        settings_docs.with_table("# no markers here\n")
    assert info.value.message == "README.md has no settings table to rewrite"
    assert info.value.hint == f"put the two lines {start} and {end} where the table goes"


def test_the_docs_step_check_mode_reports_stale_files(tmp_path, capsys):
    (tmp_path / "src" / "tunesmith" / "cli").mkdir(parents=True)
    (tmp_path / "src" / "tunesmith" / "cli" / "_settings_help.py").write_text("HELP = {}\n")
    (tmp_path / "README.md").write_text(f"{settings_docs.TABLE_START}\n{settings_docs.TABLE_END}\n")
    assert settings_docs.main(["--check", "--root", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"stale: {tmp_path / 'README.md'}", f"stale: {tmp_path / 'src/tunesmith/cli/_settings_help.py'}", FIX]
    assert settings_docs.main(["--root", str(tmp_path)]) == 0
    assert settings_docs.main(["--check", "--root", str(tmp_path)]) == 0


def test_help_text_says_choices_bounds_and_defaults():
    assert settings_docs.help_text("train.method").endswith("(lora | qlora | full).")
    assert settings_docs.help_text("train.rank").endswith("(1 <= rank <= 1024).")
    assert settings_docs.help_text("train.alpha").endswith("(alpha > 0).")
    assert settings_docs.help_text("train.dropout").endswith("(0 <= dropout < 1).")
    assert settings_docs.help_text("generate.n") == "Examples to generate (--n; 1 <= n <= 100000; default 100)."
    assert settings_docs.help_text("base_model").endswith("(default builtin:smollm2-135m-instruct).")
    with pytest.raises(KeyError, match="no setting train.rnak in tunesmith.yaml"):
        settings_docs.help_text("train.rnak")


# --- the JSON Schema editors read ----------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = settings_docs.project_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.mark.parametrize("project_file", sorted((ROOT / "examples").glob("*/tunesmith.yaml")), ids=lambda p: p.parent.name)
def test_the_schema_accepts_the_example_projects(validator, project_file):
    assert list(validator.iter_errors(yaml.safe_load(project_file.read_text(encoding="utf-8")))) == []


def test_the_schema_accepts_what_the_loader_accepts(validator):
    ok = {"task": "Answer with one compact JSON object.", "output": {"json": True},
          "train": {"time_budget": "10m", "layers": "all", "method": "lora"}, "hosted": {"n_epochs": "auto"}}
    assert list(validator.iter_errors(ok)) == []
    Project.model_validate(ok)  # the loader agrees


@pytest.mark.parametrize("bad, where", [
    ({"task": "short"}, "task"),
    ({"task_kind": "poetry"}, "task_kind"),
    ({"data": {"sourse": "x.jsonl"}}, "data"),
    ({"train": {"rank": 0}}, "train.rank"),
    ({"root": "/elsewhere"}, ""),
])
def test_the_schema_refuses_what_the_loader_refuses(validator, bad, where):
    errors = list(validator.iter_errors({"task": "Answer with one compact JSON object.", **bad}))
    assert [".".join(map(str, e.absolute_path)) for e in errors] == [where]


def test_the_schema_names_the_file_and_keeps_descriptions():
    schema = settings_docs.project_schema()
    assert schema["title"] == "tunesmith.yaml" and schema["$schema"].endswith("/draft/2020-12/schema")
    assert schema["properties"]["task"]["description"] == Project.model_fields["task"].description


def test_the_max_length_flag_is_checked_against_the_fields_bounds():
    from tunesmith.train.prepare import validated_flags

    low, high = (settings_docs.setting("max_length").limit(kind) for kind in ("ge", "le"))
    assert validated_flags({"max_length": low}) == {"max_length": low}
    for outside in (low - 1, high + 1):
        with pytest.raises(UsageError) as info:
            validated_flags({"max_length": outside})
        assert info.value.message == f"flag value(s) out of range: --max-length: must be between {low} and {high}"


def test_the_docs_step_outside_a_checkout_says_where_it_looked(tmp_path, capsys):
    assert settings_docs.main(["--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'README.md'} does not exist\n"
                                       "hint: run it in a tunesmith checkout, or pass --root\n")
