"""What a reader is handed, besides a plain file: numbers too long for Python, symlink loops and
dangling links, and streams (stdin, pipes, named FIFOs) that can be read only once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datagen import clean_examples, write_jsonl
from tunesmith.cli import app
from tunesmith.data.reader import iter_raw, open_checked
from tunesmith.errors import DataError

HUGE = "9" * 5000  # past Python's 4,300-digit limit for int(str)


def run(*args, input: bytes | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def huge_file(tmp_path: Path) -> Path:
    rows = [json.dumps(r) for r in clean_examples(40)]
    rows[2] = '{"prompt": "a", "completion": "b", "n": ' + HUGE + "}"
    return write_jsonl(tmp_path / "data.jsonl", rows)


# --- numbers longer than Python converts -----------------------------------------------------------

def test_a_huge_integer_is_a_line_problem_not_a_crash(tmp_path):
    recs = list(iter_raw(huge_file(tmp_path)))
    assert len(recs) == 40 and recs[1].value is not None  # the rest of the file is read
    bad = recs[2]
    assert bad.line == 3 and bad.error[0] == "invalid_json_line"
    assert bad.error[1] == "field n is a number 5,000 digits long; no example needs one that long"
    assert "quote it" in bad.hint


@pytest.mark.parametrize("command", [
    ["check", "{f}", "--no-tokens", "--json"],
    ["split", "{f}", "--json"],
    ["fix", "{f}", "-o", "{d}/fixed.jsonl", "--json"],
    ["convert", "{f}", "-o", "{d}/out.jsonl", "--json"],
    ["sample", "{f}", "--json"],
])
def test_every_command_reads_a_file_with_a_huge_integer(tmp_path, command):
    path = huge_file(tmp_path)
    result = run(*[a.format(f=path, d=tmp_path) for a in command])
    assert result.exit_code in (0, 1) and not isinstance(result.exception, ValueError), result.output
    out = json.loads(result.stdout)
    assert "error" not in out
    if command[0] == "check":
        assert any(f["lines"] == [3] and "5,000 digits" in f["message"] for f in out["findings"])
    if command[0] == "convert":
        assert out["failed"][0]["line"] == 3 and "5,000 digits" in out["failed"][0]["reason"]


# --- symlink loops and dangling links ----------------------------------------------------------------

@pytest.fixture
def loop(tmp_path) -> Path:
    (tmp_path / "a.jsonl").symlink_to(tmp_path / "b.jsonl")
    (tmp_path / "b.jsonl").symlink_to(tmp_path / "a.jsonl")
    return tmp_path / "a.jsonl"


def test_a_symlink_loop_is_named_as_one(loop):
    with pytest.raises(DataError) as exc:
        open_checked(loop)
    assert exc.value.message == f"{loop} is a symlink loop ({loop} -> {loop.parent / 'b.jsonl'} -> {loop})"
    assert exc.value.hint == f"remove or repoint the link (`ls -l {loop}` shows where it leads), or pass the real file"


def test_a_loop_in_a_folder_of_the_path_is_named(tmp_path):
    (tmp_path / "d").symlink_to(tmp_path / "d")
    with pytest.raises(DataError) as exc:
        open_checked(tmp_path / "d" / "data.jsonl")
    assert exc.value.message == f"{tmp_path / 'd' / 'data.jsonl'}: its path runs through a symlink loop"


def test_a_dangling_symlink_names_its_target(tmp_path):
    link = tmp_path / "data.jsonl"
    link.symlink_to(tmp_path / "gone.jsonl")
    with pytest.raises(DataError) as exc:
        open_checked(link)
    assert exc.value.message == f"{link} is a symlink to {tmp_path / 'gone.jsonl'}, which does not exist"


@pytest.mark.parametrize("command", [
    ["check", "{f}", "--no-tokens", "--json"],
    ["split", "{f}", "--json"],
    ["fix", "{f}", "-o", "{d}/fixed.jsonl", "--json"],
    ["convert", "{f}", "-o", "{d}/out.jsonl", "--json"],
    ["sample", "{f}", "--json"],
])
def test_every_command_names_a_symlink_loop(tmp_path, loop, command):
    result = run(*[a.format(f=loop, d=tmp_path) for a in command])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "DataError" and error["message"].startswith(f"{loop} is a symlink loop")


# --- streams: read once, counted right -----------------------------------------------------------------

def _rows(n: int = 60) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in clean_examples(n)).encode()


def test_check_dash_reads_stdin(tmp_path):
    data = _rows() + b"{broken\n"
    result = run("check", "-", "--no-tokens", "--json", input=data)
    out = json.loads(result.stdout)
    assert out["examples"] == 61 and out["file"] == "stdin"
    assert any(f["check"] == "invalid_json_line" and f["lines"] == [61] for f in out["findings"])


def test_a_real_pipe_as_dev_stdin_is_read_once(tmp_path):
    # `cat data.jsonl | tunesmith check /dev/stdin`: a first open used to drain the pipe while sniffing
    proc = subprocess.run([sys.executable, "-m", "tunesmith", "check", "/dev/stdin", "--no-tokens", "--json"],
                          input=_rows(), capture_output=True, cwd=tmp_path, timeout=120)
    out = json.loads(proc.stdout)
    assert out["examples"] == 60, proc.stderr
    assert out["stats"]["valid_examples"] == 60


def _fifo_with_writer(tmp_path: Path, data: bytes) -> tuple[Path, threading.Thread]:
    fifo = tmp_path / "data.fifo"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "wb") as fh:  # blocks until the reader opens: exactly one reader may come
            fh.write(data)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return fifo, writer


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", [
    ["check", "{f}", "--no-tokens", "--json"],
    ["split", "{f}", "--train", "{d}/train.jsonl", "--test", "{d}/test.jsonl", "--json"],
    ["fix", "{f}", "-o", "{d}/fixed.jsonl", "--json"],
    ["convert", "{f}", "-o", "{d}/out.jsonl", "--json"],
    ["sample", "{f}", "--json"],
])
def test_every_command_reads_a_named_fifo_once(tmp_path, command):
    fifo, writer = _fifo_with_writer(tmp_path, _rows())
    result = run(*[a.format(f=fifo, d=tmp_path) for a in command])
    writer.join(5)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    counts = {"check": lambda: out["examples"], "split": lambda: out["train_rows"] + out["test_rows"],
              "fix": lambda: out["kept"], "convert": lambda: out["written"], "sample": lambda: out["candidates"]}
    assert counts[command[0]]() == 60


@pytest.mark.timeout(60)
def test_a_stream_keeps_its_line_numbers(tmp_path):
    fifo, writer = _fifo_with_writer(tmp_path, b"\n" + _rows(3) + b"\n{bad\n")
    recs = list(iter_raw(fifo))
    writer.join(5)
    assert [r.line for r in recs] == [2, 3, 4, 6] and recs[-1].error[0] == "invalid_json_line"


def test_an_empty_stream_is_named_as_the_user_named_it(tmp_path):
    result = run("check", "-", "--no-tokens", "--json", input=b"")
    out = json.loads(result.stdout)
    assert out["file"] == "stdin" and out["examples"] == 0
    assert [f["message"] for f in out["findings"]] == ["stdin holds no examples (the file is empty)"]


def test_split_of_a_stream_needs_somewhere_to_write(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("split", "-", "--json", input=_rows())
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["message"] == "split reads - as a stream: there is no folder beside it to write train and test into"
    assert "--train" in error["hint"] and "--test" in error["hint"]


def test_split_of_stdin_with_outputs_named(tmp_path):
    result = run("split", "-", "--train", tmp_path / "train.jsonl", "--test", tmp_path / "test.jsonl", "--json",
                 input=_rows())
    out = json.loads(result.stdout)
    assert result.exit_code == 0 and out["train_rows"] + out["test_rows"] == 60
    assert json.loads((tmp_path / "test.seal.json").read_text())["source"] == "stdin"
