"""The regression suite: parsing (every problem at once, with line and name) and each assertion type."""

import json

import pytest
from jsonschema import validators

from tunesmith.evaluate.metrics import load_scorer
from tunesmith.evaluate.regression import RegressionError, check_assertions, flips, load_suite, new_failures


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_suite_reports_every_problem(tmp_path):
    suite = write(tmp_path / "r.jsonl", [
        {"id": "a", "prompt": "x", "assertions": [{"type": "looks_good"}]},
        {"id": "a", "prompt": "y", "assertions": [{"type": "regex"}]},
        {"id": "c", "assertions": [{"type": "contains", "value": "q"}]},
    ])
    with pytest.raises(RegressionError) as info:
        load_suite(suite)
    details = "\n".join(info.value.details)
    assert "r.jsonl:1" in details and "looks_good" in details
    assert "r.jsonl:2" in details and "duplicate id 'a'" in details and "needs pattern" in details
    assert "r.jsonl:3" in details and "'prompt'" in details


def test_every_assertion_type(tmp_path):
    (tmp_path / "score.py").write_text("def has_answer(inp):\n    return 1.0 if inp.expected and inp.expected in inp.output else 0.0\n")
    suite = write(tmp_path / "r.jsonl", [{
        "id": "all", "prompt": "give json", "expected": "yes",
        "assertions": [
            {"type": "equals", "value": '{"a": [1, {"b": "yes"}]}'},
            {"type": "contains", "value": "yes"}, {"type": "not_contains", "value": "no"},
            {"type": "regex", "pattern": r'"b":\s*"y'}, {"type": "json_schema"},
            {"type": "json_field", "path": "a[1].b", "equals": "yes"},
            {"type": "judge_min", "min": 4}, {"type": "scorer", "name": "score.py:has_answer", "min": 1},
        ]}])
    items, warnings = load_suite(suite, "SYS")
    assert items[0].chat[0] == {"role": "system", "content": "SYS"} and warnings  # 1 prompt < 20
    validator = validators.validator_for({"type": "object"})({"type": "object"})
    scorer = {"score.py:has_answer": load_scorer("score.py:has_answer", tmp_path)}
    good = '{"a": [1, {"b": "yes"}]}'
    ok = check_assertions(items[0], good, validator=validator, judge_scores={"overall": 4.5}, scorers=scorer)
    assert ok.passed, ok
    bad = check_assertions(items[0], '{"a": [1, {"b": "no"}]}', validator=validator,
                           judge_scores={"overall": 2.0}, scorers=scorer)
    kinds = sorted(f.split(":")[0] for f in bad.failures)
    assert kinds == ["contains", "equals", "json_field", "judge_min", "not_contains", "regex", "scorer"]
    pending = check_assertions(items[0], good, validator=validator)
    assert not pending.passed and len(pending.pending) == 2  # no judge, scorer not loaded


def test_gate_arithmetic():
    before = {"a": True, "b": True, "c": False, "d": None}
    after = {"a": True, "b": False, "c": True, "d": False}
    assert new_failures(before, after) == ["b"]
    assert [f["id"] for f in flips(before, after)] == ["b", "c", "d"]


# --- a hand-written suite: wrong types and unreadable lines are problems with the line and field ------

def _problems(tmp_path, lines) -> list[str]:
    suite = tmp_path / "r.jsonl"
    suite.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    with pytest.raises(RegressionError) as info:
        load_suite(suite)
    assert info.value.message == f"{suite}: {len(info.value.details)} problem(s) in the regression suite"
    return info.value.details


def test_wrong_field_types_name_the_line_and_field(tmp_path):
    ok = {"type": "contains", "value": "x"}
    details = _problems(tmp_path, [
        {"id": {"a": 1}, "prompt": "p", "assertions": [ok]},
        {"prompt": ["not", "text"], "assertions": [ok]},
        {"prompt": "p", "assertions": [{"type": ["regex"]}]},
        {"prompt": "p", "assertions": [{"type": "regex", "pattern": 5}]},
        {"prompt": "p", "assertions": [{"type": "judge_min", "min": "4"}]},
        {"prompt": "p", "assertions": [{"type": "json_field", "path": ["a"]}]},
        {"prompt": "p", "assertions": [{"type": "contains", "value": {"k": 1}}]},
        {"prompt": "p", "assertions": [{"type": "scorer", "name": "m:f", "min": [1]}]},
        {"prompt": "p", "assertions": [{"type": "judge_min", "min": 3, "criterion": 7}]},
        {"messages": [{"role": "user", "content": ["x"]}], "assertions": [ok]},
    ])
    assert details == [
        "r.jsonl:1: id is an object; it must be a string (or a number)",
        "r.jsonl:2: prompt is a list; it must be a string",
        "r.jsonl:3: assertions[0].type is a list; it must be one of equals, contains, not_contains, regex, "
        "json_schema, json_field, judge_min, scorer",
        "r.jsonl:4: assertions[0].pattern is a number; it must be a string",
        "r.jsonl:5: assertions[0].min is a string; it must be a number",
        "r.jsonl:6: assertions[0].path is a list; it must be a string",
        "r.jsonl:7: assertions[0].value is an object; it must be a string (use json_field for a JSON value)",
        "r.jsonl:8: assertions[0].min is a list; it must be a number",
        "r.jsonl:9: assertions[0].criterion is a number; it must be a string",
        "r.jsonl:10: messages[0].content is a list; it must be a string",
    ]


def test_unreadable_lines_name_the_line(tmp_path):
    details = _problems(tmp_path, [
        '{"prompt": "p", "assertions": [{"type": "contains", "value": ' + "9" * 5000 + "}]}",
        "{broken",
        "[" * 100_000,
    ])
    assert details[0] == ("r.jsonl:1: field assertions[0].value is a number 5,000 digits long; "
                          "no example needs one that long")
    assert details[1].startswith("r.jsonl:2: Expecting property name")
    assert details[2].startswith("r.jsonl:3: JSON nested too deeply")


def test_a_suite_that_is_a_symlink_loop(tmp_path):
    suite = tmp_path / "r.jsonl"
    suite.symlink_to(suite)
    with pytest.raises(RegressionError) as info:
        load_suite(suite)
    assert info.value.message == f"{suite} is a symlink loop ({suite} -> {suite})"
    assert "ls -l" in info.value.hint
