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
