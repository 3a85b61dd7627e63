"""Contract-aware stopping: the prefix checks, and local decoding that cuts answers already wrong."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tunesmith.data.checks.contract import AnswerContract
from tunesmith.evaluate.generate import LocalBackend
from tunesmith.inference.contract_stop import ContractSpec, ContractWatch, JsonPrefix
from tunesmith.inference.types import DecodeSettings

VALID = ['{"a": 1, "b": [true, null, -0.5e3, "x\\u00e9 \\"q\\""], "c": {}}', "[]", "[1,2]", '{"k":"v"}  \n',
         '[{"a":[]}, {"b": {"c": [false]}}]', "  {}"]
DEAD = ["x", "The answer is {", '{"a":1}x', '{"a":1} {"b":2}', "[1,]", "{,}", '{"a" 1}', '{"a":01}', "[tru e]",
        "{'a':1}", '{"a":NaN}', "[1 2]", '{"a":1,}', "{}{}", '"a string"', "42", '{"a":"\x01"}', '{"a":1]']


def alive(text: str) -> bool:
    return JsonPrefix().feed(text)


def test_every_prefix_of_valid_json_stays_alive() -> None:
    for text in VALID:
        for i in range(len(text) + 1):
            assert alive(text[:i]), (text, i)


@pytest.mark.parametrize("text", DEAD)
def test_text_no_json_object_or_array_can_continue_is_dead(text: str) -> None:
    assert not alive(text)


def test_agrees_with_a_json_parser_on_random_values() -> None:
    rng = random.Random(0)

    def value(depth: int = 0):
        r = rng.random()
        if depth > 3 or r < 0.3:
            return rng.choice([1, -2.5, 0, 1e5, True, False, None, 'q"uote', "é\n\t"])
        if r < 0.65:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {f"k{i}": value(depth + 1) for i in range(rng.randint(0, 3))}

    checked = 0
    for _ in range(800):
        v = value()
        if not isinstance(v, (list, dict)):
            continue
        text = json.dumps(v, ensure_ascii=rng.random() < 0.5, separators=(rng.choice([",", ", "]), ":"))
        assert all(alive(text[:i]) for i in range(len(text) + 1)), text
        i = rng.randrange(len(text))
        mutated = text[:i] + rng.choice('{}[],:"x 1-') + text[i + 1:]
        try:
            json.loads(mutated)
            parses = True
        except ValueError:
            parses = False
        if parses and mutated.lstrip()[:1] in "{[":
            assert alive(mutated), mutated  # whatever a parser accepts is never cut
        checked += 1
    assert checked > 300


def test_a_regex_contract_cuts_once_no_full_match_is_possible() -> None:
    watch = ContractWatch(ContractSpec(regex="^(positive|negative|neutral)$"))
    assert watch.alive("") and watch.alive("pos") and watch.alive("positive")
    assert not ContractWatch(ContractSpec(regex="^(positive|negative|neutral)$")).alive("good")
    assert not ContractWatch(ContractSpec(regex="^(positive|negative|neutral)$")).alive("positive!")


def test_a_regex_answer_with_surrounding_space_is_not_cut_while_its_stripped_text_can_match() -> None:
    """Exact match compares stripped text: " apple" equals the expected "apple" and must not be cut."""
    watch = ContractWatch(ContractSpec(regex="^[a-z]+$"))
    assert watch.alive(" ") and watch.alive(" apple") and watch.alive(" apple\n")
    assert not watch.alive(" apple pie")


def test_the_watch_follows_a_text_that_is_read_again_differently() -> None:
    watch = ContractWatch(ContractSpec(json=True))
    assert watch.alive('{"a": "caf\ufffd')  # half a character: waits
    assert watch.alive('{"a": "café", "b"')  # the bytes came together: re-read from the start
    assert not watch.alive('{"a": "café", "b"}')


# --- in decoding ------------------------------------------------------------------------------------------


def test_local_decoding_cuts_rambling_answers_and_the_metrics_do_not_change(lively_model: Path,
                                                                           one_torch_thread: None) -> None:
    """A random model never writes JSON: with a JSON contract every answer is cut where it broke it, and
    scores exactly as the answer decoded to the end does."""
    backend = LocalBackend(lively_model, device="cpu")
    chats = [[{"role": "user", "content": f"question {i}: {'words ' * (i % 5)}"}] for i in range(10)]
    full = backend.generate(chats, DecodeSettings(max_new_tokens=24))
    cut = backend.generate(chats, DecodeSettings(max_new_tokens=24, contract=ContractSpec(json=True)))
    contract = AnswerContract(expects_json=True)
    cut_rows = [i for i, g in enumerate(cut) if g.finish_reason == "contract"]
    assert cut_rows, [g.text for g in full]
    for f, c in zip(full, cut):
        if c.finish_reason == "contract":
            assert f.text.startswith(c.text) and c.output_tokens <= f.output_tokens
            assert not contract.check(f.text).ok and not contract.check(c.text).ok  # wrong both ways
        else:
            assert (c.text, c.finish_reason, c.output_tokens) == (f.text, f.finish_reason, f.output_tokens)
    assert sum(g.output_tokens for g in cut) < sum(g.output_tokens for g in full)


def test_the_contract_is_part_of_the_cache_key() -> None:
    plain = DecodeSettings(max_new_tokens=8)
    assert plain.key() == json.dumps({"max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0, "stop": [], "seed": 0},
                                     sort_keys=True)  # unchanged for caches written before contract stopping
    assert DecodeSettings(max_new_tokens=8, contract=ContractSpec(json=True)).key() != plain.key()


def test_eval_cuts_only_when_the_expected_answers_meet_the_contract_themselves(tmp_path: Path) -> None:
    from tunesmith.evaluate.api import EvalOptions, _early_stop
    from tunesmith.evaluate.types import EvalItem
    from tunesmith.project import load_project

    (tmp_path / "tunesmith.yaml").write_text("task: 'Answer with one JSON object.'\noutput:\n  json: true\n")
    project = load_project(tmp_path)
    good = [EvalItem("a", [], expected='{"x": 1}'), EvalItem("b", [], expected="[2]")]
    said: list[str] = []
    local, endpoint = LocalBackend, object()
    assert _early_stop(project, EvalOptions(), good, said.append, local) == ContractSpec(json=True)
    assert _early_stop(project, EvalOptions(early_stop=False), good, said.append, local) is None  # --no-early-stop
    assert _early_stop(project, EvalOptions(), good, said.append, endpoint) is None  # decodes everything anyway
    assert _early_stop(project, EvalOptions(), [*good, EvalItem("c", [], expected="plain")], said.append, local) is None
    assert said == ["answers are decoded to the end: 1 expected answer(s) break the output contract themselves "
                    "(`tunesmith check` names them)"]
    (tmp_path / "tunesmith.yaml").write_text("task: 'Answer with one JSON object.'\noutput:\n  json: true\n"
                                             "eval:\n  scorers: ['scorers.py:f']\n")
    assert _early_stop(load_project(tmp_path), EvalOptions(), good, said.append, local) is None  # scorers read all
    (tmp_path / "tunesmith.yaml").write_text("task: 'Answer with one free-text sentence.'\n")
    assert _early_stop(load_project(tmp_path), EvalOptions(), good, said.append, local) is None  # no contract


def test_regression_prompts_are_never_cut(tmp_path: Path) -> None:
    """Regression assertions (contains, not_contains, scorers) read whole answers: only the test set is cut."""
    from tunesmith.evaluate.subject import Subject, evaluate_subject
    from tunesmith.evaluate.types import EvalItem, Generation
    from tunesmith.project import load_project

    (tmp_path / "tunesmith.yaml").write_text("task: 'Answer with one JSON object.'\noutput:\n  json: true\n")
    calls: list[DecodeSettings] = []

    class Recording:
        fingerprint = "recording"
        honours_contract = True

        def generate(self, chats, settings, progress=None):
            calls.append(settings)
            return [Generation("{}", "stop", 1) for _ in chats]

    test = [EvalItem("t", [{"role": "user", "content": "q"}], expected="{}")]
    regression = [EvalItem("r", [{"role": "user", "content": "q"}], assertions=[{"type": "contains", "value": "{"}])]
    settings = DecodeSettings(max_new_tokens=8, contract=ContractSpec(json=True))
    evaluate_subject(load_project(tmp_path), Subject("s", None, Recording()), test, regression, settings,
                     say=lambda _m: None)
    assert [c.contract for c in calls] == [ContractSpec(json=True), None]
