"""RunRegistry: a project's runs, one SQLite row and one directory each, safe to share between processes.

Every operation opens its own short-lived connection in WAL mode with a busy timeout, so a training run
and a `runs list` (or two runs) can use the registry at once; writes take the write lock up front.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunesmith.errors import RunNotFoundError, UsageError
from tunesmith.io import write_json_atomic
from tunesmith.runs.ids import _RESERVED_REFS, _RUN_ID_RE, STATUSES, TERMINAL_STATUSES, RunStatus
from tunesmith.runs.record import RunRecord, ScoredOn
from tunesmith.runs.schema import BUSY_TIMEOUT_S, RegistryError, _use_wal, _write_tx, migrate

REGISTRY_FILENAME = "registry.sqlite"


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


_COLUMNS = ("id, status, created_at, updated_at, finished_at, project_root, base_model, method, metrics, error, "
            "summary, test_seal_sha256")


def _loads(text: str | None, default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return default


class RunRegistry:
    """The runs of one project: `<root>/registry.sqlite` plus one directory per run under `root`.

    `root` is the runs directory (a project's `train.runs_dir`: `Project.registry()` opens it). Reading
    a project that has no runs creates nothing.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.db_path = self.root / REGISTRY_FILENAME

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
