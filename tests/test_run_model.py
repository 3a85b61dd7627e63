"""Which model a run means, and where a project's runs live: one answer each, for every command.

A run's adapter only fits the base it was trained on. When tunesmith.yaml's base_model is edited after
training, eval, merge and serve must all use the run's recorded base (serve, whose base is fixed when
it starts, refuses the adapter on any other); a recorded base that is gone is a clear error naming both.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from datagen import clean_examples, write_jsonl
from fixtures.serving import PROMPTS, make_adapter, other_base
from tunesmith.data.split import split_file
from tunesmith.errors import ModelError
from tunesmith.project import load_project
from tunesmith.runs import RunRegistry

RUN = "20250301-000000-abcd-old"
MAX_NEW = 8
SRC = Path(__file__).resolve().parents[1] / "src" / "tunesmith"


def make_project(root: Path, base: Path, extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "tunesmith.yaml").write_text(
        f"task: 'Answer with one compact JSON object.'\nbase_model: {base}\noutput:\n  json: true\n"
        f"eval:\n  max_new_tokens: {MAX_NEW}\n" + extra)
    write_jsonl(root / "data.jsonl", clean_examples(16))
    split_file(root / "data.jsonl", root / "data" / "train.jsonl", root / "data" / "test.jsonl", test_fraction=0.25)
    return root


def add_run(registry: RunRegistry, root: Path, base: Path, adapter: Path) -> Path:
    """A completed LoRA run on `base`, as training records it (the registry row and config.json)."""
    run_dir = registry.create_run(RUN, project_root=str(root), base_model=str(base), method="lora",
                                  config={"project": {"base_model": str(base)}}, plan={}, data={})
    shutil.copytree(adapter, run_dir / "adapter")
    registry.set_status(RUN, "completed")
    return run_dir


def set_base(root: Path, base: Path) -> None:
    """What a user does by hand: point tunesmith.yaml at another base model."""
    path = root / "tunesmith.yaml"
    path.write_text(re.sub(r"(?m)^base_model: .*$", f"base_model: {base}", path.read_text()))


def answer(base: Path, adapter: Path | None, prompt: str) -> str:
    from tunesmith.evaluate.generate import LocalBackend
    from tunesmith.evaluate.types import DecodeSettings

    backend = LocalBackend(base, adapter_path=adapter)
    return backend.generate([[{"role": "user", "content": prompt}]], DecodeSettings(max_new_tokens=12))[0].text


@pytest.fixture(scope="module")
def moved(tmp_path_factory, serve_base):
    """A project whose run was trained on `trained` and whose base_model was then changed to `now`."""
    parts = tmp_path_factory.mktemp("bases")
    now = other_base(serve_base, parts / "other-base")  # same shapes: the adapter loads on it without a word
    adapter = make_adapter(serve_base, parts / "adapter", seed=7)
    root = make_project(tmp_path_factory.mktemp("moved"), serve_base)
    run_dir = add_run(RunRegistry(root / "runs"), root, serve_base, adapter)
    set_base(root, now)
    assert load_project(root).base_model == str(now)
    return {"root": root, "trained": serve_base, "now": now, "run_dir": run_dir}


def _warning(m) -> str:
    return (f"run {RUN} was trained on {str(m['trained'])!r}, not on the project's base_model {str(m['now'])!r}: "
            f"using {str(m['trained'])!r}")


def test_eval_scores_the_run_on_its_recorded_base_and_says_so(moved):
    from tunesmith.evaluate.api import EvalOptions, evaluate
    from tunesmith.evaluate.generate import LocalBackend
    from tunesmith.evaluate.store import EvalStore

    said: list[str] = []
    outcome = evaluate(moved["root"], RUN, EvalOptions(judge=False, report=False, early_stop=False), say=said.append)
    assert _warning(moved) in outcome.warnings
    assert [m for m in said if _warning(moved) in m] == [f"warning: {_warning(moved)}"]  # said once
    store = EvalStore(RunRegistry(moved["root"] / "runs"))
    on_trained = LocalBackend(moved["trained"], adapter_path=moved["run_dir"] / "adapter").fingerprint
    assert store.latest(RUN, "test").fingerprint == on_trained
    # and it is compared with the base it was tuned from, not with the project's new one
    assert store.latest(f"base:{moved['trained']}", "test").fingerprint == LocalBackend(moved["trained"]).fingerprint


def test_merge_folds_the_adapter_into_its_recorded_base_and_says_so(moved, tmp_path):
    from tunesmith.ship.merge import MERGE_RECORD, merge_run

    said: list[str] = []
    outcome = merge_run(moved["root"], RUN, tmp_path / "merged", verify_n=2, say=said.append)
    assert outcome.base_model == str(moved["trained"])
    record = json.loads((tmp_path / "merged" / MERGE_RECORD).read_text())
    assert Path(record["base_path"]) == Path(moved["trained"]).resolve()
    assert [m for m in said if _warning(moved) in m] == [f"warning: {_warning(moved)}"]


def test_serve_loads_the_adapter_only_on_its_recorded_base(moved):
    from tunesmith.serve.api import ServeConfig, build_state, start_in_thread
    from tunesmith.serve.errors import AdapterRejected

    config = ServeConfig(project_dir=moved["root"], port=0, adapters=[("old", RUN)])
    with pytest.raises(AdapterRejected) as refused:  # the server's base is the project's new one
        build_state(config)
    assert refused.value.code == "base_mismatch"
    assert f"was trained on {str(moved['trained'])!r}" in refused.value.message
    assert "other-base" in refused.value.message
    config = ServeConfig(project_dir=moved["root"], base=str(moved["trained"]), port=0, adapters=[("old", RUN)])
    running = start_in_thread(build_state(config), config)
    try:
        reply = httpx.post(running.url + "/chat/completions", timeout=60, json={
            "model": "old", "max_tokens": 12, "temperature": 0, "messages": [{"role": "user", "content": PROMPTS[0]}]})
        assert reply.status_code == 200, reply.text
        served = reply.json()["choices"][0]["message"]["content"]
    finally:
        running.stop()
    adapter = moved["run_dir"] / "adapter"
    assert served == answer(moved["trained"], adapter, PROMPTS[0]) != answer(moved["now"], adapter, PROMPTS[0])


def test_a_recorded_base_that_is_gone_is_an_error_naming_both(serve_base, tmp_path):
    from tunesmith.evaluate.api import EvalOptions, evaluate
    from tunesmith.ship.merge import merge_run

    gone = tmp_path / "gone-base"
    shutil.copytree(serve_base, gone)
    adapter = make_adapter(gone, tmp_path / "adapter", seed=3)
    root = make_project(tmp_path / "p", serve_base)
    add_run(RunRegistry(root / "runs"), root, gone, adapter)
    shutil.rmtree(gone)
    for attempt in (lambda: evaluate(root, RUN, EvalOptions(judge=False, report=False)),
                    lambda: merge_run(root, RUN, tmp_path / "merged")):
        with pytest.raises(ModelError) as error:
            attempt()
        assert error.value.message.startswith(
            f"run {RUN} was trained on {str(gone)!r}, which cannot be loaded any more (")
        assert error.value.message.endswith(f"; the project's base_model is now {str(serve_base)!r}")
        assert error.value.hint == (f"put {str(gone)!r} back (a run is only used on the base it was trained on), "
                                    f"or train a new run on the project's base: tunesmith train")
    assert not (tmp_path / "merged").exists()


# -- where runs live ---------------------------------------------------------------------------


def test_every_command_finds_runs_where_train_runs_dir_says(serve_base, tmp_path):
    from tunesmith.cli import app
    from tunesmith.evaluate.subject import resolve_subject
    from tunesmith.serve.adapters import AdapterLocator, ServedBase
    from tunesmith.ship.merge import locate_run

    root = make_project(tmp_path / "p", serve_base, extra="train:\n  runs_dir: experiments\n")
    adapter = make_adapter(serve_base, tmp_path / "adapter", seed=1)
    project = load_project(root)
    registry = project.registry()
    assert registry.root == root / "experiments"
    run_dir = add_run(registry, root, serve_base, adapter)
    assert not (root / "runs").exists()
    assert resolve_subject(project, RUN).run_id == RUN
    assert locate_run(project, RUN).adapter_dir == run_dir / "adapter"
    locator = AdapterLocator(ServedBase(str(serve_base), serve_base, "tiny"), project=project)
    assert locator.locate(RUN) == (run_dir.resolve() / "adapter", RUN)
    listed = CliRunner().invoke(app, ["runs", "list", "--project", str(root), "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["id"] for r in json.loads(listed.stdout)] == [RUN]
    assert not (root / "runs").exists()


def test_one_way_to_a_projects_registry():
    """Commands reach a project's runs through Project.registry(), never a second rule of their own."""
    offenders = [f"{p.relative_to(SRC)}: {word}" for p in sorted(SRC.rglob("*.py"))
                 for word in ("registry_for", "RunRegistry.for_project")
                 if word in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_runs_never_imports_the_project():
    """project.py imports the registry for Project.registry(); runs importing project back would be a cycle."""
    import ast

    import tunesmith.runs

    files = sorted(Path(tunesmith.runs.__file__).parent.rglob("*.py"))
    assert len(files) > 1  # the package, not some stray runs.py
    imports = [f"{f.relative_to(SRC)}:{node.lineno}" for f in files
               for node in ast.walk(ast.parse(f.read_text(encoding="utf-8")))
               if (isinstance(node, ast.ImportFrom) and node.module == "tunesmith.project")
               or (isinstance(node, ast.Import) and any(a.name == "tunesmith.project" for a in node.names))]
    assert imports == []


def test_a_resume_continues_on_the_recorded_base(moved, monkeypatch):
    import tunesmith.train.api as train_api

    seen = {}

    class Planned(Exception):
        pass

    def plan_training(project, *_a, **_k):
        seen["base"] = project.base_model
        raise Planned

    monkeypatch.setattr(train_api, "plan_training", plan_training)
    said: list[str] = []
    with pytest.raises(Planned):
        train_api.train_project(moved["root"], resume=RUN, say=said.append)
    assert seen["base"] == str(moved["trained"])
    assert said == [f"warning: run {RUN} was trained on {str(moved['trained'])!r}, not on the project's base_model "
                    f"{str(moved['now'])!r}: resuming on {str(moved['trained'])!r}"]
