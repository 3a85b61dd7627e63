"""File writing that never leaves a half-written file behind, and never replaces what is not a file.

Where an output goes (`destination`), by what its path names:

- a regular file, or nothing yet: written to a temp file beside it, fsynced, renamed over it. Through a
  symlink the file it leads to is replaced (the temp file goes in *that* directory) and the link stays a
  link; a dangling link is written where it points, as a shell's `>` would.
- `-` and /dev/stdout (/dev/fd/1, /proc/self/fd/1): this process's stdout; /dev/stderr (fd 2) its stderr.
- a character device (/dev/null, a terminal) or a FIFO, also behind /proc/self/fd/N: written directly, as
  the data comes, with no temp file. A stream cannot be replaced atomically, and putting a regular file in
  place of a device node or FIFO is never what the user meant (as root it would replace /dev/null).
- anything else (a directory, a block device, a socket, a symlink loop) is refused with an OutputError.

Outputs that belong together (fix's cleaned file and its log, split's three files) are a `StagedGroup`:
either all of them change or none does. A directory (a converted or merged model) is written under a
temp name beside its target (`staged_dir`) and renamed into place whole (`publish_dir`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tunesmith.errors import OutputError

_STDOUT = {"/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"}
_STDERR = {"/dev/stderr", "/dev/fd/2", "/proc/self/fd/2"}
_REFUSED = {stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}
_WHERE_WE_WRITE = "tunesmith writes files, FIFOs and character devices such as /dev/null; name a file, or - for stdout"


@dataclass(frozen=True)
class Destination:
    """What an output path names. `real` is the path a rename replaces: symlinks followed, for files only."""

    named: Path
    real: Path
    streamed: bool
    what: str  # "a regular file", "a FIFO", "a character device", "stdout", "stderr"


def writes_to_stdout(path: str | os.PathLike[str]) -> bool:
    """`-` or /dev/stdout: the data goes to stdout, so a command's own report must go to stderr."""
    name = os.fspath(path)
    return name == "-" or os.path.abspath(name) in _STDOUT


def destination(path: str | os.PathLike[str]) -> Destination:
    """Where writing `path` goes (see the module docstring); refuses what can be neither replaced nor streamed."""
    named = Path(path)
    if writes_to_stdout(named):
        return Destination(named, named, True, "stdout")
    if os.path.abspath(named) in _STDERR:
        return Destination(named, named, True, "stderr")
    try:
        mode = os.stat(named).st_mode
    except FileNotFoundError:  # nothing there yet, or a dangling link: written where it points
        return Destination(named, Path(os.path.realpath(named)), False, "a regular file")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(f"{named} is a symlink loop, not a file to write",
                              f"remove or repoint the link (`ls -l {named}` shows where it leads), "
                              "or name another output") from None
        return Destination(named, named, False, "a regular file")  # staging it says what is wrong, in words
    if stat.S_ISREG(mode):
        return Destination(named, Path(os.path.realpath(named)), False, "a regular file")
    if stat.S_ISDIR(mode):
        raise OutputError(f"cannot write {named}: it is a directory", "name a file to write, not a directory")
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return Destination(named, named, True, "a FIFO" if stat.S_ISFIFO(mode) else "a character device")
    raise OutputError(f"cannot write {named}: it is {_REFUSED.get(stat.S_IFMT(mode), 'a special file')}, not a file",
                      _WHERE_WE_WRITE)


def writes_over(output: str | os.PathLike[str], source: str | os.PathLike[str]) -> bool:
    """Whether writing `output` would write the file `source` (through symlinks too)."""
    dest = destination(output)
    return dest.what not in ("stdout", "stderr") and os.path.realpath(dest.real) == os.path.realpath(source)


class _WriteNamingTarget:
    """`write` whose OS errors name the output the user gave, not a temp file or a file descriptor."""

    target: Path
    fh: Any

    def write(self, data: Any) -> None:
        try:
            self.fh.write(data)
        except OSError as exc:
            raise cannot_write(self.target, exc) from None


class StagedFile(_WriteNamingTarget):
    """One output written to a temp file beside its target (same directory: the rename is atomic).

    `finish` makes it durable and readable, `replace` puts it in place, `discard` removes it. Every
    OS error comes out as an OutputError that names the target. A target that is not a regular file
    (a device, a FIFO, stdout) is refused: use `open_output` where a stream is fine.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "wb", *, dest: Destination | None = None) -> None:
        self.dest = dest or destination(path)
        self.target = self.dest.named
        if self.dest.streamed:
            raise OutputError(f"cannot write {self.target}: it is {self.dest.what}, and this output must be a regular file",
                              "name a regular file: this output is replaced as a whole, never written as a stream")
        real = self.dest.real
        try:
            real.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
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
            os.replace(self.tmp, self.dest.real)
        except OSError as exc:
            raise cannot_write(self.target, exc) from None

    def keep_previous(self) -> Path | None:
        """A second name for the file `replace` will replace, so a group can put it back; None if there is none."""
        real = self.dest.real
        for _ in range(3):
            backup = real.with_name(f".{real.name}.{secrets.token_hex(4)}.old")
            try:
                os.link(real, backup)  # no copy, and the target never goes missing
                return backup
            except FileExistsError:
                continue
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise cannot_write(self.target, exc) from None
                try:  # a file system without hard links
                    shutil.copy2(real, backup)
                    return backup
                except OSError as copy_exc:
                    raise cannot_write(self.target, copy_exc) from None
        raise cannot_write(self.target, FileExistsError(errno.EEXIST, "no free temp name beside it", str(real)))

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()  # after a replace it is gone already


class _TextOnto:
    """Text written as UTF-8 onto a binary stream: nothing of its own to detach or close."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw

    def write(self, text: str) -> int:
        self.raw.write(text.encode("utf-8"))
        return len(text)

    def flush(self) -> None:
        self.raw.flush()


class StreamedFile(_WriteNamingTarget):
    """An output written as the data comes: stdout, stderr, a character device, a FIFO.

    The same steps as a StagedFile (`finish`, `replace`, `discard`), but nothing is staged: what was
    written is out, and `replace` has nothing to do. A FIFO's open waits for a reader, as a shell's `>` does.
    """

    def __init__(self, dest: Destination, mode: str = "wb") -> None:
        self.dest = dest
        self.target = dest.named
        self._std = {"stdout": sys.stdout, "stderr": sys.stderr}.get(dest.what)
        try:
            if self._std is not None:
                self._std.flush()  # what the command printed before comes before the data
                self.raw: IO[bytes] = self._std.buffer
            else:  # no O_CREAT, no O_TRUNC: the node is written, never made or emptied
                self.raw = open(os.open(dest.named, os.O_WRONLY), "wb")
        except OSError as exc:
            raise cannot_write(self.target, exc) from None
        self.fh: Any = self.raw if "b" in mode else _TextOnto(self.raw)

    def finish(self) -> None:
        try:
            self.raw.flush()
            if self._std is None:
                self.raw.close()
        except OSError as exc:
            raise cannot_write(self.target, exc) from None

    def replace(self) -> None:
        pass

    def keep_previous(self) -> None:
        return None

    def discard(self) -> None:
        if self._std is None:
            with contextlib.suppress(OSError):
                self.raw.close()
            return
        try:
            self.raw.flush()
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                # The reader is gone: send what is still buffered to /dev/null, or Python's exit flush fails
                # again and prints a traceback after the error message (as the Python docs advise).
                with contextlib.suppress(OSError, ValueError):
                    null = os.open(os.devnull, os.O_WRONLY)
                    try:
                        os.dup2(null, self._std.fileno())
                    finally:
                        os.close(null)


Output = StagedFile | StreamedFile


def open_output(path: str | os.PathLike[str], mode: str = "wb") -> Output:
    """A StagedFile for a file, a StreamedFile for stdout, a device or a FIFO (see `destination`)."""
    dest = destination(path)
    return StreamedFile(dest, mode) if dest.streamed else StagedFile(path, mode, dest=dest)


class StagedGroup:
    """Outputs that change together: after `commit` all of them are new, after any failure all are as before.

    Leaving the block without a commit discards every temp file. A streamed output is written as it
    comes and cannot be taken back: it takes part in the group only by being finished with the others.
    """

    def __init__(self) -> None:
        self.files: list[Output] = []

    def __enter__(self) -> StagedGroup:
        return self

    def __exit__(self, *_exc: object) -> None:
        for f in self.files:
            f.discard()

    def open(self, path: str | os.PathLike[str], mode: str = "wb") -> Output:
        out = open_output(path, mode)
        self.files.append(out)
        return out

    def commit(self) -> None:
        commit_together(self.files)


def commit_together(files: Sequence[Output]) -> None:
    """Finish (fsync) every file, then rename each into place, in order.

    Each file about to be replaced keeps a second name until all renames succeeded: if one fails, the
    ones already renamed are put back (or removed, where there was none), so the user finds all the old
    files or all the new ones. The OutputError's details name anything that could not be put back.
    """
    for f in files:
        f.finish()
    done: list[tuple[Output, Path | None]] = []
    pending: Path | None = None
    try:
        for f in files:
            pending = f.keep_previous()
            f.replace()
            done.append((f, pending))
            pending = None
    except BaseException as exc:
        _drop(pending)  # its rename failed: the target still holds the old file
        left = _put_back(done)
        if left and isinstance(exc, OutputError):
            exc.details += left
            exc.hint += "; then move each old file back by hand, as listed (the outputs are out of step until then)"
        raise
    for _, backup in done:
        _drop(backup)


def _put_back(done: list[tuple[Output, Path | None]]) -> list[str]:
    """Undo the renames already made, last first; says what could not be undone."""
    left = []
    for f, backup in reversed(done):
        if f.dest.streamed:
            continue
        try:
            if backup is None:
                os.unlink(f.dest.real)
            else:
                os.replace(backup, f.dest.real)
        except OSError as exc:
            old = f"the old one is kept as {backup}" if backup is not None else "there was none before"
            left.append(f"{f.target} is already the new file ({exc.strerror or exc}); {old}")
    return left


def _drop(backup: Path | None) -> None:
    if backup is not None:
        with contextlib.suppress(OSError):
            backup.unlink()


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A new directory beside `target` (same filesystem, so the rename is atomic), removed on the way out
    unless `publish_dir` moved it into place: a failed write leaves nothing under the target's name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(tmp: Path, target: Path, *, finished: Callable[[Path], bool] | None = None) -> None:
    """Rename the complete directory `tmp` to `target`.

    An empty `target` is taken. A non-empty one is kept when `finished(target)` says it already is a
    complete copy (another process published first; `staged_dir` removes `tmp`); otherwise it is moved
    aside, replaced and then removed, and put back if the rename fails.
    """
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model directory is meant to be shared
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    try:
        os.rename(tmp, target)
        return
    except OSError:
        if not target.is_dir():
            raise
        if finished is not None and finished(target):
            return
    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)  # put the earlier one back
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temp file in the target's directory, fsync, then rename over the target.

    A crash or an exception leaves the previous file (or nothing) in place, never a partial one.
    Stdout, a device or a FIFO is written directly instead (see the module docstring).
    """
    out = open_output(path, mode)
    try:
        try:
            yield out.fh
        except OSError as exc:
            if exc.errno in _WRITE_ONLY_ERRORS:  # a write the caller made ran out of room, or lost its reader
                raise cannot_write(out.target, exc) from None
            raise
        out.finish()
        out.replace()
    except BaseException:
        out.discard()
        raise


#: errors only a write can cause: mapped to "the disk is full" wherever the write happened
_OUT_OF_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_WRITE_ONLY_ERRORS = _OUT_OF_SPACE | {errno.EPIPE}


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
    if exc.errno == errno.EPIPE:
        return OutputError(f"cannot write {target}: the reader closed it before the end (broken pipe)",
                           "the output is incomplete: let the reading command read all of it, or write to a file")
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
