"""Review fixtures: a project with a small JSON-Schema contract, a file of generated rows, a live review server."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REVIEW_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["name", "score"],
    "additionalProperties": False,
}
REVIEW_SYSTEM = "Answer with one JSON object: name and score."


def _words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8))) for _ in range(n))


def generated_row(i: int, rng: random.Random, *, teacher: bool = True) -> dict[str, Any]:
    row: dict[str, Any] = {"messages": [
        {"role": "system", "content": REVIEW_SYSTEM},
        {"role": "user", "content": f"Rate item {i}: {_words(rng, 10)}"},
        {"role": "assistant", "content": json.dumps({"name": f"item-{i}", "score": i % 7})},
    ]}
    if teacher:
        row["provenance"] = {"source": "teacher", "teacher_model": "teacher-x", "created": "2026-12-01T09:00:00Z",
                             "generation": "gen-1"}
        row["review"] = {"status": "unreviewed"}
    return row


@dataclass
class ReviewFiles:
    project: Path
    generated: Path

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.generated.read_text(encoding="utf-8").splitlines() if line.strip()]

    def by_line(self) -> dict[int, dict[str, Any]]:
        lines = self.generated.read_text(encoding="utf-8").splitlines()
        return {i: json.loads(text) for i, text in enumerate(lines, start=1) if text.strip()}


@pytest.fixture
def make_review_rows() -> Callable[..., list[dict[str, Any]]]:
    """rows(n, seed=0, teacher=True): generated chat rows whose answers meet REVIEW_SCHEMA."""
    def rows(n: int, seed: int = 0, teacher: bool = True) -> list[dict[str, Any]]:
        rng = random.Random(seed)
        return [generated_row(i, rng, teacher=teacher) for i in range(n)]
    return rows


@pytest.fixture
def review_project(tmp_path: Path) -> Path:
    """A project directory whose contract is REVIEW_SCHEMA (data files are not written)."""
    d = tmp_path / "proj"
    d.mkdir()
    (d / "schema.json").write_text(json.dumps(REVIEW_SCHEMA))
    (d / "tunesmith.yaml").write_text(
        "task: 'Rate an item: answer with a JSON object holding name and score.'\n"
        f"system_prompt: {json.dumps(REVIEW_SYSTEM)}\n"
        "output:\n  json_schema: schema.json\n"
        "data:\n  source: data.jsonl\n  train: data/train.jsonl\n  test: data/test.jsonl\n")
    return d


@pytest.fixture
def review_files(review_project: Path, make_review_rows: Callable[..., list[dict[str, Any]]]) -> ReviewFiles:
    """The project and generated.jsonl in it: 60 generated rows (the review target is 50)."""
    path = review_project / "generated.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_review_rows(60)), encoding="utf-8")
    return ReviewFiles(review_project, path)


@pytest.fixture
def review_server() -> Iterator[Callable[..., Any]]:
    """start(store) -> a started ReviewServer on 127.0.0.1 (stopped after the test)."""
    from tunesmith.distill.review_app import ReviewServer

    started: list[ReviewServer] = []

    def start(store: Any) -> ReviewServer:
        server = ReviewServer(store, 0).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
