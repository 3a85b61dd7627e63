"""Deterministic train/test split, sealed before anyone curates.

Each example's side comes from a hash of its normalised input, so re-running gives the same split
and a growing dataset keeps its old test rows in test. Near-duplicates form clusters that take the
smallest hash of their members, so a cluster never straddles the split and joining a cluster can
only move it towards test, never out of it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunesmith.data.checks.dedup import input_key
from tunesmith.data.checks.near import MAIN, NearIndex
from tunesmith.data.formats import parse_record
from tunesmith.data.minhash import UnionFind
from tunesmith.data.reader import iter_raw, iter_raw_lines
from tunesmith.errors import SealError, UsageError
from tunesmith.io import atomic_writer, sha256_file, write_json_atomic

SEAL_VERSION = 1


@dataclass
class SplitResult:
    train: Path
    test: Path
    seal: Path
    train_rows: int
    test_rows: int
    unparsed_rows: int
    kept_from_previous_seal: int | None = None
    dropped_from_previous_seal: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def seal_path_for(test: Path) -> Path:
    return test.with_name(test.stem + ".seal.json")


def row_hash(raw: bytes) -> str:
    return hashlib.sha256(raw.strip()).hexdigest()


def split_file(source: Path, train: Path, test: Path, *, test_fraction: float = 0.15,
               near_threshold: float = 0.8) -> SplitResult:
    if not 0.0 < test_fraction < 1.0:
        raise UsageError(f"test fraction {test_fraction} is out of range", "use a value between 0.05 and 0.5, e.g. 0.15")
    if source.resolve() in (train.resolve(), test.resolve()):
        raise UsageError(f"{source} would be overwritten by the split", "write train/test to other paths")
    score: dict[int, float] = {}  # line -> position in [0, 1)
    near = NearIndex(near_threshold)
    unparsed = 0
    for raw in iter_raw(source):
        ex = parse_record(raw.value, raw.line, raw.offset) if raw.error is None else None
        if ex is None or ex.problems:
            unparsed += 1  # kept in train, where `check` reports it
            continue
        score[raw.line] = input_key(ex) / 2.0**64
        near.add(ex.dialogue_text(), raw.line, raw.offset, MAIN)
    uf = UnionFind()
    for i, j, _ in near.verified_pairs({MAIN: source}):
        uf.union(near.lines[i], near.lines[j])
    for group in uf.groups():
        lowest = min(score[ln] for ln in group)
        for ln in group:
            score[ln] = lowest
    test_lines = {ln for ln, s in score.items() if s < test_fraction}

    seal = seal_path_for(test)
    previous = _load_seal(seal) if seal.exists() else None
    rows: list[str] = []
    n_train = 0
    with atomic_writer(train, "wb") as ftrain, atomic_writer(test, "wb") as ftest:
        for lineno, raw_line in iter_raw_lines(source):
            if not raw_line.strip():
                continue
            if lineno in test_lines:
                ftest.write(raw_line + b"\n")
                rows.append(row_hash(raw_line))
            else:
                ftrain.write(raw_line + b"\n")
                n_train += 1
    write_json_atomic(seal, {
        "version": SEAL_VERSION,
        "source": str(source),
        "test_fraction": test_fraction,
        "near_duplicate_threshold": near_threshold,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "file_sha256": sha256_file(test),
        "train_sha256": sha256_file(train),
        "rows": rows,
    })
    result = SplitResult(train, test, seal, n_train, len(rows), unparsed)
    if previous is not None:
        old = set(previous["rows"])
        result.kept_from_previous_seal = len(old & set(rows))
        result.dropped_from_previous_seal = len(old - set(rows))
    return result


def _load_seal(seal: Path) -> dict[str, Any]:
    try:
        data = json.loads(seal.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise ValueError("no rows")
        return data
    except (OSError, ValueError) as exc:
        raise SealError(f"{seal}: the seal is unreadable ({exc})", "re-create it with `tunesmith split`") from None


@dataclass
class SealReport:
    test: Path
    ok: bool
    rows: int
    changed: list[int] = field(default_factory=list)
    added: list[int] = field(default_factory=list)
    removed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"test": str(self.test), "ok": self.ok, "rows": self.rows, "changed_lines": self.changed,
                "added_lines": self.added, "removed_rows": self.removed}


def verify_seal(test: Path, seal: Path | None = None) -> SealReport:
    """Compare a test file with its seal: which lines changed, were added, or went missing."""
    seal = seal or seal_path_for(test)
    if not seal.exists():
        raise SealError(f"{seal}: no seal for {test}", "create the split (and its seal) with `tunesmith split`")
    if not test.exists():
        raise SealError(f"{test}: the sealed test set is missing", "restore it, or re-split with `tunesmith split`")
    data = _load_seal(seal)
    sealed_rows: list[str] = data["rows"]
    current = [(i, row_hash(ln)) for i, ln in iter_raw_lines(test) if ln.strip()]
    report = SealReport(test, True, len(current))
    if sha256_file(test) == data.get("file_sha256"):
        return report
    sealed_set = set(sealed_rows)
    current_set = {h for _, h in current}
    if len(current) == len(sealed_rows):
        report.changed = [ln for (ln, h), want in zip(current, sealed_rows) if h != want]
    else:
        report.added = [ln for ln, h in current if h not in sealed_set]
        report.removed = len(sealed_set - current_set)
    # Only whitespace or line-ending changes: rows hash the same, the file does not.
    report.ok = not (report.changed or report.added or report.removed)
    return report
