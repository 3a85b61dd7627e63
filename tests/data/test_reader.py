"""Streaming JSONL reading (tunesmith.data.reader) and how `check` reports its quirks: BOM, CRLF,
invalid UTF-8, blank lines, JSON arrays, empty/binary/missing files, huge lines, pretty-printing."""

from __future__ import annotations

import json

import pytest

from tunesmith.data import reader
from tunesmith.data.checks import CheckContext, run_check
from tunesmith.data.reader import BOM, iter_raw, looks_like_json_array, open_checked, read_line_at
from tunesmith.errors import DataError


def findings(report) -> list[dict]:
    return report.to_dict()["findings"]


def summary(report) -> list[tuple[str, str, list[int]]]:
    return [(f["check"], f["severity"], f["lines"]) for f in findings(report)]


# --- iter_raw ------------------------------------------------------------------------------------


def test_iter_raw_lines_and_offsets(tmp_path):
    raw = b'{"a": 1}\n\n   \n[1]\n{bad\n"s"\n'
    path = tmp_path / "x.jsonl"
    path.write_bytes(raw)
    recs = list(iter_raw(path))
    assert [r.line for r in recs] == [1, 4, 5, 6]
    assert [r.offset for r in recs] == [0, raw.index(b"[1]"), raw.index(b"{bad"), raw.index(b'"s"')]
    assert recs[0].value == {"a": 1} and recs[0].error is None
    assert recs[1].value == [1]
    assert recs[2].error[0] == "invalid_json_line" and recs[2].value is None
    assert recs[3].value == "s"
    for r in recs:
        if r.error is None:
            assert read_line_at(path, r.offset) == r.value


def test_iter_raw_without_trailing_newline(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}')
    assert [(r.line, r.value) for r in iter_raw(path)] == [(1, {"a": 1}), (2, {"b": 2})]


def test_bom_and_crlf_are_read(tmp_path):
    raw = BOM + b'{"a": 1}\r\n{"b": 2}\r\n\r\n{"c": 3}\r\n'
    path = tmp_path / "x.jsonl"
    path.write_bytes(raw)
    recs = list(iter_raw(path))
    assert [(r.line, r.value, r.error) for r in recs] == [(1, {"a": 1}, None), (2, {"b": 2}, None),
                                                          (4, {"c": 3}, None)]
    assert [r.offset for r in recs] == [0, raw.index(b'{"b"'), raw.index(b'{"c"')]
    assert read_line_at(path, 0) == {"a": 1}  # the BOM is skipped on re-read too
    assert read_line_at(path, recs[2].offset) == {"c": 3}


def test_open_checked(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text("{}\n")
    assert open_checked(str(path)) == path
    with pytest.raises(DataError, match="no such file") as exc:
        open_checked(tmp_path / "missing.jsonl")
    assert exc.value.hint
    with pytest.raises(DataError, match="is a directory"):
        open_checked(tmp_path)


def test_looks_like_json_array(tmp_path):
    cases = {b"[{}]": True, b"  \n [\n{}\n]": True, BOM + b"[{}]": True, b"{}\n": False, b"": False,
             BOM + b"{}": False}
    for i, (raw, expected) in enumerate(cases.items()):
        path = tmp_path / f"{i}.json"
        path.write_bytes(raw)
        assert looks_like_json_array(path) is expected, raw


# --- check on files with quirks ------------------------------------------------------------------


def test_bom_and_crlf_file_has_no_findings(data, check, tmp_path):
    path = data.write(tmp_path / "win.jsonl", data.clean(70), newline=b"\r\n", prefix=BOM)
    report = check(path)
    assert findings(report) == []
    assert report.examples == 70 and report.stats["valid_examples"] == 70


def test_bom_and_crlf_lines_are_re_read_for_near_duplicates(data, check, tmp_path):
    """Near-duplicate verification re-reads lines by byte offset: line 1 (after the BOM) included."""
    words = data.long_text(3).split()
    first = " ".join(words)
    words[10] = "qqqqqqqq"
    items = data.planted({1: data.msgs(first, "same answer here"),
                          40: data.msgs(" ".join(words), "same answer here")})
    path = data.write(tmp_path / "win.jsonl", items, newline=b"\r\n", prefix=BOM)
    assert summary(check(path)) == [("near_duplicate", "warning", [1, 40])]


def test_invalid_utf8_is_reported_and_the_rest_still_checked(data, check, tmp_path):
    items = data.planted({
        3: b'{"prompt": "na\xefve", "completion": "x"}',
        12: {"unknown": "format"},
        40: b"\xff\xfe garbage",
    })
    report = check(items)
    assert summary(report) == [
        ("invalid_utf8", "error", [3]),
        ("invalid_utf8", "error", [40]),
        ("unknown_format", "error", [12]),
    ]
    assert [f["message"] for f in findings(report)][:2] == ["invalid UTF-8 at byte 14 of the line",
                                                            "invalid UTF-8 at byte 0 of the line"]
    assert report.examples == 70
    assert report.stats["valid_examples"] == 67


def test_latin1_file_reports_every_bad_line(data, check, tmp_path):
    path = tmp_path / "latin1.jsonl"
    lines = [json.dumps(ex, ensure_ascii=False) for ex in data.clean(60)]
    lines[4] = json.dumps(data.msgs("un café noir", "très bien"), ensure_ascii=False)
    lines[9] = json.dumps(data.msgs("à bientôt mon ami", "au revoir"), ensure_ascii=False)
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    report = check(path)
    assert {f["check"] for f in findings(report)} == {"invalid_utf8"}
    assert sorted(ln for f in findings(report) for ln in f["lines"]) == [5, 10]


def test_blank_lines_are_skipped_but_counted(data, check, tmp_path):
    items = data.clean(60)
    lines = [json.dumps(ex) for ex in items]
    lines.insert(0, "")                      # line 1 blank
    lines.insert(5, "   \t ")                # line 6 whitespace only
    lines.insert(20, "")                     # line 21 blank
    lines[30] = '{"no": "format"}'           # line 31: the physical line number is reported
    path = tmp_path / "blank.jsonl"
    path.write_text("\n".join(lines) + "\n\n\n")
    report = check(path)
    assert summary(report) == [("unknown_format", "error", [31])]
    assert report.examples == 60  # blank lines are not examples
    assert report.stats["valid_examples"] == 59


def test_empty_file(check, tmp_path):
    for name, raw in (("empty.jsonl", b""), ("blank.jsonl", b"\n\n  \n"), ("bom.jsonl", BOM)):
        path = tmp_path / name
        path.write_bytes(raw)
        report = check(path)
        assert summary(report) == [("too_few_examples", "error", [])], name
        assert "empty" in findings(report)[0]["message"]
        assert name in findings(report)[0]["message"]
        assert report.examples == 0 and report.errors


def test_json_array_on_one_line(data, check, tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(data.clean(40)))
    report = check(path)
    arrays = [f for f in findings(report) if "tunesmith convert" in f["hint"]]
    assert len(arrays) == 1
    assert arrays[0]["check"] == "invalid_json_line" and arrays[0]["severity"] == "error"
    assert arrays[0]["lines"] == [1]
    assert "JSON array" in arrays[0]["message"]
    assert "-o export.converted.jsonl" in arrays[0]["hint"]
    assert report.errors


def test_json_array_pretty_printed(data, check, tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(data.clean(5), indent=2))
    report = check(path)
    arrays = [f for f in findings(report) if "tunesmith convert" in f["hint"]]
    assert [(f["check"], f["lines"]) for f in arrays] == [("invalid_json_line", [1])]
    assert report.stats["valid_examples"] == 0


def test_json_array_with_bom(data, check, tmp_path):
    path = data.write(tmp_path / "export.json", [data.clean(3)], prefix=BOM)
    report = check(path)
    assert any("tunesmith convert" in f["hint"] and f["check"] == "invalid_json_line" for f in findings(report))


def test_json_array_one_object_per_line(data, check, tmp_path):
    """Regression: in the '[\\n{...},\\n{...}\\n]' layout the last element parses on its own line as a
    valid example; the file is still recognised as a JSON array and gets the convert hint."""
    path = tmp_path / "export.json"
    path.write_text("[\n" + ",\n".join(json.dumps(ex) for ex in data.clean(40)) + "\n]\n")
    report = check(path)
    arrays = [f for f in findings(report) if "tunesmith convert" in f["hint"]]
    assert [(f["check"], f["severity"], f["lines"]) for f in arrays] == [("invalid_json_line", "error", [1])]
    assert report.errors


def test_a_json_array_line_inside_jsonl_is_not_the_array_case(data, check):
    report = check(data.planted({5: [data.msgs("a", "b")]}))
    assert summary(report) == [("not_an_object", "error", [5])]
    assert not any("tunesmith convert" in f["hint"] for f in findings(report))


def test_a_json_array_first_line_inside_jsonl_is_not_the_array_case(data, check):
    report = check(data.planted({1: [data.msgs("a", "b")]}))
    assert summary(report) == [("not_an_object", "error", [1])]


def test_binary_file_raises(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\nxx\x00\x01\x02')
    with pytest.raises(DataError, match="binary") as exc:
        run_check(CheckContext(file=path))
    assert ":3:" in exc.value.message  # the line of the first NUL byte
    assert exc.value.hint


def test_utf16_file_is_reported_as_such_and_binary_as_binary(data, tmp_path):
    path = tmp_path / "utf16.jsonl"
    path.write_bytes("\n".join(json.dumps(ex) for ex in data.clean(3)).encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16"):
        run_check(CheckContext(file=path))
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(DataError, match="binary"):
        run_check(CheckContext(file=path))
    path.write_bytes(bytes(4096))  # zero-filled: NULs in both halves is not UTF-16
    with pytest.raises(DataError, match="binary"):
        run_check(CheckContext(file=path))


def test_missing_file_and_directory_raise(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        run_check(CheckContext(file=tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="directory"):
        run_check(CheckContext(file=tmp_path))
    with pytest.raises(DataError):
        list(iter_raw(tmp_path / "missing.jsonl"))


def test_line_over_max_line_bytes(data, check, monkeypatch):
    monkeypatch.setattr(reader, "MAX_LINE_BYTES", 2000)
    items = data.clean(70)
    assert max(len(json.dumps(ex)) for ex in items) < 2000
    items[11] = data.msgs(data.long_text(1, 600), "an answer")   # line 12: a valid but huge example
    items[12] = {"what": "format"}                                # line 13: still checked afterwards
    items[13] = b"\xff\xff"                                       # line 14: still checked afterwards
    assert len(json.dumps(items[11])) > 2000
    report = check(items)
    assert summary(report) == [
        ("invalid_json_line", "error", [12]),
        ("invalid_utf8", "error", [14]),
        ("unknown_format", "error", [13]),
    ]
    assert "limit" in findings(report)[0]["message"]
    assert report.stats["valid_examples"] == 67


def test_pretty_printed_object_reports_every_line(data, check, tmp_path):
    pretty = json.dumps(data.msgs("a question", "an answer"), indent=2).splitlines()
    assert len(pretty) == 12
    lines = [json.dumps(ex) for ex in data.clean(60)]
    path = tmp_path / "pretty.jsonl"
    path.write_text("\n".join(lines[:3] + pretty + lines[3:]) + "\n")  # the object is on lines 4-15
    report = check(path)
    errors = [f for f in findings(report) if f["severity"] == "error"]
    assert sorted(ln for f in errors for ln in f["lines"]) == list(range(4, 16))
    assert {f["check"] for f in errors} <= {"invalid_json_line", "not_an_object", "unknown_format"}
    first = next(f for f in errors if 4 in f["lines"])
    assert first["check"] == "invalid_json_line"
    assert "pretty-printed" in first["message"]
    assert report.stats["valid_examples"] == 60


def test_pretty_printed_turns_each_on_one_line(data, check, tmp_path):
    """Turns written one per line parse as objects on their own: still every line is reported."""
    lines = [json.dumps(ex) for ex in data.clean(60)]
    obj = ['{', '  "messages": [', '    {"role": "user", "content": "hi"},',
           '    {"role": "assistant", "content": "hello"}', '  ]', '}']
    path = tmp_path / "pretty.jsonl"
    path.write_text("\n".join(obj + lines) + "\n")
    report = check(path)
    errors = [f for f in findings(report) if f["severity"] == "error"]
    assert sorted(ln for f in errors for ln in f["lines"]) == [1, 2, 3, 4, 5, 6]


def test_unterminated_string_message(data, check):
    """Regression: json's "Unterminated string starting at" came out as "... starting at at column 43"."""
    report = check(data.planted({4: '{"messages": [{"role": "user", "content": "unterminated'}))
    assert [f["message"] for f in findings(report)] == ["Unterminated string starting at column 43"]


# --- lone surrogates and deep nesting ------------------------------------------------------------

LONE = '{"messages": [{"role": "user", "content": "emoji cut \\ud83d here"}, {"role": "assistant", "content": "ok"}]}'


def test_lone_surrogate_is_a_line_problem(data, check):
    """Regression: a lone \\ud83d escape parsed into a str that crashed hashing and writing later."""
    low = '{"messages": [{"role": "user", "content": "fine"}, {"role": "assistant", "content": "cut \\uDE00"}]}'
    paired = '{"messages": [{"role": "user", "content": "a whole emoji \\ud83d\\ude00 here"}, {"role": "assistant", "content": "ok"}]}'
    escaped = '{"messages": [{"role": "user", "content": "a path C:\\\\ud83d"}, {"role": "assistant", "content": "ok"}]}'
    report = check(data.planted({8: LONE, 15: paired, 22: low, 30: escaped}))
    assert summary(report) == [("invalid_utf8", "error", [8]), ("invalid_utf8", "error", [22])]
    first, second = findings(report)
    assert first["message"] == ("messages[0].content holds \\ud83d, half of a UTF-16 surrogate pair (a character cut "
                                "in half), which cannot be written as UTF-8")
    assert second["message"].startswith("messages[1].content holds \\ude00, half of a UTF-16 surrogate pair")
    assert first["hint"].startswith("re-export the data as UTF-8")
    assert report.stats["valid_examples"] == 68  # the paired emoji and the escaped backslash are fine


def test_lone_surrogate_in_a_key_or_an_ignored_field(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a\\udc00", "prompt": "p", "completion": "c"}\n{"\\ud800": 1}\n')
    recs = list(iter_raw(path))
    assert [(r.line, r.error[0]) for r in recs] == [(1, "invalid_utf8"), (2, "invalid_utf8")]
    assert recs[0].error[1].startswith("id holds \\udc00")
    assert recs[1].error[1].startswith("a key of the record holds \\ud800")
    assert recs[0].hint == reader.SURROGATE_HINT and recs[0].value is None


def test_deeply_nested_line_is_malformed_json(data, check):
    """Regression: 100,000 nested [ on one line raised RecursionError out of iter_raw."""
    report = check(data.planted({5: "[" * 100_000, 9: '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}"}))
    f = findings(report)
    assert summary(report) == [("invalid_json_line", "error", [5, 9])]
    assert f[0]["message"] == reader.TOO_DEEP
    assert "nested too deeply" in reader.TOO_DEEP
    assert report.stats["valid_examples"] == 68


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_file_is_named_as_such(tmp_path, encoding):
    from tunesmith.data.reader import open_checked
    from tunesmith.errors import DataError

    f = tmp_path / "d.jsonl"
    f.write_bytes('{"prompt": "héllo", "completion": "wörld"}\n'.encode(encoding) * 3)
    with pytest.raises(DataError, match="is UTF-16 text") as ei:
        open_checked(f)
    assert "iconv" in ei.value.hint
