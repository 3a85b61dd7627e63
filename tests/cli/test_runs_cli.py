"""`tunesmith runs list|show` through typer's runner, on the `runs_app` sub-app, human and --json."""

import json

import pytest
import typer
from typer.testing import CliRunner

from tunesmith.cli.runs import runs_app
from tunesmith.project import load_project
from tunesmith.runs import RunRegistry, runs_root

runner = CliRunner()


def run(*args):
    return runner.invoke(runs_app, [str(a) for a in args])


def _seed(project):
    reg = RunRegistry(runs_root(project))
    for run_id in ("20240101-120000-aaaa-alpha", "20240101-120000-aaab-beta", "20240102-090000-cccc-gamma"):
        reg.create_run(run_id, project_root=str(project), base_model="builtin:smollm2-135m-instruct", method="lora",
                       config={"lr": 0.0002, "note": "[bold]not markup[/]"}, plan={"batch_size": 4},
                       data={"train_sha256": "ab" * 32})
    reg.set_status("20240101-120000-aaaa-alpha", "failed", error="CUDA out of memory [at step 3]")
    reg.set_status("20240102-090000-cccc-gamma", "completed",
                   metrics={"eval_loss": 1.234567, "train_loss": 0.98765}, summary={"steps": 120})
    adapter = reg.root / "20240102-090000-cccc-gamma" / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 2048)
    (reg.root / "20240102-090000-cccc-gamma" / "steps.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    return reg


def test_list_human_table(tmp_path):
    _seed(tmp_path)
    result = run("list", "--project", tmp_path)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = lines[0]
    for col in ("id", "status", "method", "base model", "created", "eval_loss", "train_loss"):
        assert col in header
    rows = lines[1:]
    assert [r.split()[0] for r in rows] == [
        "20240102-090000-cccc-gamma", "20240101-120000-aaab-beta", "20240101-120000-aaaa-alpha"]  # newest first, ids whole
    assert "completed" in rows[0] and "1.235" in rows[0] and "0.9877" in rows[0]
    assert "builtin:smollm2-135m-instruct" in rows[0]
    assert "failed" in rows[2] and "created" in rows[1]


def test_list_json_and_limit(tmp_path):
    _seed(tmp_path)
    result = run("list", "--project", tmp_path, "--json", "--limit", "2")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)
    assert [r["id"] for r in runs] == ["20240102-090000-cccc-gamma", "20240101-120000-aaab-beta"]
    assert set(runs[0]) >= {"id", "path", "status", "created_at", "updated_at", "finished_at", "base_model",
                            "method", "metrics", "error", "summary"}
    assert runs[0]["metrics"]["eval_loss"] == pytest.approx(1.234567)
    assert runs[0]["summary"] == {"steps": 120}


def test_list_defaults_to_the_current_directory(tmp_path, monkeypatch):
    _seed(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = run("list", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 3


def test_list_empty(tmp_path):
    result = run("list", "--project", tmp_path)
    assert result.exit_code == 0, result.output
    assert "no runs yet" in result.stdout
    result = run("list", "--project", tmp_path, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    assert not (tmp_path / "runs").exists()


def test_list_missing_project_dir(tmp_path):
    result = run("list", "--project", tmp_path / "nope")
    assert result.exit_code == 2
    assert "no such directory" in result.stderr and "hint:" in result.stderr


def test_show_json_has_record_documents_and_files(tmp_path):
    _seed(tmp_path)
    result = run("show", "20240102", "--project", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["run"]["id"] == "20240102-090000-cccc-gamma" and shown["run"]["status"] == "completed"
    assert shown["documents"]["config"] == {"lr": 0.0002, "note": "[bold]not markup[/]"}
    assert shown["documents"]["plan"] == {"batch_size": 4}
    assert shown["documents"]["metrics"] == {"eval_loss": 1.234567, "train_loss": 0.98765}
    assert shown["documents"]["summary"] == {"steps": 120}
    assert shown["documents"]["data"] == {"train_sha256": "ab" * 32}
    files = {f["path"]: f["bytes"] for f in shown["files"]}
    assert set(files) == {"config.json", "plan.json", "data.json", "metrics.json", "summary.json",
                          "steps.jsonl", "adapter/adapter_model.safetensors"}
    assert files["adapter/adapter_model.safetensors"] == 2048
    assert "unreadable" not in shown


def test_show_human(tmp_path):
    _seed(tmp_path)
    result = run("show", "latest", "--project", tmp_path)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.splitlines()[0].split() == ["20240102-090000-cccc-gamma", "completed"]
    assert "lora" in out and "builtin:smollm2-135m-instruct" in out
    assert "eval_loss 1.235" in out
    assert "config.json" in out and '"lr": 0.0002' in out and "[bold]not markup[/]" in out
    assert "summary.json" in out and '"steps": 120' in out
    assert "adapter/adapter_model.safetensors  2.0 KB" in out and "steps.jsonl" in out
    assert "files (7)" in out


def test_show_failed_run_prints_error_verbatim(tmp_path):
    _seed(tmp_path)
    result = run("show", "20240101-120000-aaaa", "--project", tmp_path)
    assert result.exit_code == 0, result.output
    assert "CUDA out of memory [at step 3]" in result.stdout
    assert "failed" in result.stdout.splitlines()[0]


def test_show_reports_an_unreadable_document(tmp_path):
    reg = _seed(tmp_path)
    (reg.root / "20240101-120000-aaab-beta" / "plan.json").write_text("{half")
    result = run("show", "20240101-120000-aaab-beta", "--project", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert "plan" not in shown["documents"] and "plan.json" in shown["unreadable"]
    human = run("show", "20240101-120000-aaab-beta", "--project", tmp_path)
    assert human.exit_code == 0 and "unreadable" in human.stdout


def test_show_unknown_and_ambiguous_refs(tmp_path):
    _seed(tmp_path)
    result = run("show", "zzz", "--project", tmp_path)
    assert result.exit_code == 2
    assert "error: no run 'zzz'" in result.stderr
    assert "tunesmith runs list" in result.stderr and "20240102-090000-cccc-gamma" in result.stderr
    result = run("show", "20240101-120000-aaa", "--project", tmp_path, "--json")
    assert result.exit_code == 2 and json.loads(result.stdout)["error"]["type"] == "RunNotFoundError"
    assert "ambiguous" in result.stderr
    assert "20240101-120000-aaaa-alpha" in result.stderr and "20240101-120000-aaab-beta" in result.stderr


def test_show_in_a_project_without_runs(tmp_path):
    result = run("show", "latest", "--project", tmp_path)
    assert result.exit_code == 2 and "no runs yet" in result.stderr


def test_corrupt_registry_is_a_clear_error(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "registry.sqlite").write_text("not a database\n" * 100)
    for args in (("list",), ("list", "--json"), ("show", "latest")):
        result = run(*args, "--project", tmp_path)
        assert result.exit_code == 2
        assert "not a readable run registry" in result.stderr
        assert "move it away" in result.stderr
        assert "Traceback" not in result.output


def test_sub_app_mounts_under_a_parent_app(tmp_path):
    _seed(tmp_path)
    parent = typer.Typer()

    @parent.callback()
    def _root() -> None:
        """root"""

    parent.add_typer(runs_app, name="runs")
    result = runner.invoke(parent, ["runs", "list", "--project", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 3
    help_result = runner.invoke(parent, ["runs"])
    assert "list" in help_result.output and "show" in help_result.output


def test_list_follows_the_project_runs_dir(tmp_path):
    from tunesmith.project import Project

    if "train" not in Project.model_fields or "runs_dir" not in Project.model_fields["train"].annotation.model_fields:
        pytest.skip("this project schema has no train.runs_dir")
    (tmp_path / "tunesmith.yaml").write_text("task: 'Answer with one compact JSON object.'\ntrain:\n  runs_dir: experiments\n")
    RunRegistry(tmp_path / "experiments").create_run("r1", project_root=str(tmp_path), base_model="m", method="lora",
                                                      config={}, plan={}, data={})
    result = run("list", "--project", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in json.loads(result.stdout)] == ["r1"]


def test_a_broken_project_file_still_lists_runs_in_the_default_place(tmp_path):
    _seed(tmp_path)
    (tmp_path / "tunesmith.yaml").write_text("task: [unclosed\n")
    result = run("list", "--project", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 3


# --- the test seal a run was trained and scored on ---------------------------------------------------

SEAL_CHANGED = "the test set changed since this run: its scores are not comparable with runs on the current seal"


def _sealed_project(root, n: int = 40, fraction: float = 0.25, reseal: bool = False):
    """A project with a real split; returns the current seal's hash."""
    from datagen import clean_examples, write_jsonl
    from tunesmith.data.split import split_file
    from tunesmith.runs import seal_sha256

    (root / "tunesmith.yaml").write_text("task: 'Answer with one compact JSON object.'\n")
    write_jsonl(root / "data.jsonl", clean_examples(n))
    split_file(root / "data.jsonl", root / "data" / "train.jsonl", root / "data" / "test.jsonl",
               test_fraction=fraction, reseal=reseal)
    return seal_sha256(root / "data" / "test.jsonl")


def _trained(root, run_id: str, seal):
    reg = load_project(root).registry()
    reg.create_run(run_id, project_root=str(root), base_model="m", method="lora", config={}, plan={},
                   data={"train_sha256": "ab" * 32, "test_seal_sha256": seal})
    return reg


def test_show_prints_the_seal_and_nothing_more_while_it_is_current(tmp_path):
    seal = _sealed_project(tmp_path)
    _trained(tmp_path, "r1", seal)
    result = run("show", "r1", "--project", tmp_path)
    assert result.exit_code == 0, result.output
    assert f"test seal:  {seal[:12]} (trained on; the current seal)" in result.stdout
    assert "changed" not in result.stdout
    shown = json.loads(run("show", "r1", "--project", tmp_path, "--json").stdout)
    assert shown["run"]["test_seal_sha256"] == seal
    assert shown["seal"] == {"trained_on": seal, "scored_on": None, "current": seal, "changed": False}


def test_show_says_when_the_test_set_changed_since_the_run(tmp_path):
    old = _sealed_project(tmp_path)
    _trained(tmp_path, "r1", old)
    new = _sealed_project(tmp_path, n=60, fraction=0.3, reseal=True)
    assert new != old
    result = run("show", "r1", "--project", tmp_path)
    assert result.exit_code == 0, result.output
    assert f"test seal:  {old[:12]} (trained on)" in result.stdout
    assert SEAL_CHANGED in " ".join(result.stdout.split()) and f"current seal {new[:12]}" in result.stdout
    shown = json.loads(run("show", "r1", "--project", tmp_path, "--json").stdout)
    assert shown["seal"] == {"trained_on": old, "scored_on": None, "current": new, "changed": True}


def test_show_judges_a_run_by_the_seal_it_was_scored_on(tmp_path):
    from tunesmith.evaluate.store import EvalStore

    old = _sealed_project(tmp_path)
    reg = _trained(tmp_path, "r1", old)
    new = _sealed_project(tmp_path, n=60, fraction=0.3, reseal=True)
    evaluation = EvalStore(reg).save(subject="r1", run_id="r1", split="test", fingerprint="fp", settings={},
                                     summary={}, items=[])
    reg.set_evaluation_seal(evaluation, new)  # re-evaluated on the new test set
    out = " ".join(run("show", "r1", "--project", tmp_path).stdout.split())
    assert f"scored on: {new[:12]} (latest eval; the current seal)" in out
    assert SEAL_CHANGED not in out
    assert f"trained before the test set changed: its training data may hold rows of the current test set" in out
    shown = json.loads(run("show", "r1", "--project", tmp_path, "--json").stdout)
    assert shown["seal"] == {"trained_on": old, "scored_on": new, "current": new, "changed": False}
    reg.set_evaluation_seal(evaluation, old)  # ... or scored on the old one
    out = " ".join(run("show", "r1", "--project", tmp_path).stdout.split())
    assert f"scored on: {old[:12]} (latest eval)" in out and SEAL_CHANGED in out


def test_show_a_run_without_a_recorded_seal(tmp_path):
    _sealed_project(tmp_path)
    _trained(tmp_path, "r1", None)
    result = run("show", "r1", "--project", tmp_path)
    assert result.exit_code == 0, result.output
    assert "test seal:  not recorded" in result.stdout and "changed" not in result.stdout
    assert json.loads(run("show", "r1", "--project", tmp_path, "--json").stdout)["seal"]["changed"] is None
