"""The spot check for a run: from stored test-set outputs of the base model and the run."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.errors import UsageError
from tunesmith.evaluate.spotcheck.page import build_spotcheck
from tunesmith.evaluate.spotcheck.unblind import SpotcheckResult, unblind
from tunesmith.evaluate.store import EvalStore
from tunesmith.project import load_project


def _run_and_store(project_dir: Path | str, ref: str):
    project = load_project(project_dir)
    registry = project.registry()
    record = registry.get(ref)
    return project, record, EvalStore(registry)


def build_for_run(project_dir: Path | str, ref: str, n: int | None) -> Path:
    project, record, store = _run_and_store(project_dir, ref)
    tuned, base = store.latest(record.id, "test"), store.latest("base", "test")
    if tuned is None or base is None:
        raise UsageError(f"run {record.id} and the base model need a test-set evaluation first",
                         f"run `tunesmith eval {record.id}`")
    from tunesmith.evaluate.items import test_items

    prompts = {it.id: it.prompt_text() for it in test_items(project)}
    common = [i for i in tuned.items if i in base.items and i in prompts]
    items = [{"id": i, "prompt": prompts[i], "base_output": base.items[i].output or "",
              "tuned_output": tuned.items[i].output or ""} for i in common]
    sc = build_spotcheck(items, n=min(n or project.eval.spotcheck_n, len(items)), seed=0)
    directory = Path(record.path) / "spotcheck"
    sc.save(directory)
    return directory


def unblind_for_run(project_dir: Path | str, ref: str, answers: Path) -> SpotcheckResult:
    _, record, _ = _run_and_store(project_dir, ref)
    key_path = Path(record.path) / "spotcheck" / "key.json"
    if not key_path.exists():
        raise UsageError(f"run {record.id} has no spot check yet", f"run `tunesmith spotcheck {record.id}` first")
    if not answers.exists():
        raise UsageError(f"{answers}: no such answers file", "pass the answers.json the page saved or downloaded")
    try:
        data = json.loads(answers.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UsageError(f"{answers}: not JSON ({exc})", "pass the answers.json the page saved or downloaded") from None
    return unblind(json.loads(key_path.read_text(encoding="utf-8")), data)
