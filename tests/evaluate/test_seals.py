"""Which test seal each evaluation was scored on: recorded by eval, compared by `compare`, shown in the report."""

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from datagen import clean_examples, write_jsonl, write_project_file
from tunesmith.cli import app
from tunesmith.data.split import split_file
from tunesmith.evaluate.store import EvalStore
from tunesmith.project import load_project
from tunesmith.runs import RunRegistry, seal_sha256

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def split(root: Path, n: int = 40, fraction: float = 0.25, reseal: bool = False) -> str:
    write_jsonl(root / "data.jsonl", clean_examples(n))
    split_file(root / "data.jsonl", root / "data" / "train.jsonl", root / "data" / "test.jsonl",
               test_fraction=fraction, reseal=reseal)
    return seal_sha256(root / "data" / "test.jsonl")


def project(root: Path, model: str = "builtin:smollm2-135m-instruct") -> str:
    write_project_file(root, model, eval={"max_new_tokens": 8})
    return split(root)


def evaluated(reg: RunRegistry, subject: str, seal: str | None, passed: list[bool]) -> None:
    """A stored test-set evaluation of `subject`, scored on `seal` (None: before seals were recorded)."""
    if subject != "base":
        reg.create_run(subject, project_root=str(reg.root.parent), base_model="m", method="lora", config={},
                       plan={}, data={"test_seal_sha256": seal})
    items = [(f"test:{i + 1}", p, {"exact_match": p}, "{}") for i, p in enumerate(passed)]
    EvalStore(reg).save(subject=subject, run_id=None if subject == "base" else subject, split="test",
                        fingerprint="fp", settings={}, summary={}, items=items, seal_sha256=seal)


DIFFERENT = ("were scored on different test sets (seal {a} vs {b}): the paired comparison matches test items by "
             "line, so it compares different rows; re-evaluate on the current seal: `tunesmith eval r1`")


def test_compare_on_one_seal_has_no_warning_and_carries_the_hashes(tmp_path):
    seal = project(tmp_path)
    reg = load_project(tmp_path).registry()
    evaluated(reg, "r1", seal, [True, False, False, True])
    evaluated(reg, "r2", seal, [True, True, False, True])
    result = cli("compare", "r1", "r2", "-p", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["seals"] == {"a": seal, "b": seal, "current": seal}
    assert out["warnings"] == [] and out["items"] == 4
    assert "warning" not in cli("compare", "r1", "r2", "-p", tmp_path).stdout


def test_compare_warns_when_the_runs_were_scored_on_different_seals(tmp_path):
    old = project(tmp_path)
    reg = load_project(tmp_path).registry()
    evaluated(reg, "r1", old, [True, False, False, True])
    new = split(tmp_path, n=60, fraction=0.3, reseal=True)
    evaluated(reg, "r2", new, [True, True, False, True])
    out = json.loads(cli("compare", "r1", "r2", "-p", tmp_path, "--json").stdout)
    assert out["seals"] == {"a": old, "b": new, "current": new}
    assert out["warnings"] == ["r1 and r2 " + DIFFERENT.format(a=old[:12], b=new[:12])]
    human = cli("compare", "r1", "r2", "-p", tmp_path)
    assert human.exit_code == 0, human.output
    assert "warning: r1 and r2 " + DIFFERENT.format(a=old[:12], b=new[:12]) in " ".join(human.stdout.split())


def test_compare_says_when_a_seal_was_not_recorded(tmp_path):
    seal = project(tmp_path)
    reg = load_project(tmp_path).registry()
    evaluated(reg, "base", None, [False, False, True, True])  # an evaluation from before seals were recorded
    evaluated(reg, "r1", seal, [True, False, True, True])
    out = json.loads(cli("compare", "base", "r1", "-p", tmp_path, "--json").stdout)
    assert out["seals"] == {"a": None, "b": seal, "current": seal}
    assert out["warnings"] == ["base was evaluated before tunesmith recorded test seals: whether both were scored "
                               "on the same test set is unknown; re-evaluate it (`tunesmith eval base`)"]


def test_eval_of_a_run_after_a_reseal_records_the_new_seal_and_says_so(tmp_path, tiny_model_dir):
    old = project(tmp_path, str(tiny_model_dir))
    reg = load_project(tmp_path).registry()
    run_dir = reg.create_run("r-old", project_root=str(tmp_path), base_model=str(tiny_model_dir), method="full",
                             config={}, plan={}, data={"test_seal_sha256": old})
    shutil.copytree(tiny_model_dir, run_dir / "model")  # a full fine-tune's output, as training leaves it
    reg.set_status("r-old", "completed")
    new = split(tmp_path, n=60, fraction=0.3, reseal=True)

    result = cli("eval", "r-old", "-p", tmp_path, "--json", "--no-judge")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["summary"]["seal"] == {"scored_on": new, "trained_on": old}
    warning = (f"run r-old was trained on another test seal ({old[:12]}; now {new[:12]}): the test set changed "
               "since, so its training data may hold rows of this test set, and its scores are not comparable with "
               "those on its old seal")
    assert warning in out["warnings"]
    assert reg.scored_on("r-old").seal_sha256 == new and reg.scored_on("base").seal_sha256 == new
    page = Path(out["report"]).read_text(encoding="utf-8")
    assert 'id="seal-warning"' in page and warning in page and new[:12] in page
    shown = json.loads(cli("runs", "show", "r-old", "-p", tmp_path, "--json").stdout)["seal"]
    assert shown == {"trained_on": old, "scored_on": new, "current": new, "changed": False}
    # base and the run now stand on the current seal: compare has nothing to warn about
    compared = json.loads(cli("compare", "base", "r-old", "-p", tmp_path, "--json").stdout)
    assert compared["warnings"] == [] and compared["seals"] == {"a": new, "b": new, "current": new}
