"""`tunesmith serve` over real HTTP on 127.0.0.1, driven by the official openai client."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from fixtures.serving import PROMPTS, start


def client(server, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=kw.pop("api_key", "unused"), max_retries=0, timeout=60, **kw)


def ask(c: openai.OpenAI, model: str, prompt: str, **kw) -> str:
    reply = c.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                      max_tokens=12, temperature=0, **kw)
    return reply.choices[0].message.content


def test_each_adapter_answers_as_it_does_alone(server, expected):
    c = client(server)
    for model in ("alpha", "beta", "base"):
        assert [ask(c, model, p) for p in PROMPTS[:3]] == expected[model][:3]


def test_non_streaming_reply_shape_and_usage(server, expected):
    reply = client(server).chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=12, temperature=0)
    assert reply.object == "chat.completion" and reply.model == "alpha" and reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected["alpha"][0]
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_gives_the_same_text_and_usage(server, expected):
    stream = client(server).chat.completions.create(
        model="beta", messages=[{"role": "user", "content": PROMPTS[1]}], max_tokens=12, temperature=0,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == expected["beta"][1]
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finishes) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert all(ch.object == "chat.completion.chunk" and ch.model == "beta" for ch in chunks)


def test_max_tokens_stop_and_seed(server):
    c = client(server)
    reply = c.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                      temperature=0)
    assert reply.usage.completion_tokens <= 3
    full = ask(c, "alpha", PROMPTS[2])
    assert len(full) > 4
    stop = full[2:4]
    cut = ask(c, "alpha", PROMPTS[2], stop=[stop])
    assert cut == full[: full.find(stop)] and stop not in cut
    sampled = [c.chat.completions.create(model="beta", messages=[{"role": "user", "content": "x"}], max_tokens=8,
                                         temperature=1.0, top_p=0.9, seed=7).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_models_lists_base_and_adapters(server):
    ids = [m.id for m in client(server).models.list().data]
    assert ids[0] == server.state.base.name and {"alpha", "beta"} <= set(ids)


def test_concurrent_requests_to_different_adapters_never_cross(server, expected):
    c = client(server)
    jobs = [(m, i) for i in range(len(PROMPTS)) for m in ("alpha", "beta", "base")]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda job: ask(c, job[0], PROMPTS[job[1]]), jobs))
    wrong = [(m, i, a) for (m, i), a in zip(jobs, answers) if a != expected[m][i]]
    assert not wrong, f"answers from the wrong model: {wrong[:3]}"
    assert server.state.engine.peak_batch > 1  # they really shared batches


def test_hot_load_and_unload(server, serve_assets, expected):
    c = client(server)
    http = httpx.Client(base_url=server.url, timeout=60)
    made = http.post("/adapters", json={"name": "gamma", "source": str(serve_assets["gamma"])})
    assert made.status_code == 201, made.text
    assert made.json()["id"] == "gamma"
    assert "gamma" in [m.id for m in c.models.list().data]
    gamma = ask(c, "gamma", PROMPTS[0])
    assert gamma not in (expected["alpha"][0], expected["beta"][0])
    assert ask(c, "alpha", PROMPTS[0]) == expected["alpha"][0]  # the others are untouched
    again = http.post("/adapters", json={"name": "gamma", "source": str(serve_assets["gamma"])})
    assert again.status_code == 409 and again.json()["error"]["code"] == "adapter_exists"
    gone = http.delete("/adapters/gamma")
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    with pytest.raises(openai.NotFoundError):
        ask(c, "gamma", PROMPTS[0])
    assert ask(c, "beta", PROMPTS[0]) == expected["beta"][0]
    assert http.delete("/adapters/gamma").status_code == 404


def test_unloading_every_adapter_leaves_the_base_serving(serve_base, serve_assets, expected):
    running = start(serve_base, serve_assets, adapters=[("alpha", str(serve_assets["alpha"]))])
    try:
        http = httpx.Client(base_url=running.url, timeout=60)
        assert http.delete("/adapters/alpha").status_code == 200
        c = client(running)
        assert ask(c, "base", PROMPTS[0]) == expected["base"][0]
        assert http.post("/adapters", json={"name": "alpha2", "source": str(serve_assets["alpha"])}).status_code == 201
        assert ask(c, "alpha2", PROMPTS[0]) == expected["alpha"][0]
    finally:
        running.stop()


def test_an_adapter_on_more_layers_loaded_after_a_narrow_one_answers_as_it_does_alone(serve_base, serve_assets,
                                                                                      expected, tmp_path):
    """The first adapter wraps only q_proj; loading alpha (every linear layer) wraps the others too, so
    the engine must rebuild its lean decoding step, whose projections hold the layers they saw."""
    from fixtures.serving import make_adapter

    narrow = make_adapter(serve_base, serve_assets["allowed"] / "narrow-q", seed=8, targets=["q_proj"])
    running = start(serve_base, serve_assets, adapters=[("narrow", str(narrow))])
    try:
        http = httpx.Client(base_url=running.url, timeout=60)
        c = client(running)
        assert ask(c, "narrow", PROMPTS[0]) != expected["alpha"][0]
        assert http.post("/adapters", json={"name": "alpha", "source": str(serve_assets["alpha"])}).status_code == 201
        assert [ask(c, "alpha", p) for p in PROMPTS[:3]] == expected["alpha"][:3]
        assert http.delete("/adapters/narrow").status_code == 200
        assert [ask(c, "alpha", p) for p in PROMPTS[:3]] == expected["alpha"][:3]
    finally:
        running.stop()


def test_unknown_model_is_a_404_in_openai_shape(server):
    with pytest.raises(openai.NotFoundError) as info:
        ask(client(server), "nope", "hi")
    error = info.value.body
    assert error["code"] == "model_not_found" and "nope" in error["message"] and "alpha" in error["message"]


@pytest.mark.parametrize("body, param", [
    ({"model": "alpha"}, "messages"),
    ({"model": "alpha", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"model": "alpha", "messages": [{"role": "user", "content": "x"}], "temperature": 5}, "temperature"),
    ({"model": "alpha", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"model": "alpha", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}, "max_tokens"),
    ({"model": "alpha", "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "alpha", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ({"model": "alpha", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
    ([1, 2], None),
    # a format this server does not know must not be answered with free text as if it were honoured
    ({"model": "alpha", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}},
     "response_format.type"),
    ({"model": "alpha", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": 10}}, "logit_bias"),
    ({"model": "alpha", "messages": [{"role": "user", "content": "x"}], "top_k": 5}, "top_k"),
    ({"model": "alpha", "messages": [{"role": "user", "content": "x"}], "repetition_penalty": 1.3}, "repetition_penalty"),
    ({"model": "alpha", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}},
     "stream_options"),
])
def test_malformed_requests_get_400_with_an_error_object(server, body, param):
    reply = httpx.post(server.url + "/chat/completions", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"] == param


def test_invalid_json_and_oversized_bodies(server):
    bad = httpx.post(server.url + "/chat/completions", content=b"{not json", timeout=60,
                     headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    huge = {"model": "alpha", "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
    big = httpx.post(server.url + "/chat/completions", json=huge, timeout=60)
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"


def test_json_nested_too_deeply_is_a_400_not_a_crash(server):
    deep = b"[" * 100_000 + b"]" * 100_000
    reply = httpx.post(server.url + "/chat/completions", content=deep, timeout=60,
                       headers={"content-type": "application/json"})
    assert reply.status_code == 400 and "nests JSON too deeply" in reply.json()["error"]["message"]
    assert ask(client(server), "alpha", "hi")  # still serving


def test_default_sampling_fields_and_text_format_are_accepted(server, expected):
    reply = client(server).chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=12, temperature=0,
        response_format={"type": "text"}, extra_body={"top_k": -1, "repetition_penalty": 1.0})
    assert reply.choices[0].message.content == expected["alpha"][0]


def test_a_tiny_temperature_decodes_greedily_and_harms_no_one(server, expected):
    c = client(server)
    with ThreadPoolExecutor(4) as pool:
        others = [pool.submit(ask, c, "beta", PROMPTS[i]) for i in range(3)]
        tiny = c.chat.completions.create(model="alpha", messages=[{"role": "user", "content": PROMPTS[0]}],
                                         max_tokens=12, temperature=1e-40)
        assert [f.result() for f in others] == expected["beta"][:3]
    assert tiny.choices[0].message.content == expected["alpha"][0]


def test_model_lookup_by_alias_and_the_base_cannot_be_unloaded(server):
    http = httpx.Client(base_url=server.url, timeout=60)
    assert http.get("/models/base").json()["id"] == "base"
    assert http.get("/models/" + server.state.base.name).json()["id"] == server.state.base.name
    assert http.get("/models/").json()["object"] == "list"
    gone = http.delete("/adapters/base")
    assert gone.status_code == 400 and "cannot be unloaded" in gone.json()["error"]["message"]


def test_prompt_longer_than_the_context_is_refused(server):
    long = " ".join(["word"] * 5000)
    reply = httpx.post(server.url + "/chat/completions", timeout=60,
                       json={"model": "alpha", "messages": [{"role": "user", "content": long}]})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "context_length_exceeded"


def test_api_key_required_on_every_request(serve_base, serve_assets, monkeypatch):
    running = start(serve_base, serve_assets, api_key="s3cret", adapters=[])
    try:
        with pytest.raises(openai.AuthenticationError) as info:
            client(running, api_key="wrong").models.list()
        assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
        assert httpx.post(running.url + "/chat/completions", json={}).status_code == 401
        assert httpx.post(running.url + "/adapters", json={"name": "x", "source": "y"}).status_code == 401
        assert client(running, api_key="s3cret").models.list().data[0].id == running.state.base.name
        assert httpx.get(running.url.replace("/v1", "/health")).status_code == 200
    finally:
        running.stop()


@pytest.mark.parametrize("source, status, code", [
    ("../../../../etc", 403, "path_not_allowed"),
    ("/etc", 403, "path_not_allowed"),
])
def test_adapter_paths_outside_the_allowed_directories_are_refused(server, serve_assets, source, status, code):
    source = str(serve_assets["allowed"]) + "/" + source if source.startswith("..") else source
    reply = httpx.post(server.url + "/adapters", json={"name": "evil", "source": source}, timeout=60)
    assert reply.status_code == status and reply.json()["error"]["code"] == code
    assert "allowed" in reply.json()["error"]["message"]


def test_symlink_out_of_the_allowed_directory_is_refused(server, serve_assets):
    link = serve_assets["allowed"] / "sneaky"
    if not link.exists():
        link.symlink_to(serve_assets["outside"], target_is_directory=True)
    reply = httpx.post(server.url + "/adapters", json={"name": "sneaky", "source": str(link)}, timeout=60)
    assert reply.status_code == 403


def test_pickled_adapter_is_refused(server, serve_assets):
    reply = httpx.post(server.url + "/adapters", json={"name": "pk", "source": str(serve_assets["pickled"])}, timeout=60)
    assert reply.status_code == 400
    assert "safetensors" in reply.json()["error"]["message"] and reply.json()["error"]["code"] == "adapter_rejected"


@pytest.mark.parametrize("which", ["wide_adapter", "twin_adapter"])
def test_adapter_trained_on_another_base_is_refused_with_both_names(server, serve_assets, which):
    reply = httpx.post(server.url + "/adapters", json={"name": "other", "source": str(serve_assets[which])}, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "base_mismatch"
    trained_on = json.loads((serve_assets[which] / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert trained_on in error["message"] and f"this server's base is {server.state.base.name!r}" in error["message"]
    assert "other" not in [m["id"] for m in httpx.get(server.url + "/models").json()["data"]]


def test_bad_adapter_names_are_refused(server, serve_assets):
    for name, status in (("../x", 400), ("base", 409), ("", 400), ("v1.2", 400)):
        reply = httpx.post(server.url + "/adapters", json={"name": name, "source": str(serve_assets["gamma"])},
                           timeout=60)
        assert reply.status_code == status, (name, reply.text)


@pytest.fixture
def slow_steps(server, monkeypatch):
    """Each decoding step takes >= 5 ms, so an abandoned 1500-token row would run for seconds."""
    engine = server.state.engine
    forward = engine.decoder._forward

    def slow(*args, **kwargs):
        time.sleep(0.005)
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine.decoder, "_forward", slow)
    return engine


def _wait_until_idle(engine, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.decoder.rows and time.monotonic() < deadline:
        time.sleep(0.01)


def test_client_disconnecting_mid_stream_does_not_stall_others(server, expected, slow_steps):
    c = client(server)
    with httpx.Client(timeout=60) as http, http.stream(
            "POST", server.url + "/chat/completions",
            json={"model": "alpha", "messages": [{"role": "user", "content": "go"}], "max_tokens": 1500,
                  "min_tokens": 1500, "temperature": 0, "stream": True}) as response:
        for _ in response.iter_lines():
            break  # read one event, then hang up
    steps = slow_steps.steps
    assert ask(c, "beta", PROMPTS[3]) == expected["beta"][3]
    _wait_until_idle(slow_steps)
    assert not slow_steps.decoder.rows and slow_steps.steps - steps < 300  # the abandoned row left the batch


def test_non_streaming_client_that_hangs_up_frees_its_row(server, slow_steps):
    import socket

    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    body = json.dumps({"model": "alpha", "messages": [{"role": "user", "content": "go"}], "max_tokens": 1500,
                       "min_tokens": 1500, "temperature": 0}).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    deadline = time.monotonic() + 30
    while not slow_steps.decoder.rows and time.monotonic() < deadline:
        time.sleep(0.01)
    sock.close()
    steps = slow_steps.steps
    _wait_until_idle(slow_steps)
    assert not slow_steps.decoder.rows and slow_steps.steps - steps < 400


def test_shutdown_with_requests_in_flight_ends_them_cleanly(serve_base, serve_assets, monkeypatch):
    running = start(serve_base, serve_assets, adapters=[], grace_s=1.0)
    engine = running.state.engine
    forward = engine.decoder._forward
    monkeypatch.setattr(engine.decoder, "_forward", lambda *a, **k: (time.sleep(0.005), forward(*a, **k))[1])
    outcomes: list[object] = []

    def long_request() -> None:
        try:
            reply = httpx.post(running.url + "/chat/completions", timeout=60,
                               json={"model": "base", "messages": [{"role": "user", "content": "x"}],
                                     "max_tokens": 2000, "min_tokens": 2000, "temperature": 1.0, "seed": 1})
            outcomes.append((reply.status_code, reply.json()["error"]["type"]))
        except httpx.HTTPError as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=long_request) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(engine.decoder.rows) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    running.stop(timeout=60)
    for t in threads:
        t.join(60)
    assert len(outcomes) == 3 and not any(t.is_alive() for t in threads)
    # 2000 slow tokens cannot finish in the 1 s grace: each request fails with a server error (or sees the
    # connection close), and nothing hangs
    assert all(o == (503, "server_error") or isinstance(o, str) for o in outcomes), outcomes
    assert time.monotonic() - started < 30 and not running.thread.is_alive()


def test_null_fields_mean_defaults(server, expected):
    reply = httpx.post(server.url + "/chat/completions", timeout=60, json={
        "model": "alpha", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 12,
        "temperature": 0, "top_p": None, "n": None, "stream": None, "stop": None, "seed": None})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == expected["alpha"][0]


def test_chunked_body_over_the_limit_is_refused_while_reading(server):
    def chunks():
        yield b'{"model": "alpha", "messages": [{"role": "user", "content": "'
        for _ in range(64):
            yield b"x" * 65536
        yield b'"}]}'

    reply = httpx.post(server.url + "/chat/completions", content=chunks(), timeout=60,
                       headers={"content-type": "application/json"})
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"


def test_adapters_that_would_change_the_shared_base_or_are_damaged_are_refused(server, serve_assets):
    allowed = serve_assets["allowed"]
    risky = allowed / "pissa"
    if not risky.exists():
        shutil.copytree(serve_assets["alpha"], risky)
        cfg = json.loads((risky / "adapter_config.json").read_text())
        cfg["init_lora_weights"] = "pissa"
        (risky / "adapter_config.json").write_text(json.dumps(cfg))
    reply = httpx.post(server.url + "/adapters", json={"name": "pissa", "source": str(risky)}, timeout=60)
    assert reply.status_code == 400 and "rewrites the base weights" in reply.json()["error"]["message"]
    broken = allowed / "broken"
    if not broken.exists():
        shutil.copytree(serve_assets["alpha"], broken)
        (broken / "adapter_model.safetensors").write_bytes(b"not safetensors at all")
    reply = httpx.post(server.url + "/adapters", json={"name": "broken", "source": str(broken)}, timeout=60)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "adapter_rejected"
    assert {"pissa", "broken"}.isdisjoint(m["id"] for m in httpx.get(server.url + "/models").json()["data"])
    assert ask(client(server), "alpha", PROMPTS[0])  # still serving


def test_a_failing_generation_is_a_500_server_error(server, monkeypatch):
    engine = server.state.engine

    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(engine.decoder, "_forward", broken)
    with pytest.raises(openai.InternalServerError) as info:
        ask(client(server), "alpha", "hi")
    assert info.value.status_code == 500 and "kernel exploded" in info.value.body["message"]


def test_project_runs_by_id_and_its_system_prompt(serve_base, serve_assets, tmp_path):
    from tunesmith.evaluate.generate import LocalBackend
    from tunesmith.evaluate.types import DecodeSettings
    from tunesmith.runs import RunRegistry
    from tunesmith.serve.api import ServeConfig, build_state, start_in_thread

    system = "You answer in one word."
    (tmp_path / "tunesmith.yaml").write_text(
        f"task: answer questions in one word\nbase_model: {serve_base}\nsystem_prompt: {system}\n")
    registry = RunRegistry(tmp_path / "runs")
    project_config = {"project": {"base_model": str(serve_base), "system_prompt": system}}
    run_dir = registry.create_run("20261129-000000-abcd-one", project_root=tmp_path, base_model=str(serve_base),
                                  method="lora", config=project_config, plan={}, data={})
    shutil.copytree(serve_assets["alpha"], run_dir / "adapter")
    config = ServeConfig(project_dir=tmp_path, port=0, adapters=[("one", "latest")])
    running = start_in_thread(build_state(config), config)
    try:
        c = client(running)
        backend = LocalBackend(serve_base, adapter_path=serve_assets["alpha"])
        chats = [[{"role": "system", "content": s}, {"role": "user", "content": PROMPTS[0]}]
                 for s in (system, "Another prompt.")]
        with_project, with_own = [g.text for g in backend.generate(chats, DecodeSettings(max_new_tokens=12))]
        assert with_project != with_own
        assert ask(c, "one", PROMPTS[0]) == with_project  # the project's prompt was added
        own = c.chat.completions.create(model="one", max_tokens=12, temperature=0, messages=[
            {"role": "system", "content": "Another prompt."}, {"role": "user", "content": PROMPTS[0]}])
        assert own.choices[0].message.content == with_own  # a request's own system prompt is kept
        http = httpx.Client(base_url=running.url, timeout=60)
        assert http.post("/adapters", json={"name": "again", "source": "20261129-000000"}).status_code == 201
        missing = http.post("/adapters", json={"name": "nope", "source": "no-such-run"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "run_not_found"
        assert missing.json()["error"]["message"].count("no run 'no-such-run'") == 1
        # with a project, directories outside its runs directory stay refused
        outside = http.post("/adapters", json={"name": "o", "source": str(serve_assets["beta"])})
        assert outside.status_code == 403
    finally:
        running.stop()
    # an adapter from an allowed directory was not trained in the project: no project prompt for it
    config = ServeConfig(project_dir=tmp_path, port=0, adapters=[("foreign", str(serve_assets["alpha"]))],
                         allow_dirs=[serve_assets["alpha"].parent])
    running = start_in_thread(build_state(config), config)
    try:
        bare = backend.generate([[{"role": "user", "content": PROMPTS[0]}]], DecodeSettings(max_new_tokens=12))[0].text
        assert ask(client(running), "foreign", PROMPTS[0]) == bare
    finally:
        running.stop()
