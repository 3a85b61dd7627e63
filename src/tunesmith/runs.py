"""Run directories and the run registry.

Every training (and later evaluation) run gets a directory `<project>/runs/<run id>/` holding the files
that make it reproducible (`config.json`, `plan.json`, `data.json`, then `metrics.json`, `summary.json`,
the trainer's step log and checkpoints). `runs/registry.sqlite` indexes them: one row per run with its
status, timestamps and headline metrics, so `tunesmith runs list` never has to walk checkpoints.

The registry is a small SQLite database in WAL mode with a busy timeout, so two tunesmith processes
(a training run and a `runs list`, or two runs) can use it at once. Every operation opens its own
short-lived connection; writes take the write lock up front (`BEGIN IMMEDIATE`). The schema is
versioned with `PRAGMA user_version`: later changes append a function to `MIGRATIONS`.

Step logs are JSONL files the trainer writes into the run directory, not rows here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import secrets
import shutil
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args

from tunesmith.errors import ModelError, RunNotFoundError, TunesmithError, UsageError
from tunesmith.io import write_json_atomic

RUNS_DIRNAME = "runs"
REGISTRY_FILENAME = "registry.sqlite"
BUSY_TIMEOUT_S = 30.0

RunStatus = Literal["created", "running", "interrupted", "failed", "completed"]
STATUSES: tuple[str, ...] = get_args(RunStatus)
TERMINAL_STATUSES = frozenset({"interrupted", "failed", "completed"})

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RESERVED_REFS = frozenset({"latest"})


class RegistryError(TunesmithError):
    """The run registry cannot be opened, read or written (corrupt, locked, unwritable, too new)."""


def runs_root(project_root: str | Path) -> Path:
    """Where a project's runs live: `<project_root>/runs`."""
    return Path(project_root) / RUNS_DIRNAME


def seal_sha256(test: str | Path) -> str | None:
    """SHA-256 of the seal of the test file `test` (what runs record as `test_seal_sha256`); None when
    there is no seal. A re-split writes a new seal, so a different hash means a different test set."""
    from tunesmith.data.split import seal_path_for
    from tunesmith.io import sha256_file

    seal = seal_path_for(Path(test))
    return sha256_file(seal) if seal.is_file() else None


def short_seal(sha: str | None) -> str:
    """The first 12 hex digits of a seal hash, for people ("not recorded" for None)."""
    return sha[:12] if sha else "not recorded"


def _slug(name: str, max_len: int = 40) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return slug[:max_len].rstrip("-")


_issued_lock = threading.Lock()
_issued: dict[str, set[str]] = {}


def new_run_id(name: str | None = None) -> str:
    """A sortable, unique, filesystem-safe id: `YYYYMMDD-HHMMSS-<4 hex>[-<slug of name>]` (UTC time).

    Ids sort by creation second; the random part keeps runs started in the same second apart. Within
    one process an id is never handed out twice; across processes `create_run` refuses a taken id.
    """
    with _issued_lock:
        while True:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            for old in [k for k in _issued if k != stamp]:
                del _issued[old]
            seen = _issued.setdefault(stamp, set())
            if len(seen) < 0x10000:
                break
            time.sleep(0.01)  # every id of this second is taken: wait for the next one
        while (rand := secrets.token_hex(2)) in seen:
            pass
        seen.add(rand)
    run_id = f"{stamp}-{rand}"
    slug = _slug(name) if name else ""
    return f"{run_id}-{slug}" if slug else run_id


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a run depends on (missing libraries are left out)."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "peft", "accelerate", "tunesmith"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        with contextlib.suppress(Exception):
            return obj.item()
    if hasattr(obj, "tolist") and callable(obj.tolist):
        with contextlib.suppress(Exception):
            return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)  # Path, datetime, enums, ...


def _plain(obj: Any) -> Any:
    """`obj` as plain JSON data (numpy scalars become numbers, paths strings); must be a JSON object."""
    return json.loads(json.dumps(obj, default=_json_default, ensure_ascii=False))


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, ensure_ascii=False, sort_keys=True)


# --- schema ------------------------------------------------------------------------------------


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


# --- records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredOn:
    """The latest test-set evaluation of a subject and the seal it was scored on."""

    evaluation_id: int
    created_at: str
    #: None: the evaluation predates seal recording
    seal_sha256: str | None


@dataclass
class RunRecord:
    id: str
    path: Path
    status: str
    created_at: str
    updated_at: str
    finished_at: str | None
    base_model: str
    method: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    summary: dict[str, Any] | None = None
    project_root: str = ""
    #: SHA-256 of the test seal when the run was created (None: not recorded, e.g. a hand-made run)
    test_seal_sha256: str | None = None

    def read_document(self, name: str) -> dict[str, Any]:
        """The JSON object in `<run dir>/<name>.json`; {} when it is missing or unreadable."""
        try:
            doc = json.loads((Path(self.path) / f"{name}.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return doc if isinstance(doc, dict) else {}

    @property
    def config(self) -> dict[str, Any]:
        """config.json of the run (read from the run directory on each access)."""
        return self.read_document("config")

    @property
    def plan(self) -> dict[str, Any]:
        """plan.json of the run."""
        return self.read_document("plan")

    @property
    def data(self) -> dict[str, Any]:
        """data.json of the run (hashes of the training file and the test seal)."""
        return self.read_document("data")

    def to_dict(self) -> dict[str, Any]:
        """The registry row as plain data (the run directory's documents are not included)."""
        return {
            "id": self.id,
            "path": str(self.path),
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "base_model": self.base_model,
            "method": self.method,
            "metrics": self.metrics,
            "error": self.error,
            "summary": self.summary,
            "project_root": self.project_root,
            "test_seal_sha256": self.test_seal_sha256,
        }

    def model(self, project_base: str) -> RunModel:
        """Which model this run means: what it trained, on the base it was trained on.

        The recorded base wins over `project_base` (the project's base_model now): an adapter only fits
        the base it was trained on, and a full fine-tune was tuned from it. A run that recorded no base
        (made by hand) means the project's.
        """
        run_dir = Path(self.path)
        adapter, model = run_dir / "adapter", run_dir / "model"
        base_ref = self.base_model or project_base
        if (adapter / "adapter_config.json").is_file():
            return RunModel(self.id, run_dir, self.trained_method(), base_ref, project_base, adapter, None)
        if (model / "config.json").is_file():
            return RunModel(self.id, run_dir, self.trained_method(), base_ref, project_base, None, model)
        raise UsageError(f"run {self.id} has no trained adapter or model yet (status {self.status})",
                         f"finish it with `tunesmith train --resume {self.id}`")

    def trained_method(self) -> str:
        """lora | qlora | full, from plan.json (`settings.method.value`), else the registry row."""
        settings = self.plan.get("settings")
        method = settings.get("method") if isinstance(settings, dict) else None
        value = method.get("value") if isinstance(method, dict) else None
        return str(value or self.method or "lora")


@dataclass(frozen=True)
class RunModel:
    """A run's output: its adapter and the base it was trained on, or a full fine-tune's checkpoint."""

    run_id: str
    run_dir: Path
    method: str
    #: the base the run was trained on (recorded when it started)
    base_ref: str
    #: the project's base_model now; it differs from base_ref when tunesmith.yaml was edited since
    project_base: str
    adapter_dir: Path | None
    model_dir: Path | None  # a full fine-tune's checkpoint, complete on its own

    @property
    def warning(self) -> str | None:
        """What to tell the user once when the project's base moved on since this run was trained."""
        if not self.project_base or self.base_ref == self.project_base:
            return None
        return (f"run {self.run_id} was trained on {self.base_ref!r}, not on the project's base_model "
                f"{self.project_base!r}: using {self.base_ref!r}")

    @functools.cached_property
    def base_path(self) -> Path | None:
        """The base's checkpoint directory for an adapter (resolved on first use); None for a full fine-tune."""
        return self.resolve_base() if self.adapter_dir is not None else None

    def resolve_base(self) -> Path:
        """The checkpoint directory of the base the run was trained on; an error naming both bases if it is gone."""
        from tunesmith.models.resolve import resolve_model

        try:
            return resolve_model(self.base_ref).path
        except ModelError as exc:
            now = f"; the project's base_model is now {self.project_base!r}" if self.warning else ""
            raise ModelError(
                f"run {self.run_id} was trained on {self.base_ref!r}, which cannot be loaded any more ({exc.message})"
                + now,
                f"put {self.base_ref!r} back (a run is only used on the base it was trained on), "
                "or train a new run on the project's base: tunesmith train") from None

    @property
    def tokenizer_dir(self) -> Path:
        """Where the tokenizer training used lives: saved next to the adapter / model, else the base's."""
        for candidate in (self.adapter_dir, self.model_dir):
            if candidate is not None and any((candidate / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
                return candidate
        return self.checkpoint_dir

    @property
    def checkpoint_dir(self) -> Path:
        """The directory holding the architecture's config.json (the base, or the full model)."""
        if self.model_dir is not None:
            return self.model_dir
        assert self.base_path is not None  # model() gives every run an adapter or a model
        return self.base_path


_COLUMNS = ("id, status, created_at, updated_at, finished_at, project_root, base_model, method, metrics, error, "
            "summary, test_seal_sha256")


def _loads(text: str | None, default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return default


# --- the registry ------------------------------------------------------------------------------


class RunRegistry:
    """The runs of one project: `<root>/registry.sqlite` plus one directory per run under `root`.

    `root` is the runs directory (a project's `train.runs_dir`: `Project.registry()` opens it). Reading
    a project that has no runs creates nothing.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.db_path = self.root / REGISTRY_FILENAME

    @classmethod
    def for_project(cls, project_root: str | Path) -> RunRegistry:
        """The registry of the project in `project_root`: its `train.runs_dir`, or `<project_root>/runs`
        when there is no tunesmith.yaml there."""
        from tunesmith.project import PROJECT_FILE, load_project

        if (Path(project_root) / PROJECT_FILE).is_file():
            return load_project(project_root).registry()
        return cls(runs_root(project_root))

    def __repr__(self) -> str:
        return f"RunRegistry({str(self.root)!r})"

    def run_dir(self, run_id: str) -> Path:
        return self.root / run_id

    # -- connections --

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn sqlite failures into RegistryErrors that say what to do."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if "locked" in text or "busy" in text:
                raise RegistryError(
                    f"{self.db_path}: the run registry stayed locked for over {BUSY_TIMEOUT_S:.0f} s ({exc})",
                    "another tunesmith process is writing to it; wait for it, then try again",
                ) from None
            if "disk is full" in text or ("disk i/o" in text and self._disk_nearly_full()):
                # SQLite words a write the disk had no room for as a "disk I/O error" as often as not
                raise RegistryError(f"cannot write {self.db_path}: the disk is full ({exc})",
                                    "free some space and run the command again") from None
            if "unable to open" in text or "readonly" in text or "read-only" in text or "disk i/o" in text:
                raise RegistryError(
                    f"{self.db_path}: the run registry cannot be opened for writing ({exc})",
                    f"check that {self.root} is a writable directory and {REGISTRY_FILENAME} a regular file",
                ) from None
            raise self._corrupt(exc) from None
        except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
            raise self._corrupt(exc) from None

    def _disk_nearly_full(self) -> bool:
        try:
            return shutil.disk_usage(self.root).free < 1 << 20
        except OSError:
            return False

    def _corrupt(self, exc: BaseException) -> RegistryError:
        return RegistryError(
            f"{self.db_path}: not a readable run registry ({exc})",
            f"it is not a SQLite database or it is damaged: move it away (e.g. `mv {self.db_path} "
            f"{self.db_path}.bad`) and tunesmith starts a new one; the run directories under {self.root} are kept",
        )

    @contextlib.contextmanager
    def _connect(self, *, create: bool) -> Iterator[sqlite3.Connection | None]:
        """A fresh connection with the schema up to date; None when reading a registry that doesn't exist."""
        if not create and not self.db_path.exists():
            yield None
            return
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RegistryError(f"{self.root}: cannot create the runs directory ({exc})",
                                    "check that the project directory is writable and `runs` is not a file") from None
        if self.db_path.exists() and not self.db_path.is_file():
            raise RegistryError(f"{self.db_path}: not a file", "move it away; tunesmith keeps its run registry there")
        with self._errors():
            conn = sqlite3.connect(str(self.db_path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            with self._errors():
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                _use_wal(conn)
                migrate(conn)
                yield conn
        finally:
            conn.close()

    def connection(self, *, create: bool = True) -> contextlib.AbstractContextManager[sqlite3.Connection | None]:
        """A connection with the schema up to date, for other stores that live in the registry (evaluations)."""
        return self._connect(create=create)

    def _row(self, conn: sqlite3.Connection, run_id: str) -> sqlite3.Row | tuple | None:
        return conn.execute(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()

    def _record(self, row: tuple) -> RunRecord:
        (run_id, status, created_at, updated_at, finished_at, project_root, base_model, method,
         metrics, error, summary, test_seal) = row
        return RunRecord(
            id=run_id, path=self.run_dir(run_id), status=status, created_at=created_at, updated_at=updated_at,
            finished_at=finished_at, base_model=base_model, method=method, metrics=_loads(metrics, {}) or {},
            error=error, summary=_loads(summary, None), project_root=project_root, test_seal_sha256=test_seal,
        )

    def _recent_ids(self, conn: sqlite3.Connection | None, n: int = 5) -> list[str]:
        if conn is None:
            return []
        rows = conn.execute("SELECT id FROM runs ORDER BY created_at DESC, rowid DESC LIMIT ?", (n,)).fetchall()
        return [r[0] for r in rows]

    def _not_found(self, conn: sqlite3.Connection | None, ref: str) -> RunNotFoundError:
        recent = self._recent_ids(conn)
        if recent:
            hint = f"recent runs: {', '.join(recent)}; see them all with `tunesmith runs list`"
        else:
            hint = "there are no runs yet; `tunesmith runs list` shows them once there are"
        if ref == "latest":
            return RunNotFoundError(f"no runs yet in {self.root}", hint)
        return RunNotFoundError(f"no run {ref!r} in {self.root}", hint)

    # -- writing --

    def create_run(
        self,
        run_id: str,
        *,
        project_root: str | Path,
        base_model: str,
        method: str,
        config: dict,
        plan: dict,
        data: dict,
    ) -> Path:
        """Create `root/<run_id>/` with config.json, plan.json and data.json, and register it as "created".

        Returns the run directory. Fails (and leaves nothing behind) if the id is taken. The registry
        row keeps `data["test_seal_sha256"]`, the seal the run was trained with.
        """
        if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id) or run_id in _RESERVED_REFS:
            raise UsageError(
                f"{run_id!r} is not a usable run id",
                "use letters, digits, '.', '_' and '-' only (up to 128, starting with a letter or digit); "
                "new_run_id() makes one",
            )
        documents = {"config.json": config, "plan.json": plan, "data.json": data}
        for name, doc in documents.items():
            if not isinstance(doc, dict):
                raise UsageError(f"{name} must be a JSON object, got {type(doc).__name__}", "pass a dict")
        with self._connect(create=True) as conn:
            assert conn is not None
            if self._row(conn, run_id) is not None:
                raise RegistryError(f"run {run_id!r} already exists in {self.root}", "pick another id (new_run_id())")
            run_dir = self.run_dir(run_id)
            try:
                run_dir.mkdir()
            except FileExistsError:
                raise RegistryError(f"{run_dir} already exists", "pick another run id (new_run_id()), or move it away") from None
            except OSError as exc:
                raise RegistryError(f"{run_dir}: cannot create the run directory ({exc})",
                                    f"check that {self.root} is writable") from None
            try:
                for name, doc in documents.items():
                    write_json_atomic(run_dir / name, _plain(doc))
                now = _now()
                with _write_tx(conn):
                    conn.execute(
                        f"INSERT INTO runs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (run_id, "created", now, now, None, str(Path(project_root).resolve()), base_model, method,
                         "{}", None, None, seal if isinstance(seal := data.get("test_seal_sha256"), str) else None),
                    )
            except sqlite3.IntegrityError:
                shutil.rmtree(run_dir, ignore_errors=True)
                raise RegistryError(f"run {run_id!r} already exists in {self.root}",
                                    "pick another id (new_run_id())") from None
            except BaseException:
                shutil.rmtree(run_dir, ignore_errors=True)
                raise
        return run_dir

    def set_status(
        self,
        run_id: str,
        status: RunStatus,
        *,
        metrics: dict | None = None,
        error: str | None = None,
        summary: dict | None = None,
    ) -> RunRecord:
        """Record a status change; returns the updated record.

        Terminal states (interrupted, failed, completed) set finished_at; going back to created/running
        clears it. `metrics` / `summary`, when given, replace the stored ones and are written to
        `metrics.json` / `summary.json` in the run directory. An error message is kept while the run
        stays failed or interrupted and cleared when it runs or completes again.
        """
        if status not in STATUSES:
            raise UsageError(f"{status!r} is not a run status", f"use one of: {', '.join(STATUSES)}")
        for name, doc in (("metrics", metrics), ("summary", summary)):
            if doc is not None and not isinstance(doc, dict):
                raise UsageError(f"{name} must be a dict, got {type(doc).__name__}", "pass a dict")
        metrics_plain = _plain(metrics) if metrics is not None else None
        summary_plain = _plain(summary) if summary is not None else None
        with self._connect(create=False) as conn:
            if conn is None or self._row(conn, run_id) is None:
                raise self._not_found(conn, run_id)
            run_dir = self.run_dir(run_id)
            if metrics_plain is not None:
                write_json_atomic(run_dir / "metrics.json", metrics_plain)
            if summary_plain is not None:
                write_json_atomic(run_dir / "summary.json", summary_plain)
            now = _now()
            with _write_tx(conn):
                row = self._row(conn, run_id)
                if row is None:  # removed between the check and the lock
                    raise self._not_found(None, run_id)
                old = self._record(row)
                new_error = error if error is not None else (old.error if status in ("failed", "interrupted") else None)
                conn.execute(
                    "UPDATE runs SET status = ?, updated_at = ?, finished_at = ?, metrics = ?, error = ?, summary = ? "
                    "WHERE id = ?",
                    (
                        status,
                        now,
                        now if status in TERMINAL_STATUSES else None,
                        _dumps(metrics_plain) if metrics_plain is not None else _dumps(old.metrics),
                        new_error,
                        _dumps(summary_plain) if summary_plain is not None else
                        (_dumps(old.summary) if old.summary is not None else None),
                        run_id,
                    ),
                )
                return self._record(self._row(conn, run_id))

    # -- reading --

    def get(self, ref: str) -> RunRecord:
        """The run named by `ref`: an exact id, a unique id prefix, or `latest`."""
        ref = (ref or "").strip()
        if "/" in ref or "\\" in ref:  # a path to a run directory: use its name
            ref = Path(ref.rstrip("/\\")).name
        with self._connect(create=False) as conn:
            if not ref:
                raise RunNotFoundError("no run given", self._not_found(conn, "").hint)
            if conn is None:
                raise self._not_found(None, ref)
            if ref == "latest":
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM runs ORDER BY created_at DESC, rowid DESC LIMIT 1").fetchone()
                if row is None:
                    raise self._not_found(conn, ref)
                return self._record(row)
            row = self._row(conn, ref)
            if row is not None:
                return self._record(row)
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM runs WHERE substr(id, 1, ?) = ? ORDER BY created_at DESC, rowid DESC LIMIT 21",
                (len(ref), ref),
            ).fetchall()
            if len(rows) == 1:
                return self._record(rows[0])
            if not rows:
                raise self._not_found(conn, ref)
            ids = [r[0] for r in rows]
            shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5}{'+' if len(ids) > 20 else ''} more" if len(ids) > 5 else "")
            raise RunNotFoundError(
                f"run {ref!r} is ambiguous: it is the start of {shown}",
                "give more of the id (or the whole id); `tunesmith runs list` shows them all",
                details=ids[:20],
            )

    def list(self, limit: int | None = 50) -> list[RunRecord]:  # noqa: A003  (the registry's own verb)
        """Runs, newest first; `limit` None or <= 0 means all of them."""
        with self._connect(create=False) as conn:
            if conn is None:
                return []
            sql = f"SELECT {_COLUMNS} FROM runs ORDER BY created_at DESC, rowid DESC"
            if limit is not None and limit > 0:
                rows = conn.execute(sql + " LIMIT ?", (int(limit),)).fetchall()
            else:
                rows = conn.execute(sql).fetchall()
            return [self._record(r) for r in rows]

    # -- the seal each evaluation was scored on --

    def set_evaluation_seal(self, evaluation_id: int, seal: str | None) -> None:
        """Record the test seal (SHA-256) the evaluation `evaluation_id` was scored on."""
        with self._connect(create=True) as conn:
            assert conn is not None
            conn.execute("UPDATE evaluations SET seal_sha256 = ? WHERE id = ?", (seal, int(evaluation_id)))

    def evaluation_seal(self, evaluation_id: int) -> str | None:
        """The seal the evaluation was scored on; None when unknown (older evaluation, no such id)."""
        with self._connect(create=False) as conn:
            if conn is None:
                return None
            row = conn.execute("SELECT seal_sha256 FROM evaluations WHERE id = ?", (int(evaluation_id),)).fetchone()
            return row[0] if row else None

    def scored_on(self, subject: str) -> ScoredOn | None:
        """The latest test-set evaluation of `subject` (a run id or "base"); None when it has none."""
        with self._connect(create=False) as conn:
            if conn is None:
                return None
            row = conn.execute(
                "SELECT id, created_at, seal_sha256 FROM evaluations WHERE subject = ? AND split = 'test' "
                "ORDER BY created_at DESC, id DESC LIMIT 1", (subject,)).fetchone()
            return ScoredOn(int(row[0]), row[1], row[2]) if row else None


def key_metrics(metrics: dict[str, Any], names: tuple[str, ...] = ("eval_loss", "train_loss")) -> dict[str, Any]:
    """The headline metrics present in `metrics`, in `names` order (for tables)."""
    out = {}
    for name in names:
        value = metrics.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value if math.isfinite(value) else str(value)
    return out
