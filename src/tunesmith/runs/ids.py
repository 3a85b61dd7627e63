"""Run ids and paths: where runs live, the id a new run gets, the statuses it passes through, and
the facts a run records about its surroundings (test seal hash, library versions)."""

from __future__ import annotations

import re
import secrets
import threading
import time
import unicodedata
from pathlib import Path
from typing import Literal, get_args

RUNS_DIRNAME = "runs"

RunStatus = Literal["created", "running", "interrupted", "failed", "completed"]
STATUSES: tuple[str, ...] = get_args(RunStatus)
TERMINAL_STATUSES = frozenset({"interrupted", "failed", "completed"})

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RESERVED_REFS = frozenset({"latest"})


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
