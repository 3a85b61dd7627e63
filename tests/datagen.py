"""Varied, clean synthetic examples for tests (seeded, so line numbers are stable)."""

from __future__ import annotations

import json
import random
from pathlib import Path

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


def split_project(root: Path, model_dir: Path, n: int = 80) -> Path:
    """A JSON-answer project on `model_dir`, its `n` examples split into train and a sealed test set."""
    from tunesmith.data.split import split_file as _split_file

    root.mkdir(parents=True, exist_ok=True)
    (root / "tunesmith.yaml").write_text(
        f"task: 'Answer with one compact JSON object.'\nbase_model: {model_dir}\n"
        "system_prompt: 'You answer with one compact JSON object.'\noutput:\n  json: true\n")
    write_jsonl(root / "data.jsonl", clean_examples(n))
    _split_file(root / "data.jsonl", root / "data" / "train.jsonl", root / "data" / "test.jsonl", test_fraction=0.2)
    return root
