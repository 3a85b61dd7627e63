"""Evaluations in the run registry (SQLite): per run, per split, per prompt; and the accepted baseline."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from tunesmith.runs import RunRegistry


@dataclass
class StoredItem:
    passed: bool | None
    scores: dict[str, Any]
    output: str | None


@dataclass
class StoredEval:
    id: int
    subject: str
    run_id: str | None
    split: str
    created_at: str
    fingerprint: str
    summary: dict[str, Any]
    items: dict[str, StoredItem] = field(default_factory=dict)


class EvalStore:
    def __init__(self, registry: RunRegistry) -> None:
        self.registry = registry

    def save(self, *, subject: str, run_id: str | None, split: str, fingerprint: str, settings: dict[str, Any],
             summary: dict[str, Any], items: list[tuple[str, bool | None, dict[str, Any], str | None]],
             seal_sha256: str | None = None) -> int:
        """Store one evaluation and its items in one transaction. `seal_sha256`: the test seal it was
        scored on (test item ids are line numbers, so only scores on one seal pair up the same rows)."""
        now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        with self.registry.connection(create=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.execute(
                    "INSERT INTO evaluations (subject, run_id, split, created_at, fingerprint, settings, summary, "
                    "seal_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (subject, run_id, split, now, fingerprint, json.dumps(settings), json.dumps(summary, default=str),
                     seal_sha256),
                )
                eval_id = int(cur.lastrowid)
                conn.executemany(
                    "INSERT INTO eval_items (evaluation_id, item_id, passed, scores, output) VALUES (?, ?, ?, ?, ?)",
                    [(eval_id, item_id, None if passed is None else int(passed), json.dumps(scores, default=str), output)
                     for item_id, passed, scores, output in items],
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return eval_id

    def latest(self, subject: str, split: str) -> StoredEval | None:
        with self.registry.connection(create=False) as conn:
            if conn is None:
                return None
            row = conn.execute(
                "SELECT id, subject, run_id, split, created_at, fingerprint, summary FROM evaluations "
                "WHERE subject = ? AND split = ? ORDER BY created_at DESC, id DESC LIMIT 1", (subject, split),
            ).fetchone()
            if row is None:
                return None
            stored = StoredEval(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]))
            for item_id, passed, scores, output in conn.execute(
                "SELECT item_id, passed, scores, output FROM eval_items WHERE evaluation_id = ?", (stored.id,)
            ):
                stored.items[item_id] = StoredItem(None if passed is None else bool(passed), json.loads(scores), output)
            return stored

    def accept(self, subject: str) -> None:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self.registry.connection(create=True) as conn:
            conn.execute("INSERT INTO accepted (name, subject, accepted_at) VALUES ('baseline', ?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET subject = excluded.subject, accepted_at = excluded.accepted_at",
                         (subject, now))

    def accepted(self) -> str | None:
        with self.registry.connection(create=False) as conn:
            if conn is None:
                return None
            row = conn.execute("SELECT subject FROM accepted WHERE name = 'baseline'").fetchone()
            return row[0] if row else None
