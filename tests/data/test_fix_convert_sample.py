import json

import pytest

from datagen import clean_examples, write_jsonl
from tunesmith.data.checks import CheckContext
from tunesmith.data.convert import convert_file
from tunesmith.data.diversity import default_sample_size
from tunesmith.data.fix import fix_file
from tunesmith.data.sample import sample_diverse
from tunesmith.errors import DataError, UsageError


def test_fix_drops_errors_and_duplicates_and_logs_why(tmp_path):
    rows = clean_examples(40)
    m = rows[3]["messages"]
    rows.append(rows[3])                                                   # line 41: exact duplicate of 4
    rows.append({"messages": [m[0], {"role": "user", "content": m[1]["content"] + "!"}, m[2]]})  # 42: near dup of 4
    rows.append("{broken")                                                 # 43
    rows.append({"messages": [{"role": "user", "content": "hi"}]})         # 44: no assistant
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    before = src.read_bytes()
    result = fix_file(CheckContext(file=src), tmp_path / "clean.jsonl")
    assert src.read_bytes() == before  # never touches its input
    assert result.kept == 40 and result.dropped == 4
    log = [json.loads(l) for l in result.log.read_text().splitlines()]
    assert [e["line"] for e in log] == [41, 42, 43, 44]
    assert log[0]["checks"] == ["exact_duplicate"] and log[1]["checks"] == ["near_duplicate"]
    assert "invalid_json_line" in log[2]["checks"] and "missing_assistant" in log[3]["checks"]
    kept = (tmp_path / "clean.jsonl").read_text().splitlines()
    assert kept[3] == json.dumps(rows[3])  # the first of each cluster is kept


def test_fix_refuses_to_overwrite_input(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", clean_examples(35))
    with pytest.raises(UsageError, match="never writes over its input"):
        fix_file(CheckContext(file=src), src)


def test_convert_round_trip_between_formats(tmp_path):
    rows = [
        {"instruction": "Sum", "input": "1 2", "output": "3", "system": "Be terse."},
        {"prompt": "Capital of France?", "completion": "Paris"},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    msgs = convert_file(src, tmp_path / "m.jsonl", "messages")
    assert msgs.written == 4 and not msgs.failed
    out = [json.loads(l) for l in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert out[0]["messages"] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Sum\n\n1 2"},
                                  {"role": "assistant", "content": "3"}]
    inst = convert_file(tmp_path / "m.jsonl", tmp_path / "i.jsonl", "instruction")
    assert inst.written == 3
    assert inst.failed == [(4, "it has turns user/assistant/user/assistant; only [system,] user, assistant fits")]
    back = convert_file(tmp_path / "i.jsonl", tmp_path / "m2.jsonl", "messages")
    assert [json.loads(l) for l in (tmp_path / "m2.jsonl").read_text().splitlines()] == out[:3]
    pc = convert_file(src, tmp_path / "pc.jsonl", "prompt_completion")
    assert [ln for ln, _ in pc.failed] == [1, 4]  # a system prompt has no place in prompt/completion


def test_convert_reads_a_json_array_and_reports_bad_records(tmp_path):
    src = tmp_path / "arr.json"
    src.write_text(json.dumps([{"prompt": "p", "completion": "c"}, {"nope": 1}], indent=2))
    result = convert_file(src, tmp_path / "o.jsonl", "messages")
    assert result.written == 1 and result.failed[0][0] == 2 and "no known format" in result.failed[0][1]


def test_convert_unknown_target(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", clean_examples(2))
    with pytest.raises(UsageError, match="unknown target format"):
        convert_file(src, tmp_path / "o.jsonl", "yaml")


def test_sample_diverse_prefers_the_unusual(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "what is the weather like today in town"},
                          {"role": "assistant", "content": "sunny"}]} for _ in range(60)]
    rows[10] = {"messages": [{"role": "user", "content": "def f(*args, **kwargs): raise ValueError"},
                             {"role": "assistant", "content": "{\"raises\": [\"ValueError\"]}"}]}
    rows[40] = {"messages": [{"role": "user", "content": "Traduis: le chat noir mange"},
                             {"role": "assistant", "content": "the black cat eats"}]}
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    result = sample_diverse(src, 3, tmp_path / "s.jsonl")
    assert {11, 41} <= set(result.lines)
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 3


def test_sample_default_size_and_errors(tmp_path):
    assert default_sample_size(100) == 50 and default_sample_size(2000) == 200 and default_sample_size(20) == 20
    src = write_jsonl(tmp_path / "d.jsonl", clean_examples(70))
    assert len(sample_diverse(src).lines) == 50
    with pytest.raises(UsageError):
        sample_diverse(src, 0)
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{oops"])
    with pytest.raises(DataError, match="no well-formed examples"):
        sample_diverse(bad, 5)
