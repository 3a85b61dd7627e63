"""`tunesmith check`: one test per check id (a dataset that triggers it, with exact line numbers,
and a clean control that does not), plus sealed mode and severity semantics.

Every dataset is a real JSONL file in tmp_path built by the `data` fixture (tests/data/conftest.py):
70 varied, distinct, clean examples with problems planted at known 1-based line numbers.
"""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import pytest

from tunesmith.data.checks import CHECKS, CheckContext, CheckReport, run_check
from tunesmith.data.checks.base import SEVERITY_ORDER
from tunesmith.errors import UsageError

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "summary_text": {"type": "string"}},
    "required": ["label", "summary_text"],
    "additionalProperties": False,
}


# --- helpers -------------------------------------------------------------------------------------


def of(report: CheckReport, check_id: str) -> list[dict]:
    return [f for f in report.to_dict()["findings"] if f["check"] == check_id]


def lines_of(report: CheckReport, check_id: str) -> list[int]:
    return sorted({ln for f in of(report, check_id) for ln in f["lines"]})


def assert_one(report: CheckReport, check_id: str, severity: str, lines: list[int]) -> dict:
    """Exactly one finding of `check_id`, with this severity and exactly these lines."""
    found = of(report, check_id)
    assert len(found) == 1, report.to_dict()["findings"]
    f = found[0]
    assert f["severity"] == severity
    assert f["lines"] == lines
    assert f["message"]
    assert f["hint"]
    return f


def assert_all(report: CheckReport, check_id: str, severity: str, lines: list[int]) -> list[dict]:
    """Every finding of `check_id` has this severity; together they cover exactly these lines."""
    found = of(report, check_id)
    assert found, report.to_dict()["findings"]
    assert {f["severity"] for f in found} == {severity}
    assert lines_of(report, check_id) == lines
    return found


def assert_absent(report: CheckReport, check_id: str) -> None:
    assert of(report, check_id) == [], report.to_dict()["findings"]


def assert_clean(report: CheckReport) -> None:
    assert report.to_dict()["findings"] == []


# --- the registry --------------------------------------------------------------------------------


def test_every_check_id_has_a_test():
    module = sys.modules[__name__]
    # base_correct needs a model generating answers: tested end to end in tests/evaluate/test_eval_flow.py;
    # completion_model needs models with and without a chat template: tests/data/test_completion_model_warning.py
    elsewhere = ("base_correct", "completion_model")
    missing = [cid for cid in CHECKS if cid not in elsewhere and not callable(getattr(module, f"test_{cid}", None))]
    assert missing == []


def test_registry_severities_are_known():
    for cid, (severity, hint) in CHECKS.items():
        assert severity in SEVERITY_ORDER, cid
        assert hint.strip(), cid


def test_clean_filler_is_clean(data, check):
    """The control for everything below: 70 clean examples produce no finding at all."""
    report = check(data.clean(70))
    assert_clean(report)
    assert report.examples == 70
    assert report.stats["valid_examples"] == 70
    assert report.stats["formats"] == {"messages": 70}
    assert report.errors == []


def test_clean_json_filler_is_clean(data, check):
    report = check(data.clean(70, json_outputs=True, system="You are a terse tagger."),
                   schema=SCHEMA, expects_json=True, system_prompt="You are a terse tagger.")
    assert_clean(report)
    assert report.stats["json_outputs"] == {"parsed": 70, "outputs": 70}


# --- structure -----------------------------------------------------------------------------------


def test_invalid_json_line(data, check):
    bad = '{"messages": [{"role": "user", "content": "unterminated'
    report = check(data.planted({4: bad, 17: bad, 33: "this is not json at all"}))
    assert_all(report, "invalid_json_line", "error", [4, 17, 33])
    same = [f for f in of(report, "invalid_json_line") if f["lines"] == [4, 17]]
    assert len(same) == 1  # identical problems are grouped into one finding
    assert report.examples == 70
    assert report.stats["valid_examples"] == 67
    # the control: nothing of the kind in clean data
    assert_absent(check(data.clean(70), name="control.jsonl"), "invalid_json_line")


def test_invalid_utf8(data, check):
    prefix = b'{"messages": [{"role": "user", "content": "caf'
    bad = prefix + b'\xe9 au lait"}, {"role": "assistant", "content": "ok"}]}'
    report = check(data.planted({9: bad, 40: bad}))
    f = assert_one(report, "invalid_utf8", "error", [9, 40])
    assert f["message"] == f"invalid UTF-8 at byte {len(prefix)} of the line"
    assert report.stats["valid_examples"] == 68
    # the control: the same text correctly encoded is fine
    good = (prefix + b'\xc3\xa9 au lait"}, {"role": "assistant", "content": "ok"}]}')
    assert_absent(check(data.planted({9: good}), name="control.jsonl"), "invalid_utf8")


def test_not_an_object(data, check):
    report = check(data.planted({2: "[1, 2, 3]", 21: '"just a string"', 50: "42", 66: "null"}))
    found = assert_all(report, "not_an_object", "error", [2, 21, 50, 66])
    messages = {f["message"] for f in found}
    assert any("list" in m for m in messages)
    assert any("str" in m for m in messages)
    # a JSON array *line* in an otherwise fine JSONL file is not the "whole file is an array" case
    assert not any("convert" in f["hint"] for f in of(report, "invalid_json_line"))
    assert_absent(check(data.clean(70), name="control.jsonl"), "not_an_object")


def test_unknown_format(data, check):
    report = check(data.planted({
        12: {"question": "what", "answer": "that"},
        25: {"messages": "hello there"},                    # messages is not a list
        37: {"messages": ["user: hi", "assistant: hello"]},  # turns are not objects
        58: {"instruction": "do it"},                       # instruction without output
    }))
    found = assert_all(report, "unknown_format", "error", [12, 25, 37, 58])
    by_line = {f["lines"][0]: f["message"] for f in found if len(f["lines"]) == 1}
    assert "answer, question" in by_line[12]
    assert "expected a list" in by_line[25]
    assert_absent(check(data.clean(70), name="control.jsonl"), "unknown_format")


def test_missing_assistant(data, check):
    report = check(data.planted({
        7: {"messages": [{"role": "user", "content": "only a question here"}]},
        30: {"messages": []},
        45: {"conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "hi"}]},
    }))
    assert_all(report, "missing_assistant", "error", [7, 30, 45])
    assert_absent(check(data.clean(70), name="control.jsonl"), "missing_assistant")


def test_unknown_role(data, check):
    report = check(data.planted({
        8: {"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        21: {"conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        63: {"messages": [{"content": "no role"}, {"role": "assistant", "content": "hello"}]},
    }))
    found = assert_all(report, "unknown_role", "error", [8, 21, 63])
    assert any("'bot'" in f["message"] for f in found)
    assert any("'robot'" in f["message"] for f in found)
    # the control: every ShareGPT speaker name that maps to a role is accepted
    ok = data.clean(70)
    ok[20] = {"conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "hi there friend"},
                                {"from": "gpt", "value": "hello to you"}]}
    ok[21] = {"conversations": [{"from": "user", "value": "hey you"}, {"from": "model", "value": "yes me"}]}
    ok[22] = {"conversations": [{"from": "human", "value": "oi oi"}, {"from": "bot", "value": "ahoy"},
                                {"from": "human", "value": "and"}, {"from": "assistant", "value": "then"}]}
    assert_absent(check(ok, name="control.jsonl"), "unknown_role")


def test_empty_content(data, check):
    report = check(data.planted({
        10: data.msgs("a real question goes here", "   "),
        22: {"instruction": "summarise this", "input": "", "output": ""},
        49: {"prompt": "\n\t", "completion": "something"},
    }))
    assert_all(report, "empty_content", "error", [10, 22, 49])
    # the control: an empty *input* field of the instruction format is not an empty turn
    ok = data.planted({22: {"instruction": "summarise this thing", "input": "", "output": "done and dusted"}})
    assert_absent(check(ok, name="control.jsonl"), "empty_content")


def test_missing_assistant_when_every_assistant_turn_has_weight_0(data, check):
    context_only = {"messages": [{"role": "user", "content": "first question"},
                                 {"role": "assistant", "content": "context answer", "weight": 0},
                                 {"role": "user", "content": "second question"},
                                 {"role": "assistant", "content": "also context", "weight": 0}]}
    report = check(data.planted({12: context_only, 50: {"messages": [{"role": "user", "content": "q"},
                                                                      {"role": "assistant", "content": "a", "weight": 0}]}}))
    f = assert_one(report, "missing_assistant", "error", [12, 50])
    assert f["message"] == "every assistant turn has weight 0: nothing to train on"
    assert "weight 1" in f["hint"]
    assert report.stats["valid_examples"] == 68
    # the control: one trained turn is enough
    context_only["messages"][-1]["weight"] = 1
    assert_absent(check(data.planted({12: context_only}), name="control.jsonl"), "missing_assistant")


def test_unusable_assistant_content_says_what_is_wrong(data, check):
    """An assistant turn whose content is null or a number exists: it is a content problem, not a missing turn."""
    report = check(data.planted({
        4: {"messages": [{"role": "user", "content": "a question"}, {"role": "assistant", "content": None}]},
        9: {"messages": [{"role": "user", "content": "another one"}, {"role": "assistant", "content": 7}]},
        17: {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": None}]},
    }))
    assert_absent(report, "missing_assistant")
    found = assert_all(report, "content_type", "error", [4, 9, 17])
    assert {f["message"]: f["lines"] for f in found} == {
        "messages[1].content has no content (null or missing); it must be a string": [4],
        "messages[1].content is an int; it must be a string": [9],
        "conversations[1].value has no content (null or missing); it must be a string": [17],
    }


def test_content_type(data, check):
    report = check(data.planted({
        3: {"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "x"}]},
        15: {"messages": [{"role": "user"}, {"role": "assistant", "content": "no user content"}]},
        27: {"messages": [{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}]},
        44: {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0.5}]},
        52: {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]},
                          {"role": "assistant", "content": "a"}]},
        61: {"prompt": {"text": "q"}, "completion": "a"},
    }))
    found = assert_all(report, "content_type", "error", [3, 15, 27, 44, 52, 61])
    messages = " | ".join(f["message"] for f in found)
    assert "int" in messages and "no content" in messages and "weight" in messages
    # the control: text parts and 0/1 weights on assistant turns are fine
    ok = data.planted({
        3: {"messages": [{"role": "user", "content": [{"type": "text", "text": "part one "},
                                                       {"type": "text", "text": "part two"}]},
                         {"role": "assistant", "content": "joined fine", "weight": 1}]},
        15: {"messages": [{"role": "user", "content": "first turn here"},
                          {"role": "assistant", "content": "skip me", "weight": 0},
                          {"role": "user", "content": "second turn"},
                          {"role": "assistant", "content": "train me", "weight": 1}]},
    })
    assert_absent(check(ok, name="control.jsonl"), "content_type")


# --- curation ------------------------------------------------------------------------------------


def test_exact_duplicate(data, check):
    items = data.clean(70)
    items[19] = items[4]
    items[59] = items[4]
    # the same example in another format is the same example
    user, assistant = (t["content"] for t in items[10]["messages"])
    items[32] = {"prompt": user, "completion": assistant}
    report = check(items)
    found = assert_all(report, "exact_duplicate", "warning", [5, 11, 20, 33, 60])
    assert sorted(f["lines"] for f in found) == [[5, 20, 60], [11, 33]]
    assert any(f["message"] == "3 identical examples (line 5 and 2 more)" for f in found)
    assert report.stats["exact_duplicates"] == 3
    # exact copies are not reported a second time as near duplicates, nor as contradictions
    assert_absent(report, "near_duplicate")
    assert_absent(report, "contradiction")
    assert report.errors == []
    assert_absent(check(data.clean(70), name="control.jsonl"), "exact_duplicate")


def test_near_duplicate(data, check):
    base = data.long_text(1)
    words = base.split()
    words[20] = "zyxwvuts"
    variant = " ".join(words)
    answer = "the very same answer for both of them"
    report = check(data.planted({10: data.msgs(base, answer), 50: data.msgs(variant, answer)}))
    f = assert_one(report, "near_duplicate", "warning", [10, 50])
    assert "0.80" in f["message"]
    assert report.stats["near_duplicate_clusters"] == 1
    assert report.stats["near_duplicate_examples"] == 2
    assert_absent(report, "exact_duplicate")
    # a stricter threshold than the pair's similarity does not report it
    strict = check(data.planted({10: data.msgs(base, answer), 50: data.msgs(variant, answer)}),
                   name="strict.jsonl", near_threshold=0.999)
    assert_absent(strict, "near_duplicate")
    control = check(data.clean(70), name="control.jsonl")
    assert_absent(control, "near_duplicate")
    assert control.stats["near_duplicate_clusters"] == 0


def test_near_duplicate_cluster_of_three(data, check):
    base = data.long_text(2).split()
    a, b = list(base), list(base)
    a[5], b[30] = "qwertyui", "asdfghjk"
    ans = "same answer every time here"
    report = check(data.planted({3: data.msgs(" ".join(base), ans), 33: data.msgs(" ".join(a), ans),
                                 66: data.msgs(" ".join(b), ans)}))
    f = assert_one(report, "near_duplicate", "warning", [3, 33, 66])
    assert f["message"].startswith("3 near-identical examples")


def _ticket_rows(vocab: list[str], n: int = 120, seed: int = 7) -> list[dict]:
    """n rows of one ~200-character instruction plus a short, distinct ticket (2-5 words)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ticket = " ".join(rng.choice(vocab) for _ in range(rng.randint(2, 5)))
        out.append({"messages": [{"role": "user", "content": TRIAGE + ticket},
                                 {"role": "assistant", "content": rng.choice(["billing", "technical", "account"])}]})
    return out


TRIAGE = ("You are a support triage assistant. Read the customer ticket below carefully and classify it into "
          "exactly one of the categories billing, technical or account. Answer with the category name only.\n\nTicket: ")


def test_near_duplicate_ignores_a_shared_template(data, check):
    """Regression: 120 distinct tickets behind one instruction were one near-duplicate cluster."""
    from tunesmith.data.minhash import jaccard, shingle_set

    rows = _ticket_rows(data.vocab)
    # on the whole text, hundreds of pairs are over the threshold: the template dominates them
    full = [shingle_set(r["messages"][0]["content"] + "\n" + r["messages"][1]["content"]) for r in rows]
    assert sum(jaccard(a, b) >= 0.8 for i, a in enumerate(full) for b in full[i + 1:]) > 100
    report = check(rows)
    assert_absent(report, "near_duplicate")
    assert report.stats["near_duplicate_clusters"] == 0
    assert report.stats["valid_examples"] == 120


def test_near_duplicate_inside_a_shared_template(data, check):
    """Rows that share the template are still near-duplicates when their own parts (nearly) agree."""
    rows = _ticket_rows(data.vocab)
    ticket = "my card was charged twice for the yearly plan and the second payment never showed up in my account"
    rows[29] = {"messages": [{"role": "user", "content": TRIAGE + ticket}, {"role": "assistant", "content": "billing"}]}
    rows[89] = {"messages": [{"role": "user", "content": TRIAGE + ticket.replace("yearly", "monthly")},
                             {"role": "assistant", "content": "billing"}]}
    # the same ticket, one word of the template changed
    other = "the app crashes every time I open the settings page on my phone since the last update"
    rows[44] = {"messages": [{"role": "user", "content": TRIAGE + other}, {"role": "assistant", "content": "technical"}]}
    rows[99] = {"messages": [{"role": "user", "content": TRIAGE.replace("carefully", "closely") + other},
                             {"role": "assistant", "content": "technical"}]}
    report = check(rows)
    found = assert_all(report, "near_duplicate", "warning", [30, 45, 90, 100])
    assert sorted(f["lines"] for f in found) == [[30, 90], [45, 100]]
    assert found[0]["message"] == ("2 near-identical examples (Jaccard >= 0.80 on character 5-grams, "
                                   "not counting text that most rows share)")


def test_near_duplicate_template_that_starts_in_a_later_batch(data, check, monkeypatch):
    """A template that only dominates later batches (files concatenated from several sources) is
    recognised there: its rows are not one cluster either."""
    from tunesmith.data.checks import near

    monkeypatch.setattr(near, "BATCH", 40)
    rows = data.clean(80, seed=3) + _ticket_rows(data.vocab)
    report = check(rows)
    assert_absent(report, "near_duplicate")


def test_contradiction_needs_the_same_earlier_assistant_turns(data, check):
    """Regression: the input is every turn before the last trained answer, earlier answers included."""
    def talk(first: str, second: str, weight: int | None = None) -> dict:
        turn = {"role": "assistant", "content": first} | ({} if weight is None else {"weight": weight})
        return {"messages": [{"role": "user", "content": "Pick a number"}, turn,
                             {"role": "user", "content": "Now double it."}, {"role": "assistant", "content": second}]}

    assert_absent(check(data.planted({5: talk("3", "6"), 40: talk("7", "14")})), "contradiction")
    # weight-0 turns are context, so part of the input too
    assert_absent(check(data.planted({5: talk("3", "6", 0), 40: talk("7", "14", 0)}), name="w0.jsonl"), "contradiction")
    # the same context and two answers to it: a contradiction
    same = check(data.planted({5: talk("3", "6", 0), 40: talk("3", "7", 0)}), name="same.jsonl")
    assert_one(same, "contradiction", "error", [5, 40])


def test_contradiction(data, check):
    question = "is the sky blue on a clear summer day in the middle of the afternoon"
    report = check(data.planted({
        6: data.msgs(question, "yes"),
        45: data.msgs(question, "no"),
        # same input after whitespace normalisation
        68: data.msgs("  is the sky blue on a clear summer day\nin the middle of the afternoon ", "perhaps"),
    }))
    f = assert_one(report, "contradiction", "error", [6, 45, 68])
    assert "3 different outputs" in f["message"]
    assert report.stats["contradictions"] == 1
    # the control: the same input with the same JSON output (other key order, other spacing)
    ok = check(data.planted({
        6: data.msgs(question, '{"a": 1, "b": [1, 2]}'),
        45: data.msgs(question, '{"b":[1,2],"a":1}'),
    }), name="control.jsonl")
    assert_absent(ok, "contradiction")
    assert ok.stats["contradictions"] == 0
    # a different system prompt makes a different input
    other = check(data.planted({6: data.msgs(question, "yes", system="answer truthfully"),
                                45: data.msgs(question, "no", system="answer with lies")}),
                  name="control2.jsonl")
    assert_absent(other, "contradiction")


# --- output contract -----------------------------------------------------------------------------


def test_output_not_json(data, check):
    plants = {13: data.msgs("give me json please now", "sure, here it is: {}"),
              52: data.msgs("another json request here", '{"label": "x", "summary_text": "unterminated"')}
    # declared contract: an error
    declared = check(data.planted(plants, json_outputs=True), expects_json=True)
    f = assert_one(declared, "output_not_json", "error", [13, 52])
    assert "contract is JSON" in f["message"]
    # inferred contract (>= 90% of outputs parse): a warning with its own hint
    inferred = check(data.planted(plants, json_outputs=True), name="inferred.jsonl")
    f = assert_one(inferred, "output_not_json", "warning", [13, 52])
    assert "68 of 70 outputs are JSON" in f["message"]
    assert "output.json: true" in f["hint"]
    assert inferred.stats["json_outputs"] == {"parsed": 68, "outputs": 70}
    # controls: all JSON, or plain text with no JSON contract
    assert_absent(check(data.clean(70, json_outputs=True), name="c1.jsonl", expects_json=True), "output_not_json")
    assert_absent(check(data.clean(70), name="c2.jsonl"), "output_not_json")


def test_output_not_json_nested_too_deeply_to_parse(data, check):
    """Regression: an output nested thousands deep crashed json.loads with RecursionError."""
    deep = data.msgs("give me json please now", "[" * 100_000 + "]" * 100_000)
    report = check(data.planted({13: deep}, json_outputs=True), expects_json=True)
    assert_one(report, "output_not_json", "error", [13])


def test_output_not_json_weight_zero_turns_are_not_outputs(data, check):
    weighted = {"messages": [
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "not json, not trained", "weight": 0},
        {"role": "user", "content": "second"}, {"role": "assistant", "content": '{"label": "a", "summary_text": "b"}'},
    ]}
    report = check(data.planted({30: weighted}, json_outputs=True), expects_json=True)
    assert_absent(report, "output_not_json")


def test_output_schema(data, check):
    bad_type = data.msgs("classify this one please", json.dumps({"label": 5, "summary_text": "x"}))
    bad_type2 = data.msgs("and classify this other one", json.dumps({"label": 5, "summary_text": "y"}))
    missing = data.msgs("classify this third item", json.dumps({"label": "x"}))
    report = check(data.planted({14: bad_type, 29: bad_type2, 57: missing}, json_outputs=True), schema=SCHEMA)
    found = assert_all(report, "output_schema", "error", [14, 29, 57])
    grouped = {tuple(f["lines"]): f["message"] for f in found}
    assert set(grouped) == {(14, 29), (57,)}
    assert grouped[(14, 29)].startswith("2 output(s) break the schema at $.label (type), e.g. ")
    assert "summary_text" in grouped[(57,)]
    assert_absent(check(data.clean(70, json_outputs=True), name="control.jsonl", schema=SCHEMA), "output_schema")


def test_output_regex(data, check):
    regex = r"[a-z]+( [a-z]+)*"
    report = check(data.planted({16: data.msgs("say something", "Not Matching!"),
                                 64: data.msgs("say more", "trailing space ")}), regex=regex)
    f = assert_one(report, "output_regex", "error", [16, 64])
    assert regex in f["message"]
    assert_absent(check(data.clean(70), name="control.jsonl", regex=regex), "output_regex")


def test_invalid_output_regex_is_a_usage_error(data, check):
    """Regression: `check --regex '('` crashed with re.error."""
    with pytest.raises(UsageError) as exc:
        check(data.clean(70), regex="(")
    assert exc.value.message == ("output regex '(' is not a valid regular expression: "
                                 "missing ), unterminated subpattern at position 0")
    assert "--regex" in exc.value.hint and "backslash" in exc.value.hint


def test_invalid_regex_flag_in_the_cli(data, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli import app

    path = data.write(tmp_path / "train.jsonl", data.clean(70))
    result = CliRunner().invoke(app, ["check", str(path), "--regex", "(", "--no-tokens"])
    assert result.exit_code == 2
    assert "output regex '(' is not a valid regular expression" in result.stderr
    assert "Traceback" not in result.output


def test_key_style(data, check):
    camel = data.msgs("extract the fields", json.dumps({"label": "a", "summaryText": "b"}))
    report = check(data.planted({18: camel}, json_outputs=True))
    f = assert_one(report, "key_style", "warning", [18])
    assert f["message"] == "1 example(s) use camelCase keys (e.g. 'summaryText') but most examples use snake_case"
    assert report.stats["key_styles"] == {"snake_case": 69, "camelCase": 1}
    # the schema decides the expected style: snake_case data against a camelCase schema
    camel_schema = {"type": "object", "properties": {"myLabel": {"type": "string"}, "summaryText": {"type": "string"}}}
    by_schema = check(data.clean(70, json_outputs=True), name="schema.jsonl", schema=camel_schema)
    f = assert_one(by_schema, "key_style", "warning", list(range(1, 71)))
    assert f["message"] == "70 example(s) use snake_case keys (e.g. 'summary_text') but the schema uses camelCase"
    assert_absent(check(data.clean(70, json_outputs=True), name="control.jsonl"), "key_style")


# --- prompts -------------------------------------------------------------------------------------


def test_system_prompt_inconsistent(data, check):
    sp = "You are a terse tagger."
    report = check(data.planted({19: data.msgs("q one here", "a one", system="You are a verbose poet."),
                                 38: data.msgs("q two here", "a two", system="You are a verbose poet."),
                                 55: data.msgs("q three here", "a three")}, system=sp))
    f = assert_one(report, "system_prompt_inconsistent", "warning", [19, 38, 55])
    assert f["message"].startswith("3 different system prompts; 67 examples use 'You are a terse tagger.'")
    prompts = {p["prompt"]: p["count"] for p in report.stats["system_prompts"]}
    assert prompts == {sp: 67, "You are a verbose poet.": 2, "<no system prompt>": 1}
    # the control: the same prompt with different whitespace is the same prompt
    ok = data.planted({19: data.msgs("q one here", "a one", system="You are a   terse\ntagger.  ")}, system=sp)
    assert_absent(check(ok, name="control.jsonl"), "system_prompt_inconsistent")


def test_system_prompt_mismatch(data, check):
    sp = "You are a terse tagger."
    items = data.planted({23: data.msgs("q one here", "a one", system="Something else entirely."),
                          41: data.msgs("q two here", "a two", system="Something else entirely."),
                          60: data.msgs("q three here", "a three")}, system=sp)
    report = check(items, system_prompt=sp)
    # an example without a system prompt gets the project's one at training time: not a mismatch
    f = assert_one(report, "system_prompt_mismatch", "warning", [23, 41])
    assert f["message"].startswith("2 examples")
    # every example differs from a different project prompt
    other = check(data.clean(70, system=sp), name="other.jsonl", system_prompt="A different prompt.")
    assert_one(other, "system_prompt_mismatch", "warning", list(range(1, 71)))
    # controls: the project prompt (modulo whitespace), or no project prompt at all
    assert_absent(check(data.clean(70, system=sp), name="c1.jsonl", system_prompt="  You are a terse\n tagger."),
                  "system_prompt_mismatch")
    assert_absent(check(items, name="c2.jsonl"), "system_prompt_mismatch")


# --- size ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def word_tokenizer(data):
    """A tiny WordLevel tokenizer trained in-process, with ChatML special tokens and template.

    Every vocabulary word is one token, so a rendered message costs exactly
    <|im_start|> + role + words + <|im_end|> = len(content.split()) + 3 tokens.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "<|im_start|>", "<|im_end|>", "<|pad|>"])
    tok.train_from_iterator([" ".join(data.vocab), "system user assistant"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="<|pad|>",
                                   eos_token="<|im_end|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _expected_tokens(example: dict) -> int:
    return sum(len(t["content"].split()) + 3 for t in example["messages"])


def test_too_long(data, check, word_tokenizer):
    # long answers after short prompts: truncation still leaves answer tokens to train on
    long_one = data.msgs(data.long_text(7, 30), data.long_text(8, 290))
    items = data.planted({11: long_one, 47: data.msgs(data.long_text(10, 50), data.long_text(9, 150))})
    expected = [_expected_tokens(ex) for ex in items]
    assert sorted(expected)[-3] < 100 < sorted(expected)[-2]  # only the two planted ones are long
    report = check(items, tokenizer=word_tokenizer, max_length=100)
    f = assert_one(report, "too_long", "warning", [11, 47])
    assert f"longest {max(expected)}" in f["message"]
    assert "max_length=100" in f["message"]
    tokens = report.stats["tokens"]
    arr = np.asarray(expected)
    assert tokens["min"] == int(arr.min())
    assert tokens["max"] == int(arr.max())
    assert tokens["p50"] == int(np.percentile(arr, 50))
    assert tokens["p99"] == int(np.percentile(arr, 99))
    assert tokens["per_epoch"] == int(arr.sum())
    assert tokens["min"] <= tokens["p50"] <= tokens["p99"] <= tokens["max"]
    # controls: a large enough max_length, or no max_length (stats are still computed)
    roomy = check(items, name="roomy.jsonl", tokenizer=word_tokenizer, max_length=max(expected))
    assert_absent(roomy, "too_long")
    assert roomy.stats["tokens"]["per_epoch"] == int(arr.sum())
    unlimited = check(items, name="unlimited.jsonl", tokenizer=word_tokenizer)
    assert_absent(unlimited, "too_long")
    assert unlimited.stats["tokens"]["max"] == int(arr.max())
    # no tokenizer: no token statistics and no too_long
    none = check(items, name="none.jsonl", max_length=10)
    assert_absent(none, "too_long")
    assert "tokens" not in none.stats


def test_a_prompt_that_fills_max_length_leaves_nothing_to_train(data, check, word_tokenizer):
    # 11: the prompt alone is over max_length; 47: long, but its answer starts inside max_length
    items = data.planted({11: data.msgs(data.long_text(7, 150), data.long_text(8, 20)),
                          47: data.msgs(data.long_text(10, 40), data.long_text(9, 150))})
    report = check(items, tokenizer=word_tokenizer, max_length=100)
    found = {f["severity"]: f for f in of(report, "too_long")}
    assert found["warning"]["lines"] == [11, 47]
    assert found["error"]["lines"] == [11] and "not one answer token" in found["error"]["message"]
    assert "tunesmith fix" in found["error"]["hint"] and report.errors


def test_too_long_counts_the_project_system_prompt(data, check, word_tokenizer):
    items = data.clean(70, system="ba be")  # the examples' own prompt is replaced by the project's
    project_prompt = " ".join(data.vocab[:40])
    base = [_expected_tokens(ex) - 2 for ex in items]  # without the examples' own 2-word prompt
    report = check(items, tokenizer=word_tokenizer, system_prompt=project_prompt)
    assert report.stats["tokens"]["per_epoch"] == sum(b + 40 for b in base)


def test_too_few_examples(data, check):
    tiny = check(data.clean(10))
    f = assert_one(tiny, "too_few_examples", "error", [])
    assert f["message"].startswith("10 examples: under 30")
    assert tiny.errors
    small = check(data.clean(40), name="small.jsonl")
    f = assert_one(small, "too_few_examples", "warning", [])
    assert "below the minimum of 50-100 for a format task" in f["message"]
    # the hint names commands that exist (there is no `tunesmith generate`)
    assert "tunesmith build --force" in f["hint"] and "generate" not in f["hint"]
    assert small.errors == []
    # the task kind sets the bar
    style = check(data.clean(70), name="style.jsonl", task_kind="style")
    f = assert_one(style, "too_few_examples", "warning", [])
    assert "style task" in f["message"]
    # only well-formed examples count: 60 lines but 35 broken ones leave 25
    mostly_broken = check(data.planted({i: "{broken" for i in range(1, 36)}, n=60), name="broken.jsonl")
    f = assert_one(mostly_broken, "too_few_examples", "error", [])
    assert f["message"].startswith("25 examples")
    # controls
    assert_absent(check(data.clean(50), name="c50.jsonl"), "too_few_examples")
    control = check(data.clean(70), name="control.jsonl")
    assert_absent(control, "too_few_examples")
    assert control.stats["size_verdict"]["verdict"] == "minimum"


# --- test set ------------------------------------------------------------------------------------


def test_test_overlap(data, check, tmp_path):
    test_rows = data.clean(6, seed=99)
    test_file = data.write(tmp_path / "test.jsonl", test_rows)
    items = data.clean(70)
    # line 8: same input as test row 2, another answer (an input match is enough)
    items[7] = {"messages": [test_rows[1]["messages"][0], {"role": "assistant", "content": "different answer"}]}
    # line 27: test row 4 with one word of the question changed (a near match)
    user = test_rows[3]["messages"][0]["content"].split()
    user[3] = "xylophonic"
    items[26] = {"messages": [{"role": "user", "content": " ".join(user)}, test_rows[3]["messages"][1]]}
    report = check(items, test_file=test_file)
    found = assert_all(report, "test_overlap", "error", [8, 27])
    by_lines = {tuple(f["lines"]): f["message"] for f in found}
    assert set(by_lines) == {(8,), (27,)}
    assert "sealed test row 2 of test.jsonl" in by_lines[(8,)]
    assert "sealed test row 4 of test.jsonl" in by_lines[(27,)]
    # controls: an unrelated test set, no test set, and the test set checked against itself
    unrelated = data.write(tmp_path / "unrelated.jsonl", data.clean(6, seed=123))
    assert_absent(check(data.clean(70), name="c1.jsonl", test_file=unrelated), "test_overlap")
    assert_absent(check(items, name="c2.jsonl"), "test_overlap")
    assert_absent(run_check(CheckContext(file=test_file, test_file=test_file)), "test_overlap")


def test_test_overlap_lists_every_copy(data, check, tmp_path):
    """Regression: exact copies skip near-duplicate indexing, but each copy of a test row is reported."""
    test_rows = data.clean(5, seed=99)
    test_file = data.write(tmp_path / "test.jsonl", test_rows)
    items = data.clean(70)
    items[7] = items[19] = test_rows[1]
    report = check(items, test_file=test_file)
    assert_one(report, "test_overlap", "error", [8, 20])


# --- tools ---------------------------------------------------------------------------------------


def test_tools_not_trained(data, check):
    calls = [{"id": "c1", "type": "function", "function": {"name": "lookup_order", "arguments": "{\"id\": 7}"}}]
    tools = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]
    report = check(data.planted({
        6: {"messages": [{"role": "user", "content": "where is my order seven"},
                         {"role": "assistant", "content": "Let me check.", "tool_calls": calls}]},
        20: {"tools": tools, **data.msgs("what can you look up for me", "orders, by their number")},
        33: {"messages": [{"role": "user", "content": "and order eight"},
                          {"role": "assistant", "content": None, "tool_calls": calls}]},
    }))
    found = assert_all(report, "tools_not_trained", "warning", [6, 20])
    assert {tuple(f["lines"]): f["message"] for f in found} == {
        (6,): "an assistant turn carries tool calls, which are not trained: this row trains only the turn's text",
        (20,): "the row's tool definitions ('tools') are not trained: the model never sees them",
    }
    assert report.stats["valid_examples"] == 69  # warnings: both rows are still examples
    # a turn that is nothing but tool calls leaves no text to train on: an error
    f = assert_one(report, "content_type", "error", [33])
    assert f["message"] == "messages[1] holds only tool calls and no text: tool calls are not trained"
    assert "exact form your app parses" in f["hint"]
    # the control: unknown keys such as id and metadata are ignored silently
    ok = data.planted({6: {"id": "row-6", "metadata": {"source": "crm"}, **data.msgs("plain question", "plain answer")}})
    assert_clean(check(ok, name="control.jsonl"))


# --- safety --------------------------------------------------------------------------------------


def test_secret(data, check):
    openai_key = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv"
    aws_key = "AKIA" + "IOSFODNN7EXAMPLE"
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"
    report = check(data.planted({
        24: data.msgs(f"my key is {openai_key} please use it", "noted"),
        48: data.msgs("deploy it", f"export AWS_ACCESS_KEY_ID={aws_key} and go"),
        49: data.msgs(f"and again {openai_key} twice {openai_key}", "ok"),
        69: data.msgs("here is my key", pem),
    }))
    found = assert_all(report, "secret", "warning", [24, 48, 49, 69])
    kinds = {tuple(f["lines"]): f["message"] for f in found}
    assert kinds[(24, 49)] == "2 example(s) contain what looks like an OpenAI/Anthropic-style API key"
    assert kinds[(48,)] == "1 example(s) contain what looks like an AWS access key id"
    assert kinds[(69,)] == "1 example(s) contain what looks like a private key"
    assert report.errors == []
    assert_absent(check(data.clean(70), name="control.jsonl"), "secret")


def test_pii(data, check):
    report = check(data.planted({
        26: data.msgs("write to jane.doe@example.com today", "done"),
        55: data.msgs("call me", "my number is (555) 123-4567 anytime"),
        56: data.msgs("call him", "at +1 555-123-4567 tomorrow"),
    }))
    found = assert_all(report, "pii", "warning", [26, 55, 56])
    kinds = {tuple(f["lines"]): f["message"] for f in found}
    assert kinds[(26,)] == "1 example(s) contain what looks like an e-mail address"
    assert kinds[(55, 56)] == "2 example(s) contain what looks like a phone number"
    # controls: numbers that are not phone numbers, and a bare '@'
    ok = data.planted({26: data.msgs("what is 12 times 12", "it is 144"),
                       55: data.msgs("reply @ noon", "order 1234567 shipped on 2024-01-05")})
    assert_absent(check(ok, name="control.jsonl"), "pii")


def test_pii_phone_number_late_in_a_long_turn(data, check):
    """Regression: PII is scanned in full, not only when a digit appears in the first 4096 characters."""
    filler = " ".join(data.vocab[:800])
    assert len(filler) > 4096
    report = check(data.planted({5: data.msgs(filler + " call me at 555-123-4567", "ok sure")}))
    assert_one(report, "pii", "warning", [5])


# --- sealed mode ---------------------------------------------------------------------------------

TOKEN = "ZEBRAQUARTZ"


def _assert_sealed(report: CheckReport) -> None:
    dumped = json.dumps(report.to_dict())
    assert TOKEN.lower() not in dumped.lower(), [
        f for f in report.to_dict()["findings"] if TOKEN.lower() in json.dumps(f).lower()]


def test_sealed_findings_never_quote_the_data(data, check):
    """System prompts (inconsistent, mismatch, stats) and output keys (key_style) carry the token."""
    sp = f"You are the {TOKEN} tagger."
    items = data.planted({
        5: data.msgs("first question here", json.dumps({"label": "a", "summary_text": "b"}),
                     system=f"Other {TOKEN} prompt."),
        9: data.msgs("second question here", json.dumps({"label": "a", "zebraQuartzKey": "b"}), system=sp),
        12: data.msgs("my key sk-" + TOKEN + "abcdefghijklmnop", json.dumps({"label": "x", "summary_text": "y"}),
                      system=sp),
        14: data.msgs(f"mail {TOKEN}@example.com", json.dumps({"label": "x", "summary_text": "z"}), system=sp),
        20: data.msgs(f"{TOKEN} same input", json.dumps({"label": "p", "summary_text": "q"}), system=sp),
        21: data.msgs(f"{TOKEN} same input", json.dumps({"label": "r", "summary_text": "s"}), system=sp),
    }, json_outputs=True, system=sp)
    report = check(items, sealed=True, system_prompt=f"Project {TOKEN} prompt.", regex=r"\{.*\}")
    fired = {f["check"] for f in report.to_dict()["findings"]}
    assert {"system_prompt_inconsistent", "system_prompt_mismatch", "key_style", "secret", "pii",
            "contradiction"} <= fired
    _assert_sealed(report)
    assert any(p["prompt"] == "<sealed>" for p in report.stats["system_prompts"])
    # the control: the same data unsealed does quote it, so the assertion above has teeth
    unsealed = check(items, name="unsealed.jsonl", system_prompt=f"Project {TOKEN} prompt.")
    assert TOKEN.lower() in json.dumps(unsealed.to_dict()).lower()


@pytest.mark.parametrize("planted, ctx", [
    pytest.param({TOKEN: "x", "other": "y"}, {}, id="unknown_format-keys"),
    pytest.param({"messages": [{"role": TOKEN, "content": "x"}, {"role": "assistant", "content": "y"}]}, {},
                 id="unknown_role-value"),
    pytest.param({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y",
                                                                    "weight": TOKEN}]}, {},
                 id="content_type-weight"),
    pytest.param({"messages": [{"role": "user", "content": "x"},
                               {"role": "assistant", "content": json.dumps({"label": [TOKEN], "summary_text": "b"})}]},
                 {"schema": SCHEMA}, id="output_schema-value"),
    pytest.param({"messages": [{"role": "user", "content": "x"},
                               {"role": "assistant", "content": json.dumps({"label": "a", "summary_text": "b",
                                                                            TOKEN: 1})}]},
                 {"schema": SCHEMA}, id="output_schema-key"),
])
def test_sealed_structure_and_schema_messages_do_not_quote_the_data(data, check, planted, ctx):
    """Regression: structure problems (keys, role and weight values) and jsonschema messages (which
    quote the offending instance or key) are withheld when the file is sealed, yet still reported."""
    report = check(data.planted({7: planted}, json_outputs=True), sealed=True, **ctx)
    assert {ln for f in report.to_dict()["findings"] for ln in f["lines"]} == {7}
    _assert_sealed(report)
    # the control: unsealed, the same finding does quote the data
    unsealed = check(data.planted({7: planted}, json_outputs=True), name="unsealed.jsonl", **ctx)
    assert TOKEN.lower() in json.dumps(unsealed.to_dict()["findings"]).lower()


# --- severity and exit semantics -----------------------------------------------------------------


@pytest.mark.parametrize("plants, has_error", [
    ({}, False),
    ({5: "SAME"}, False),                                   # exact duplicate: a warning
    ({9: "PII"}, False),                                    # pii: a warning
    ({3: "{broken"}, True),                                 # invalid_json_line: an error
    ({3: "CONTRA"}, True),                                  # contradiction: an error
])
def test_errors_iff_an_error_finding(data, check, plants, has_error):
    items = data.clean(70)
    for line, what in plants.items():
        if what == "SAME":
            items[line] = items[line - 1]
        elif what == "PII":
            items[line - 1] = data.msgs("contact bob@example.org", "noted")
        elif what == "CONTRA":
            items[line - 1] = data.msgs(items[0]["messages"][0]["content"], "a different answer entirely")
        else:
            items[line - 1] = what
    report = check(items)
    findings = report.to_dict()["findings"]
    assert bool(report.errors) is has_error
    assert bool(report.errors) == any(f["severity"] == "error" for f in findings)
    assert all(f.severity == "error" for f in report.errors)
    if plants:
        assert findings  # warnings alone are findings but not errors
    # findings come errors first, then warnings, then info
    order = [SEVERITY_ORDER[f["severity"]] for f in findings]
    assert order == sorted(order)


def test_missing_file_and_directory_raise(tmp_path):
    from tunesmith.errors import DataError

    with pytest.raises(DataError, match="no such file"):
        run_check(CheckContext(file=tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="directory"):
        run_check(CheckContext(file=tmp_path))


def test_missing_test_file_raises(data, check, tmp_path):
    from tunesmith.errors import DataError

    with pytest.raises(DataError):
        check(data.clean(70), test_file=tmp_path / "missing-test.jsonl")


def test_to_dict_is_json_serialisable(data, check, word_tokenizer, tmp_path):
    test_file = data.write(tmp_path / "test.jsonl", data.clean(5, seed=5))
    report = check(data.planted({3: "{bad", 9: data.msgs("x@example.com", "y")}), tokenizer=word_tokenizer,
                   max_length=30, test_file=test_file, schema=SCHEMA)
    d = json.loads(json.dumps(report.to_dict()))
    assert set(d) == {"file", "examples", "findings", "stats"}
    assert d["examples"] == 70
    for f in d["findings"]:
        assert set(f) == {"check", "severity", "lines", "message", "hint"}
        assert f["check"] in CHECKS
        assert f["lines"] == sorted(set(f["lines"]))


def test_progress_callback(data, check, tmp_path):
    path = data.write(tmp_path / "p.jsonl", data.clean(70))
    calls: list[int] = []
    run_check(CheckContext(file=path), progress=calls.append)
    assert calls[-1] == -1


def test_output_schema_groups_different_bad_values_into_one_finding(tmp_path):
    from datagen import clean_examples, write_jsonl

    rows = clean_examples(60)
    for i, r in enumerate(rows):
        r["messages"][2]["content"] = json.dumps({"item_id": f"not-an-int-{i}", "summary": "x"})
    schema = {"type": "object", "properties": {"item_id": {"type": "integer"}, "summary": {"type": "string"}}}
    report = run_check(CheckContext(file=write_jsonl(tmp_path / "d.jsonl", rows), schema=schema, expects_json=True))
    schema_findings = [f for f in report.findings if f.check == "output_schema"]
    assert len(schema_findings) == 1 and len(schema_findings[0].lines) == 60
    assert "$.item_id (type)" in schema_findings[0].message


def test_boolean_weight_is_rejected(tmp_path):
    from tunesmith.data.formats import parse_record

    ex = parse_record({"messages": [{"role": "user", "content": "q"},
                                    {"role": "assistant", "content": "a", "weight": True}]}, 1)
    assert [p.check for p in ex.problems] == ["content_type"]


def test_near_copies_that_make_up_most_of_a_file_are_still_near_duplicates(data, check):
    """The template rule must not hide a file that is mostly one prompt numbered (v1), (v2), ..."""
    prompt = "Summarise the quarterly sales report for the northern region and list the three main risks"
    rows = [{"messages": [{"role": "user", "content": f"{prompt} (v{i})"}, {"role": "assistant", "content": "ok"}]}
            for i in range(60)] + data.clean(40)
    report = check(rows)
    lines = sorted({ln for f in of(report, "near_duplicate") for ln in f["lines"]})
    assert len([ln for ln in lines if ln <= 60]) >= 55  # (v1)..(v60): near-copies, whatever their share
