"""File writing that never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from tunesmith.errors import OutputError


class StagedFile:
    """One output written to a temp file beside its target (same directory: the rename is atomic).

    `finish` makes it durable and readable, `replace` puts it in place, `discard` removes it. Every
    OS error comes out as an OutputError that names the target. `atomic_writer` is one of these;
    `split` stages three and renames them together.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "wb") -> None:
        self.target = Path(path)
        if self.target.is_dir():
            raise OutputError(f"cannot write {self.target}: it is a directory", "name a file to write, not a directory")
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent)
        except OSError as exc:
            raise cannot_write(self.target, exc) from None
        self.tmp = Path(tmp)
        text = "b" not in mode
        self.fh: IO[Any] = open(fd, mode, encoding="utf-8" if text else None, newline="\n" if text else None)

    def finish(self) -> None:
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            # mkstemp makes the file private (0600); reports and data are meant to be read by others.
            os.chmod(self.tmp, 0o644)
        except OSError as exc:
            raise cannot_write(self.target, exc) from None

    def replace(self) -> None:
        try:
            os.replace(self.tmp, self.target)
        except OSError as exc:
            raise cannot_write(self.target, exc) from None

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()  # after a replace it is gone already


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temp file in the target's directory, fsync, then rename over the target.

    A crash or an exception leaves the previous file (or nothing) in place, never a partial one.
    """
    staged = StagedFile(path, mode)
    try:
        try:
            yield staged.fh
        except OSError as exc:
            if exc.errno in _OUT_OF_SPACE:  # a write the caller made ran out of room
                raise cannot_write(staged.target, exc) from None
            raise
        staged.finish()
        staged.replace()
    except BaseException:
        staged.discard()
        raise


#: errors only a write can cause: mapped to "the disk is full" wherever the write happened
_OUT_OF_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def cannot_write(target: Path, exc: OSError) -> OutputError:
    """Say which output failed and why, in words (a file where a directory should be, no space, ...)."""
    error = _describe_write_failure(target, exc)
    error.errno = exc.errno  # callers that resume (training) tell a full disk apart
    return error


def _describe_write_failure(target: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        blocker = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return OutputError(f"cannot write {target}: {blocker} is a file, not a directory",
                               "choose an output path whose folders are folders")
    if exc.errno in _OUT_OF_SPACE:
        return OutputError(f"cannot write {target}: the disk is full (or its quota or file size limit reached)",
                           "free some space and run the command again")
    return OutputError(f"cannot write {target}: {reason}",
                       "check that the folder exists or can be created and that you may write there")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_writer(path) as fh:
        fh.write(text)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike[str], records: Iterable[Any]) -> int:
    """Write one compact JSON document per line; returns the number of lines written."""
    n = 0
    with atomic_writer(path) as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False, separators=(", ", ": ")) + "\n")
            n += 1
    return n


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def loads_strict_json(text: str | bytes) -> Any:
    """`json.loads` without Python's extensions: NaN, Infinity and -Infinity are errors, as they are
    for every other JSON parser a model's answer will meet."""
    return json.loads(text, parse_constant=_not_json)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
