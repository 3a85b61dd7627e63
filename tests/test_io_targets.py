"""Outputs that are not plain files: devices, FIFOs, sockets, symlinks, stdout; and outputs that change together."""

import errno
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from tunesmith.errors import OutputError
from tunesmith.io import StagedGroup, atomic_writer, write_jsonl_atomic, write_text_atomic


def _private_null(tmp_path: Path) -> Path:
    """A clone of /dev/null inside tmp_path: a broken fix then replaces this node, never the machine's."""
    if os.geteuid() != 0:
        pytest.skip("making a character device (mknod) needs root")
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError as exc:
        pytest.skip(f"mknod of a character device was refused here ({exc.strerror})")
    return node


def test_a_character_device_is_written_not_replaced(tmp_path):
    null = _private_null(tmp_path)
    write_jsonl_atomic(null, [{"i": 1}, {"i": 2}])
    write_text_atomic(null, "more\n")
    assert stat.S_ISCHR(os.lstat(null).st_mode) and os.lstat(null).st_rdev == os.makedev(1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]  # no temp file beside it


def _fifo_with_reader(tmp_path: Path) -> tuple[Path, list[bytes], threading.Thread]:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as fh:  # blocks until the writer opens its end
            got.append(fh.read())

    reader = threading.Thread(target=read, daemon=True)  # daemon: a broken fix never opens the FIFO
    reader.start()
    return fifo, got, reader


def test_a_fifo_is_streamed_to_its_reader(tmp_path):
    fifo, got, reader = _fifo_with_reader(tmp_path)
    n = write_jsonl_atomic(fifo, ({"i": i} for i in range(5000)))  # more than a pipe's buffer holds
    reader.join(timeout=10)
    assert n == 5000 and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert got and got[0].decode().splitlines() == [f'{{"i": {i}}}' for i in range(5000)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_a_symlink_to_a_file_writes_the_file_and_stays_a_link(tmp_path):
    (tmp_path / "data").mkdir()
    real = tmp_path / "data" / "out.jsonl"
    real.write_text("old\n")
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "out.jsonl"
    link.symlink_to(Path("..") / "data" / "out.jsonl")
    write_text_atomic(link, "new\n")
    assert link.is_symlink() and os.readlink(link) == str(Path("..") / "data" / "out.jsonl")
    assert real.read_text() == "new\n"
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["out.jsonl"]  # the temp was renamed, not left
    assert [p.name for p in (tmp_path / "links").iterdir()] == ["out.jsonl"]


def test_a_dangling_symlink_writes_where_it_points(tmp_path):
    link = tmp_path / "out.jsonl"
    link.symlink_to("later.jsonl")
    write_text_atomic(link, "new\n")
    assert link.is_symlink() and (tmp_path / "later.jsonl").read_text() == "new\n"


def test_a_symlink_loop_is_told_in_words(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OutputError) as ei:
        write_text_atomic(tmp_path / "a", "x\n")
    assert ei.value.message == f"{tmp_path / 'a'} is a symlink loop, not a file to write"
    assert f"ls -l {tmp_path / 'a'}" in ei.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"] and (tmp_path / "a").is_symlink()


def test_a_socket_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(str(path))
        with pytest.raises(OutputError) as ei:
            write_text_atomic(path, "x\n")
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert ei.value.message == f"cannot write {path}: it is a socket, not a file"
    assert "FIFO" in ei.value.hint and "- for stdout" in ei.value.hint


def test_a_block_device_is_refused_and_left_alone(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a block device (mknod) needs root")
    node = tmp_path / "disk"
    try:  # never opened: the refusal comes from its type alone
        os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(7, 0))
    except OSError as exc:
        pytest.skip(f"mknod of a block device was refused here ({exc.strerror})")
    with pytest.raises(OutputError) as ei:
        write_text_atomic(node, "x\n")
    assert ei.value.message == f"cannot write {node}: it is a block device, not a file"
    assert stat.S_ISBLK(os.lstat(node).st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["disk"]


def test_dash_and_dev_stdout_mean_stdout(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with atomic_writer("-", "wb") as fh:
        fh.write(b"bytes\n")
    write_text_atomic(Path("/dev/stdout"), "text\n")
    assert capsys.readouterr().out == "bytes\ntext\n"
    assert list(tmp_path.iterdir()) == []  # no file called "-"


def test_a_staged_file_refuses_what_it_would_replace(tmp_path):
    from tunesmith.io import StagedFile

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputError) as ei:
        StagedFile(fifo)
    assert ei.value.message == f"cannot write {fifo}: it is a FIFO, and this output must be a regular file"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


# --- outputs that change together ----------------------------------------------------------------

def _group_write(tmp_path: Path, texts: dict[str, str]) -> None:
    with StagedGroup() as group:
        for name, text in texts.items():
            group.open(tmp_path / name, "w").fh.write(text)
        group.commit()


def test_a_group_commits_all_files(tmp_path):
    (tmp_path / "a").write_text("old a\n")
    _group_write(tmp_path, {"a": "new a\n", "b": "new b\n"})
    assert (tmp_path / "a").read_text() == "new a\n" and (tmp_path / "b").read_text() == "new b\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_a_group_failing_before_its_commit_changes_nothing(tmp_path):
    (tmp_path / "a").write_text("old a\n")
    with pytest.raises(RuntimeError):
        with StagedGroup() as group:
            group.open(tmp_path / "a", "w").fh.write("new a\n")
            group.open(tmp_path / "b", "w").fh.write("half")
            raise RuntimeError("crash mid-write")
    assert (tmp_path / "a").read_text() == "old a\n" and sorted(p.name for p in tmp_path.iterdir()) == ["a"]


@pytest.mark.parametrize("had_b", [True, False])
def test_a_rename_failing_part_way_puts_the_old_files_back(tmp_path, monkeypatch, had_b):
    for name in ("a", "b", "c") if had_b else ("a", "c"):
        (tmp_path / name).write_text(f"old {name}\n")
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    real_replace = os.replace

    def fail_for_c(src, dst):  # a, b are renamed into place, then c fails
        if Path(dst).name == "c":
            raise PermissionError(errno.EACCES, "Permission denied")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_for_c)
    with pytest.raises(OutputError, match="cannot write .*c: Permission denied") as ei:
        _group_write(tmp_path, {"a": "new a\n", "b": "new b\n", "c": "new c\n"})
    assert ei.value.details == []  # everything was put back: nothing for the user to mend
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before


def test_what_cannot_be_put_back_is_named_with_where_the_old_file_is(tmp_path, monkeypatch):
    for name in ("a", "c"):
        (tmp_path / name).write_text(f"old {name}\n")
    real_replace = os.replace

    def fail_for_c_and_putting_a_back(src, dst):
        if Path(dst).name == "c" or Path(src).name.startswith(".a.") and Path(src).name.endswith(".old"):
            raise PermissionError(errno.EACCES, "Permission denied")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_for_c_and_putting_a_back)
    with pytest.raises(OutputError) as ei:
        _group_write(tmp_path, {"a": "new a\n", "c": "new c\n"})
    backup = next(p for p in tmp_path.iterdir() if p.name.startswith(".a."))
    assert ei.value.details == [f"{tmp_path / 'a'} is already the new file (Permission denied); the old one is kept as {backup}"]
    assert "move each old file back by hand" in ei.value.hint
    assert backup.read_text() == "old a\n" and (tmp_path / "a").read_text() == "new a\n"
    assert (tmp_path / "c").read_text() == "old c\n"
