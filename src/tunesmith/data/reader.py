"""Streaming JSONL reading with line numbers, byte offsets and encoding quirks handled.

A bad line never stops the stream: it is yielded with its problem so every problem of a file is
reported at once. Only a file that cannot be read at all (missing, a directory, binary) raises.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import shlex
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tunesmith.errors import DataError
from tunesmith.json_numbers import huge_number
from tunesmith.paths import link_hint, symlink_problem

BOM = b"\xef\xbb\xbf"
#: A single line larger than this is reported instead of parsed (a 50 MB line is a mistake).
MAX_LINE_BYTES = 8 * 1024 * 1024


SURROGATE_HINT = ("re-export the data as UTF-8 from its source (a tool cut a character such as an emoji in half), "
                  "or delete the broken escape from the line")


@dataclass(slots=True)
class RawRecord:
    """One non-blank line: parsed JSON in `value`, or a problem in `error` (check id, message) with,
    for some problems, a `hint` of its own."""

    line: int
    offset: int
    value: object = None
    error: tuple[str, str] | None = None
    hint: str = ""


#: The path that means standard input, as in most Unix tools.
STDIN = "-"


def open_checked(path: str | os.PathLike[str]) -> Path:
    """Return a readable regular file holding the input at `path`, else raise a DataError that says why.

    A stream (`-` for stdin, a pipe, a FIFO, /dev/stdin) can be read only once, and a reader opens its
    file more than once (sniffing, parsing, re-reading near-duplicates): it is copied to a temporary
    file first, whose path is returned. Use the returned path, never `path` again.
    """
    p = Path(path)
    if str(path) == STDIN:
        return _sniffed(_spool(sys.stdin.buffer, "stdin.jsonl", "stdin"), "stdin")
    mode = _mode(p)
    if stat.S_ISDIR(mode):
        raise DataError(f"{p}: is a directory, not a JSONL file", "pass the .jsonl file inside it")
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        try:
            with open(p, "rb") as fh:
                return _sniffed(_spool(fh, p.name or "stream.jsonl", str(p)), str(p))
        except OSError as exc:
            raise DataError(f"{p}: cannot be read ({exc.strerror})", "check the stream and its permissions") from None
    return _sniffed(p, str(p))


def is_stream(path: str | os.PathLike[str]) -> bool:
    """True for `-` and for what can be read only once (a pipe, a FIFO, a character device)."""
    if str(path) == STDIN:
        return True
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _mode(p: Path) -> int:
    """The file type bits of an input, or a DataError that says why there is none."""
    try:
        return os.stat(p).st_mode
    except ValueError:
        raise DataError(f"{str(p)!r}: not a usable path (it holds a NUL byte)", "check the path") from None
    except OSError as exc:
        link = symlink_problem(p)
        if link is not None:
            raise DataError(link, link_hint(p)) from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise DataError(f"{p}: no such file", "check the path; `tunesmith init DIR` scaffolds a project") from None
        if exc.errno == errno.EACCES:
            raise DataError(f"{p}: permission denied", "make the file and its folders readable (chmod +rx)") from None
        raise DataError(f"{p}: cannot be read ({exc.strerror})", "check the path and the disk") from None


#: temporary copy -> the stream as the user named it, for reports (see shown_name)
_STREAM_NAMES: dict[str, str] = {}


def shown_name(path: str | os.PathLike[str]) -> str:
    """The input as the user named it: `stdin` or the FIFO's path for a stream's temporary copy."""
    return _STREAM_NAMES.get(str(path), str(path))


def _spool(stream: BinaryIO, name: str, shown: str) -> Path:
    """Copy a stream into a private temporary file (removed when the process exits): it is read exactly once."""
    folder = Path(tempfile.mkdtemp(prefix="tunesmith-stream-"))
    atexit.register(shutil.rmtree, folder, True)
    target = folder / name
    with open(target, "wb") as out:
        shutil.copyfileobj(stream, out, 1 << 20)
    _STREAM_NAMES[str(target)] = shown
    return target


def _sniffed(p: Path, label: str) -> Path:
    """p, once its head shows JSONL text: not UTF-16, not binary. Messages name the input as the user did."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(8192)
    except PermissionError:
        raise DataError(f"{label}: permission denied", "make the file readable (chmod +r)") from None
    except OSError as exc:
        raise DataError(f"{label}: cannot be read ({exc.strerror})", "check the file and the disk") from None
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or _looks_utf16(head):
        raise DataError(f"{label}: is UTF-16 text; tunesmith reads UTF-8",
                        "re-save it as UTF-8, e.g. iconv -f UTF-16 -t UTF-8 "
                        f"{shlex.quote(label)} > {shlex.quote(str(p.with_name(p.stem + '.utf8' + p.suffix)))}")
    if b"\x00" in head:
        line = head[: head.index(b"\x00")].count(b"\n") + 1
        raise DataError(
            f"{label}:{line}: binary data (NUL byte); this is not a JSONL text file",
            "export the data as UTF-8 JSON Lines: one JSON object per line",
        )
    return p


def _looks_utf16(head: bytes) -> bool:
    """UTF-16 without a byte-order mark: ASCII text with a NUL beside every character."""
    sample = head[:512]
    if len(sample) < 16:
        return False
    evens, odds = sample[0::2], sample[1::2]
    # one half nearly all NUL, the other nearly none: zero-filled binary has NULs in both halves
    return ((evens.count(0) > 0.9 * len(evens) and odds.count(0) < 0.1 * len(odds))
            or (odds.count(0) > 0.9 * len(odds) and evens.count(0) < 0.1 * len(evens)))


def iter_raw(path: str | os.PathLike[str]) -> Iterator[RawRecord]:
    """Yield every non-blank line of a JSONL file as a RawRecord (1-based line numbers).

    A stream is read once (see open_checked); offsets then refer to its temporary copy."""
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
            except RecursionError:
                yield RawRecord(lineno, start, error=("invalid_json_line", TOO_DEEP))
                continue
            except ValueError:  # not a syntax error: int() refusing a number over sys.get_int_max_str_digits()
                yield RawRecord(lineno, start, error=("invalid_json_line", huge_number(text)), hint=HUGE_NUMBER_HINT)
                continue
            # A lone surrogate can only come from a \uD800-\uDFFF escape (the UTF-8 decoder refuses
            # encoded ones), so a line without "\ud" in either case needs no look at its strings.
            if "\\ud" in text or "\\uD" in text:
                lone = lone_surrogate(value)
                if lone is not None:
                    yield RawRecord(lineno, start, error=("invalid_utf8", lone), hint=SURROGATE_HINT)
                    continue
            yield RawRecord(lineno, start, value=value)


TOO_DEEP = (f"JSON nested too deeply to read (more than about {sys.getrecursionlimit():,} levels of [ or {{); "
            "an example is never that deep")


HUGE_NUMBER_HINT = "quote it as a string if it is an ID or a code, or remove it"


def lone_surrogate(value: object) -> str | None:
    """Describe the first string (or key) holding half of a UTF-16 surrogate pair, or None.

    json.loads turns a lone \\ud83d escape into a str that cannot be encoded as UTF-8, so every later
    hash or write of it would crash; a paired escape becomes one proper character and passes.
    """
    stack: list[tuple[str, object]] = [("", value)]
    while stack:  # iterative: a parsed line can still be nested hundreds deep
        path, item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                half = _half_pair(key)
                if half is not None:
                    return f"a key of {path or 'the record'} {half}"
                stack.append((f"{path}.{key}" if path else key, child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
        elif isinstance(item, str):
            half = _half_pair(item)
            if half is not None:
                return f"{path or 'the line'} {half}"
    return None


def _half_pair(text: str) -> str | None:
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"holds \\u{ord(text[exc.start]):04x}, half of a UTF-16 surrogate pair (a character cut in half), "
                "which cannot be written as UTF-8")
    return None


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
    # json's "Unterminated string starting at" already ends in "at"
    where = f"{exc.msg.removesuffix(' at')} at column {exc.colno}"
    if text.startswith("[") and exc.pos > 0:
        return f"not a JSON object per line (a JSON array?): {where}"
    if text in ("{", "}") or text.endswith(("{", ",", "[")):
        return f"{where}; a pretty-printed object spread over several lines?"
    return where
