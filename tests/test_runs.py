"""Run directories and the SQLite run registry: ids, files, statuses, references, concurrency, damage."""

import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tunesmith.errors import RunNotFoundError, TunesmithError, UsageError
from tunesmith.runs import (
    MIGRATIONS,
    RUNS_DIRNAME,
    RegistryError,
    RunRecord,
    RunRegistry,
    library_versions,
    migrate,
    new_run_id,
    runs_root,
    schema_version,
)

ID_RE = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{4}(-[a-z0-9-]+)?$")


def _create(reg: RunRegistry, run_id: str, **kw) -> Path:
    args = dict(project_root=str(reg.root.parent), base_model="builtin:tiny", method="lora",
                config={"lr": 2e-4, "epochs": 3}, plan={"batch_size": 8},
                data={"train_sha256": "ab" * 32, "test_seal_sha256": "cd" * 32})
    args.update(kw)
    return reg.create_run(run_id, **args)


@pytest.fixture
def reg(tmp_path) -> RunRegistry:
    return RunRegistry(runs_root(tmp_path))


# --- ids and paths ----------------------------------------------------------------------------


def test_runs_root_and_registry_location(tmp_path):
    assert RUNS_DIRNAME == "runs"
    assert runs_root(tmp_path) == tmp_path / "runs"
    reg = RunRegistry(runs_root(tmp_path))
    assert reg.db_path == tmp_path / "runs" / "registry.sqlite"


def test_new_run_id_is_sortable_unique_and_safe():
    ids = [new_run_id() for _ in range(3000)]  # same second: 4 random hex digits alone would collide
    assert all(ID_RE.match(i) for i in ids)
    assert len(set(ids)) == len(ids)
    named = new_run_id("  My Run: LoRA r=16 / über!  ")
    assert ID_RE.match(named) and named.endswith("-my-run-lora-r-16-uber")
    assert new_run_id("***") .count("-") == 2  # nothing usable in the name: no suffix
    assert len(new_run_id("x" * 500)) <= 20 + 41
    earlier = new_run_id()
    time.sleep(1.05)
    assert new_run_id()[:15] > earlier[:15]


def test_library_versions_has_python_and_omits_missing():
    v = library_versions()
    assert re.match(r"^\d+\.\d+\.\d+", v["python"])
    assert "tunesmith" in v
    assert all(isinstance(x, str) for x in v.values())
    assert set(v) <= {"python", "torch", "transformers", "peft", "trl", "accelerate", "tunesmith"}


# --- create / status / files ---------------------------------------------------------------------


def test_create_writes_files_atomically_and_registers(reg):
    run_dir = _create(reg, "20240101-000000-abcd-first")
    assert run_dir == reg.root / "20240101-000000-abcd-first" and run_dir.is_dir()
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "data.json", "plan.json"]  # no temp files
    assert json.loads((run_dir / "config.json").read_text()) == {"lr": 2e-4, "epochs": 3}
    assert json.loads((run_dir / "plan.json").read_text()) == {"batch_size": 8}
    assert json.loads((run_dir / "data.json").read_text())["test_seal_sha256"] == "cd" * 32
    rec = reg.get("20240101-000000-abcd-first")
    assert isinstance(rec, RunRecord)
    assert rec.status == "created" and rec.finished_at is None and rec.error is None
    assert rec.metrics == {} and rec.summary is None
    assert rec.base_model == "builtin:tiny" and rec.method == "lora" and rec.path == run_dir
    assert rec.created_at == rec.updated_at and rec.created_at.endswith("+00:00")
    d = rec.to_dict()
    assert d["path"] == str(run_dir) and d["status"] == "created"
    json.dumps(d)  # plain data


def test_record_reads_its_documents_from_the_run_dir(reg):
    run_dir = _create(reg, "r1")
    rec = reg.get("r1")
    assert rec.config == {"lr": 2e-4, "epochs": 3}
    assert rec.plan == {"batch_size": 8}
    assert rec.data["train_sha256"] == "ab" * 32
    assert "config" not in rec.to_dict()  # the row only; `runs show` adds the documents
    (run_dir / "plan.json").write_text("{broken")
    (run_dir / "data.json").unlink()
    assert rec.plan == {} and rec.data == {}


def test_create_stores_non_json_natives_as_plain_data(reg):
    class Scalar:
        def item(self):
            return 0.5

    run_dir = _create(reg, "r1", config={"path": Path("/x/y"), "lr": Scalar(), "tags": {"b", "a"}})
    assert json.loads((run_dir / "config.json").read_text()) == {"path": "/x/y", "lr": 0.5, "tags": ["a", "b"]}


def test_create_refuses_taken_and_unsafe_ids(reg):
    _create(reg, "run-a")
    with pytest.raises(RegistryError, match="already exists"):
        _create(reg, "run-a")
    (reg.root / "stray").mkdir()  # a directory nobody registered
    with pytest.raises(RegistryError, match="already exists"):
        _create(reg, "stray")
    assert [r.id for r in reg.list()] == ["run-a"]
    for bad in ("", "../escape", "a/b", ".hidden", "latest", "x" * 200, "sp ace"):
        with pytest.raises(UsageError):
            _create(reg, bad)
    assert not (reg.root.parent / "escape").exists()


def test_create_failure_leaves_no_directory(reg, monkeypatch):
    import tunesmith.runs.registry as registry_module

    def boom(path, obj):
        raise OSError("disk full")

    monkeypatch.setattr(registry_module, "write_json_atomic", boom)
    with pytest.raises(OSError):
        _create(reg, "doomed")
    assert not (reg.root / "doomed").exists()
    assert reg.list() == []


def test_status_transitions_timestamps_and_files(reg):
    run_dir = _create(reg, "r1")
    created = reg.get("r1")
    running = reg.set_status("r1", "running", metrics={"train_loss": 2.5, "step": 10})
    assert running.status == "running" and running.finished_at is None
    assert running.updated_at > created.updated_at
    assert running.metrics == {"train_loss": 2.5, "step": 10}
    assert json.loads((run_dir / "metrics.json").read_text()) == {"train_loss": 2.5, "step": 10}

    failed = reg.set_status("r1", "failed", error="CUDA out of memory")
    assert failed.status == "failed" and failed.finished_at is not None and failed.error == "CUDA out of memory"
    assert failed.metrics == {"train_loss": 2.5, "step": 10}  # kept when not given

    resumed = reg.set_status("r1", "running")
    assert resumed.finished_at is None and resumed.error is None

    interrupted = reg.set_status("r1", "interrupted", error="Ctrl-C at step 40")
    assert interrupted.finished_at and interrupted.error == "Ctrl-C at step 40"
    assert reg.set_status("r1", "interrupted").error == "Ctrl-C at step 40"  # kept while still interrupted

    done = reg.set_status("r1", "completed", metrics={"eval_loss": 1.1, "train_loss": 0.9},
                          summary={"adapter": "adapter/", "steps": 120})
    assert done.status == "completed" and done.finished_at == done.updated_at and done.error is None
    assert done.metrics == {"eval_loss": 1.1, "train_loss": 0.9}
    assert done.summary == {"adapter": "adapter/", "steps": 120}
    assert json.loads((run_dir / "summary.json").read_text()) == {"adapter": "adapter/", "steps": 120}
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.json", "data.json", "metrics.json", "plan.json", "summary.json"]
    assert reg.get("r1").to_dict() == done.to_dict()


def test_set_status_rejects_unknown_status_and_run(reg):
    _create(reg, "r1")
    with pytest.raises(UsageError, match="not a run status"):
        reg.set_status("r1", "exploded")  # type: ignore[arg-type]
    with pytest.raises(RunNotFoundError, match="nope"):
        reg.set_status("nope", "running")
    assert reg.get("r1").status == "created"


# --- references -----------------------------------------------------------------------------------


def test_list_newest_first_with_limit(reg):
    ids = [f"2024010{i}-000000-000{i}" for i in range(1, 6)]
    for i in ids:
        _create(reg, i)
    assert [r.id for r in reg.list()] == ids[::-1]
    assert [r.id for r in reg.list(limit=2)] == ids[::-1][:2]
    assert len(reg.list(limit=0)) == 5


def test_get_by_exact_id_prefix_and_latest(reg):
    _create(reg, "20240101-120000-aaaa-alpha")
    _create(reg, "20240101-120000-aaab-beta")
    _create(reg, "20240102-090000-cccc")
    assert reg.get("latest").id == "20240102-090000-cccc"
    assert reg.get("20240101-120000-aaaa").id == "20240101-120000-aaaa-alpha"
    assert reg.get("20240102").id == "20240102-090000-cccc"
    assert reg.get("20240101-120000-aaab-beta").id == "20240101-120000-aaab-beta"
    assert reg.get(f"runs/20240102-090000-cccc/").id == "20240102-090000-cccc"  # a path to the run dir
    # an id that is also a prefix of another id is still found exactly
    _create(reg, "20240103-000000-dddd")
    _create(reg, "20240103-000000-dddd-more")
    assert reg.get("20240103-000000-dddd").id == "20240103-000000-dddd"


def test_ambiguous_prefix_names_the_candidates(reg):
    _create(reg, "20240101-120000-aaaa-alpha")
    _create(reg, "20240101-120000-aaab-beta")
    with pytest.raises(RunNotFoundError) as exc:
        reg.get("20240101-120000-aaa")
    msg = exc.value.message
    assert "ambiguous" in msg and "20240101-120000-aaaa-alpha" in msg and "20240101-120000-aaab-beta" in msg
    assert "tunesmith runs list" in exc.value.hint
    assert isinstance(exc.value, TunesmithError)


def test_unknown_ref_hint_lists_recent_runs(reg):
    ids = [f"2024010{i}-000000-000{i}" for i in range(1, 8)]
    for i in ids:
        _create(reg, i)
    with pytest.raises(RunNotFoundError) as exc:
        reg.get("nonesuch")
    assert "'nonesuch'" in exc.value.message
    hint = exc.value.hint
    assert "tunesmith runs list" in hint
    assert all(i in hint for i in ids[-5:]) and ids[0] not in hint and ids[1] not in hint  # the 5 newest


def test_empty_project_reads_create_nothing(tmp_path):
    reg = RunRegistry(runs_root(tmp_path))
    assert reg.list() == []
    with pytest.raises(RunNotFoundError, match="no runs yet") as exc:
        reg.get("latest")
    assert "tunesmith runs list" in exc.value.hint
    with pytest.raises(RunNotFoundError, match="'abc'"):
        reg.get("abc")
    with pytest.raises(RunNotFoundError):
        reg.set_status("abc", "running")
    assert not (tmp_path / "runs").exists()


# --- the database itself -------------------------------------------------------------------------


def test_wal_mode_and_schema_version(reg):
    _create(reg, "r1")
    conn = sqlite3.connect(reg.db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema_version() == len(MIGRATIONS) >= 1
    finally:
        conn.close()


def test_migrations_run_once_and_later_ones_apply(reg, monkeypatch):
    _create(reg, "r1")
    calls = []

    def add_evals(conn):
        calls.append(1)
        conn.execute("CREATE TABLE evals (run_id TEXT REFERENCES runs(id), score REAL)")

    monkeypatch.setattr("tunesmith.runs.schema.MIGRATIONS", [*MIGRATIONS, add_evals])
    assert reg.get("r1").id == "r1"
    assert reg.list()[0].id == "r1"
    assert calls == [1]
    conn = sqlite3.connect(reg.db_path, isolation_level=None)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1
        conn.execute("SELECT * FROM evals").fetchall()
        assert migrate(conn) == len(MIGRATIONS) + 1 and calls == [1]
    finally:
        conn.close()


def test_registry_from_a_newer_tunesmith_is_refused(reg):
    _create(reg, "r1")
    conn = sqlite3.connect(reg.db_path)
    conn.execute(f"PRAGMA user_version = {schema_version() + 5}")
    conn.commit()
    conn.close()
    with pytest.raises(RegistryError, match="newer") as exc:
        reg.list()
    assert "upgrade" in exc.value.hint


@pytest.mark.parametrize("content", [b"this is not a database at all, just some text\n" * 40,
                                     b"SQLite format 3\x00" + b"\xff" * 4000])
def test_corrupt_registry_file_says_move_it_away(reg, content):
    _create(reg, "r1")
    for extra in ("-wal", "-shm"):
        Path(str(reg.db_path) + extra).unlink(missing_ok=True)
    reg.db_path.write_bytes(content)
    for call in (reg.list, lambda: reg.get("latest"), lambda: _create(reg, "r2"),
                 lambda: reg.set_status("r1", "running")):
        with pytest.raises(RegistryError) as exc:
            call()
        assert str(reg.db_path) in exc.value.message
        assert "not a SQLite database" in exc.value.hint and "move it away" in exc.value.hint
    assert not (reg.root / "r2").exists()
    assert (reg.root / "r1" / "config.json").exists()  # run directories are untouched


def test_registry_path_that_is_a_directory(reg):
    reg.db_path.mkdir(parents=True)
    with pytest.raises(RegistryError, match="not a file"):
        reg.list()


# --- concurrency ----------------------------------------------------------------------------------


def test_two_registries_in_threads_write_concurrently(tmp_path):
    errors = []

    def worker(tag: str) -> None:
        reg = RunRegistry(runs_root(tmp_path))  # its own instance, like another process
        try:
            for i in range(25):
                run_id = f"{tag}-{i:02d}"
                _create(reg, run_id)
                reg.set_status(run_id, "running", metrics={"train_loss": float(i)})
                reg.set_status(run_id, "completed", metrics={"eval_loss": float(i)}, summary={"tag": tag})
                reg.list(limit=5)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    reg = RunRegistry(runs_root(tmp_path))
    runs = reg.list(limit=0)
    assert len(runs) == 75 and all(r.status == "completed" for r in runs)
    assert all(json.loads((r.path / "summary.json").read_text())["tag"] == r.id[0] for r in runs)
    conn = sqlite3.connect(reg.db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


_WORKER = """
import sys
from tunesmith.runs import RunRegistry, runs_root
project, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
reg = RunRegistry(runs_root(project))
for i in range(n):
    run_id = f"{tag}-{i:03d}"
    reg.create_run(run_id, project_root=project, base_model="m", method="lora", config={}, plan={}, data={})
    reg.set_status(run_id, "running")
    reg.set_status(run_id, "completed", metrics={"eval_loss": i / 10})
    reg.get(run_id)
print("ok")
"""


def test_two_processes_create_the_registry_and_write_at_once(tmp_path):
    # Both start on a project with no registry yet: creation, WAL switch and migration race too.
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path), tag, "30"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in ("p", "q")]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.strip() == "ok"
    reg = RunRegistry(runs_root(tmp_path))
    runs = reg.list(limit=0)
    assert len(runs) == 60
    assert {r.status for r in runs} == {"completed"}
    assert sorted(r.id for r in runs) == sorted([f"p-{i:03d}" for i in range(30)] + [f"q-{i:03d}" for i in range(30)])
    assert reg.get("p-029").metrics == {"eval_loss": 2.9}


def test_a_lock_held_too_long_is_a_clear_error(reg, monkeypatch):
    _create(reg, "r1")
    monkeypatch.setattr("tunesmith.runs.registry.BUSY_TIMEOUT_S", 0.2)
    other = sqlite3.connect(reg.db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process mid-write
        assert reg.get("r1").status == "created"  # readers are not blocked (WAL)
        with pytest.raises(RegistryError, match="locked") as exc:
            reg.set_status("r1", "running")
        assert "another tunesmith process" in exc.value.hint
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert reg.set_status("r1", "running").status == "running"


# --- the test seal a run was trained and scored on ---------------------------------------------------


def test_create_records_the_test_seal_hash(reg):
    _create(reg, "r1")
    _create(reg, "r2", data={"train_sha256": "ab" * 32})  # a hosted or hand-made run without a seal hash
    assert reg.get("r1").test_seal_sha256 == "cd" * 32
    assert reg.get("r1").to_dict()["test_seal_sha256"] == "cd" * 32
    assert reg.get("r2").test_seal_sha256 is None
    assert {r.id: r.test_seal_sha256 for r in reg.list()} == {"r1": "cd" * 32, "r2": None}


def test_seal_sha256_is_the_hash_of_the_seal_file(tmp_path):
    from tunesmith.data.split import seal_path_for
    from tunesmith.io import sha256_file
    from tunesmith.runs import seal_sha256

    test = tmp_path / "data" / "test.jsonl"
    assert seal_sha256(test) is None  # nothing sealed yet
    test.parent.mkdir()
    test.write_text('{"messages": []}\n')
    seal_path_for(test).write_text('{"rows": []}\n')
    assert seal_sha256(test) == sha256_file(seal_path_for(test))


def _old_registry(reg: RunRegistry, versions: int = 2) -> None:
    """A registry as the tunesmith before seal hashes wrote it: schema version 2, one run, one evaluation."""
    reg.root.mkdir(parents=True)
    conn = sqlite3.connect(reg.db_path, isolation_level=None)
    try:
        for migration in MIGRATIONS[:versions]:
            migration(conn)
        conn.execute(f"PRAGMA user_version = {versions}")
        for run_id in ("old-run", "no-data-run"):
            conn.execute("INSERT INTO runs (id, status, created_at, updated_at, project_root, base_model, method) "
                         "VALUES (?, 'completed', '2024-01-01T00:00:00+00:00', '2024-01-01T00:00:00+00:00', '/p', "
                         "'builtin:tiny', 'lora')", (run_id,))
        conn.execute("INSERT INTO evaluations (subject, run_id, split, created_at, fingerprint) "
                     "VALUES ('old-run', 'old-run', 'test', '2024-01-02T00:00:00+00:00', 'fp')")
    finally:
        conn.close()
    (reg.root / "old-run").mkdir()
    (reg.root / "old-run" / "data.json").write_text(json.dumps({"train_sha256": "ab" * 32, "test_seal_sha256": "cd" * 32}))
    (reg.root / "no-data-run").mkdir()


def test_an_old_registry_is_migrated_and_keeps_working(reg):
    _old_registry(reg)
    old = reg.get("old-run")
    assert old.status == "completed" and old.test_seal_sha256 == "cd" * 32  # read back from its data.json
    assert reg.get("no-data-run").test_seal_sha256 is None
    scored = reg.scored_on("old-run")
    assert scored is not None and scored.seal_sha256 is None  # evaluated before seals were recorded
    _create(reg, "new-run")
    assert reg.get("new-run").test_seal_sha256 == "cd" * 32
    conn = sqlite3.connect(reg.db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema_version()
    finally:
        conn.close()


def test_evaluations_record_the_seal_they_were_scored_on(reg):
    from tunesmith.evaluate.store import EvalStore

    _create(reg, "r1")
    assert reg.scored_on("r1") is None  # never evaluated
    store = EvalStore(reg)
    first = store.save(subject="r1", run_id="r1", split="test", fingerprint="fp", settings={}, summary={}, items=[],
                       seal_sha256="cd" * 32)
    assert reg.evaluation_seal(first) == "cd" * 32
    second = store.save(subject="r1", run_id="r1", split="test", fingerprint="fp", settings={}, summary={}, items=[])
    reg.set_evaluation_seal(second, "ef" * 32)  # recorded afterwards, as an edit
    store.save(subject="r1", run_id="r1", split="regression", fingerprint="fp", settings={}, summary={}, items=[])
    scored = reg.scored_on("r1")
    assert scored is not None and scored.evaluation_id == second and scored.seal_sha256 == "ef" * 32
    assert reg.evaluation_seal(first) == "cd" * 32 and reg.evaluation_seal(10_000) is None
