"""`response_format` (OpenAI's JSON mode and JSON schemas) against a real `tunesmith serve`, driven by the
official openai client: every answer follows the format, a schema the grammar engine cannot enforce is a
400 naming the feature, and constrained rows share a batch with free ones without changing any answer."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import openai
import pytest
from jsonschema import Draft202012Validator

from fixtures.serving import PROMPTS

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "mood": {"enum": ["happy", "sad", "neutral"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "place": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                                    "zip": {"type": "integer", "minimum": 0, "maximum": 999}},
                  "required": ["city", "zip"], "additionalProperties": False},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
    },
    "required": ["name", "mood", "count", "place", "tags"],
    "additionalProperties": False,
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "card", "schema": SCHEMA, "strict": True}}
JSON_OBJECT = {"type": "json_object"}
MAX_TOKENS = 120


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)


def create(c: openai.OpenAI, model: str, prompt: str, response_format=None, **kw):
    if response_format is not None:
        kw["response_format"] = response_format
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                     max_tokens=kw.pop("max_tokens", MAX_TOKENS), temperature=0, **kw)


def answer(c: openai.OpenAI, model: str, prompt: str, response_format=None) -> tuple[str, str]:
    choice = create(c, model, prompt, response_format).choices[0]
    return choice.message.content, choice.finish_reason


def answer_and_tokens(c: openai.OpenAI, model: str, prompt: str, response_format=None) -> tuple[str, str, int]:
    reply = create(c, model, prompt, response_format)
    return reply.choices[0].message.content, reply.choices[0].finish_reason, reply.usage.completion_tokens


@contextmanager
def paused(engine):
    """Hold the engine thread between steps, so requests sent meanwhile all join one batch when it goes on."""
    release, holding = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait(60)

    done = engine.call(hold)
    assert holding.wait(30)
    try:
        yield
    finally:
        release.set()
        done.result(30)


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- the answers follow the format ---------------------------------------------------------------


@pytest.mark.parametrize("model", ["base", "alpha"])
def test_json_object_answers_are_json_objects(server, model):
    # JSON mode bounds no string: the tiny random model, once inside one, would ramble on to max_tokens.
    # The last tokens of the budget steer it to a close, so every answer parses; those finish "length"
    c = client(server)
    finished = 0
    for prompt in PROMPTS:
        reply = create(c, model, prompt, JSON_OBJECT, max_tokens=24)
        text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
        assert isinstance(json.loads(text), dict), (finish, text)
        assert reply.usage.completion_tokens <= 24
        finished += finish == "stop"
        if finish != "stop":
            assert finish == "length", (finish, text)
        assert text != create(c, model, prompt, max_tokens=24).choices[0].message.content  # it was constrained
    assert finished >= 2


def test_a_constrained_answer_closes_within_a_small_max_tokens(server):
    from tunesmith.serve.formats import close_reserve

    open_string = {"type": "object", "properties": {"note": {"type": "string"}, "n": {"type": "integer"}},
                   "required": ["note", "n"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "noted", "schema": open_string}}
    for prompt in PROMPTS[:3]:
        reply = create(client(server), "alpha", prompt, fmt, max_tokens=20)
        text = reply.choices[0].message.content
        Draft202012Validator(open_string).validate(json.loads(text))
        assert reply.usage.completion_tokens <= 20 and reply.choices[0].finish_reason in ("stop", "length"), text
    assert (close_reserve(20), close_reserve(400)) == (10, 16)


@pytest.mark.parametrize("model", ["base", "alpha", "beta"])
def test_json_schema_answers_validate(server, model):
    c, validator = client(server), Draft202012Validator(SCHEMA)
    texts = []
    for prompt in PROMPTS[:3]:
        text, finish = answer(c, model, prompt, JSON_SCHEMA)
        assert finish == "stop", text
        data = json.loads(text)
        validator.validate(data)
        assert list(data) == list(SCHEMA["properties"])  # in the schema's order, as OpenAI answers
        texts.append(text)
    assert len(set(texts)) > 1  # the model still answers, under the grammar: not one canned object


@pytest.mark.parametrize("response_format", [JSON_OBJECT, JSON_SCHEMA], ids=["json_object", "json_schema"])
def test_streamed_constrained_answers_equal_the_unstreamed_ones(server, response_format):
    c = client(server)
    chunks = list(create(c, "beta", PROMPTS[4], response_format, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert (text, finishes[0]) == answer(c, "beta", PROMPTS[4], response_format) and len(finishes) == 1
    assert text.startswith("{") and chunks[-1].usage.completion_tokens > 0
    if response_format is JSON_SCHEMA:  # (JSON mode: this one rambles inside a string up to max_tokens)
        assert finishes == ["stop"]
        Draft202012Validator(SCHEMA).validate(json.loads(text))


def test_strict_false_is_enforced_all_the_same(server):
    loose = {"type": "json_schema", "json_schema": {"name": "card", "schema": SCHEMA, "strict": False,
                                                    "description": "a card"}}
    text, finish = answer(client(server), "alpha", PROMPTS[5], loose)
    assert finish == "stop"
    Draft202012Validator(SCHEMA).validate(json.loads(text))


def test_text_format_and_null_leave_the_answer_free(server):
    c = client(server)
    free = answer(c, "alpha", PROMPTS[0])
    assert answer(c, "alpha", PROMPTS[0], {"type": "text"}) == free
    reply = httpx.post(server.url + "/chat/completions", timeout=60, json={
        "model": "alpha", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": MAX_TOKENS,
        "temperature": 0, "response_format": None})
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == free[0]


# -- one batch, each answer as alone -------------------------------------------------------------


def test_constrained_and_free_rows_of_two_adapters_in_one_batch_answer_as_alone(server):
    c = client(server)
    requests = [(model, PROMPTS[i], fmt) for i, (model, fmt) in enumerate(
        [("alpha", JSON_SCHEMA), ("beta", None), ("base", JSON_OBJECT), ("alpha", None), ("beta", JSON_SCHEMA),
         ("alpha", JSON_OBJECT), ("base", None), ("beta", JSON_OBJECT)])]
    alone = [answer_and_tokens(c, *r) for r in requests]
    engine = server.state.engine
    engine.peak_batch = 0
    with ThreadPoolExecutor(len(requests)) as pool:
        with paused(engine):
            futures = [pool.submit(answer_and_tokens, c, *r) for r in requests]
            _wait_for(lambda: engine._inbox.qsize() >= len(requests))
        together = [f.result() for f in futures]
    wrong = [(r[0], r[2], a, t) for r, a, t in zip(requests, alone, together) if a != t]
    assert not wrong, f"answers that changed in a batch: {wrong[:2]}"
    # all in one batch (but an answer done at its first token, as "{}" can be, never joins it)
    assert engine.peak_batch == sum(n > 1 for _, _, n in together) >= len(requests) - 2
    for (_, _, fmt), (text, finish, _) in zip(requests, together):
        if fmt is JSON_SCHEMA:
            assert finish == "stop"
            Draft202012Validator(SCHEMA).validate(json.loads(text))
        elif fmt is JSON_OBJECT:
            assert finish == "length" or isinstance(json.loads(text), dict)
    assert len({t for t, _, _ in together}) == len(requests)


@pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")
def test_a_grammar_at_a_dead_end_ends_its_row_with_finish_reason_grammar_and_no_other(server):
    # a POSIX class: the grammar engine (Rust regex) reads one digit, Python's jsonschema "[[:digi" and "]",
    # so no answer satisfies both; the row ends where the grammar allows no next token
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^[[:digit:]]$"}},
              "required": ["a"], "additionalProperties": False}
    dead = {"type": "json_schema", "json_schema": {"name": "digit", "schema": schema}}
    c = client(server)
    others = [("beta", PROMPTS[1], JSON_SCHEMA), ("alpha", PROMPTS[2], None), ("base", PROMPTS[3], JSON_OBJECT)]
    alone = [answer(c, *r) for r in others]
    engine = server.state.engine
    engine.peak_batch = 0
    with ThreadPoolExecutor(4) as pool:
        with paused(engine):
            stuck = pool.submit(answer, c, "alpha", PROMPTS[0], dead)
            futures = [pool.submit(answer, c, *r) for r in others]
            _wait_for(lambda: engine._inbox.qsize() >= 4)
        text, finish = stuck.result()
        assert [f.result() for f in futures] == alone
    assert engine.peak_batch == 4
    assert finish == "grammar" and text.startswith('{"a":"'), text
    chunks = list(create(c, "alpha", PROMPTS[0], dead, stream=True))
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices[0].finish_reason] == ["grammar"]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == text


# -- refused, with the reason --------------------------------------------------------------------


def test_a_schema_feature_the_grammar_cannot_enforce_is_a_400_naming_it(server):
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                                        "contains": {"const": "x"}}}, "required": ["tags"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "tagged", "schema": schema}}
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            create(client(server), "alpha", "hi", fmt, stream=stream)
        error = info.value.body
        assert "#/properties/tags: contains cannot be enforced" in error["message"], error
        assert "leave response_format out" in error["message"] and "--constrained" not in error["message"]
        assert error["param"] == "response_format" and error["type"] == "invalid_request_error"
    assert answer(client(server), "alpha", PROMPTS[0], JSON_SCHEMA)[1] == "stop"  # still serving


def _with_format(response_format) -> dict:
    return {"model": "alpha", "messages": [{"role": "user", "content": "x"}], "response_format": response_format}


@pytest.mark.parametrize("response_format, param, words", [
    ({"type": "xml"}, "response_format.type", "'xml' is not a response format"),
    ({}, "response_format.type", "response_format.type is missing"),
    ({"type": "json_schema"}, "response_format.json_schema", "must be an object"),
    ({"type": "json_schema", "json_schema": {"schema": SCHEMA}}, "response_format.json_schema.name", "is missing"),
    ({"type": "json_schema", "json_schema": {"name": "", "schema": SCHEMA}}, "response_format.json_schema.name",
     "is missing"),
    ({"type": "json_schema", "json_schema": {"name": "my card", "schema": SCHEMA}},
     "response_format.json_schema.name", "'my card' is not a valid name"),
    ({"type": "json_schema", "json_schema": {"name": "x" * 65, "schema": SCHEMA}},
     "response_format.json_schema.name", "is not a valid name"),
    ({"type": "json_schema", "json_schema": {"name": "card"}}, "response_format.json_schema.schema", "is missing"),
    ({"type": "json_schema", "json_schema": {"name": "card", "schema": True}}, "response_format.json_schema.schema",
     "must be a JSON object, not bool"),
    ({"type": "json_schema", "json_schema": {"name": "card", "schema": "{}"}}, "response_format.json_schema.schema",
     "must be a JSON object, not str"),
    ({"type": "json_schema", "json_schema": {"name": "card", "schema": SCHEMA, "strict": "yes"}},
     "response_format.json_schema.strict", "must be true or false"),
    ({"type": "json_schema", "json_schema": {"name": "card", "schema": SCHEMA, "description": 3}},
     "response_format.json_schema.description", "must be a string"),
    ("json_object", "response_format", "valid dictionary"),
])
def test_a_malformed_response_format_is_a_400_naming_the_field(server, response_format, param, words):
    reply = httpx.post(server.url + "/chat/completions", json=_with_format(response_format), timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert words in error["message"] and param in error["message"], error["message"]


def test_a_model_without_a_grammar_is_a_400_not_a_crash(server, monkeypatch):
    from tunesmith.inference.engine import BatchDecoder

    tries = []

    def no_grammar(_self):
        tries.append(1)
        raise ValueError("this tokenizer has no byte fallback")

    monkeypatch.setattr(server.state, "grammar", None)
    monkeypatch.setattr(server.state, "no_grammar", None)
    monkeypatch.setattr(BatchDecoder, "grammar", property(no_grammar))
    for fmt in (JSON_OBJECT, JSON_SCHEMA):  # the second is refused without trying again
        with pytest.raises(openai.BadRequestError) as info:
            create(client(server), "alpha", "hi", fmt)
        error = info.value.body
        assert error["param"] == "response_format" and error["code"] == "unsupported_parameter"
        assert ("this model cannot decode under a grammar (ValueError: this tokenizer has no byte fallback)"
                in error["message"])
    assert len(tries) == 1
    assert answer(client(server), "alpha", PROMPTS[0])[0]  # free answers go on


def test_a_schema_that_breaks_the_compiler_is_a_400(server, monkeypatch):
    class Broken:
        def check(self, _constraint):
            raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(server.state, "grammar", Broken())
    with pytest.raises(openai.BadRequestError) as info:
        create(client(server), "alpha", "hi", JSON_SCHEMA)
    error = info.value.body
    assert error["param"] == "response_format"
    assert "cannot be compiled into a grammar" in error["message"] and "RecursionError" in error["message"]


# -- usage ------------------------------------------------------------------------------------------


def test_usage_reports_the_prompt_tokens_reused_from_the_prefix_cache(server):
    c = client(server)
    prompt = "A long shared preamble about invoices and orders. " * 4 + "Name a colour."
    create(c, "beta", prompt, max_tokens=2)
    usage = create(c, "beta", prompt, max_tokens=2).usage
    assert 0 < usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens


# -- vLLM ---------------------------------------------------------------------------------------------


def test_vllm_engine_leaves_structured_outputs_on(serve_base):
    from tunesmith.serve.api import ServeConfig, vllm_command

    command, _ = vllm_command(ServeConfig(base=str(serve_base), engine="vllm"))
    # `serve` execs this: requests, response_format included, go straight to vLLM's own server
    assert not [a for a in command if "guided" in a or "structured" in a]
