"""Reading the seal of a sealed test set: a hand-edited or damaged seal is a SealError that names the
file, the field and the fix, in `split --verify`, a re-split and training alike; a reordered test set
is said to be one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datagen import clean_examples, write_jsonl, write_project_file
from tunesmith.cli import app
from tunesmith.data.split import broken_seal_error, split_file, verify_seal
from tunesmith.errors import SealError

FIX = ("the seal was edited or damaged: restore it (e.g. from version control), "
       "or seal a new test set with `tunesmith split --reseal`")


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def sealed(tmp_path) -> Path:
    """A project split into data/train.jsonl and a sealed data/test.jsonl; returns the seal's path."""
    write_project_file(tmp_path)
    write_jsonl(tmp_path / "data.jsonl", clean_examples(60))
    split_file(tmp_path / "data.jsonl", tmp_path / "data" / "train.jsonl", tmp_path / "data" / "test.jsonl",
               test_fraction=0.2)
    return tmp_path / "data" / "test.seal.json"


def _edit(seal: Path, **fields) -> None:
    data = json.loads(seal.read_text())
    data.update(fields)
    seal.write_text(json.dumps(data))


def _verify_error(seal: Path) -> SealError:
    with pytest.raises(SealError) as exc:
        verify_seal(seal.with_name("test.jsonl"))
    return exc.value


def test_a_dict_in_rows_names_the_field(sealed):
    rows = json.loads(sealed.read_text())["rows"]
    _edit(sealed, rows=[{"sha": rows[0]}] + rows[1:])
    error = _verify_error(sealed)
    assert error.message == f"{sealed}: field rows[0] is an object, expected a SHA-256 (64 hex digits)"
    assert error.hint == FIX


@pytest.mark.parametrize("fields, field", [
    ({"rows": {"a": 1}}, "field rows is an object, expected a list of SHA-256 hashes (64 hex digits each)"),
    ({"rows": None}, "field rows is missing"),
    ({"rows": ["ab" * 32, "XYZ"]}, "field rows[1] is 'XYZ', expected a SHA-256 (64 hex digits)"),
    ({"file_sha256": 7}, "field file_sha256 is a number, expected a SHA-256 (64 hex digits)"),
    ({"train_sha256": ["x"]}, "field train_sha256 is a list, expected a SHA-256 (64 hex digits)"),
    ({"version": "1"}, "field version is '1', expected a whole number"),
    ({"version": 99}, "field version is 99: written by a newer tunesmith (this one reads version 1)"),
])
def test_each_field_is_checked(sealed, fields, field):
    if fields.get("rows", 0) is None:
        data = json.loads(sealed.read_text())
        del data["rows"]
        sealed.write_text(json.dumps(data))
    else:
        _edit(sealed, **fields)
    assert _verify_error(sealed).message == f"{sealed}: {field}"


@pytest.mark.parametrize("text, problem", [
    ("[1, 2]", "it is a list, not a JSON object"),
    ('{"rows": [' + "9" * 5000 + "]}", "field rows[0] is a number 5,000 digits long; no seal holds one that long"),
    ("[" * 100_000, "nested too deeply to read"),
    ("{broken", "not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
])
def test_an_unreadable_seal_says_why(sealed, text, problem):
    sealed.write_text(text)
    error = _verify_error(sealed)
    assert error.message == f"{sealed}: the seal is unreadable ({problem})"
    assert error.hint == FIX


def test_split_verify_and_resplit_report_a_hand_edited_seal(sealed):
    rows = json.loads(sealed.read_text())["rows"]
    _edit(sealed, rows=[{"sha": rows[0]}] + rows[1:])
    root = sealed.parent.parent
    result = run("split", "--verify", "-p", root, "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["message"] == \
        f"{sealed}: field rows[0] is an object, expected a SHA-256 (64 hex digits)"
    result = run("split", "-p", root, "--json")
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "SealError" and error["message"].startswith(f"{sealed}: field rows[0] is an object")
    assert "--reseal" in error["hint"]
    assert run("split", "-p", root, "--reseal").exit_code == 0  # a new seal replaces the broken one


def test_training_reports_a_hand_edited_seal(sealed):
    from tunesmith.project import load_project
    from tunesmith.train.prepare import guard_data

    rows = json.loads(sealed.read_text())["rows"]
    _edit(sealed, rows=[{"sha": rows[0]}] + rows[1:])
    with pytest.raises(SealError, match=r"field rows\[0\] is an object"):
        guard_data(load_project(sealed.parent.parent))


def test_a_seal_that_is_a_symlink_loop(sealed):
    sealed.unlink()
    sealed.symlink_to(sealed)
    error = _verify_error(sealed)
    assert error.message == f"{sealed} is a symlink loop ({sealed} -> {sealed})"


def test_reordered_rows_are_said_to_be_reordered(sealed):
    test = sealed.with_name("test.jsonl")
    lines = test.read_text().splitlines()
    test.write_text("\n".join([lines[1], lines[0]] + lines[2:]) + "\n")
    error = broken_seal_error(verify_seal(test))
    assert error.message == (f"{test}: the sealed test set has the same rows, in a different order "
                             "(lines 1, 2 are out of place)")
    assert error.hint == ("restore the file (e.g. from version control), or run `tunesmith split` again: it rewrites "
                          "the test set in its sealed order from the source (the same rows: earlier scores stay comparable)")


def test_other_changes_are_counted(sealed):
    test = sealed.with_name("test.jsonl")
    lines = test.read_text().splitlines()
    lines[1] = json.dumps(clean_examples(1, seed=9)[0])
    test.write_text("\n".join(lines + [lines[0]]) + "\n")
    error = broken_seal_error(verify_seal(test))
    assert error.message == f"{test}: the sealed test set changed since it was sealed (1 changed, 1 added, 0 removed)"
    assert "restore it" in error.hint


def test_split_names_an_output_that_is_a_symlink_loop(tmp_path):
    write_jsonl(tmp_path / "all.jsonl", clean_examples(60))
    (tmp_path / "loop.jsonl").symlink_to(tmp_path / "loop.jsonl")
    for train, test in (("loop.jsonl", "test.jsonl"), ("train.jsonl", "loop.jsonl")):
        result = run("split", tmp_path / "all.jsonl", "--train", tmp_path / train, "--test", tmp_path / test, "--json")
        assert result.exit_code == 2, result.output
        error = json.loads(result.stdout)["error"]
        assert error["message"].startswith(f"{tmp_path / 'loop.jsonl'} is a symlink loop"), error


def test_training_and_eval_say_the_rows_were_reordered(sealed):
    from tunesmith.evaluate.items import test_items
    from tunesmith.project import load_project
    from tunesmith.train.prepare import guard_data

    test = sealed.with_name("test.jsonl")
    lines = test.read_text().splitlines()
    test.write_text("\n".join([lines[1], lines[0]] + lines[2:]) + "\n")
    project = load_project(sealed.parent.parent)
    for call in (guard_data, test_items):
        with pytest.raises(SealError) as exc:
            call(project)
        assert "the same rows, in a different order (lines 1, 2 are out of place)" in exc.value.message
