"""Run directories and the run registry (the package's public names are all re-exported here).

Every training (and later evaluation) run gets a directory `<project>/runs/<run id>/` holding the files
that make it reproducible (`config.json`, `plan.json`, `data.json`, then `metrics.json`, `summary.json`,
the trainer's step log and checkpoints). `runs/registry.sqlite` indexes them: one row per run with its
status, timestamps and headline metrics, so `tunesmith runs list` never has to walk checkpoints.
Step logs are JSONL files the trainer writes into the run directory, not rows there.

- `ids`: run ids, statuses, where runs live, seal hashes, library versions
- `schema`: the SQLite migrations, WAL and write-transaction helpers, RegistryError
- `record`: RunRecord, RunModel, ScoredOn
- `registry`: RunRegistry, key_metrics

A project's registry is `Project.registry()` (it honours `train.runs_dir`); this package never imports
the project, which imports it.
"""

from tunesmith.runs.ids import (
    RUNS_DIRNAME,
    STATUSES,
    TERMINAL_STATUSES,
    RunStatus,
    library_versions,
    new_run_id,
    runs_root,
    seal_sha256,
    short_seal,
)
from tunesmith.runs.record import RunModel, RunRecord, ScoredOn
from tunesmith.runs.registry import REGISTRY_FILENAME, RunRegistry, key_metrics
from tunesmith.runs.schema import BUSY_TIMEOUT_S, MIGRATIONS, RegistryError, migrate, schema_version

__all__ = [
    "BUSY_TIMEOUT_S",
    "MIGRATIONS",
    "REGISTRY_FILENAME",
    "RUNS_DIRNAME",
    "STATUSES",
    "TERMINAL_STATUSES",
    "RegistryError",
    "RunModel",
    "RunRecord",
    "RunRegistry",
    "RunStatus",
    "ScoredOn",
    "key_metrics",
    "library_versions",
    "migrate",
    "new_run_id",
    "runs_root",
    "schema_version",
    "seal_sha256",
    "short_seal",
]
