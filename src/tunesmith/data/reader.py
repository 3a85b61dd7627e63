"""Streaming JSONL reading with line numbers, byte offsets and encoding quirks handled.

A bad line never stops the stream: it is yielded with its problem so every problem of a file is
reported at once. Only a file that cannot be read at all (missing, a directory, binary) raises.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import DataError

BOM = b"\xef\xbb\xbf"
#: A single line larger than this is reported instead of parsed (a 50 MB line is a mistake).
MAX_LINE_BYTES = 8 * 1024 * 1024


@dataclass(slots=True)
class RawRecord:
    """One non-blank line: parsed JSON in `value`, or a problem in `error` (check id, message)."""

    line: int
    offset: int
    value: object = None
    error: tuple[str, str] | None = None


def open_checked(path: str | os.PathLike[str]) -> Path:
    """Return the path if it is a readable regular file, else raise a DataError that says why."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file", "check the path; `tunesmith init DIR` scaffolds a project")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, not a JSONL file", "pass the .jsonl file inside it")
    try:
        with open(p, "rb") as fh:
            head = fh.read(8192)
    except PermissionError:
        raise DataError(f"{p}: permission denied", "make the file readable (chmod +r)") from None
    except OSError as exc:
        raise DataError(f"{p}: cannot be read ({exc.strerror})", "check the file and the disk") from None
    if b"\x00" in head:
        line = head[: head.index(b"\x00")].count(b"\n") + 1
        raise DataError(
            f"{p}:{line}: binary data (NUL byte); this is not a JSONL text file",
            "export the data as UTF-8 JSON Lines: one JSON object per line",
        )
    return p


def iter_raw(path: str | os.PathLike[str]) -> Iterator[RawRecord]:
    """Yield every non-blank line of a JSONL file as a RawRecord (1-based line numbers)."""
    p = open_checked(path)
    with open(p, "rb") as fh:
        offset = 0
        for lineno, raw in enumerate(fh, start=1):
            start = offset
            offset += len(raw)
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            if len(raw) > MAX_LINE_BYTES:
                yield RawRecord(lineno, start, error=(
                    "invalid_json_line",
                    f"line is {len(raw) / 1e6:.1f} MB, over the {MAX_LINE_BYTES // (1024 * 1024)} MB limit for one example",
                ))
                continue
            stripped = raw.strip()
            if not stripped:
                continue
            try:
                text = stripped.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawRecord(lineno, start, error=(
                    "invalid_utf8",
                    f"invalid UTF-8 at byte {exc.start} of the line",
                ))
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield RawRecord(lineno, start, error=("invalid_json_line", _describe_json_error(text, exc)))
                continue
            yield RawRecord(lineno, start, value=value)


def iter_raw_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes without line ending) for every line, numbered exactly as iter_raw does."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            yield lineno, raw.rstrip(b"\r\n")


def read_line_at(path: str | os.PathLike[str], offset: int) -> object:
    """Re-read and parse the line that starts at a byte offset (used to verify candidates lazily)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        raw = fh.readline()
    if offset == 0 and raw.startswith(BOM):
        raw = raw[len(BOM):]
    return json.loads(raw.decode("utf-8"))


def looks_like_json_array(path: str | os.PathLike[str]) -> bool:
    """True when the file is one JSON array (a common export mistake), not JSON Lines."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(BOM).lstrip()
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 4096))
        tail = fh.read().rstrip()
    return head.startswith(b"[") and tail.endswith(b"]")


def _describe_json_error(text: str, exc: json.JSONDecodeError) -> str:
    if text.startswith("[") and exc.pos > 0:
        return f"not a JSON object per line (a JSON array?): {exc.msg} at column {exc.colno}"
    if text in ("{", "}") or text.endswith(("{", ",", "[")):
        return f"{exc.msg} at column {exc.colno}; a pretty-printed object spread over several lines?"
    return f"{exc.msg} at column {exc.colno}"
