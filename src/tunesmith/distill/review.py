"""`tunesmith review`: a person reads the rows, most diverse first, and accepts, edits or rejects each.

The reviewed file itself holds the decisions (see `provenance`): a decision sets the row's
``review`` object and rewrites the file atomically. Lines a decision did not touch are written back
byte for byte; a changed row is re-serialised as compact JSON. Every decision carries the version
(SHA-256 of the file's bytes) the page saw: when the file on disk is not the one the store last read
or wrote (someone edited it by hand) or the page is out of date, nothing is written (`ReviewConflict`)
until the file is read again, so a hand edit is never clobbered.

    store = open_review(Path("generated.jsonl"))       # refuses the sealed test set and broken rows
    store.decide(line, "edit", store.version, answer='{"a": 1}')

`review_export.export_review` writes the reviewed rows out for training.

A row's answer is its last trained assistant turn (weight not 0); an edit replaces its content.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.checks.contract import AnswerContract
from tunesmith.data.formats import Example, parse_record
from tunesmith.data.reader import BOM, RawRecord, iter_raw, open_checked
from tunesmith.data.split import seal_path_for
from tunesmith.distill.provenance import DECIDED, REVIEW, review_status, review_target
from tunesmith.errors import DataError, OutputError, UsageError
from tunesmith.io import StagedFile

ACTIONS = ("accept", "edit", "reject", "undo")
#: the fields `review` manages in a row's review object; any other key (e.g. an export's "of") is kept
_MANAGED = ("status", "at", "reason", "original")
MAX_REASON = 2000
CONVERT_HINT = ("review reads chat rows ({\"messages\": [...]}): convert other formats with "
                "`tunesmith convert FILE -o chat.jsonl --to messages`; `tunesmith check FILE` explains the rest")


class ReviewConflict(DataError):
    """The file changed on disk since the store read it, or the page's version is stale: nothing written."""

    def __init__(self, message: str, hint: str, *, kind: str) -> None:
        super().__init__(message, hint)
        #: "changed_on_disk" or "stale"
        self.kind = kind


class InvalidAnswer(DataError):
    """An edited answer that breaks the output contract (or is empty): not saved."""

    def __init__(self, message: str, hint: str, *, problems: list[str]) -> None:
        super().__init__(message, hint, details=problems)
        self.problems = problems


class UnknownRow(UsageError):
    """A decision names a line that holds no row."""


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def dumps_row(record: Any) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# the project, the sealed test set
# ---------------------------------------------------------------------------------------------


def project_for(file: Path, project_dir: Path | None) -> Any:
    """The project named by -p, else the one next to FILE, else None."""
    from tunesmith.project import find_project_dir, load_project

    if project_dir is not None:
        return load_project(project_dir)
    found = find_project_dir(file)
    return load_project(found) if found is not None else None


def same_file(a: Path, b: Path | None) -> bool:
    if b is None:
        return False
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def refuse_sealed(file: Path, project: Any) -> None:
    """Refuse the project's data.test and any file with a seal beside it: a person reading the test set
    leaks it into the data decisions (and the test set stops measuring anything)."""
    test = project.path(project.data.test) if project is not None else None
    if same_file(file, test):
        why = f"it is the project's sealed test set (data.test in {project.root / 'tunesmith.yaml'})"
    elif seal_path_for(file).exists():
        why = f"it is a sealed test set ({seal_path_for(file).name} is beside it)"
    else:
        return
    other = project.generate.output if project is not None else "generated.jsonl"
    raise UsageError(
        f"{file}: will not review this file: {why}. Reading the test set leaks it into your decisions, "
        "and its scores stop meaning anything",
        f"review the rows you will train on instead: the generated file (e.g. `tunesmith review {other}`) or "
        "the training data; the sealed test set is only read by `tunesmith eval`")


# ---------------------------------------------------------------------------------------------
# reading: lines kept as bytes, rows parsed and checked
# ---------------------------------------------------------------------------------------------


@dataclass
class _Line:
    """One line of the file exactly as read: BOM (line 1 only), content, line ending."""

    head: bytes
    body: bytes
    end: bytes

    def data(self) -> bytes:
        return self.head + self.body + self.end


def split_lines(data: bytes) -> list[_Line]:
    """The file's lines numbered as `iter_raw` numbers them (split after each \\n)."""
    out: list[_Line] = []
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        stop = len(data) if nl < 0 else nl + 1
        chunk = data[pos:stop]
        head = BOM if not out and chunk.startswith(BOM) else b""
        chunk = chunk[len(head):]
        end = b"\r\n" if chunk.endswith(b"\r\n") else b"\n" if chunk.endswith(b"\n") else b""
        out.append(_Line(head, chunk[: len(chunk) - len(end)], end))
        pos = stop
    return out


@dataclass
class ReviewRow:
    """One reviewable row: its line, the parsed record and which turn is the answer."""

    line: int
    record: dict[str, Any]
    answer_index: int
    example: Example

    @property
    def review(self) -> dict[str, Any]:
        value = self.record.get(REVIEW)
        return value if isinstance(value, dict) else {}

    @property
    def status(self) -> str:
        return review_status(self.record)

    @property
    def answer(self) -> str:
        return self.example.messages[self.answer_index].content

    @property
    def original(self) -> str | None:
        original = self.review.get("original")
        return original if isinstance(original, str) else None

    def order_text(self) -> str:
        """What the diversity order compares: the dialogue with the teacher's answer (not an edit of
        it), so the order stays the same from one session to the next."""
        turns = [m.content if i != self.answer_index or self.original is None else self.original
                 for i, m in enumerate(self.example.messages) if m.role != "system"]
        return "\n".join(turns)


def answer_turn(record: dict[str, Any]) -> int | None:
    """Index of the last assistant turn that is trained (weight not 0) in the record's messages."""
    turns = record.get("messages")
    if not isinstance(turns, list):
        return None
    for i in range(len(turns) - 1, -1, -1):
        t = turns[i]
        role = t.get("role") if isinstance(t, dict) else None
        if isinstance(role, str) and role.strip().lower() == "assistant" and t.get("weight") != 0:
            return i
    return None


def _row_or_problem(raw: RawRecord) -> ReviewRow | str:
    if raw.error is not None:
        return f"{raw.error[1]} ({raw.error[0]})"
    ex = parse_record(raw.value, raw.line, raw.offset)
    if ex.format not in ("messages", "?"):
        return f"is in the {ex.format} format; review reads chat rows ({{\"messages\": [...]}}) only"
    if ex.problems:
        return "; ".join(f"{p.message} ({p.check})" for p in ex.problems)
    record: dict[str, Any] = raw.value  # type: ignore[assignment]
    index = answer_turn(record)
    if index is None:
        return "no trained assistant turn: nothing to review (missing_assistant)"
    return ReviewRow(raw.line, record, index, ex)


def read_rows(path: Path) -> tuple[str, list[_Line], list[ReviewRow]]:
    """(version, lines, rows) of a file to review, or one DataError naming every line that cannot be reviewed."""
    open_checked(path)
    for _attempt in range(3):
        data = path.read_bytes()
        records = list(iter_raw(path))
        version = hashlib.sha256(data).hexdigest()
        if hashlib.sha256(path.read_bytes()).hexdigest() == version:
            break
    else:
        raise DataError(f"{path}: the file kept changing while it was read", "wait until what writes it is done")
    rows: list[ReviewRow] = []
    bad: list[str] = []
    for raw in records:
        got = _row_or_problem(raw)
        if isinstance(got, str):
            bad.append(f"{path}:{raw.line}: {got}")
        else:
            rows.append(got)
    if bad:
        raise DataError(f"{path}: {len(bad)} line(s) cannot be reviewed; nothing was opened", CONVERT_HINT, details=bad)
    if not rows:
        raise DataError(f"{path}: no rows to review", "point review at a JSONL file of chat rows")
    return version, split_lines(data), rows


def review_order(rows: list[ReviewRow]) -> list[int]:
    """Row indices: the `review_target` most diverse first (the `sample --diverse` pick order), then the
    rest in file order."""
    from tunesmith.data.diversity import hashed_vectors, k_center

    target = review_target(len(rows))
    first = k_center(hashed_vectors([r.order_text() for r in rows]), target)
    chosen = set(first)
    return first + [i for i in range(len(rows)) if i not in chosen]


# ---------------------------------------------------------------------------------------------
# decisions
# ---------------------------------------------------------------------------------------------


def _text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI text parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def apply_decision(record: dict[str, Any], index: int, action: str, *, answer: str | None = None,
                   reason: str | None = None, at: str | None = None) -> dict[str, Any]:
    """The record after a decision (a new dict; `record` is not changed).

    edit keeps the first original answer; an edit back to the original is an accept. accept of an edited
    row keeps the edit (status edited); reject keeps it too, so undo can restore the original.
    """
    rec = dict(record)
    turns = list(rec["messages"])
    turn = dict(turns[index])
    old = rec.get(REVIEW) if isinstance(rec.get(REVIEW), dict) else {}
    others = {k: v for k, v in old.items() if k not in _MANAGED}
    original = old.get("original") if isinstance(old.get("original"), str) else None
    review: dict[str, Any]
    if action == "undo":
        if original is not None:
            turn["content"] = original
        review = {"status": "unreviewed"}
    else:
        review = {"status": "", "at": at or utc_now()}
        if action == "edit":
            if answer is None:
                raise UsageError("an edit needs the new answer", 'send {"answer": "..."}')
            first = original if original is not None else _text(turn.get("content"))
            turn["content"] = answer
            original = None if answer == first else first
            review["status"] = "edited" if original is not None else "accepted"
        elif action == "accept":
            review["status"] = "edited" if original is not None else "accepted"
        else:
            review["status"] = "rejected"
            if reason:
                review["reason"] = reason
        if original is not None:
            review["original"] = original
    turns[index] = turn
    rec["messages"] = turns
    rec[REVIEW] = {**review, **others}
    return rec


@dataclass
class ReviewProgress:
    """How far a review is: its decisions by status, against the review target (rejected rows count as reviewed)."""

    rows: int
    target: int
    accepted: int = 0
    edited: int = 0
    rejected: int = 0

    @property
    def decided(self) -> int:
        return self.accepted + self.edited + self.rejected

    @property
    def unreviewed(self) -> int:
        return self.rows - self.decided

    @property
    def left(self) -> int:
        return max(0, self.target - self.decided)

    def text(self) -> str:
        return f"{self.decided} of {self.target} reviewed, {self.rejected} rejected"

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "target": self.target, "accepted": self.accepted, "edited": self.edited,
                "rejected": self.rejected, "decided": self.decided, "unreviewed": self.unreviewed,
                "left": self.left, "text": self.text()}


def count(rows: list[ReviewRow]) -> ReviewProgress:
    """The rows' decisions, each status read by `provenance.review_status` (what the gate reads too)."""
    progress = ReviewProgress(len(rows), review_target(len(rows)))
    for r in rows:
        status = review_status(r.record)
        if status in DECIDED:
            setattr(progress, status, getattr(progress, status) + 1)
    return progress


# ---------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------


class ReviewStore:
    """A file under review: its rows in review order, the contract, and decisions written at once."""

    def __init__(self, path: Path, project: Any = None, *, contract: AnswerContract | None = None) -> None:
        self.path = Path(path)
        self.project = project
        refuse_sealed(self.path, project)
        self.contract = contract or (AnswerContract.for_project(project) if project is not None else AnswerContract())
        self._lock = threading.Lock()
        self._read()

    def _read(self) -> None:
        self.version, self._lines, self.rows = read_rows(self.path)
        self._by_line = {r.line: r for r in self.rows}
        self.order = review_order(self.rows)
        self._rank = {self.rows[i].line: n + 1 for n, i in enumerate(self.order)}

    def reload(self) -> None:
        """Read the file again (hand edits and earlier decisions are both on disk)."""
        with self._lock:
            self._read()

    def disk_version(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def progress(self) -> ReviewProgress:
        return count(self.rows)

    def validate(self, answer: str) -> list[str]:
        """What is wrong with an answer under the contract (empty: nothing); an empty answer never passes."""
        problems = list(self.contract.check(answer).problems)
        if not answer.strip() and "is empty" not in problems:
            problems.append("is empty")
        return problems

    def decide(self, line: int, action: str, version: str, *, answer: str | None = None,
               reason: str | None = None) -> dict[str, Any]:
        """Apply one decision and rewrite the file; returns the new version, the progress and the row as saved."""
        if action not in ACTIONS:
            raise UsageError(f"unknown action {action!r}", "use one of " + ", ".join(ACTIONS))
        if reason is not None:
            reason = reason.strip()[:MAX_REASON] or None
        with self._lock:
            if version != self.version:
                raise ReviewConflict(f"{self.path.name} was saved since this page read it; nothing was written",
                                     "reload the page's data from disk and decide again", kind="stale")
            row = self._by_line.get(line)
            if row is None:
                raise UnknownRow(f"{self.path.name} has no row on line {line}", "reload from disk")
            if action == "edit":
                if not isinstance(answer, str):
                    raise UsageError("an edit needs the new answer", 'send {"answer": "..."}')
                problems = self.validate(answer)
                if problems:
                    what = "is empty" if self.contract.empty else f"breaks the contract ({self.contract.describe()})"
                    raise InvalidAnswer(f"the edited answer {what}; nothing was written", "fix the answer, then save",
                                        problems=problems)
            record = apply_decision(row.record, row.answer_index, action, answer=answer, reason=reason)
            self._write_line(line, dumps_row(record))
            row.record = record
            row.example = parse_record(record, line)
            return {"version": self.version, "progress": self.progress().to_dict(), "row": self.row_state(row)}

    def _write_line(self, line: int, body: bytes) -> None:
        lines = list(self._lines)
        lines[line - 1] = _Line(lines[line - 1].head, body, lines[line - 1].end)
        data = b"".join(x.data() for x in lines)
        self._refuse_changed()
        staged = StagedFile(self.path, "wb")
        try:
            staged.fh.write(data)
            staged.finish()
            try:
                os.chmod(staged.tmp, self.path.stat().st_mode & 0o7777)  # keep the file's own permissions
            except OSError:
                pass
            self._refuse_changed()  # once more, as late as possible: a hand edit is never clobbered
            staged.replace()
        except OSError as exc:  # a write the staged file's own checks did not cover
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}", "check the disk and permissions") from None
        finally:
            staged.discard()
        self._lines = lines
        self.version = hashlib.sha256(data).hexdigest()

    def _refuse_changed(self) -> None:
        if self.disk_version() != self.version:
            raise ReviewConflict(
                f"{self.path.name} changed on disk since it was read (edited by hand?); nothing was written",
                "reload from disk: the hand edit and every earlier decision are kept", kind="changed_on_disk")

    def row_state(self, row: ReviewRow) -> dict[str, Any]:
        """One row as the page shows it; `rank` is its place in the review order (1-based)."""
        review = row.review
        rank = self._rank[row.line]
        prov = row.record.get("provenance")
        return {
            "id": row.line, "line": row.line, "rank": rank, "in_target": rank <= review_target(len(self.rows)),
            "status": row.status, "at": review.get("at"), "reason": review.get("reason"), "original": row.original,
            "answer": row.answer, "answer_index": row.answer_index,
            "turns": [{"role": m.role, "content": m.content} for m in row.example.messages],
            "provenance": prov if isinstance(prov, dict) else None,
        }

    def state(self) -> dict[str, Any]:
        """Everything the page shows: rows in review order, progress, contract, version."""
        with self._lock:
            return {
                "file": self.path.name, "path": str(self.path), "version": self.version,
                "disk_changed": self.disk_version() != self.version,
                "contract": None if self.contract.empty else self.contract.describe(),
                "project": str(self.project.root) if self.project is not None else None,
                "progress": self.progress().to_dict(),
                "rows": [self.row_state(self.rows[i]) for i in self.order],
            }


def open_review(file: Path, project_dir: Path | None = None) -> ReviewStore:
    """The store for FILE, with the project given or found next to it (its contract, its test set)."""
    return ReviewStore(file, project_for(file, project_dir))
