"""Property tests for every reader of user files: structured garbage around valid inputs.

JSONL rows in each format tunesmith detects, the sealed test set's seal and the regression suite,
with fields swapped for wrong types, numbers past Python's 4,300-digit limit, nesting deeper than
the recursion limit, NaN, NUL bytes, cut lines, invalid UTF-8, BOMs and duplicate keys. The one
invariant: the reader succeeds, or raises a TunesmithError that names the file (and the line or
field where it has one); never another exception.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from datagen import clean_examples, write_jsonl
from tunesmith.data.checks import CheckContext, run_check
from tunesmith.data.formats import parse_record
from tunesmith.data.reader import iter_raw
from tunesmith.data.split import split_file, verify_seal
from tunesmith.errors import SealError, TunesmithError
from tunesmith.evaluate.regression import load_suite

HUGE, DEEP = "__huge__", "__deep__"  # placeholders: json.dumps can write neither
REPLACEMENTS = {f'"{HUGE}"': "9" * 4400, f'"{DEEP}"': "[" * 5000 + "]" * 5000}
#: TUNESMITH_PROPERTY_SCALE=50 turns the quick run (seconds) into a search campaign (minutes)
SCALE = int(os.environ.get("TUNESMITH_PROPERTY_SCALE", "1"))


def examples(n: int) -> settings:
    return settings(deadline=None, max_examples=n * SCALE, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ---------------------------------------------------------------------------------------

words = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), words,
                    st.sampled_from([HUGE, DEEP, "\x00", "\ud83d", ""]))
garbage = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(words, inner, max_size=3)), max_leaves=6)
roles = st.sampled_from(["system", "user", "assistant", "User", "gpt", "tool", ""])


@st.composite
def valid_rows(draw: st.DrawFn) -> dict[str, Any]:
    """One well-formed row in one of the formats tunesmith reads."""
    q, a = draw(words.filter(str.strip)), draw(words.filter(str.strip))
    return draw(st.sampled_from([
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": q},
                      {"role": "assistant", "content": a, "weight": 1}]},
        {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
        {"instruction": q, "input": "", "output": a, "system": "s", "history": [["h", "i"]]},
        {"prompt": q, "completion": a},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": q}]},
                      {"role": "assistant", "content": a, "tool_calls": []}], "tools": [], "provenance": {}},
    ]))


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*path, i))
    return out


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    return [(_replace(v, rest, new) if i == head else v) for i, v in enumerate(value)]


def dumps(value: Any) -> str:
    text = json.dumps(value)  # NaN and Infinity as Python writes them
    for placeholder, raw in REPLACEMENTS.items():
        text = text.replace(placeholder, raw)
    return text


@st.composite
def mangled_rows(draw: st.DrawFn, rows: st.SearchStrategy = valid_rows()) -> bytes:
    """A valid row with up to two fields replaced by garbage, then maybe damaged as bytes."""
    row = draw(rows)
    for _ in range(draw(st.integers(0, 2))):
        path = draw(st.sampled_from(_paths(row)))
        row = _replace(row, path, draw(garbage))
    line = dumps(row).encode("utf-8", "surrogatepass")
    damage = draw(st.sampled_from(["none", "none", "cut", "nul", "bad_utf8", "dup_key", "bom", "crlf", "blank"]))
    if damage == "cut":
        line = line[: draw(st.integers(0, max(0, len(line) - 1)))]
    elif damage == "nul":
        at = draw(st.integers(0, len(line)))
        line = line[:at] + b"\x00" + line[at:]
    elif damage == "bad_utf8":
        at = draw(st.integers(0, len(line)))
        line = line[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe2\x82"])) + line[at:]
    elif damage == "dup_key" and line.startswith(b"{") and len(line) > 2:
        line = b'{"messages": 1, ' + line[1:]
    elif damage == "bom":
        line = b"\xef\xbb\xbf" + line
    elif damage == "crlf":
        line += b"\r"
    elif damage == "blank":
        line = b"  \t"
    return line


def jsonl(rows: st.SearchStrategy = mangled_rows()) -> st.SearchStrategy[bytes]:
    return st.lists(st.one_of(rows, garbage.map(lambda v: dumps(v).encode("utf-8", "surrogatepass"))),
                    min_size=0, max_size=6).map(lambda lines: b"\n".join(lines) + b"\n")


_DIR = Path(tempfile.mkdtemp(prefix="tunesmith-properties-"))


def _file(name: str, data: bytes) -> Path:
    path = _DIR / name
    path.write_bytes(data)
    return path


def _names(error: TunesmithError, path: Path) -> None:
    """The error names the file (in its message, or in every detail by name and line)."""
    assert str(path) in error.message or path.name in error.message, error.message
    for detail in error.details:
        assert detail.startswith(f"{path.name}:"), detail


# --- JSONL: the reader, the format detector and every check ------------------------------------------

@examples(300)
@given(data=jsonl())
def test_iter_raw_yields_every_line_or_names_the_file(data: bytes) -> None:
    path = _file("rows.jsonl", data)
    try:
        records = list(iter_raw(path))
    except TunesmithError as error:
        _names(error, path)
        return
    n_lines = data.count(b"\n")
    assert all(1 <= r.line <= n_lines for r in records)
    for r in records:
        assert r.error is None or r.value is None
        if r.error is None:
            parse_record(r.value, r.line, r.offset)  # the detector takes any JSON a line can hold


@examples(300)
@given(value=garbage)
def test_the_format_detector_takes_any_json_value(value: Any) -> None:
    ex = parse_record(value, 1)
    assert ex.line == 1
    for p in ex.problems:
        assert p.message and isinstance(p.message, str)
    for key in ("messages", "conversations"):  # the row formats' own fields, holding anything
        parse_record({key: value}, 2)
    parse_record({"instruction": value, "output": value, "history": value, "system": value}, 3)
    parse_record({"prompt": value, "completion": "a", "system": value}, 4)


@examples(150)
@given(data=jsonl(), expects_json=st.booleans())
def test_check_reports_every_line_or_names_the_file(data: bytes, expects_json: bool) -> None:
    path = _file("check.jsonl", data)
    try:
        report = run_check(CheckContext(file=path, expects_json=expects_json, regex=None if expects_json else "[a-z]*"))
    except TunesmithError as error:
        _names(error, path)
        return
    n_lines = data.count(b"\n")
    for f in report.findings:
        assert all(1 <= ln <= n_lines for ln in f.lines), f
    json.dumps(report.to_dict())  # --json can always print it


# --- the regression suite -------------------------------------------------------------------------------

@st.composite
def suite_rows(draw: st.DrawFn) -> dict[str, Any]:
    prompt = draw(st.sampled_from([{"prompt": "p"}, {"messages": [{"role": "user", "content": "q"}]}]))
    assertion = draw(st.sampled_from([
        {"type": "contains", "value": "x"}, {"type": "regex", "pattern": "a+"}, {"type": "json_schema"},
        {"type": "json_field", "path": "a.b", "equals": 1}, {"type": "judge_min", "min": 3, "criterion": "c"},
        {"type": "scorer", "name": "m:f", "min": 0.5},
    ]))
    return {"id": draw(words), **prompt, "expected": "e", "assertions": [assertion]}


@examples(200)
@given(data=jsonl(mangled_rows(suite_rows())))
def test_a_regression_suite_loads_or_names_file_line_and_field(data: bytes) -> None:
    path = _file("regression.jsonl", data)
    try:
        items, _ = load_suite(path)
    except TunesmithError as error:
        _names(error, path)
        return
    assert all(isinstance(item.id, str) for item in items)


# --- the seal -------------------------------------------------------------------------------------------

_SPLIT = Path(tempfile.mkdtemp(prefix="tunesmith-seal-"))


@functools.cache
def _seal() -> dict[str, Any]:
    """A real seal of a real split, made once."""
    write_jsonl(_SPLIT / "all.jsonl", clean_examples(40))
    split_file(_SPLIT / "all.jsonl", _SPLIT / "train.jsonl", _SPLIT / "test.jsonl", test_fraction=0.25)
    return json.loads((_SPLIT / "test.seal.json").read_text())


@st.composite
def seals(draw: st.DrawFn) -> bytes:
    seal = _seal()
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):  # an intact seal a third of the time
        path = draw(st.sampled_from(_paths(seal)))
        seal = _replace(seal, path, draw(garbage))
    text = dumps(seal).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 3)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text


@examples(200)
@given(text=seals())
def test_a_damaged_seal_is_a_seal_error_naming_it(text: bytes) -> None:
    seal = _SPLIT / "test.seal.json"
    seal.write_bytes(text)
    try:
        event("intact" if verify_seal(_SPLIT / "test.jsonl").ok else "broken")
    except SealError as error:
        _names(error, seal)
        event("refused")


@examples(25)
@given(text=seals())
def test_a_resplit_over_a_damaged_seal_refuses_or_keeps_its_rows(text: bytes) -> None:
    out = Path(tempfile.mkdtemp(dir=_SPLIT))
    (out / "test.seal.json").write_bytes(text)
    try:
        split_file(_SPLIT / "all.jsonl", out / "train.jsonl", out / "test.jsonl", test_fraction=0.25)
        event("split")
    except SealError as error:
        _names(error, out / "test.seal.json")
        event("refused")
