import pytest

from tunesmith.io import atomic_writer, write_jsonl_atomic


def test_atomic_writer_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as fh:
            fh.write("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temp file left behind


def test_write_jsonl_atomic(tmp_path):
    n = write_jsonl_atomic(tmp_path / "a" / "b.jsonl", ({"i": i} for i in range(3)))
    assert n == 3
    assert (tmp_path / "a" / "b.jsonl").read_text().count("\n") == 3


def test_unwritable_outputs_are_told_in_words(tmp_path):
    from tunesmith.errors import OutputError

    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("keep\n")
    with pytest.raises(OutputError, match="adir: it is a directory"):
        write_jsonl_atomic(tmp_path / "adir", [{"i": 1}])
    with pytest.raises(OutputError, match="afile is a file, not a directory"):
        write_jsonl_atomic(tmp_path / "afile" / "deeper" / "x.jsonl", [{"i": 1}])
    assert (tmp_path / "afile").read_text() == "keep\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]


def test_a_full_disk_at_the_end_of_a_write_keeps_the_old_file(tmp_path, monkeypatch):
    import errno
    import os

    from tunesmith.errors import OutputError

    target = tmp_path / "out.jsonl"
    target.write_text("old\n")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OutputError, match="the disk is full"):
        write_jsonl_atomic(target, [{"i": 1}])
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
    with pytest.raises(OutputError) as ei:
        write_jsonl_atomic(target, [{"i": 1}])
    assert ei.value.errno == errno.ENOSPC  # training tells a full disk apart to say how to resume


def test_cli_turns_an_unexpected_os_error_into_a_message(tmp_path, capsys):
    import typer

    from tunesmith.cli._errors import handle_errors

    @handle_errors
    def reads_a_directory():
        open(tmp_path)

    with pytest.raises(typer.Exit) as ei:
        reads_a_directory()
    assert ei.value.exit_code == 2
    err = capsys.readouterr().err
    assert f"error: Is a directory: {tmp_path}" in err and "Traceback" not in err and "hint:" in err


def test_strict_json_refuses_python_constants_everywhere_json_is_judged():
    from tunesmith.evaluate.metrics import score_item
    from tunesmith.evaluate.regression import check_assertions
    from tunesmith.evaluate.types import EvalItem, Generation
    from tunesmith.io import loads_strict_json

    with pytest.raises(ValueError, match="NaN is not JSON"):
        loads_strict_json('{"a": NaN}')
    assert loads_strict_json('{"a": 1.5}') == {"a": 1.5}
    item = EvalItem(id="i", chat=[{"role": "user", "content": "q"}], expected='{"a": 1}')
    assert score_item(item, Generation('{"a": Infinity}', "stop", 3), schema=None, regex=None).json_valid is False
    reg = EvalItem(id="r", chat=[{"role": "user", "content": "q"}], expected=None,
                   assertions=[{"type": "json_schema"}])
    assert not check_assertions(reg, '{"a": NaN}').passed


def test_a_full_disk_in_the_middle_of_a_write_is_named(tmp_path):
    import errno

    from tunesmith.errors import OutputError

    target = tmp_path / "big.jsonl"
    target.write_text("old\n")

    def rows():
        yield {"i": 1}
        raise OSError(errno.ENOSPC, "No space left on device")  # what fh.write raises past its buffer

    with pytest.raises(OutputError, match="the disk is full"):
        write_jsonl_atomic(target, rows())
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["big.jsonl"]

    def unreadable():
        yield {"i": 1}
        raise OSError(errno.EIO, "Input/output error")  # reading the input failed: not ours to rename

    with pytest.raises(OSError) as ei:
        write_jsonl_atomic(target, unreadable())
    assert not isinstance(ei.value, OutputError)


def test_cli_keeps_the_words_of_an_os_error_without_strerror(capsys):
    import typer

    from tunesmith.cli._errors import handle_errors

    @handle_errors
    def hub_lookup():
        raise OSError("We couldn't connect to the hub to load org/model")  # what transformers raises

    with pytest.raises(typer.Exit):
        hub_lookup()
    err = capsys.readouterr().err
    assert "error: We couldn't connect to the hub to load org/model" in err
    assert "network" in err and "permissions" not in err
