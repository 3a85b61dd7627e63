"""`tunesmith convert` from parquet, CSV/TSV, JSONL with --map and hf: datasets, on real files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datagen import clean_examples, write_jsonl
from tunesmith.data.convert import convert_file
from tunesmith.data.tables import parse_map
from tunesmith.errors import DataError, FormatError, UsageError

TUNESMITH = str(Path(sys.executable).parent / "tunesmith")


def _cli(*args):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _qa(n: int = 40) -> dict[str, list]:
    """Columns question/answer/context/sys from the clean examples: a typical exported table."""
    rows = clean_examples(n)
    return {"question": [r["messages"][1]["content"] for r in rows], "answer": [r["messages"][2]["content"] for r in rows],
            "context": [""] * n, "sys": [r["messages"][0]["content"] for r in rows]}


def _parquet(path: Path, columns: dict[str, list]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def _csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_parquet_with_a_map_converts_and_check_passes_on_the_result(tmp_path):
    cols = _qa()
    src = _parquet(tmp_path / "qa.parquet", cols)
    out = tmp_path / "data.jsonl"
    result = _cli("convert", src, "-o", out, "--map", "instruction=question,output=answer,input=context,system=sys")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote 40 example(s) as messages -> {out}\n"
    assert _read(out)[3] == {"messages": [{"role": "system", "content": cols["sys"][3]},
                                          {"role": "user", "content": cols["question"][3]},
                                          {"role": "assistant", "content": cols["answer"][3]}]}
    checked = _cli("check", out, "--no-tokens", "--json")
    assert checked.exit_code == 0, checked.output
    assert not [f for f in json.loads(checked.stdout)["findings"] if f["severity"] == "error"]


def test_csv_and_tsv_whose_columns_are_a_formats_fields_convert_without_a_map(tmp_path):
    rows = [["what is 2+2", "4", "1"], ['say "hi", twice', "hi\nhi", "2"]]  # a quoted comma and a newline in cells
    for name, delim in (("pc.csv", ","), ("pc.tsv", "\t")):
        src = _csv(tmp_path / name, ["prompt", "completion", "id"], rows, delim)
        result = convert_file(src, tmp_path / f"{name}.jsonl", "prompt_completion")
        assert (result.written, result.failed, result.unit) == (2, [], "row")
        assert _read(tmp_path / f"{name}.jsonl") == [{"prompt": "what is 2+2", "completion": "4"},
                                                      {"prompt": 'say "hi", twice', "completion": "hi\nhi"}]


def test_csv_numbers_stay_text_and_a_chat_map_builds_messages(tmp_path):
    src = _csv(tmp_path / "t.csv", ["q", "a", "s"], [["how many legs has a cat", "4", ""], ["and a bird", "2", "be brief"]])
    result = convert_file(src, tmp_path / "o.jsonl", "messages", column_map="user=q,assistant=a,system=s")
    assert result.written == 2 and not result.failed
    assert _read(tmp_path / "o.jsonl") == [  # a blank system cell means no system prompt, not an empty turn
        {"messages": [{"role": "user", "content": "how many legs has a cat"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "and a bird"},
                      {"role": "assistant", "content": "2"}]}]


def test_a_csv_row_with_more_cells_than_the_header_is_reported_not_cut(tmp_path):
    src = tmp_path / "t.csv"
    src.write_text("question,answer\nwhat is 2+2,4\nlist three colours,red, green, blue\nand 3+3,6\n", encoding="utf-8")
    result = convert_file(src, tmp_path / "o.jsonl", "instruction", column_map="instruction=question,output=answer")
    assert result.written == 2
    assert result.failed == [(2, "4 cells, the header has 2 (CSV line 3)")]
    assert [r["output"] for r in _read(tmp_path / "o.jsonl")] == ["4", "6"]


def test_a_parquet_messages_column_converts_as_it_is(tmp_path):
    turns = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]
    src = _parquet(tmp_path / "chat.parquet", {"messages": turns, "source": ["web"]})
    result = convert_file(src, tmp_path / "o.jsonl", "sharegpt")
    assert result.written == 1
    assert _read(tmp_path / "o.jsonl") == [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}]


def test_jsonl_with_a_map_keeps_line_numbers(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"q": "a question", "a": "an answer"}, "{broken", {"q": "q2", "a": 7}])
    result = convert_file(src, tmp_path / "o.jsonl", "prompt_completion", column_map="prompt=q,completion=a")
    assert result.written == 1 and result.unit == "line"
    assert [ln for ln, _ in result.failed] == [2, 3]
    assert result.failed[1][1] == "column 'a' (completion) is an int; it must be a string"


def test_columns_that_are_no_format_get_an_example_map(tmp_path):
    src = _csv(tmp_path / "t.csv", ["id", "Question", "Answer"], [["1", "q", "a"]])
    with pytest.raises(FormatError) as ei:
        convert_file(src, tmp_path / "o.jsonl", "messages")
    assert ei.value.message == f"{src}: no column is a format's field (columns: id, Question, Answer)"
    assert ei.value.hint == "map them with --map, e.g. --map instruction=Question,output=Answer"
    assert not (tmp_path / "o.jsonl").exists()


def test_a_map_naming_a_missing_column_lists_the_columns(tmp_path):
    src = _parquet(tmp_path / "qa.parquet", _qa(3))
    result = _cli("convert", src, "-o", tmp_path / "o.jsonl", "--map", "instruction=question,output=reply", "--json")
    assert result.exit_code == 2
    err = json.loads(result.stdout)["error"]
    assert err["message"] == f"--map: {src} has no column 'reply'"
    assert err["hint"] == "columns there: question, answer, context, sys"


@pytest.mark.parametrize(("text", "message", "hint_part"), [
    ("instruction", "--map: 'instruction' is not FIELD=COLUMN", "write it as --map instruction=question,output=answer"),
    ("instruction=,output=a", "--map: 'instruction=' is not FIELD=COLUMN", "format fields on the left"),
    ("instruction=q,instruction=r", "--map names 'instruction' twice", "give each field one column"),
    ("question=q,output=a", "--map: 'question' is not a field of any format", "instruction, output, input, system (instruction)"),
    ("user=q,output=a", "--map mixes fields of different formats (user, output)", "user, assistant, system (messages)"),
    ("instruction=q", "--map for the instruction format needs output", "add output=COLUMN"),
])
def test_a_malformed_map_says_what_to_write(text, message, hint_part):
    with pytest.raises(UsageError) as ei:
        parse_map(text)
    assert ei.value.message == message
    assert hint_part in ei.value.hint


def test_values_that_are_not_strings_are_reported_for_every_row(tmp_path):
    src = _parquet(tmp_path / "s.parquet", {"q": ["a", "b", "c", "d"], "a": ["x", None, "y", None],
                                            "l": [["1"], ["2"], ["3"], ["4"]]})
    out = tmp_path / "o.jsonl"
    result = _cli("convert", src, "-o", out, "--map", "instruction=q,output=a")
    assert result.exit_code == 1
    assert result.stdout == f"wrote 2 example(s) as messages -> {out}\n"
    assert result.stderr == ("  row 2: not converted: column 'a' (output) has no value; it must be a string\n"
                             "  row 4: not converted: column 'a' (output) has no value; it must be a string\n")
    as_json = _cli("convert", src, "-o", out, "--map", "instruction=q,output=a", "--json")
    assert [f["line"] for f in json.loads(as_json.stdout)["failed"]] == [2, 4]
    with pytest.raises(FormatError) as ei:  # no row converts: every row's reason is in failed, the first three in the error
        convert_file(src, out, "messages", column_map="instruction=q,output=a,system=l")
    assert ei.value.message == (
        f"no row of {src} converts to messages (row 1: column 'l' (system) is a list; it must be a string; "
        "row 2: column 'a' (output) has no value; it must be a string; column 'l' (system) is a list; it must be a string; "
        "row 3: column 'l' (system) is a list; it must be a string)")
    assert _read(out)[0]["messages"][0] == {"role": "user", "content": "a"}  # the older output stays


def test_empty_sources_say_so(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header_only = _csv(tmp_path / "h.csv", ["prompt", "completion"], [])
    no_rows = _parquet(tmp_path / "e.parquet", {"q": pa.array([], pa.string())})
    for src, message in ((empty, f"{empty}: has no rows"), (header_only, f"{header_only}: has no rows (columns: prompt, completion)"),
                         (no_rows, f"{no_rows}: has no rows (columns: q)")):
        with pytest.raises(FormatError) as ei:
            convert_file(src, tmp_path / "o.jsonl", "messages", column_map="prompt=q,completion=q")
        assert ei.value.message == message
        assert ei.value.hint == "check that this is the file you meant; nothing was written"


def test_a_file_that_is_no_parquet_and_bad_csv_quoting(tmp_path):
    fake = tmp_path / "f.parquet"
    fake.write_text("prompt,completion\n")
    with pytest.raises(DataError, match=rf"{fake}: not a readable parquet file \(ArrowInvalid: "):
        convert_file(fake, tmp_path / "o.jsonl", "messages")
    bad = tmp_path / "b.csv"
    bad.write_bytes(b"prompt,completion\nok,fine\n\xff\xfe,x\n")
    with pytest.raises(DataError) as ei:
        convert_file(bad, tmp_path / "o.jsonl", "messages")
    assert ei.value.message == f"{bad}:3: not UTF-8 text"


def test_convert_never_writes_over_a_table(tmp_path):
    src = _parquet(tmp_path / "qa.parquet", _qa(2))
    with pytest.raises(UsageError, match="convert never writes over its input"):
        convert_file(src, src, "messages", column_map="instruction=question,output=answer")


def test_a_missing_pyarrow_or_datasets_names_the_extra(tmp_path, monkeypatch):
    src = _parquet(tmp_path / "qa.parquet", _qa(2))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # what `import` sees when the package is absent
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError) as ei:
        convert_file(src, tmp_path / "o.jsonl", "messages", column_map="instruction=question,output=answer")
    assert ei.value.message == "reading parquet needs the pyarrow package, which is not installed"
    assert ei.value.hint == "pip install 'tunesmith[data]' (or pip install pyarrow)"
    with pytest.raises(DataError) as ei:
        convert_file("hf:org/name", tmp_path / "o.jsonl", "messages")
    assert ei.value.message == "reading hf: datasets needs the datasets package, which is not installed"
    with pytest.raises(UsageError, match=r"'hf:' is not hf:ORG/NAME\[:CONFIG\]"):
        convert_file("hf:", tmp_path / "o.jsonl", "messages")


def _offline_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache),
            "HF_HUB_CACHE": str(cache / "hub"), "OMP_NUM_THREADS": "1"}


def test_hf_while_offline_says_the_hub_is_unreachable(tmp_path):
    proc = subprocess.run([TUNESMITH, "convert", "hf:org/name", "--split", "train", "-o", str(tmp_path / "o.jsonl")],
                          env=_offline_env(tmp_path / "cache"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "error: hf:org/name: the Hugging Face Hub is unreachable (offline, or no network)" in proc.stderr
    assert "then convert it here: tunesmith convert FILE -o data.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o.jsonl").exists()


def test_hf_when_the_network_fails_mid_request_says_the_hub_is_unreachable(tmp_path, monkeypatch):
    """httpx's transport errors (what huggingface_hub raises online) are no ConnectionError subclass."""
    import datasets
    import httpx

    def no_network(*_a, **_k):
        raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    with pytest.raises(DataError) as info:
        convert_file("hf:org/name", tmp_path / "o.jsonl", "instruction", split="train")
    assert info.value.message == "hf:org/name: the Hugging Face Hub is unreachable (offline, or no network)"
    assert not (tmp_path / "o.jsonl").exists()


def _cache_dataset(cache: Path, rows: dict[str, list]) -> None:
    """The datasets cache layout an earlier online `load_dataset("org/name")` leaves: what offline mode reads."""
    from datasets import Dataset, SplitDict, SplitInfo

    ds = Dataset.from_dict(rows, split="train")
    root = cache / "org___name" / "default" / "0.0.0" / "0123456789abcdef"
    root.mkdir(parents=True)
    ds.save_to_disk(str(cache / "_saved"))
    (cache / "_saved" / "data-00000-of-00001.arrow").rename(root / "name-train.arrow")
    info = ds.info
    info.config_name, info.dataset_name = "default", "name"
    info.splits = SplitDict({"train": SplitInfo("train", num_examples=len(ds), dataset_name="name")})
    info.write_to_directory(str(root))


def test_hf_dataset_from_the_local_cache_converts(tmp_path):
    cache = tmp_path / "cache"
    _cache_dataset(cache, {"question": ["q1", "q2"], "answer": ["a1", "a2"]})
    out = tmp_path / "o.jsonl"
    proc = subprocess.run([TUNESMITH, "convert", "hf:org/name", "--split", "train", "-o", str(out), "--to", "instruction",
                           "--map", "instruction=question,output=answer"],
                          env=_offline_env(cache), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote 2 example(s) as instruction -> {out}" in proc.stdout
    assert _read(out) == [{"instruction": "q1", "input": "", "output": "a1"}, {"instruction": "q2", "input": "", "output": "a2"}]
    wrong = subprocess.run([TUNESMITH, "convert", "hf:org/name", "--split", "test", "-o", str(out)],
                           env=_offline_env(cache), capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "error: hf:org/name: " in wrong.stderr and "test" in wrong.stderr
    assert "Traceback" not in wrong.stderr
