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
