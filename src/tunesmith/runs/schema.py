"""The registry database's schema: its migrations, the WAL switch and the write transaction.

The schema is versioned with `PRAGMA user_version`: later changes append a function to `MIGRATIONS`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tunesmith.errors import TunesmithError

BUSY_TIMEOUT_S = 30.0


class RegistryError(TunesmithError):
    """The run registry cannot be opened, read or written (corrupt, locked, unwritable, too new)."""


def _migration_1(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS runs (
            id           TEXT PRIMARY KEY,
            status       TEXT NOT NULL,
            created_at   TEXT NOT NULL,
            updated_at   TEXT NOT NULL,
            finished_at  TEXT,
            project_root TEXT NOT NULL,
            base_model   TEXT NOT NULL,
            method       TEXT NOT NULL,
            metrics      TEXT NOT NULL DEFAULT '{}',
            error        TEXT,
            summary      TEXT
        )
        """
    )
    conn.execute("CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at)")


def _migration_2(conn: sqlite3.Connection) -> None:
    """Evaluations: one row per (subject, split) evaluation, one per item, and accepted baselines."""
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS evaluations (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            subject      TEXT NOT NULL,
            run_id       TEXT,
            split        TEXT NOT NULL,
            created_at   TEXT NOT NULL,
            fingerprint  TEXT NOT NULL,
            settings     TEXT NOT NULL DEFAULT '{}',
            summary      TEXT NOT NULL DEFAULT '{}'
        )
        """
    )
    conn.execute("CREATE INDEX IF NOT EXISTS evaluations_by_subject ON evaluations (subject, split, created_at)")
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS eval_items (
            evaluation_id INTEGER NOT NULL REFERENCES evaluations(id) ON DELETE CASCADE,
            item_id       TEXT NOT NULL,
            passed        INTEGER,
            scores        TEXT NOT NULL DEFAULT '{}',
            output        TEXT,
            PRIMARY KEY (evaluation_id, item_id)
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS accepted (
            name        TEXT PRIMARY KEY,
            subject     TEXT NOT NULL,
            accepted_at TEXT NOT NULL
        )
        """
    )


def _migration_3(conn: sqlite3.Connection) -> None:
    """The test seal's SHA-256: per run (the seal it was trained with), per evaluation (the seal it was
    scored on). Runs registered before this read it back from their data.json, where training kept it."""
    conn.execute("ALTER TABLE runs ADD COLUMN test_seal_sha256 TEXT")
    conn.execute("ALTER TABLE evaluations ADD COLUMN seal_sha256 TEXT")
    db_file = next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "")
    if not db_file:
        return  # an in-memory database has no run directories
    root = Path(db_file).parent
    for (run_id,) in conn.execute("SELECT id FROM runs").fetchall():
        seal = _seal_in_data_json(root / run_id / "data.json")
        if seal is not None:
            conn.execute("UPDATE runs SET test_seal_sha256 = ? WHERE id = ?", (seal, run_id))


def _seal_in_data_json(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    seal = data.get("test_seal_sha256") if isinstance(data, dict) else None
    return seal if isinstance(seal, str) else None


# MIGRATIONS[i] takes the schema from version i to version i + 1. Append; never edit a released one.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migration_1, _migration_2, _migration_3]


def schema_version() -> int:
    """The schema version this tunesmith writes."""
    return len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database on `conn` (autocommit mode) up to `schema_version()`; returns the version.

    Runs under `BEGIN IMMEDIATE` and re-reads the version inside the transaction, so two processes
    opening a fresh registry at once apply each migration exactly once.
    """
    target = schema_version()
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current == target:
        return current
    if current > target:
        raise RegistryError(
            f"run registry schema version {current} is newer than this tunesmith understands ({target})",
            "upgrade tunesmith (pip install -U tunesmith) to use this project's runs",
        )
    with _write_tx(conn):
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        for version in range(current, target):
            MIGRATIONS[version](conn)
        if current < target:
            conn.execute(f"PRAGMA user_version = {int(target)}")
    return target


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL once. The switch needs the database to itself, and SQLite reports a competing
    opener as "locked" at once instead of waiting for busy_timeout: two processes creating a registry
    together would see that, so the switch is retried until BUSY_TIMEOUT_S."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextlib.contextmanager
def _write_tx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
