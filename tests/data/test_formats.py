"""The four JSONL formats (tunesmith.data.formats): detection per line, parsing into one canonical
Example, text-part contents, per-turn weights, and dumping back."""

from __future__ import annotations

import random

import pytest

from tunesmith.data.formats import (
    FORMATS,
    Example,
    InstructionFormat,
    Message,
    MessagesFormat,
    PromptCompletionFormat,
    WEIGHT_HINT,
    ShareGPTFormat,
    a_or_an,
    normalize_text,
    parse_record,
)


def roles(ex: Example) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in ex.messages]


def checks(ex: Example) -> list[str]:
    return [p.check for p in ex.problems]


def as_format(fmt: str, user: str, assistant: str) -> dict:
    if fmt == "messages":
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}
    if fmt == "sharegpt":
        return {"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": assistant}]}
    if fmt == "instruction":
        head, _, tail = user.partition(" ")
        return {"instruction": head, "input": tail, "output": assistant}
    return {"prompt": user, "completion": assistant}


# --- detection in a real file --------------------------------------------------------------------


def test_all_four_formats_in_one_mixed_file(data, check):
    rng = random.Random(42)
    kinds = ["messages", "sharegpt", "instruction", "prompt_completion"]
    items = []
    for i in range(64):
        fmt = kinds[i % 4]
        items.append(as_format(fmt, data.words(rng, 18, 30), data.words(rng, 8, 16)))
    report = check(items)
    assert report.to_dict()["findings"] == []
    assert report.stats["formats"] == {k: 16 for k in kinds}
    assert report.stats["valid_examples"] == 64
    assert report.examples == 64


def test_mixed_file_problems_are_reported_per_line(data, check):
    rng = random.Random(1)
    kinds = ["messages", "sharegpt", "instruction", "prompt_completion"]
    items = [as_format(kinds[i % 4], data.words(rng, 18, 30), data.words(rng, 8, 16)) for i in range(64)]
    items[1] = {"conversations": [{"from": "human", "value": "hello there"}]}   # line 2: no gpt turn
    items[2] = {"instruction": "do the thing", "output": 3}                     # line 3: output not a string
    items[3] = {"prompt": "", "completion": "an answer"}                         # line 4: empty prompt
    report = check(items)
    got = {f["check"]: f["lines"] for f in report.to_dict()["findings"]}
    # a non-string output is a content_type problem; the assistant turn is there, so not also "missing"
    assert got == {"missing_assistant": [2], "content_type": [3], "empty_content": [4]}
    assert [f["message"] for f in report.to_dict()["findings"] if f["check"] == "content_type"] == [
        "output is an int; it must be a string"]
    assert report.stats["formats"] == {"messages": 16, "sharegpt": 15, "instruction": 15, "prompt_completion": 15}


# --- parsing each format -------------------------------------------------------------------------


def test_messages_format():
    ex = parse_record({"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]}, 7, 123)
    assert (ex.format, ex.line, ex.offset, ex.problems) == ("messages", 7, 123, [])
    assert roles(ex) == [("system", "be brief"), ("user", "hi"), ("assistant", "hello")]
    assert ex.system == "be brief"


def test_sharegpt_format_maps_speakers_to_roles():
    ex = parse_record({"conversations": [
        {"from": "system", "value": "be brief"},
        {"from": "human", "value": "hi"},
        {"from": "gpt", "value": "hello"},
        {"from": "user", "value": "again"},
        {"from": "model", "value": "yes"},
        {"from": "bot", "value": "and"},
        {"from": "assistant", "value": "more"},
    ]}, 1)
    assert ex.format == "sharegpt" and ex.problems == []
    assert [m.role for m in ex.messages] == ["system", "user", "assistant", "user", "assistant", "assistant", "assistant"]
    assert ex.system == "be brief"


@pytest.mark.parametrize("speaker", ["robot", "humans", None, 3])
def test_sharegpt_unknown_speaker(speaker):
    ex = parse_record({"conversations": [{"from": speaker, "value": "hi"}, {"from": "gpt", "value": "x"}]}, 1)
    assert checks(ex) == ["unknown_role"]


def test_instruction_format():
    ex = parse_record({"instruction": "Translate", "input": "bonjour", "output": "hello", "system": "sys"}, 1)
    assert ex.format == "instruction" and ex.problems == []
    assert roles(ex) == [("system", "sys"), ("user", "Translate\n\nbonjour"), ("assistant", "hello")]
    # no input, blank input and null input all mean "instruction only"
    for extra in ({}, {"input": ""}, {"input": "   "}, {"input": None}):
        ex = parse_record({"instruction": "Say hi", "output": "hi"} | extra, 1)
        assert ex.problems == [] and roles(ex) == [("user", "Say hi"), ("assistant", "hi")]


def test_prompt_completion_format():
    ex = parse_record({"prompt": "2+2=", "completion": "4"}, 1)
    assert ex.format == "prompt_completion" and ex.problems == []
    assert roles(ex) == [("user", "2+2="), ("assistant", "4")]
    assert ex.system is None


def test_detection_order_and_unknown_format():
    # 'messages' wins over other keys; instruction needs output; prompt needs completion
    assert parse_record({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                         "prompt": "x", "completion": "y"}, 1).format == "messages"
    assert checks(parse_record({"instruction": "x"}, 1)) == ["unknown_format"]
    assert checks(parse_record({"prompt": "x"}, 1)) == ["unknown_format"]
    assert checks(parse_record({}, 1)) == ["unknown_format"]
    assert "no keys" in parse_record({}, 1).problems[0].message


@pytest.mark.parametrize("value, type_name", [([1], "list"), ("s", "str"), (3, "int"), (None, "NoneType"),
                                              (True, "bool")])
def test_not_an_object(value, type_name):
    ex = parse_record(value, 4)
    assert ex.format == "?" and ex.messages == []
    assert checks(ex) == ["not_an_object"]
    assert type_name in ex.problems[0].message


# --- contents: text parts ------------------------------------------------------------------------


def test_text_parts_content_is_accepted(data, check):
    parts = [{"type": "text", "text": "part one, "}, {"type": "text", "text": "part two"}]
    ex = parse_record({"messages": [{"role": "user", "content": parts},
                                    {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}]}, 1)
    assert ex.problems == []
    assert roles(ex) == [("user", "part one, part two"), ("assistant", "ok")]
    # in a real file: no findings, and the parts form equals the plain-string form (an exact duplicate)
    items = data.clean(70)
    user, assistant = (t["content"] for t in items[0]["messages"])
    half = len(user) // 2
    items[50] = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": user[:half]}, {"type": "text", "text": user[half:]}]},
        {"role": "assistant", "content": [{"type": "text", "text": assistant}]},
    ]}
    items[51] = {"messages": [{"role": "user", "content": [{"type": "text", "text": "fresh words here"}]},
                              {"role": "assistant", "content": "fresh answer"}]}
    report = check(items)
    assert [(f["check"], f["lines"]) for f in report.to_dict()["findings"]] == [("exact_duplicate", [1, 51])]


@pytest.mark.parametrize("content", [
    [{"type": "image_url", "image_url": {"url": "x"}}],
    [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}],
    [{"type": "text"}],
    [{"type": "text", "text": 5}],
    ["plain string in a list"],
    {"type": "text", "text": "a dict, not a list"},
    42,
])
def test_bad_content_is_content_type(content):
    ex = parse_record({"messages": [{"role": "user", "content": content},
                                    {"role": "assistant", "content": "fine"}]}, 1)
    assert "content_type" in checks(ex)


def test_empty_text_parts_list_is_empty_content():
    ex = parse_record({"messages": [{"role": "user", "content": []}, {"role": "assistant", "content": "x"}]}, 1)
    assert checks(ex) == ["empty_content"]


# --- weights -------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0, 1, 0.0, 1.0])
def test_weight_0_or_1_accepted_on_assistant_turns(weight):
    ex = parse_record({"messages": [{"role": "user", "content": "q"},
                                    {"role": "assistant", "content": "a", "weight": weight},
                                    {"role": "user", "content": "q2"},
                                    {"role": "assistant", "content": "b"}]}, 1)
    assert ex.problems == []
    assert ex.messages[1].weight == weight


@pytest.mark.parametrize("role, weight", [
    ("user", 1), ("user", 0), ("system", 1), ("assistant", 2), ("assistant", 0.5), ("assistant", -1),
    ("assistant", "1"),
])
def test_weight_rejected(role, weight):
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    if role == "system":
        turns.insert(0, {"role": "system", "content": "s"})
    target = next(t for t in turns if t["role"] == role)
    target["weight"] = weight
    ex = parse_record({"messages": turns}, 1)
    assert checks(ex) == ["content_type"]
    assert "weight" in ex.problems[0].message
    assert ex.problems[0].hint == WEIGHT_HINT  # about weight, not the content check's advice on content
    assert all(m.weight is None for m in ex.messages)  # the bad weight is dropped, the turn kept


def test_a_bad_weight_gets_the_weight_hint_in_check(data, check):
    rows = data.clean(70)
    rows[4]["messages"][-1]["weight"] = 2
    report = check(rows)
    found = [f for f in report.findings if "weight" in f.message]
    assert [(f.check, f.lines, f.hint) for f in found] == [("content_type", [5], WEIGHT_HINT)]


def test_weights_in_a_real_file(data, check):
    items = data.clean(70)
    items[9] = {"messages": [{"role": "user", "content": "first turn words"},
                             {"role": "assistant", "content": "not trained on", "weight": 0},
                             {"role": "user", "content": "second turn words"},
                             {"role": "assistant", "content": "trained on", "weight": 1}]}
    items[19] = {"messages": [{"role": "user", "content": "a question", "weight": 1},
                              {"role": "assistant", "content": "an answer"}]}
    report = check(items)
    assert [(f["check"], f["severity"], f["lines"]) for f in report.to_dict()["findings"]] == [
        ("content_type", "error", [20])]


def test_weight_zero_turns_are_not_outputs():
    ex = parse_record({"messages": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "skip", "weight": 0},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "keep", "weight": 1},
        {"role": "assistant", "content": "plain"},
    ]}, 1)
    assert ex.outputs() == ["keep", "plain"]
    assert ex.input_text() == "sys\nu1\nu2"
    assert ex.dialogue_text() == "u1\nskip\nu2\nkeep\nplain"


# --- structural problems -------------------------------------------------------------------------


def test_problems_of_messages_format():
    assert checks(parse_record({"messages": "nope"}, 1)) == ["unknown_format"]
    assert checks(parse_record({"messages": [1, {"role": "assistant", "content": "a"}]}, 1)) == ["unknown_format"]
    assert checks(parse_record({"messages": []}, 1)) == ["missing_assistant"]
    assert checks(parse_record({"messages": [{"role": "user", "content": "q"}]}, 1)) == ["missing_assistant"]
    assert checks(parse_record({"messages": [{"role": "tool", "content": "q"},
                                             {"role": "assistant", "content": "a"}]}, 1)) == ["unknown_role"]
    assert checks(parse_record({"messages": [{"role": "user", "content": " \n"},
                                             {"role": "assistant", "content": "a"}]}, 1)) == ["empty_content"]
    assert checks(parse_record({"conversations": {"from": "human"}}, 1)) == ["unknown_format"]


# --- dumping back --------------------------------------------------------------------------------


def test_dump_round_trips():
    msgs = [Message("system", "s"), Message("user", "u"), Message("assistant", "a")]
    for name in ("messages", "sharegpt", "instruction"):
        rec, why = FORMATS[name].dump(msgs)
        assert why == ""
        assert roles(parse_record(rec, 1)) == [("system", "s"), ("user", "u"), ("assistant", "a")]
    rec, why = PromptCompletionFormat.dump(msgs[1:])
    assert rec == {"prompt": "u", "completion": "a"} and why == ""


def test_dump_refusals():
    multi = [Message("user", "u"), Message("assistant", "a"), Message("user", "u2"), Message("assistant", "b")]
    assert MessagesFormat.dump(multi)[1] == ""
    assert InstructionFormat.dump(multi)[0] is None
    assert PromptCompletionFormat.dump(multi)[0] is None
    with_system = [Message("system", "s"), Message("user", "u"), Message("assistant", "a")]
    rec, why = PromptCompletionFormat.dump(with_system)
    assert rec is None and "system" in why
    weighted = [Message("user", "u"), Message("assistant", "a", 0)]
    assert ShareGPTFormat.dump(weighted)[0] is None
    assert InstructionFormat.dump(weighted)[0] is None
    rec, _ = MessagesFormat.dump(weighted)
    assert rec["messages"][1]["weight"] == 0


def test_normalize_text():
    assert normalize_text("  a \n\t b  ") == "a b"
    assert normalize_text("cafe\u0301") == normalize_text("caf\u00e9") == "caf\u00e9"


# --- side fields of a format (history, system, tools): kept as turns, or a warning in words ----------


def test_instruction_history_becomes_earlier_turns():
    ex = parse_record({"system": "sys", "instruction": "And now?", "output": "b",
                       "history": [["first q", "first a"], ["second q", "second a"]], "id": 3}, 1)
    assert ex.problems == [] and ex.warnings == []
    assert roles(ex) == [("system", "sys"), ("user", "first q"), ("assistant", "first a"), ("user", "second q"),
                         ("assistant", "second a"), ("user", "And now?"), ("assistant", "b")]
    for empty in ([], None):
        assert roles(parse_record({"instruction": "q", "output": "a", "history": empty}, 1)) == [("user", "q"),
                                                                                              ("assistant", "a")]


@pytest.mark.parametrize("history, check_id, message", [
    ("nope", "unknown_format", "history is a str, expected a list of [question, answer] pairs"),
    ([["only one"]], "unknown_format", "history[0] is a list of 1, expected a [question, answer] pair"),
    ([{"q": "a"}], "unknown_format", "history[0] is a dict, expected a [question, answer] pair"),
    ([["q", 5]], "content_type", "history[0][1] is an int; it must be a string"),
])
def test_bad_instruction_history(history, check_id, message):
    ex = parse_record({"instruction": "q", "output": "a", "history": history}, 1)
    assert [(p.check, p.message) for p in ex.problems] == [(check_id, message)]


def test_prompt_completion_system_becomes_a_system_turn():
    ex = parse_record({"system": "be brief", "prompt": "2+2=", "completion": "4"}, 1)
    assert ex.problems == []
    assert roles(ex) == [("system", "be brief"), ("user", "2+2="), ("assistant", "4")]
    # an empty or null system column means no system prompt, in both single-turn formats
    for rec in ({"prompt": "p", "completion": "c"}, {"instruction": "p", "output": "c"}):
        for system in ("", "  ", None):
            ex = parse_record(rec | {"system": system}, 1)
            assert ex.problems == [] and ex.system is None
    bad = parse_record({"system": 3, "prompt": "p", "completion": "c"}, 1)
    assert [(p.check, p.message) for p in bad.problems] == [("content_type", "system is an int; it must be a string")]


def test_tool_fields_are_warnings_not_problems():
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    ex = parse_record({"tools": [{"type": "function"}], "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "Let me check.", "tool_calls": calls}]}, 1)
    assert ex.problems == []
    assert [(w.check, w.where) for w in ex.warnings] == [("tools_not_trained", "tools"),
                                                          ("tools_not_trained", "messages[1].tool_calls")]
    assert ex.outputs() == ["Let me check."]
    legacy = parse_record({"functions": [{"name": "f"}], "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "ok", "function_call": {"name": "f"}}]}, 1)
    assert [w.where for w in legacy.warnings] == ["functions", "messages[1].tool_calls"]
    assert "'functions'" in legacy.warnings[0].message
    only_calls = parse_record({"messages": [{"role": "user", "content": "q"},
                                            {"role": "assistant", "content": "", "tool_calls": calls}]}, 1)
    assert checks(only_calls) == ["content_type"] and only_calls.problems[0].hint


def test_nothing_to_train_on():
    zero = parse_record({"messages": [{"role": "user", "content": "q"},
                                      {"role": "assistant", "content": "a", "weight": 0}]}, 1)
    assert checks(zero) == ["missing_assistant"]
    assert zero.problems[0].message == "every assistant turn has weight 0: nothing to train on"
    assert zero.problems[0].hint
    # an assistant turn with unusable content is a content problem, not a missing turn
    for content in (None, 3, {"text": "x"}):
        ex = parse_record({"messages": [{"role": "user", "content": "q"},
                                        {"role": "assistant", "content": content}]}, 1)
        assert checks(ex) == ["content_type"], content
    assert checks(parse_record({"instruction": "q", "output": None}, 1)) == ["content_type"]


def test_articles_in_messages():
    assert a_or_an("int") == "an int" and a_or_an("list") == "a list" and a_or_an("e-mail address") == "an e-mail address"
    msg = parse_record({"messages": [{"role": "user", "content": 1.5}, {"role": "assistant", "content": "a"}]}, 1)
    assert msg.problems[0].message == "messages[0].content is a float; it must be a string"
    assert parse_record({"messages": {}}, 1).problems[0].message.startswith("'messages' is a dict, expected")


def test_roles_in_any_case_and_sharegpt_keys_under_messages():
    ex = parse_record({"messages": [{"role": "System", "content": "s"}, {"role": "USER", "content": "q"},
                                    {"role": "Assistant ", "content": "a"}]}, 1)
    assert not ex.problems and [m.role for m in ex.messages] == ["system", "user", "assistant"]
    sg = parse_record({"conversations": [{"from": "Human", "value": "q"}, {"from": "GPT", "value": "a"}]}, 2)
    assert not sg.problems and [m.role for m in sg.messages] == ["user", "assistant"]
    mixed = parse_record({"messages": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, 3)
    problem = mixed.problems[0]
    assert problem.check == "unknown_role" and "ShareGPT keys" in problem.message
    assert "conversations" in problem.hint


def test_a_capitalised_assistant_turn_is_one_problem_and_its_tool_calls_are_seen():
    ex = parse_record({"messages": [{"role": "user", "content": "q"}, {"role": "Assistant", "content": None}]}, 1)
    assert checks(ex) == ["content_type"]  # not also "no assistant turn"
    sg = parse_record({"conversations": [{"from": "human", "value": "q"}, {"from": "GPT", "value": None}]}, 2)
    assert checks(sg) == ["content_type"]
    calls = parse_record({"messages": [{"role": "user", "content": "q"},
                                       {"role": "Assistant", "content": "Let me check.",
                                        "tool_calls": [{"id": "1", "type": "function"}]}]}, 3)
    assert [w.check for w in calls.warnings] == ["tools_not_trained"]


def test_a_tool_turn_says_tool_calling_is_not_trained():
    from tunesmith.data.formats import TOOLS_HINT

    ex = parse_record({"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "42"},
                                    {"role": "assistant", "content": "a"}]}, 1)
    assert checks(ex) == ["unknown_role"] and ex.problems[0].hint == TOOLS_HINT
