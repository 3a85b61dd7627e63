"""Deterministic train/test split, sealed before anyone curates.

Each example's side comes from a hash of its normalised input, so re-running gives the same split
and a growing dataset keeps its old test rows in test. Near-duplicates form clusters that take the
smallest hash of their members, so a cluster never straddles the split and joining a cluster can
only move it towards test, never out of it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunesmith.data.checks.dedup import split_key
from tunesmith.data.checks.near import MAIN, NearIndex
from tunesmith.data.formats import parse_record
from tunesmith.data.minhash import UnionFind
from tunesmith.data.reader import iter_raw, iter_raw_lines, looks_like_json_array, shown_name
from tunesmith.errors import DataError, OutputError, SealError, UsageError
from tunesmith.io import StagedFile, StagedGroup, commit_together, sha256_file
from tunesmith.json_numbers import huge_number
from tunesmith.paths import link_hint, symlink_problem
from tunesmith.project import TEST_FRACTION_MAX, TEST_FRACTION_MIN

SEAL_VERSION = 1


@dataclass
class SplitResult:
    train: Path
    test: Path
    seal: Path
    train_rows: int
    test_rows: int
    unparsed_rows: int
    #: Examples in the biggest group that has to stay on one side (near-duplicates, or the same input).
    largest_cluster: int = 1
    kept_from_previous_seal: int | None = None
    #: Rows of the previous seal that are gone from the source.
    dropped_from_previous_seal: int | None = None
    #: Rows of the previous seal that now went to train (only possible with reseal=True).
    moved_from_previous_seal: int | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def seal_path_for(test: Path) -> Path:
    return test.with_name(test.stem + ".seal.json")


def row_hash(raw: bytes) -> str:
    return hashlib.sha256(raw.strip()).hexdigest()


def check_test_fraction(value: float, name: str = "test fraction") -> None:
    """Hold a flag to the bounds tunesmith.yaml holds data.test_fraction to (one source: the project module)."""
    lo, hi = TEST_FRACTION_MIN, TEST_FRACTION_MAX
    if not lo <= value <= hi:  # also refuses NaN
        raise UsageError(f"{name} {value} is out of range ({lo}-{hi})",
                         f"use a value between {lo} and {hi}, e.g. 0.15 (data.test_fraction allows the same range)")


def split_file(source: Path, train: Path, test: Path, *, test_fraction: float = 0.15,
               near_threshold: float = 0.8, reseal: bool = False) -> SplitResult:
    """Split `source` into train and a sealed test set; all three outputs change together or not at all.

    Rows of an earlier seal stay in test (with their near-duplicates), whatever the new fraction or
    version: a sealed row never moves into train. reseal=True draws a new test set instead, and rows of
    the old one may then move into train.
    """
    check_test_fraction(test_fraction)
    seal = seal_path_for(test)
    _check_paths(source, train, test, seal)
    previous = _previous_seal(seal, reseal)
    old_rows = set(previous["rows"]) if previous is not None else set()
    score, unparsed, largest, held = _scores(source, near_threshold, set() if reseal else old_rows)
    if not score:
        raise _no_examples(source, unparsed)
    test_lines = {ln for ln, s in score.items() if s < test_fraction}
    warnings = _check_sides(source, len(score), len(test_lines), largest, test_fraction, near_threshold, held)
    with _Staging() as staging:
        ftrain, ftest = staging.open_hashed(train), staging.open_hashed(test)
        rows, n_train, moved = _write_rows(source, test_lines, ftrain, ftest, old_rows)
        if moved and not reseal:
            raise _leak_error(seal, train, len(moved))
        fseal = staging.open_hashed(seal)
        fseal.write((json.dumps({
            "version": SEAL_VERSION,
            "source": shown_name(source),  # a stream as the user named it, not its temporary copy
            "test_fraction": test_fraction,
            "near_duplicate_threshold": near_threshold,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "file_sha256": ftest.sha.hexdigest(),
            "train_sha256": ftrain.sha.hexdigest(),
            "rows": rows,
        }, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        # The test set and its seal first: should the last rename fail, verify still sees a consistent pair.
        staging.commit_in_order([ftest, fseal, ftrain])
    result = SplitResult(train, test, seal, n_train, len(rows), unparsed, largest, warnings=warnings)
    if previous is not None:
        _compare_with_previous(result, old_rows, set(rows), moved)
    return result


def _check_paths(source: Path, train: Path, test: Path, seal: Path) -> None:
    """One file per role: two roles on one path means one output silently overwrites the other."""
    roles = {"source": source, "train": train, "test": test, "test seal": seal}
    seen: dict[Path, str] = {}
    for role, path in roles.items():
        key = Path(os.path.realpath(path))  # unlike Path.resolve, never raises on a symlink loop: the writer names it
        if key in seen:
            raise UsageError(
                f"{seen[key]} and {role} are the same file ({path}): the split would overwrite one with the other",
                "give source, train and test different paths (--train/--test, or data.train/data.test in tunesmith.yaml)")
        seen[key] = role
    for role in ("train", "test", "test seal"):
        if roles[role].is_dir():  # caught before anything is written, not at the last rename
            raise OutputError(f"cannot write the {role} file {roles[role]}: it is a directory",
                              "name a file to write, not a directory (or move the directory away)")


def _scores(source: Path, near_threshold: float, sealed: set[str]) -> tuple[dict[int, float], int, int, int]:
    """Position in [0, 1) of every well-formed example by line (shared within a near-duplicate
    cluster; -1, always test, for a cluster holding a row of `sealed`), the number of malformed rows,
    the size of the largest group placed together, and how many rows the seal holds in test."""
    score: dict[int, float] = {}
    near = NearIndex(near_threshold)
    unparsed = 0
    for raw in iter_raw(source):
        ex = parse_record(raw.value, raw.line, raw.offset) if raw.error is None else None
        if ex is None or ex.problems:
            unparsed += 1  # kept in train, where `check` reports it
            continue
        score[raw.line] = split_key(ex) / 2.0**64
        near.add(ex.dialogue_text(), raw.line, raw.offset, MAIN)
    uf = UnionFind()
    for i, j, _ in near.verified_pairs({MAIN: source}):
        uf.union(near.lines[i], near.lines[j])
    for group in uf.groups():
        lowest = min(score[ln] for ln in group)
        for ln in group:
            score[ln] = lowest
    largest = max(Counter(score.values()).values(), default=0)  # rows sharing a score share a side
    held = 0
    if sealed:
        lines = {ln for ln, raw_line in iter_raw_lines(source) if ln in score and row_hash(raw_line) in sealed}
        keep = {s for ln, s in score.items() if ln in lines}
        for ln, s in score.items():
            if s in keep:
                score[ln] = -1.0
                held += 1
    return score, unparsed, largest, held


def _no_examples(source: Path, unparsed: int) -> DataError:
    if unparsed == 0:
        return DataError(f"{source}: holds no examples (the file is empty); nothing to split",
                         "add examples, one JSON object per line")
    if looks_like_json_array(source):
        out = source.with_name(f"{source.stem}.converted.jsonl")
        return DataError(f"{source}: the file is one JSON array, not JSON Lines; no example to split",
                         f"convert it: tunesmith convert {source} -o {out} --to messages, then split {out}")
    return DataError(f"{source}: none of its {unparsed} row(s) is a well-formed example; nothing to split",
                     f"the file must be JSONL, one example object per line; `tunesmith check {source}` says what is "
                     "wrong with each line")


def _check_sides(source: Path, n: int, n_test: int, largest: int, test_fraction: float,
                 near_threshold: float, held: int = 0) -> list[str]:
    """Refuse a split that leaves a side without examples; warn when the test share is far from the one asked for.

    Clusters go whole to one side (no leakage), so a giant cluster can swamp test_fraction.
    """
    n_train = n - n_test
    if largest > 1:
        why = (f"near-duplicates (and examples with the same input) go to one side together, and the largest "
               f"near-duplicate cluster holds {largest} examples (`tunesmith check {source}` lists the clusters)")
        fix = ("deduplicate (`tunesmith fix` keeps one example per cluster) or diversify the examples, or raise "
               f"checks.near_duplicate_threshold (now {near_threshold}) so fewer examples count as near-duplicates")
    else:
        why = f"there are no near-duplicate clusters, but {n} example(s) are too few for test fraction {test_fraction}"
        fix = "add examples (a few dozen at least)"
    if n_test == 0 or n_train == 0:
        empty = "test" if n_test == 0 else "train"
        raise DataError(f"{source}: the split would leave {empty} without examples "
                        f"({n_train} train / {n_test} test of {n}): {why}", fix)
    share = n_test / n
    # Rows are placed by hash, so a small file strays from the fraction by chance alone: warn only
    # beyond half the fraction and beyond three binomial standard deviations.
    chance = 3 * math.sqrt(test_fraction * (1 - test_fraction) / n)
    if abs(share - test_fraction) <= max(test_fraction / 2, chance):
        return []
    if held and share > test_fraction:
        why = (f"{held} row(s) stay in test because the earlier seal holds them (a sealed row never moves into "
               "train); `tunesmith split --reseal` draws a new test set instead")
    return [f"the test set got {share:.0%} of the examples ({n_test} of {n}), far from the {test_fraction:.0%} asked "
            f"for: {why}"]


def _previous_seal(seal: Path, reseal: bool) -> dict[str, Any] | None:
    """The seal a re-split replaces: its rows must not move into train."""
    link = symlink_problem(seal)
    if link is not None and not reseal:
        raise SealError(f"{link}; split needs the seal to keep the previously sealed rows out of train",
                        link_hint(seal) + ", or seal a new test set with `tunesmith split --reseal`")
    if not seal.exists():
        return None
    try:
        return _load_seal(seal)
    except SealError as exc:
        if reseal:
            return None
        raise SealError(f"{exc.message}; split needs it to keep the previously sealed rows out of train",
                        "restore it (e.g. from version control), or seal a new test set with "
                        "`tunesmith split --reseal`") from None


def _write_rows(source: Path, test_lines: set[int], ftrain: _Hashed, ftest: _Hashed,
                old_rows: set[str]) -> tuple[list[str], int, set[str]]:
    """Write every non-blank source line to its side: (test row hashes, train rows, old sealed rows now in train)."""
    rows: list[str] = []
    n_train = 0
    moved: set[str] = set()
    for lineno, raw_line in iter_raw_lines(source):
        if not raw_line.strip():
            continue
        if lineno in test_lines:
            ftest.write(raw_line + b"\n")
            rows.append(row_hash(raw_line))
        else:
            ftrain.write(raw_line + b"\n")
            n_train += 1
            if old_rows and (h := row_hash(raw_line)) in old_rows:
                moved.add(h)
    return rows, n_train, moved


def _leak_error(seal: Path, train: Path, moved: int) -> SealError:
    return SealError(
        f"{moved} row(s) of the previous sealed test set ({seal}) would move into {train}: the old test set counts "
        "as seen (runs may have been scored on it), and training on its rows leaks it into training",
        "they no longer parse as examples, so they cannot be placed in test: restore them in the source "
        "(`tunesmith check` says what is wrong with each), or seal a new test set anyway with "
        "`tunesmith split --reseal` (scores on the old test set are then not comparable with new ones)")


def _compare_with_previous(result: SplitResult, old_rows: set[str], new_rows: set[str], moved: set[str]) -> None:
    result.kept_from_previous_seal = len(old_rows & new_rows)
    result.moved_from_previous_seal = len(moved)
    result.dropped_from_previous_seal = len(old_rows - new_rows - moved)
    if moved:
        result.warnings.append(f"{len(moved)} row(s) of the previous sealed test set moved into train (resealed): "
                               "scores on the old test set are not comparable with new ones")
    if result.dropped_from_previous_seal:
        result.warnings.append(f"{result.dropped_from_previous_seal} row(s) of the previous seal are no longer "
                               "in the source")


class _Hashed:
    """A staged output that also hashes what is written to it (the seal records both files' SHA-256)."""

    def __init__(self, target: Path) -> None:
        self.staged = StagedFile(target)
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.staged.write(data)
        self.sha.update(data)


class _Staging(StagedGroup):
    """split's outputs as one `StagedGroup` of regular files, each hashed as it is written (the seal
    records the hashes); renamed in the order the seal needs."""

    def open_hashed(self, target: Path) -> _Hashed:
        hashed = _Hashed(target)
        self.files.append(hashed.staged)
        return hashed

    def commit_in_order(self, order: list[_Hashed]) -> None:
        # a rename failing part-way puts back the files already renamed: all old outputs, or all new
        commit_together([f.staged for f in order])


SEAL_FIX = ("the seal was edited or damaged: restore it (e.g. from version control), "
            "or seal a new test set with `tunesmith split --reseal`")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA_WANTED = "a SHA-256 (64 hex digits)"


def _load_seal(seal: Path) -> dict[str, Any]:
    """The seal, checked field by field: a hand edit must fail here, in words, not deep in a comparison."""
    try:
        text = seal.read_text(encoding="utf-8")
        data = json.loads(text)
    except OSError as exc:
        raise SealError(f"{seal}: the seal is unreadable ({exc.strerror})", SEAL_FIX) from None
    except json.JSONDecodeError as exc:
        raise SealError(f"{seal}: the seal is unreadable (not valid JSON: {exc})", SEAL_FIX) from None
    except UnicodeDecodeError as exc:
        raise SealError(f"{seal}: the seal is unreadable (not UTF-8 text at byte {exc.start})", SEAL_FIX) from None
    except ValueError:  # int() refusing a number over sys.get_int_max_str_digits()
        raise SealError(f"{seal}: the seal is unreadable ({huge_number(text, 'no seal holds one that long')})",
                        SEAL_FIX) from None
    except RecursionError:
        raise SealError(f"{seal}: the seal is unreadable (nested too deeply to read)", SEAL_FIX) from None
    problem = _seal_problem(data)
    if problem is not None:
        raise SealError(f"{seal}: {problem}", SEAL_FIX)
    return data


def _seal_problem(data: object) -> str | None:
    if not isinstance(data, dict):
        return f"the seal is unreadable (it is {_shown(data)}, not a JSON object)"
    version = data.get("version", SEAL_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        return f"field version is {_shown(version)}, expected a whole number"
    if version > SEAL_VERSION:
        return f"field version is {version}: written by a newer tunesmith (this one reads version {SEAL_VERSION})"
    if "rows" not in data:
        return "field rows is missing"
    rows = data["rows"]
    if not isinstance(rows, list):
        return f"field rows is {_shown(rows)}, expected a list of SHA-256 hashes (64 hex digits each)"
    bad = next((i for i, row in enumerate(rows) if not (isinstance(row, str) and _SHA256.fullmatch(row))), None)
    if bad is not None:
        return f"field rows[{bad}] is {_shown(rows[bad])}, expected {_SHA_WANTED}"
    for key in ("file_sha256", "train_sha256"):
        value = data.get(key)
        if key in data and not (isinstance(value, str) and _SHA256.fullmatch(value)):
            return f"field {key} is {_shown(value)}, expected {_SHA_WANTED}"
    return None


def _shown(value: object) -> str:
    """A JSON value as a message names it: short strings quoted, everything else by its kind."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 20 else f"a string of {len(value)} characters"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return {dict: "an object", list: "a list"}.get(type(value), "a number")


@dataclass
class SealReport:
    """Verdict of verify_seal. Line numbers are the test file's; sealed rows are numbered as when sealed."""

    test: Path
    ok: bool
    rows: int
    #: Lines whose sealed row was replaced by new content.
    changed: list[int] = field(default_factory=list)
    #: Lines beyond the sealed rows: new content, or an extra copy of a sealed row.
    added: list[int] = field(default_factory=list)
    #: The part of `added` that copies a sealed row.
    duplicated: list[int] = field(default_factory=list)
    #: Sealed rows that are gone, by their line in the sealed file.
    missing: list[int] = field(default_factory=list)
    #: The same rows in another order: lines that are out of place.
    moved: list[int] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return len(self.missing)

    def to_dict(self) -> dict[str, Any]:
        return {"test": str(self.test), "ok": self.ok, "rows": self.rows, "changed_lines": self.changed,
                "added_lines": self.added, "removed_rows": self.removed, "duplicated_lines": self.duplicated,
                "missing_sealed_rows": self.missing, "moved_lines": self.moved}


def verify_seal(test: Path, seal: Path | None = None) -> SealReport:
    """Compare a test file with its seal, row by row: the rows, how often each occurs, and their order."""
    seal = seal or seal_path_for(test)
    for path in (seal, test):
        link = symlink_problem(path)
        if link is not None:
            raise SealError(link, link_hint(path))
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
    if [h for _, h in current] == sealed_rows:
        return report  # only whitespace or line endings changed: every row hashes the same
    _compare_rows(report, current, sealed_rows)
    report.ok = not (report.changed or report.added or report.missing or report.moved)
    return report


def broken_seal_error(report: SealReport) -> SealError:
    """The error for a test set that no longer matches its seal, for every command that refuses one."""
    if report.moved and not (report.changed or report.added or report.missing):
        lines = ", ".join(map(str, report.moved[:10])) + (", ..." if len(report.moved) > 10 else "")
        return SealError(
            f"{report.test}: the sealed test set has the same rows, in a different order (lines {lines} are out of place)",
            "restore the file (e.g. from version control), or run `tunesmith split` again: it rewrites the test set "
            "in its sealed order from the source (the same rows: earlier scores stay comparable)")
    return SealError(
        f"{report.test}: the sealed test set changed since it was sealed "
        f"({len(report.changed)} changed, {len(report.added)} added, {report.removed} removed)",
        "restore it from version control, or re-split with `tunesmith split` (old results become incomparable)")


def _compare_rows(report: SealReport, current: list[tuple[int, str]], sealed: list[str]) -> None:
    """Fill in what differs. Rows are compared as a multiset (a second copy of a sealed row is not the
    sealed row), and order counts, as it always has: the seal records the rows in order."""
    want = Counter(sealed)
    short = want - Counter(h for _, h in current)
    missing: set[int] = set()  # positions in the seal; the last copies of a row count as the missing ones
    for pos in range(len(sealed) - 1, -1, -1):
        if short[sealed[pos]] > 0:
            short[sealed[pos]] -= 1
            missing.add(pos)
    seen: Counter[str] = Counter()
    for k, (line, h) in enumerate(current):
        seen[h] += 1
        if seen[h] <= want[h]:
            continue  # a sealed row, present
        if h in want:
            report.added.append(line)
            report.duplicated.append(line)
        elif k in missing:  # new content where a sealed row went missing: an edit
            missing.discard(k)
            report.changed.append(line)
        else:
            report.added.append(line)
    report.missing = sorted(pos + 1 for pos in missing)
    if not (report.changed or report.added or report.missing):
        report.moved = [line for (line, h), want_h in zip(current, sealed) if h != want_h]
