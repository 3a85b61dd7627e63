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
