"""Varied, clean synthetic examples for tests (seeded, so line numbers are stable)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

SYSTEM = "You answer with one compact JSON object."


def words(rng: random.Random, n: int) -> str:
    return " ".join(
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(n)
    )


def clean_examples(n: int = 40, seed: int = 0, system: str | None = SYSTEM) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        msgs = [{"role": "system", "content": system}] if system is not None else []
        msgs.append({"role": "user", "content": f"Item {i}: {words(rng, 14)}"})
        msgs.append({"role": "assistant", "content": json.dumps({"item_id": i, "summary": words(rng, 5)}, separators=(",", ":"))})
        out.append({"messages": msgs})
    return out


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def write_project_file(root: Path, model: str | Path | None = None, *, extra: str = "", **overrides: Any) -> Path:
    """The standard tunesmith.yaml in `root` (created if needed): JSON answers to `clean_examples`, on `model`.

    A keyword sets that top-level key (`eval={"max_new_tokens": 8}`, `task="..."`; None leaves it out);
    `extra` is YAML text appended as it is, for tests that edit the file's text later. Returns the file.
    """
    import yaml

    settings: dict[str, Any] = {"task": "Answer with one compact JSON object.", "base_model": model,
                                "system_prompt": SYSTEM, "output": {"json": True}}
    settings.update(overrides)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in settings.items() if v is not None}
    root.mkdir(parents=True, exist_ok=True)
    path = root / "tunesmith.yaml"
    # one line per value (no folding), so tests can edit the text
    path.write_text(yaml.safe_dump(settings, sort_keys=False, allow_unicode=True, width=1 << 16) + extra,
                    encoding="utf-8")
    return path


def split_project(root: Path, model_dir: Path, n: int = 80) -> Path:
    """A JSON-answer project on `model_dir`, its `n` examples split into train and a sealed test set."""
    from tunesmith.data.split import split_file as _split_file

    write_project_file(root, model_dir)
    write_jsonl(root / "data.jsonl", clean_examples(n))
    _split_file(root / "data.jsonl", root / "data" / "train.jsonl", root / "data" / "test.jsonl", test_fraction=0.2)
    return root


def sealed_project(root: Path, model_dir: Path, n: int = 24, *, max_new_tokens: int = 8, **overrides: Any) -> Path:
    """A JSON-answer project on `model_dir` (eval.max_new_tokens set), `n` examples split 3:1 into train and
    a sealed test set; `overrides` are more top-level keys of tunesmith.yaml."""
    from tunesmith.data.split import split_file as _split_file

    write_project_file(root, model_dir, eval={"max_new_tokens": max_new_tokens}, **overrides)
    write_jsonl(root / "data.jsonl", clean_examples(n))
    _split_file(root / "data.jsonl", root / "data" / "train.jsonl", root / "data" / "test.jsonl", test_fraction=0.25)
    return root


def add_run(root: Path, run_id: str, *, method: str, base_model: Path, adapter: Path | None = None,
            model: Path | None = None, status: str = "completed", config: dict | None = None) -> Path:
    """A registry run built by hand (no training): its record, plan and copies of `adapter` / `model`."""
    import shutil

    from tunesmith.project import load_project

    registry = load_project(root).registry()
    plan = {"settings": {"method": {"value": method, "source": "test", "why": "made by hand"}}, "derived": {}}
    run_dir = registry.create_run(run_id, project_root=str(root), base_model=str(base_model), method=method,
                                  config=config or {}, plan=plan, data={})
    if adapter is not None:
        shutil.copytree(adapter, run_dir / "adapter")
    if model is not None:
        shutil.copytree(model, run_dir / "model")
    registry.set_status(run_id, status)
    return run_dir
