"""Generation backends (local transformers, OpenAI-compatible endpoint, vLLM stub) and the generation cache."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from fixtures.fake_openai import FakeOpenAI, Reply
from fixtures.reference import plain_generate
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.cache import CachedBackend, GenerationCache, cache_key
from tunesmith.evaluate.generate import (
    Backend,
    EndpointBackend,
    EndpointError,
    LocalBackend,
    VLLMBackend,
    auto_batch_size,
    truncate_at_stop,
    vllm_available,
)
from tunesmith.evaluate.types import DecodeSettings, Generation

WORDS = "the model data test train answer question label name value output input text small large fast".split()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls: one thread is faster, and immune to a busy machine's thread contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)




def chats(n: int = 10) -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": "Return only json."},
             {"role": "user", "content": " ".join(WORDS[: (i * 5) % 17 + 1] * (i + 1))}] for i in range(n)]


# --- LocalBackend ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch_size", "prefix_reuse"), [(4, True), (None, True), (3, False)])
def test_batched_equals_one_at_a_time_plain_generate(lively_model: Path, batch_size: int | None,
                                                     prefix_reuse: bool) -> None:
    backend = LocalBackend(lively_model, batch_size=batch_size, device="cpu")
    backend.prefix_reuse = prefix_reuse  # off: every prompt prefilled whole
    prompts = chats(10)
    seen: list[int] = []
    streamed: dict[int, Generation] = {}
    gens = backend.generate(prompts, DecodeSettings(max_new_tokens=24), seen.append,
                            on_result=lambda i, g: streamed.__setitem__(i, g))
    lengths = {len(backend.tokenizer(render_prompt(backend, c), add_special_tokens=False)["input_ids"])
               for c in prompts}
    assert len(lengths) == 10  # all different lengths: real left padding in every batch
    reference = [plain_generate(backend.model, backend.tokenizer, c, 24) for c in prompts]
    assert [g.to_dict() for g in gens] == [r.to_dict() for r in reference]
    assert {g.finish_reason for g in gens} == {"stop", "length"}  # rows left their batch early
    assert seen == list(range(1, 11))
    assert streamed == dict(enumerate(gens))


def render_prompt(backend: LocalBackend, chat) -> str:
    from tunesmith.models.chat import render

    return render(backend.tokenizer, chat, add_generation_prompt=True)


def test_length_finish_reason_and_stop_strings(lively_model: Path) -> None:
    backend = LocalBackend(lively_model, batch_size=3, device="cpu")
    prompts = chats(6)
    short = backend.generate(prompts, DecodeSettings(max_new_tokens=2))
    assert [g.finish_reason for g in short] == ["length"] * 6
    assert all(g.output_tokens == 2 for g in short)

    full = backend.generate(prompts, DecodeSettings(max_new_tokens=24))
    # a stop string taken from the middle of the first answer
    target = full[0].text
    stop = target[len(target) // 2: len(target) // 2 + 2]
    assert stop.strip()
    stopped = backend.generate(prompts, DecodeSettings(max_new_tokens=24, stop=(stop,)))
    for g_full, g_stop in zip(full, stopped):
        expected, found = truncate_at_stop(g_full.text, (stop,))
        assert g_stop.text == expected
        assert stop not in g_stop.text
        if found:
            assert g_stop.finish_reason == "stop"
            assert g_stop.output_tokens <= g_full.output_tokens
        else:
            assert g_stop.to_dict() == g_full.to_dict()
    assert stopped[0].finish_reason == "stop" and stopped[0].output_tokens < full[0].output_tokens


def test_lora_adapter_changes_answers_and_fingerprint(lively_model: Path, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(lively_model)
    tok = AutoTokenizer.from_pretrained(lively_model)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    adapter = tmp_path / "adapter"
    peft.save_pretrained(adapter)
    tok.save_pretrained(adapter)
    assert (adapter / "adapter_model.safetensors").is_file()

    prompts = chats(5)
    settings = DecodeSettings(max_new_tokens=12)
    base = LocalBackend(lively_model, device="cpu")
    tuned = LocalBackend(lively_model, adapter_path=adapter, batch_size=2, device="cpu")
    assert tuned.tokenizer_path == adapter.resolve()
    assert tuned.fingerprint != base.fingerprint
    base_gens, tuned_gens = base.generate(prompts, settings), tuned.generate(prompts, settings)
    assert [g.text for g in base_gens] != [g.text for g in tuned_gens]
    # and the adapter's batched answers are plain PeftModel.generate's, one prompt at a time
    reference_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lively_model), adapter).eval()
    assert [g.to_dict() for g in tuned_gens] == [plain_generate(reference_model, tok, c, 12).to_dict()
                                                  for c in prompts]
    # the fingerprint follows the adapter's weights, not just its path
    again = LocalBackend(lively_model, adapter_path=adapter, device="cpu")
    assert again.fingerprint == tuned.fingerprint


def test_local_backend_checks_paths_without_loading(tmp_path: Path, lively_model: Path) -> None:
    with pytest.raises(TunesmithError) as err:
        LocalBackend(tmp_path)
    assert "config.json" in err.value.message and err.value.hint
    with pytest.raises(TunesmithError) as err:
        LocalBackend(lively_model, adapter_path=tmp_path)
    assert "adapter_config.json" in err.value.message
    backend = LocalBackend(lively_model, device="cpu")
    assert isinstance(backend, Backend)
    assert backend._model is None  # noqa: SLF001 - the fingerprint needs no model
    assert backend.generate([], DecodeSettings()) == []


def test_auto_batch_size_follows_memory_and_caps() -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152)
    assert auto_batch_size(config, 300, 128, available_bytes=64 << 30) == 32
    assert auto_batch_size(config, 300, 128, available_bytes=64 << 30, device_type="cuda") == 64
    assert auto_batch_size(config, 300, 128, available_bytes=1) == 1
    small = auto_batch_size(config, 4000, 256, available_bytes=2 << 30)
    assert 1 <= small < auto_batch_size(config, 400, 256, available_bytes=2 << 30)


# --- EndpointBackend --------------------------------------------------------------------------------


def _user(body: dict) -> str:
    return body["messages"][-1]["content"]


def test_endpoint_answers_in_order_with_bounded_concurrency() -> None:
    active, peak, lock = [0], [0], threading.Lock()

    def handler(body: dict) -> Reply:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        n = int(_user(body))
        time.sleep(0.01 * ((n * 7) % 5))  # finish out of order
        with lock:
            active[0] -= 1
        return Reply(content=f"answer {n}")

    prompts = [[{"role": "user", "content": str(i)}] for i in range(20)]
    with FakeOpenAI(handler) as server:
        backend = EndpointBackend(server.base_url, "fake-model", concurrency=4)
        done: list[int] = []
        gens = backend.generate(prompts, DecodeSettings(max_new_tokens=7, stop=("\n\n",), seed=3), done.append)
    assert [g.text for g in gens] == [f"answer {i}" for i in range(20)]
    assert all(g.finish_reason == "stop" and g.error is None for g in gens)
    assert 1 < peak[0] <= 4
    assert done == list(range(1, 21))
    first = server.requests[0]
    assert first["model"] == "fake-model" and first["max_tokens"] == 7 and first["temperature"] == 0.0
    assert first["stop"] == ["\n\n"] and first["seed"] == 3 and first["top_p"] == 1.0


def test_endpoint_honours_retry_after_on_429() -> None:
    calls: dict[str, list[float]] = {}

    def handler(body: dict) -> Reply:
        user = _user(body)
        calls.setdefault(user, []).append(time.monotonic())
        if user == "b" and len(calls[user]) == 1:
            return Reply(status=429, headers={"Retry-After": "1"},
                         body={"error": {"message": "slow down", "type": "rate_limit_error"}})
        return Reply(content=f"ok {user}", finish_reason="length")

    with FakeOpenAI(handler) as server:
        backend = EndpointBackend(server.base_url, "m", concurrency=2, backoff=0.01)
        gens = backend.generate([[{"role": "user", "content": u}] for u in "abc"], DecodeSettings())
    assert [g.text for g in gens] == ["ok a", "ok b", "ok c"]
    assert [g.finish_reason for g in gens] == ["length"] * 3
    assert len(calls["b"]) == 2
    assert calls["b"][1] - calls["b"][0] >= 0.95  # waited the server's Retry-After, not the 0.01 s backoff


def test_endpoint_persistent_500_fails_only_that_item() -> None:
    def handler(body: dict) -> Reply:
        if _user(body) == "bad":
            return Reply(status=500, body={"error": {"message": "model crashed", "type": "server_error"}})
        return Reply(content="fine")

    prompts = [[{"role": "user", "content": u}] for u in ("x", "y", "bad", "z")]
    with FakeOpenAI(handler) as server:
        backend = EndpointBackend(server.base_url, "m", concurrency=3, max_retries=2, backoff=0.01)
        gens = backend.generate(prompts, DecodeSettings())
    assert [g.finish_reason for g in gens] == ["stop", "stop", "error", "stop"]
    assert gens[2].text == "" and "500" in gens[2].error and "model crashed" in gens[2].error
    assert sum(_user(r) == "bad" for r in server.requests) == 3  # 1 + 2 retries


def test_unreachable_endpoint_raises_with_hint() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    backend = EndpointBackend(url, "m", max_retries=1, backoff=0.01, timeout=5)
    with pytest.raises(EndpointError) as err:
        backend.generate([[{"role": "user", "content": "hi"}]] * 3, DecodeSettings())
    assert isinstance(err.value, TunesmithError)
    assert url in err.value.message
    assert url in err.value.hint and "--endpoint" in err.value.hint


def test_endpoint_refused_key_is_fatal_at_start() -> None:
    def handler(body: dict) -> Reply:
        return Reply(status=401, body={"error": {"message": "bad key", "type": "invalid_request_error"}})

    with FakeOpenAI(handler) as server:
        with pytest.raises(EndpointError) as err:
            EndpointBackend(server.base_url, "m", api_key="k").generate([[{"role": "user", "content": "q"}]] * 4,
                                                                       DecodeSettings())
    assert "401" in err.value.message and "--api-key-env" in err.value.hint
    assert len(server.requests) == 1


def test_endpoint_refused_key_on_a_later_prompt_stops_the_run() -> None:
    """The shared policy: a 401 is fatal wherever it comes (the key was revoked mid-run, say), not
    one error answer per remaining prompt; answers finished before it are still handed over."""
    def handler(body: dict) -> Reply:
        if int(_user(body)) >= 3:
            return Reply(status=401, body={"error": {"message": "key revoked", "type": "invalid_request_error"}})
        return Reply(content="fine")

    prompts = [[{"role": "user", "content": str(i)}] for i in range(40)]
    streamed: dict[int, Generation] = {}
    with FakeOpenAI(handler) as server:
        backend = EndpointBackend(server.base_url, "m", concurrency=2, backoff=0.01)
        with pytest.raises(EndpointError) as err:
            backend.generate(prompts, DecodeSettings(), on_result=lambda i, g: streamed.__setitem__(i, g))
    assert "401" in err.value.message and "--api-key-env" in err.value.hint
    assert len(server.requests) <= 3 + 2  # prompts 0-2, then at most one per worker: nothing after the 401
    assert {i: g.text for i, g in streamed.items()} == {0: "fine", 1: "fine", 2: "fine"}


def test_endpoint_fingerprint_names_url_and_model() -> None:
    a = EndpointBackend("http://h:1/v1/", "m1", api_key="x")
    assert a.fingerprint == EndpointBackend("http://h:1/v1", "m1", api_key="y").fingerprint
    assert a.fingerprint != EndpointBackend("http://h:1/v1", "m2").fingerprint
    assert a.fingerprint != EndpointBackend("http://h:2/v1", "m1").fingerprint


# --- cache ----------------------------------------------------------------------------------------------


def test_cached_backend_second_run_makes_no_calls(tmp_path: Path) -> None:
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    settings = DecodeSettings(max_new_tokens=16)
    with FakeOpenAI(lambda body: Reply(content="A:" + _user(body))) as server:
        cache = GenerationCache(tmp_path / "gen.sqlite")
        backend = CachedBackend(EndpointBackend(server.base_url, "m", concurrency=3), cache)
        first = backend.generate(prompts, settings)
        assert len(server.requests) == 6 and backend.misses == 6
        progress: list[int] = []
        second = CachedBackend(EndpointBackend(server.base_url, "m"), GenerationCache(tmp_path / "gen.sqlite")) \
            .generate(prompts, settings, progress.append)
        assert len(server.requests) == 6  # nothing sent
        assert [g.to_dict() for g in second] == [g.to_dict() for g in first]
        assert progress == [6]
        # other settings, another model or another prompt are misses
        backend.generate(prompts[:1], DecodeSettings(max_new_tokens=17))
        CachedBackend(EndpointBackend(server.base_url, "other"), cache).generate(prompts[:1], settings)
        backend.generate([[{"role": "user", "content": "new"}], *prompts], settings)
        assert len(server.requests) == 9
    assert len(cache) == 9


def test_cached_backend_keeps_finished_items_after_an_interruption(tmp_path: Path) -> None:
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(8)]
    settings = DecodeSettings()

    class Interrupted(Exception):
        pass

    def stop_after_three(done: int) -> None:
        if done == 3:
            raise Interrupted

    with FakeOpenAI(lambda body: Reply(content="A:" + _user(body))) as server:
        cache = GenerationCache(tmp_path / "gen.sqlite")
        backend = CachedBackend(EndpointBackend(server.base_url, "m", concurrency=1), cache)
        with pytest.raises(Interrupted):
            backend.generate(prompts, settings, stop_after_three)
        assert len(cache) == 3
        # The worker may have answered more prompts while the interrupt was being raised, and one
        # request may still be in flight; those answers were never handed back, so they are not
        # cached and must be asked again. Let the interrupted call's worker drain before counting.
        for thread in threading.enumerate():
            if thread.name.startswith("tunesmith-request"):
                thread.join(timeout=10)
        sent_before = len(server.requests)
        gens = backend.generate(prompts, settings)
        assert backend.hits == 3 and backend.misses == 5  # only the unfinished prompts are sent again
        resent = server.requests[sent_before:]
        assert sorted(_user(body) for body in resent) == [f"q{i}" for i in range(3, 8)]
        assert [g.text for g in gens] == [f"A:q{i}" for i in range(8)]


def test_errors_are_not_cached(tmp_path: Path) -> None:
    failing = {"on": True}

    def handler(body: dict) -> Reply:
        if failing["on"] and _user(body) == "q1":
            return Reply(status=503, body={"error": {"message": "busy", "type": "server_error"}})
        return Reply(content="ok")

    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    with FakeOpenAI(handler) as server:
        backend = CachedBackend(EndpointBackend(server.base_url, "m", max_retries=0),
                                GenerationCache(tmp_path / "gen.sqlite"))
        assert [g.finish_reason for g in backend.generate(prompts, DecodeSettings())] == ["stop", "error", "stop"]
        failing["on"] = False
        assert [g.finish_reason for g in backend.generate(prompts, DecodeSettings())] == ["stop"] * 3
        assert backend.misses == 1


def test_cached_local_backend_skips_loading_the_model(lively_model: Path, tmp_path: Path) -> None:
    prompts = chats(3)
    settings = DecodeSettings(max_new_tokens=6)
    cache = GenerationCache(tmp_path / "gen.sqlite")
    first = CachedBackend(LocalBackend(lively_model, device="cpu"), cache).generate(prompts, settings)
    fresh = LocalBackend(lively_model, device="cpu")
    again = CachedBackend(fresh, cache).generate(prompts, settings)
    assert [g.to_dict() for g in again] == [g.to_dict() for g in first]
    assert fresh._model is None  # noqa: SLF001
    key = cache_key(fresh.fingerprint, prompts[0], settings)
    assert json.loads(json.dumps(cache.get(key).to_dict())) == first[0].to_dict()


# --- vLLM ---------------------------------------------------------------------------------------------


def test_vllm_is_optional(lively_model: Path) -> None:
    assert vllm_available() is False
    with pytest.raises(TunesmithError) as err:
        VLLMBackend(lively_model)
    assert "vllm" in err.value.message.lower() and err.value.hint


def test_an_endpoint_that_never_answers_the_first_prompt_stops_the_run() -> None:
    with FakeOpenAI(lambda body: Reply(content="late", delay=2.0)) as server:
        backend = EndpointBackend(server.base_url, "m", max_retries=1, backoff=0.01, timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(EndpointError) as err:
            backend.generate([[{"role": "user", "content": str(i)}] for i in range(6)], DecodeSettings())
        assert time.monotonic() - t0 < 3
        assert len(server.requests) == 2  # the first prompt and its retry; the other five never sent
    assert "did not answer within 0.3 s" in err.value.message and server.base_url in err.value.hint
