"""Property tests: whatever body a client sends, `tunesmith serve` answers 2xx or an OpenAI-shaped 4xx.

Bodies come from hypothesis: the real request shapes with any field swapped for any JSON value (lone
surrogates, NUL bytes, NaN and huge numbers included), and adapters whose adapter_config.json holds
garbage. They go over a real socket to a real uvicorn on 127.0.0.1 (a request costs a millisecond here;
the decoding costs more, so max_tokens is capped at 4)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fixtures.serving import start

FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# any character, lone surrogates and NUL included (hypothesis leaves surrogates out by default)
TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**30), max_value=10**30)
           | st.floats(allow_nan=True, allow_infinity=True) | TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                    max_leaves=6)


def _or_junk(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return strategy | JSON


def _mutated(valid: st.SearchStrategy, keys: list[str]) -> st.SearchStrategy:
    """Mostly-valid bodies, one field of some of them replaced by any JSON value, or any JSON at all: the
    junk reaches every stage of the handler, not only the first validation."""
    @st.composite
    def build(draw: st.DrawFn) -> object:
        body = dict(draw(valid))
        if draw(st.booleans()):
            body[draw(st.sampled_from(keys))] = draw(JSON)
        return body

    return build() | build() | JSON


SCHEMAS = st.sampled_from([
    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
    {"type": "string", "pattern": "^[ab]+$"}, {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    {"type": "object", "additionalProperties": False}, {"enum": [1, "x", None]}, {"not": {}},
    {"$ref": "#/nowhere"}, {"type": "string", "format": "no-such-format"},
]) | st.dictionaries(st.sampled_from(["type", "properties", "items", "required", "enum", "pattern", "$ref"]), JSON,
                     max_size=3)
RESPONSE_FORMATS = _or_junk(st.sampled_from([{"type": "text"}, {"type": "json_object"}]) | st.builds(
    lambda schema, strict: {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": strict}},
    SCHEMAS, _or_junk(st.booleans())))
PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"])}, optional={"text": TEXT})
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "developer", "tool", "wizard"])},
    optional={"content": TEXT | st.lists(PART, max_size=2) | st.none(), "name": TEXT})
CHAT_FIELDS = {
    "max_tokens": st.integers(-1, 6), "max_completion_tokens": st.integers(-1, 6), "min_tokens": st.integers(-1, 6),
    "temperature": st.floats(-1, 3), "top_p": st.floats(0, 1.5), "seed": st.integers(),
    "stop": TEXT | st.lists(TEXT, max_size=5), "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}), "response_format": RESPONSE_FORMATS,
    "n": st.integers(0, 2), "logprobs": st.booleans(), "tools": st.just([]), "logit_bias": st.just({}),
    "top_k": st.sampled_from([-1, 0, 5]), "repetition_penalty": st.sampled_from([1.0, 1.3]),
    "frequency_penalty": st.sampled_from([0, 0.5]), "presence_penalty": st.just(0), "user": TEXT,
}
CHAT = _mutated(st.fixed_dictionaries(
    {"model": st.sampled_from(["alpha", "beta", "base", "nope"]), "messages": st.lists(MESSAGE, max_size=3)},
    optional=CHAT_FIELDS), ["model", "messages", *CHAT_FIELDS])


@pytest.fixture(scope="module")
def fuzz_server(serve_base, serve_assets):
    running = start(serve_base, serve_assets, max_tokens=4, max_adapters=4)
    yield running
    running.stop()


def _post(server, path: str, body: object) -> httpx.Response:
    # ensure_ascii: a lone surrogate travels as the \\ud800 escape, as a JSON client would send it
    content = json.dumps(body, ensure_ascii=True, allow_nan=True).encode()
    return httpx.post(server.url + path, content=content, headers={"Content-Type": "application/json"}, timeout=120)


def assert_openai_answer(reply: httpx.Response) -> None:
    assert reply.status_code < 500, reply.text
    if reply.status_code >= 400:
        body = reply.json()
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str), body
        assert error["message"] and isinstance(error["type"], str), body


def assert_chat_answer(reply: httpx.Response) -> None:
    assert_openai_answer(reply)
    if reply.status_code >= 400:
        return
    if reply.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in reply.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]", events
        chunks = [json.loads(e) for e in events[:-1]]
        assert not [c for c in chunks if "error" in c], chunks  # no failure inside a 200 stream either
        assert sum(1 for c in chunks for ch in c["choices"] if ch["finish_reason"]) == 1
    else:
        choice = reply.json()["choices"][0]
        assert choice["finish_reason"] in ("stop", "length", "grammar")
        assert isinstance(choice["message"]["content"], str)


def _still_serving(server) -> None:
    reply = _post(server, "/chat/completions", {"model": "alpha", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200, reply.text


@FUZZ
@given(body=CHAT)
def test_any_chat_completions_body_gets_2xx_or_an_openai_4xx(fuzz_server, body):
    reply = _post(fuzz_server, "/chat/completions", body)
    assert_chat_answer(reply)
    event(f"status {reply.status_code}")


def _sources(assets: dict[str, Path]) -> st.SearchStrategy:
    allowed = assets["allowed"]
    known = [str(assets["gamma"]), str(assets["alpha"]), str(assets["pickled"]), str(assets["outside"]),
             str(allowed), str(allowed / "no-such"), str(allowed / "gamma" / ".." / ".." / "outside"), "/etc",
             "latest", "~", "~no-such-user/x", str(allowed / ("x" * 300)), str(assets["wide_adapter"])]
    return st.sampled_from(known) | st.sampled_from(known) | st.builds(lambda s, t: s + t, st.sampled_from(known), TEXT)


@FUZZ
@given(data=st.data())
def test_any_adapter_body_gets_2xx_or_an_openai_4xx(fuzz_server, serve_assets, data):
    fresh = st.sampled_from(["fz1", "fz2"])
    names = fresh | fresh | st.sampled_from(["alpha", "base", "", "a.b"]) | TEXT
    source = _sources(serve_assets)
    valid = st.fixed_dictionaries({"name": names, "source": source}) | st.fixed_dictionaries(
        {"name": names, "path": source})
    body = data.draw(_mutated(valid, ["name", "source", "path"]))
    reply = _post(fuzz_server, "/adapters", body)
    assert_openai_answer(reply)
    event(f"status {reply.status_code}")
    if reply.status_code == 201:  # keep the server as it was for the next example
        assert httpx.delete(fuzz_server.url + "/adapters/" + reply.json()["id"], timeout=60).status_code == 200


CONFIG_KEYS = ["peft_type", "r", "lora_alpha", "target_modules", "init_lora_weights", "base_model_name_or_path",
               "megatron_config", "layer_replication", "lora_dropout", "bias", "modules_to_save", "task_type",
               "use_dora", "rank_pattern", "alpha_pattern", "fan_in_fan_out", "layers_to_transform",
               "use_rslora", "exclude_modules", "revision", "inference_mode"]


@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_garbage_in_adapter_config_gets_2xx_or_an_openai_4xx(fuzz_server, serve_assets, data):
    config = json.loads((serve_assets["alpha"] / "adapter_config.json").read_text())
    changes = data.draw(st.dictionaries(st.sampled_from(CONFIG_KEYS) | TEXT, JSON, min_size=1, max_size=4))
    whole = data.draw(st.none() | JSON, label="replaces the whole file")
    target = serve_assets["allowed"] / "fuzz-config"
    if not target.exists():
        shutil.copytree(serve_assets["alpha"], target)
    text = json.dumps(config | changes if whole is None else whole, ensure_ascii=False, allow_nan=True)
    (target / "adapter_config.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    reply = _post(fuzz_server, "/adapters", {"name": "fuzzcfg", "source": str(target)})
    assert_openai_answer(reply)
    event(f"status {reply.status_code}")
    if reply.status_code == 201:
        assert httpx.delete(fuzz_server.url + "/adapters/fuzzcfg", timeout=60).status_code == 200


def test_the_server_still_serves_after_the_fuzzing(fuzz_server):
    _still_serving(fuzz_server)
    models = httpx.get(fuzz_server.url + "/models", timeout=60).json()["data"]
    assert [m["id"] for m in models][1:] == ["alpha", "beta"]


def test_nan_and_infinity_are_refused_not_sampled(fuzz_server):
    for value in (math.nan, math.inf):
        reply = _post(fuzz_server, "/chat/completions", {"model": "alpha", "temperature": value,
                                                         "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "temperature", reply.text
