"""The example project, end to end through the CLI: build, split, seal, check — no errors."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pyfunc-json"
runner = CliRunner()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("pyfunc")
    for name in ("build.py", "tunesmith.yaml"):
        shutil.copy(EXAMPLE / name, root / name)
    result = runner.invoke(app, ["split", "--project", str(root), "--json"])
    assert result.exit_code == 0, result.output
    return root


def _check(project, model):
    result = runner.invoke(app, ["check", str(project / "data" / "train.jsonl"), "--project", str(project),
                                 "--model", str(model), "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_example_project_checks_clean(project, tiny_model_dir):
    code, report = _check(project, tiny_model_dir)
    assert code == 0, [f for f in report["findings"] if f["severity"] == "error"]
    assert report["examples"] >= 340
    assert report["stats"]["formats"] == {"messages": report["examples"]}
    assert report["stats"]["size_verdict"]["verdict"] in ("comfortable", "large", "minimum")
    assert report["stats"]["tokens"]["per_epoch"] > 0
    assert runner.invoke(app, ["split", "--project", str(project), "--verify"]).exit_code == 0


@pytest.mark.slow
def test_example_project_with_the_embedded_model(project):
    """The README's demo path: real SmolLM2 tokenizer and chat template, no errors, nothing too long."""
    code, report = _check(project, "builtin:smollm2-135m-instruct")
    assert code == 0
    assert not [f for f in report["findings"] if f["check"] == "too_long"]
    assert 50 < report["stats"]["tokens"]["p50"] < 768
