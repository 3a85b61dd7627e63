"""tunesmith.evaluate.metrics: per-item metrics, user scorers, aggregation."""

from __future__ import annotations

import json
import math
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.evaluate.metrics import (
    Aggregate,
    ItemScore,
    NamedScorer,
    ScorerError,
    ScorerInput,
    aggregate,
    load_scorer,
    metric_kind,
    score_item,
    scorer_metric,
)
from tunesmith.evaluate.paired import paired_values
from tunesmith.evaluate.types import EvalItem, Estimate, Generation

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def item(expected: str | None = None, id: str = "i1", prompt: str = "extract", line: int = 3) -> EvalItem:
    return EvalItem(id=id, chat=[{"role": "system", "content": "be terse"}, {"role": "user", "content": prompt}],
                    expected=expected, line=line)


def gen(text: str, finish: str = "stop", tokens: int = 5, error: str | None = None) -> Generation:
    return Generation(text=text, finish_reason=finish, output_tokens=tokens, error=error)


def score(expected: str | None, text: str, **kw) -> ItemScore:
    kw.setdefault("schema", None)
    kw.setdefault("regex", None)
    finish = kw.pop("finish", "stop")
    return score_item(item(expected), gen(text, finish), **kw)


# --- exact match ----------------------------------------------------------------------------------


def test_exact_match_strips_whitespace() -> None:
    assert score("Paris", "  Paris\n").exact_match is True
    assert score("Paris", "paris").exact_match is False
    assert score(None, "Paris").exact_match is None


def test_exact_match_normalises_json() -> None:
    # key order, spacing and 1 vs 1.0 do not matter once parsed
    s = score('{"a": 1, "b": [1, 2]}', '\n{"b":[1,2],"a":1.0}  ')
    assert s.exact_match is True and s.json_valid is True
    assert score('{"a": 1}', '{"a": 2}').exact_match is False
    # booleans are not numbers, and list order matters
    assert score('{"a": true}', '{"a": 1}').exact_match is False
    assert score("[1, 2]", "[2, 1]").exact_match is False
    # an output that is not JSON compares as text (and fails)
    assert score('{"a": 1}', "{'a': 1}").exact_match is False


# --- JSON and schema ------------------------------------------------------------------------------


def test_json_valid_follows_check_rule() -> None:
    assert score(None, ' {"a": 1} ', expects_json=True).json_valid is True
    assert score(None, "[1, 2]", expects_json=True).json_valid is True
    assert score(None, '{"a": ', expects_json=True).json_valid is False
    assert score(None, "just text", expects_json=True).json_valid is False
    # like `tunesmith check`, only objects and arrays count as JSON outputs
    assert score(None, "42", expects_json=True).json_valid is False


def test_json_valid_is_defined_only_where_json_is_expected() -> None:
    # a classifier's "positive" is not a JSON failure: no contract, a plain-text expected answer
    assert score("positive", "positive").json_valid is None
    assert score("positive", '{"label": "positive"}').json_valid is None
    # a JSON expected answer, a schema, or the project's json contract each ask for JSON
    assert score('{"a": 1}', "not json").json_valid is False
    assert score("[1]", "[1]").json_valid is True
    assert score(None, '{"a": 1}', schema={"type": "object"}).json_valid is True
    assert score("plain", "plain", expects_json=True).json_valid is False
    agg = aggregate([score_item(item("positive", id=f"x{i}"), gen("positive"), schema=None, regex=None)
                     for i in range(3)])
    assert "json_valid" not in agg and agg["exact_match"].mean == 1.0


def test_schema_valid_uses_the_check_validator() -> None:
    from jsonschema import validators

    good, bad_type = '{"name": "Ada", "age": 36}', '{"name": "Ada", "age": "36"}'
    extra = '{"name": "A", "age": 1, "x": 0}'
    v = validators.validator_for(SCHEMA)(SCHEMA)
    for text in (good, bad_type, extra):
        expected = v.is_valid(json.loads(text))
        assert score(None, text, schema=SCHEMA).schema_valid is expected
    assert score(None, good, schema=SCHEMA).schema_valid is True
    assert score(None, bad_type, schema=SCHEMA).schema_valid is False
    assert score(None, extra, schema=SCHEMA).schema_valid is False
    assert score(None, "not json", schema=SCHEMA).schema_valid is False
    assert score(None, good).schema_valid is None
    # the draft comes from $schema, as in check: draft-04 has boolean exclusiveMaximum, 2020-12 does not
    d4 = {"$schema": "http://json-schema.org/draft-04/schema#", "type": "array",
          "items": {"type": "number", "maximum": 5, "exclusiveMaximum": True}}
    assert score(None, "[4]", schema=d4).schema_valid is True
    assert score(None, "[5]", schema=d4).schema_valid is False


# --- field accuracy -------------------------------------------------------------------------------


def test_field_accuracy_partially_right_object() -> None:
    expected = '{"name": "Ada", "age": 36, "city": "London", "tags": ["a", "b"]}'
    # name right, age right (36.0 == 36), city wrong, tags wrong order -> 2 of 4 = 0.5
    s = score(expected, '{"age": 36.0, "name": "Ada", "city": "Paris", "tags": ["b", "a"], "extra": 1}')
    assert s.fields == {"name": True, "age": True, "city": False, "tags": False}
    assert s.field_accuracy == 0.5
    assert s.exact_match is False
    # a missing field counts as wrong: 1 of 4 = 0.25
    assert score(expected, '{"name": "Ada"}').field_accuracy == 0.25


def test_field_accuracy_edge_cases() -> None:
    expected = '{"name": "Ada", "age": 36}'
    s = score(expected, "Ada, 36")  # not JSON at all
    assert s.field_accuracy == 0.0 and s.fields == {"name": False, "age": False}
    assert score(expected, '["Ada", 36]').field_accuracy == 0.0  # JSON, but not an object
    assert score(expected, '{"name": "Ada", "age": 36}').field_accuracy == 1.0
    # undefined when the expected answer is not an object with fields
    assert score("Paris", "Paris").field_accuracy is None
    assert score("[1]", "[1]").field_accuracy is None
    assert score("{}", "{}").field_accuracy is None
    assert score(None, '{"a": 1}').field_accuracy is None


# --- regex, lengths, stopping ---------------------------------------------------------------------


def test_regex_full_match_like_check() -> None:
    assert score(None, "YES", regex="YES|NO").regex_ok is True
    assert score(None, "YES!", regex="YES|NO").regex_ok is False  # full match, not search
    assert score(None, "line1\nline2", regex="line1.line2").regex_ok is True  # DOTALL
    assert score(None, "YES").regex_ok is None
    with pytest.raises(TunesmithError):
        score(None, "x", regex="(unclosed")


def test_length_tokens_and_stop() -> None:
    s = score_item(item(), gen("hello", "length", tokens=7), schema=None, regex=None)
    assert s.length_chars == 5 and s.output_tokens == 7 and s.stopped is False and s.error is None
    assert score(None, "x").stopped is True


# --- generation errors ----------------------------------------------------------------------------


def test_error_items_are_marked_and_excluded() -> None:
    scores = [
        score_item(item('{"a": 1}', id="ok1"), gen('{"a": 1}'), schema=SCHEMA, regex=".*"),
        score_item(item('{"a": 1}', id="ok2"), gen('{"a": 2}', "length"), schema=SCHEMA, regex=".*"),
        score_item(item('{"a": 1}', id="bad"), gen("", "error", error="HTTP 500"), schema=SCHEMA, regex=".*"),
    ]
    bad = scores[2]
    assert bad.error == "HTTP 500"
    assert bad.exact_match is None and bad.json_valid is None and bad.schema_valid is None
    assert bad.regex_ok is None and bad.field_accuracy is None
    assert score_item(item(), gen("", "error"), schema=None, regex=None).error == "generation failed"

    agg = aggregate(scores)
    assert isinstance(agg, Aggregate) and isinstance(agg, dict)
    assert agg.total == 3 and agg.excluded == 1 and agg.excluded_ids == ["bad"]
    # exact match over the 2 scored items: 1 of 2 = 0.5 (the error is not a zero: that would be 1/3)
    assert agg["exact_match"].n == 2 and agg["exact_match"].mean == 0.5
    assert agg["stop_rate"].n == 2 and agg["stop_rate"].mean == 0.5
    assert agg["json_valid"] == Estimate(1.0, 1.0, 1.0, 2)
    d = agg.to_dict()
    assert d["excluded"] == 1 and d["total"] == 3 and d["metrics"]["exact_match"]["n"] == 2
    json.dumps(d)


def test_all_errors_gives_n_zero() -> None:
    agg = aggregate([score_item(item(id=str(i)), gen("", "error"), schema=None, regex=None) for i in range(3)])
    assert agg.excluded == 3
    assert agg["stop_rate"].n == 0 and math.isnan(agg["stop_rate"].mean)
    assert "exact_match" not in agg and "json_valid" not in agg


# --- aggregation ----------------------------------------------------------------------------------


def test_aggregate_means_intervals_and_definedness() -> None:
    # 10 items: 4 exact (expected given on all), regex defined on none, no schema
    scores = []
    for i in range(10):
        text = "A" if i < 4 else "B"
        finish = "stop" if i < 8 else "length"
        scores.append(score_item(item("A", id=f"x{i}"), gen(text, finish, tokens=i), schema=None, regex=None))
    agg = aggregate(scores, seed=1)
    assert agg["exact_match"].mean == 0.4 and agg["exact_match"].n == 10
    assert agg["exact_match"].lo < 0.4 < agg["exact_match"].hi
    assert agg["stop_rate"].mean == 0.8
    assert agg["length_chars"] == Estimate(1.0, 1.0, 1.0, 10)
    assert agg["output_tokens"].mean == 4.5  # (0 + 1 + ... + 9) / 10 = 45 / 10
    assert "json_valid" not in agg  # plain-text answers, no JSON contract
    assert "schema_valid" not in agg and "regex_ok" not in agg and "field_accuracy" not in agg
    assert aggregate(scores, seed=1) == agg  # deterministic
    assert metric_kind("exact_match") == "binary" and metric_kind("field_accuracy") == "score"
    assert metric_kind(scorer_metric("mine")) == "score"


def test_paired_values_aligns_by_id_and_skips_undefined() -> None:
    a = [score_item(item("A", id=i), gen(t), schema=None, regex=None) for i, t in (("1", "A"), ("2", "B"), ("3", "A"))]
    b = [score_item(item("A", id="3"), gen("B"), schema=None, regex=None),
         score_item(item("A", id="1"), gen("A"), schema=None, regex=None),
         score_item(item("A", id="2"), gen("", "error"), schema=None, regex=None)]
    ids, va, vb = paired_values(a, b, "exact_match")
    assert ids == ["1", "3"] and va == [True, True] and vb == [True, False]


# --- user scorers ---------------------------------------------------------------------------------

SCORER_SOURCE = textwrap.dedent('''
    def length_ratio(inp):
        """Output length over expected length."""
        return len(inp.output) / max(1, len(inp.expected or ""))

    def mentions_prompt(inp):
        return inp.prompt in inp.output

    def echo_meta(inp):
        return float(inp.metadata["line"])

    def fails_on_b(inp):
        if inp.output == "B":
            raise RuntimeError("cannot score B")
        return 1.0

    def returns_text(inp):
        return "good"

    def two_args(inp, other):
        return 1.0

    NOT_CALLABLE = 3
''')


@pytest.fixture
def scorer_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A scorer module with a unique name in tmp_path (the 'project directory')."""
    name = "scorers_" + uuid.uuid4().hex[:8]
    (tmp_path / f"{name}.py").write_text(SCORER_SOURCE)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "my_scorers.py").write_text(SCORER_SOURCE)
    yield tmp_path, name
    sys.modules.pop(name, None)


def test_load_scorer_module_function(scorer_module) -> None:
    base, name = scorer_module
    s = load_scorer(f"{name}:length_ratio", base)
    assert isinstance(s, NamedScorer) and s.name == "length_ratio" and s.spec == f"{name}:length_ratio"
    assert str(base.resolve()) not in sys.path  # only on the path while importing
    r = score_item(item("abcd"), gen("abcdefgh"), schema=None, regex=None, scorers=[s])
    assert r.scores == {"length_ratio": 2.0} and r.scorer_errors == {}


def test_load_scorer_file_function(scorer_module) -> None:
    base, _ = scorer_module
    s1 = load_scorer("sub/my_scorers.py:mentions_prompt", base)
    s2 = load_scorer(str(base / "sub" / "my_scorers.py") + ":echo_meta", Path("/nonexistent"), name="line")
    assert s2.name == "line"
    r = score_item(item(None, prompt="cat", line=12), gen("a cat"), schema=None, regex=None, scorers=[s1, s2])
    assert r.scores == {"mentions_prompt": 1.0, "line": 12.0}  # bool -> 1.0


def test_scorer_input_contents() -> None:
    seen: list[ScorerInput] = []

    def spy(inp: ScorerInput) -> float:
        seen.append(inp)
        return 0.5

    it = EvalItem(id="q7", chat=[{"role": "user", "content": "hi"}], expected="yo",
                  assertions=[{"contains": "y"}], line=9)
    r = score_item(it, gen(" yo "), schema=None, regex=None, scorers=[spy])
    assert r.scores == {"spy": 0.5}
    inp = seen[0]
    assert (inp.id, inp.prompt, inp.output, inp.expected) == ("q7", "hi", " yo ", "yo")
    assert inp.metadata["line"] == 9 and inp.metadata["assertions"] == [{"contains": "y"}]
    with pytest.raises(TypeError):
        inp.metadata["line"] = 1  # type: ignore[index]
    inp.metadata["assertions"].append("x")  # a copy: the item is untouched
    assert it.assertions == [{"contains": "y"}]


def test_scorer_raising_on_one_item_is_recorded(scorer_module) -> None:
    base, name = scorer_module
    s = load_scorer(f"{name}:fails_on_b", base)
    t = load_scorer(f"{name}:returns_text", base)
    scores = [score_item(item("A", id=str(i)), gen(txt), schema=None, regex=None, scorers=[s, t])
              for i, txt in enumerate(["A", "B", "A"])]
    assert scores[0].scores == {"fails_on_b": 1.0}
    assert scores[1].scores == {}
    assert scores[1].scorer_errors["fails_on_b"] == "RuntimeError: cannot score B"
    assert "must return a float or a bool" in scores[0].scorer_errors["returns_text"]
    agg = aggregate(scores)
    assert agg[scorer_metric("fails_on_b")] == Estimate(1.0, 1.0, 1.0, 2)  # the failing item is left out
    assert agg[scorer_metric("returns_text")].n == 0
    assert agg.scorer_errors == {"fails_on_b": 1, "returns_text": 3}
    # scorers never run on generation errors
    e = score_item(item("A"), gen("", "error"), schema=None, regex=None, scorers=[s])
    assert e.scores == {} and e.scorer_errors == {}


def test_nan_and_duplicate_scorers() -> None:
    r = score_item(item(), gen("x"), schema=None, regex=None, scorers=[NamedScorer("nan", lambda inp: float("nan"))])
    assert "nan" in r.scorer_errors and r.scores == {}
    with pytest.raises(ScorerError):
        score_item(item(), gen("x"), schema=None, regex=None,
                   scorers=[NamedScorer("s", lambda i: 1.0), NamedScorer("s", lambda i: 0.0)])


@pytest.mark.parametrize("spec, message", [
    ("no_colon_here", "not in the form"),
    (":fn", "not in the form"),
    ("mod:", "not in the form"),
    ("mod:not-a-name", "not a function name"),
    ("tunesmith_no_such_module_xyz:fn", "no module named"),
    ("my-scorers:fn", "neither a module name nor a path"),
    ("missing/file.py:fn", "does not exist"),
    ("json:no_such_function", "has no function"),
    ("json:__doc__", "not a function"),
])
def test_bad_scorer_specs_raise_with_hint(spec: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ScorerError, match=message) as info:
        load_scorer(spec, tmp_path)
    assert isinstance(info.value, TunesmithError)
    assert "def my_scorer(inp)" in info.value.hint and "ScorerInput" in info.value.hint


def test_bad_scorer_targets_in_files(scorer_module) -> None:
    base, name = scorer_module
    with pytest.raises(ScorerError, match="has no function 'nope'.*length_ratio"):
        load_scorer("sub/my_scorers.py:nope", base)
    with pytest.raises(ScorerError, match="is a int, not a function"):
        load_scorer(f"{name}:NOT_CALLABLE", base)
    with pytest.raises(ScorerError, match="cannot be called with one ScorerInput"):
        load_scorer("sub/my_scorers.py:two_args", base)
    (base / "broken.py").write_text("def f(inp):\n    return 1\nraise ImportError('needs torch')\n")
    with pytest.raises(ScorerError, match="importing .*broken.py failed: ImportError: needs torch"):
        load_scorer("broken.py:f", base)
    (base / "notes.txt").write_text("x")
    with pytest.raises(ScorerError, match="not a Python"):
        load_scorer("./notes.txt:f", base)


def test_item_score_to_dict() -> None:
    d = score('{"a": 1}', '{"a": 1}', scorers=[NamedScorer("one", lambda i: True)]).to_dict()
    assert d["exact_match"] is True and d["fields"] == {"a": True} and d["scores"] == {"one": 1.0}
    assert set(d) >= {"id", "exact_match", "json_valid", "schema_valid", "field_accuracy", "fields", "regex_ok",
                      "length_chars", "output_tokens", "stopped", "error", "scores", "scorer_errors"}
    json.dumps(d)
