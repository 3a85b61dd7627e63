"""The one OpenAI client layer (retry policy, request cache, bounded concurrency), driven through the
official openai client against a real local HTTP server."""

from __future__ import annotations

import email.utils
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.fake_openai import FakeOpenAI, Reply
from tunesmith.errors import TunesmithError
from tunesmith.inference.concurrent import run_concurrently
from tunesmith.inference.openai_client import (
    ChatClient,
    api_key_from,
    ChatReply,
    EndpointRefused,
    RequestCache,
    RequestFailed,
    RetryPolicy,
    endpoint_host,
    retry_after_seconds,
)

HI = [{"role": "user", "content": "hi"}]
Serve = Callable[[Callable[[dict[str, Any]], Reply]], FakeOpenAI]


@pytest.fixture(scope="module")
def _server() -> Iterator[FakeOpenAI]:
    # one server for the module: each FakeOpenAI takes half a second to shut down (its poll interval)
    with FakeOpenAI(lambda body: Reply(status=500)) as server:
        yield server


@pytest.fixture
def serve(_server: FakeOpenAI) -> Serve:
    """serve(handler) -> the shared server, answering with `handler` and with no requests recorded yet."""
    def use(handler: Callable[[dict[str, Any]], Reply]) -> FakeOpenAI:
        _server.handler = handler
        _server.requests.clear()
        return _server

    return use


def client_for(server: FakeOpenAI | str, *, max_retries: int = 3, max_retry_after: float = 5.0,
               timeout: float = 10.0, cache: RequestCache | None = None) -> ChatClient:
    """Backoff of 1 ms: any wait a test measures comes from the server's Retry-After, not from backoff."""
    url = server if isinstance(server, str) else server.base_url
    policy = RetryPolicy(max_retries=max_retries, backoff=0.001, max_backoff=0.01, max_retry_after=max_retry_after)
    return ChatClient(url, "test-model", api_key="test-key", timeout=timeout, policy=policy, cache=cache)


class Script:
    """A handler answering from a list of replies in order (the last one repeats), thread-safe."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.times: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.times.append(time.monotonic())
            return self.replies[min(len(self.times), len(self.replies)) - 1]


def error(status: int, message: str = "nope", **headers: str) -> Reply:
    return Reply(status=status, headers=dict(headers), body={"error": {"message": message, "type": "error"}})


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there now: connection refused


def user(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"]


# --- a plain request ---------------------------------------------------------------------------------


def test_a_reply_carries_content_finish_reason_model_and_usage(serve: Serve) -> None:
    server = serve(lambda body: Reply(content="hello there", finish_reason="length", model="test-model-2024",
                                      usage={"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}))
    with client_for(server) as client:
        reply = client.create(HI, temperature=0, stop_sequences=["\n\n"])
    assert (reply.content, reply.finish_reason, reply.model) == ("hello there", "length", "test-model-2024")
    assert (reply.prompt_tokens, reply.completion_tokens, reply.cached) == (7, 2, False)
    sent = server.requests[0]
    assert sent["model"] == "test-model" and sent["messages"] == HI
    assert sent["temperature"] == 0 and sent["stop"] == ["\n\n"]  # stop sequences reach the API as `stop`
    assert client.requests_sent == 1


# --- Retry-After ---------------------------------------------------------------------------------------


def test_429_waits_the_retry_after_seconds_not_the_backoff(serve: Serve) -> None:
    script = Script(error(429, "slow down", **{"Retry-After": "0.5"}), Reply(content="ok"))
    server = serve(script)
    reply = client_for(server).create(HI)
    assert reply.content == "ok"
    assert len(server.requests) == 2
    assert script.times[1] - script.times[0] >= 0.45


def test_retry_after_ms_comes_before_retry_after(serve: Serve) -> None:
    script = Script(error(429, **{"Retry-After-Ms": "400", "Retry-After": "0"}), Reply(content="ok"))
    server = serve(script)
    assert client_for(server).create(HI).content == "ok"
    assert script.times[1] - script.times[0] >= 0.35


def test_retry_after_as_an_http_date(serve: Serve) -> None:
    # HTTP dates have whole seconds: two seconds ahead is a wait of between one and two seconds
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    script = Script(error(503, "busy", **{"Retry-After": when}), Reply(content="ok"))
    server = serve(script)
    assert client_for(server).create(HI).content == "ok"
    assert 0.9 <= script.times[1] - script.times[0] < 4


def test_retry_after_parsing() -> None:
    assert retry_after_seconds(None) is None
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "7"}) == 7.0
    assert retry_after_seconds({"retry-after": "-3"}) == 0.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after-ms": "soon", "retry-after": "9"}) == 9.0
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after_seconds({"retry-after": "whenever"}) is None
    assert retry_after_seconds({"retry-after": "nan"}) is None


def test_a_retry_after_longer_than_allowed_fails_at_once_with_the_reason(serve: Serve) -> None:
    server = serve(lambda body: error(429, "daily quota spent", **{"Retry-After": "600"}))
    t0 = time.monotonic()
    with pytest.raises(RequestFailed) as err:
        client_for(server, max_retry_after=5).create(HI)
    assert time.monotonic() - t0 < 2
    assert len(server.requests) == 1
    assert err.value.status == 429 and err.value.server_message == "daily quota spent"
    assert "600" in err.value.reason and "5" in err.value.reason and "daily quota spent" in err.value.reason
    assert not err.value.unreachable


# --- which failures are retried ----------------------------------------------------------------------


def test_a_500_is_retried_then_succeeds(serve: Serve) -> None:
    server = serve(Script(error(500, "crashed"), error(502), Reply(content="ok")))
    assert client_for(server).create(HI).content == "ok"
    assert len(server.requests) == 3


def test_a_persistent_500_fails_after_every_attempt(serve: Serve) -> None:
    server = serve(lambda body: error(500, "model crashed"))
    with pytest.raises(RequestFailed) as err:
        client_for(server, max_retries=2).create(HI)
    assert len(server.requests) == 3
    assert err.value.status == 500
    assert "500" in err.value.reason and "model crashed" in err.value.reason and "3 attempts" in err.value.reason


@pytest.mark.parametrize("status", [408, 409, 425, 429, 503])
def test_retryable_statuses(status: int, serve: Serve) -> None:
    server = serve(Script(error(status), Reply(content="ok")))
    assert client_for(server).create(HI).content == "ok"
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [400, 422])
def test_another_4xx_is_not_retried(status: int, serve: Serve) -> None:
    server = serve(lambda body: error(status, "max_tokens is too large"))
    with pytest.raises(RequestFailed) as err:
        client_for(server).create(HI)
    assert len(server.requests) == 1
    assert err.value.status == status and err.value.server_message == "max_tokens is too large"
    assert str(status) in err.value.reason


@pytest.mark.parametrize("status,words", [(401, "API key"), (403, "access"), (404, "model")])
def test_401_403_404_are_refused_at_once(status: int, words: str, serve: Serve) -> None:
    server = serve(lambda body: error(status, "go away"))
    with pytest.raises(EndpointRefused) as err:
        client_for(server).create(HI)
    assert len(server.requests) == 1
    assert isinstance(err.value, TunesmithError) and err.value.hint
    assert err.value.status == status and err.value.server_message == "go away"
    assert server.base_url in err.value.message and "test-model" in err.value.message
    assert words in err.value.message and str(status) in err.value.message


@pytest.mark.parametrize("reply", [Reply(raw=b"<html>Bad gateway</html>"), Reply(content="x", no_choices=True)],
                         ids=["not-json", "no-choices"])
def test_an_unreadable_reply_is_retried_then_fails(reply: Reply, serve: Serve) -> None:
    server = serve(lambda body: reply)
    with pytest.raises(RequestFailed) as err:
        client_for(server, max_retries=2).create(HI)
    assert len(server.requests) == 3
    assert "unreadable" in err.value.reason and err.value.status is None and not err.value.unreachable


def test_an_unreadable_reply_then_a_good_one(serve: Serve) -> None:
    server = serve(Script(Reply(raw=b"not json at all"), Reply(content="ok")))
    assert client_for(server).create(HI).content == "ok"
    assert len(server.requests) == 2


def test_a_server_hanging_up_is_retried_and_is_not_unreachable(serve: Serve) -> None:
    server = serve(lambda body: Reply(hangup=True))
    with pytest.raises(RequestFailed) as err:
        client_for(server, max_retries=1).create(HI)
    assert len(server.requests) == 2
    assert not err.value.unreachable
    assert "broke" in err.value.reason and server.base_url in err.value.reason


def test_connection_refused_is_unreachable() -> None:
    url = dead_url()
    with pytest.raises(RequestFailed) as err:
        client_for(url, max_retries=1).create(HI)
    assert err.value.unreachable
    assert url in err.value.reason and "2 attempts" in err.value.reason


def test_a_slow_server_times_out() -> None:
    # a server of its own: its shutdown waits for the late answer, which must not leak into other tests
    with FakeOpenAI(lambda body: Reply(content="late", delay=1.0)) as server:
        t0 = time.monotonic()
        with pytest.raises(RequestFailed) as err:
            client_for(server, max_retries=0, timeout=0.2).create(HI)
        assert time.monotonic() - t0 < 0.9
    assert "did not answer within 0.2 s" in err.value.reason
    # nothing came back at all: like a refused connection, the first request of a run stops it there
    assert err.value.unreachable and len(server.requests) == 1


def test_a_server_that_answers_something_is_not_unreachable(serve: Serve) -> None:
    server = serve(lambda body: error(503, "busy"))
    with pytest.raises(RequestFailed) as err:
        client_for(server, max_retries=1).create(HI)
    assert not err.value.unreachable and err.value.status == 503


def test_a_429_out_of_quota_is_fatal_not_retried(serve: Serve) -> None:
    server = serve(lambda body: Reply(status=429, body={"error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota", "code": "insufficient_quota"}}))
    with pytest.raises(EndpointRefused) as err:
        client_for(server, max_retries=3).create(HI)
    assert len(server.requests) == 1
    assert "no quota left" in err.value.message and "billing" in err.value.hint


def test_a_custom_key_variable_never_falls_back_to_the_openai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.delenv("OTHER_KEY", raising=False)
    assert api_key_from("OTHER_KEY") == "none"
    assert api_key_from("OPENAI_API_KEY") == "sk-openai"
    monkeypatch.setenv("OTHER_KEY", "k-other")
    assert api_key_from("OTHER_KEY") == "k-other"


def test_stop_ends_the_wait_between_attempts(serve: Serve) -> None:
    stop = threading.Event()
    server = serve(lambda body: error(503, "busy", **{"Retry-After": "3"}))
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(RequestFailed) as err:
        client_for(server).create(HI, stop=stop)
    assert time.monotonic() - t0 < 2
    assert err.value.reason == "cancelled" and len(server.requests) == 1


def test_policy_rejects_negative_retries() -> None:
    with pytest.raises(TunesmithError):
        RetryPolicy(max_retries=-1)


def test_endpoint_host_drops_path_and_credentials() -> None:
    assert endpoint_host("https://user:secret@api.example.com:8443/v1") == "api.example.com:8443"
    assert endpoint_host("http://127.0.0.1:8000/v1") == "127.0.0.1:8000"


# --- the request cache -------------------------------------------------------------------------------


def test_the_cache_answers_an_identical_request_without_sending_it(tmp_path: Path, serve: Serve) -> None:
    path = tmp_path / "sub" / "requests.sqlite"
    server = serve(lambda body: Reply(content=f"answer to {user(body)}"))
    cache = RequestCache(path)
    client = client_for(server, cache=cache)
    first = client.create(HI, temperature=0.5)
    again = client.create(HI, temperature=0.5)
    assert len(server.requests) == 1 and client.requests_sent == 1
    assert first.cached is False and again.cached is True
    assert again == first  # `cached` is not compared; everything else is the stored reply
    # another parameter, other messages or another model: other keys, sent again
    client.create(HI, temperature=0.7)
    client.create([{"role": "user", "content": "bye"}], temperature=0.5)
    assert len(server.requests) == 3
    other = ChatClient(server.base_url, "other-model", api_key="k", policy=RetryPolicy(backoff=0.001), cache=cache)
    other.create(HI, temperature=0.5)
    assert len(server.requests) == 4
    assert client.request_key(HI, {"temperature": 0.5}) != client.request_key(HI, {"temperature": 0.7})
    assert client.request_key(HI, {"temperature": 0.5}) != other.request_key(HI, {"temperature": 0.5})
    cache.close()
    # the file outlives the process: a new cache on it still answers
    reopened = client_for(server, cache=RequestCache(path))
    assert reopened.create(HI, temperature=0.5).cached is True
    assert len(server.requests) == 4


def test_failures_are_not_cached(tmp_path: Path, serve: Serve) -> None:
    server = serve(Script(error(400, "bad"), Reply(content="ok")))
    client = client_for(server, cache=RequestCache(tmp_path / "c.sqlite"))
    with pytest.raises(RequestFailed):
        client.create(HI)
    assert client.create(HI).content == "ok"
    assert len(server.requests) == 2


def test_chat_reply_round_trips_through_json() -> None:
    reply = ChatReply("c", "stop", "m", 3, 4, "2025-01-01T00:00:00Z")
    back = ChatReply.from_json(reply.to_json())
    assert back == reply and back.cached is True


# --- many requests -----------------------------------------------------------------------------------


def test_run_concurrently_bounds_the_requests_in_flight_and_reports_every_result(serve: Serve) -> None:
    items = [str(i) for i in range(12)]
    results: dict[int, str | None] = {}
    server = serve(lambda body: Reply(content=f"answer {user(body)}", delay=0.05))
    server.peak_in_flight = 0
    client = client_for(server)
    run_concurrently(items, lambda item, stop: client.create([{"role": "user", "content": item}], stop=stop).content,
                     concurrency=3, on_done=results.__setitem__)
    assert results == {i: f"answer {i}" for i in range(12)}
    assert 1 < server.peak_in_flight <= 3
    assert len(server.requests) == 12


def test_a_fatal_error_stops_the_rest_and_is_raised(serve: Serve) -> None:
    def handler(body: dict[str, Any]) -> Reply:
        if user(body) == "5":
            return error(401, "key revoked")
        time.sleep(0.02)
        return Reply(content="ok")

    items = [str(i) for i in range(60)]
    done: dict[int, str | None] = {}
    server = serve(handler)
    client = client_for(server)
    with pytest.raises(EndpointRefused) as err:
        run_concurrently(items, lambda item, stop: client.create([{"role": "user", "content": item}], stop=stop).content,
                         concurrency=3, on_done=done.__setitem__)
    assert err.value.status == 401
    assert len(server.requests) <= 6 + 3  # items 0-5, then at most one more per worker
    assert 5 not in done
    assert set(range(5)) <= set(done) and all(v == "ok" for v in done.values())  # finished work still reported


def test_a_worker_that_failed_starts_nothing_more(serve: Serve) -> None:
    """With one worker, nothing may be sent after the fatal answer: the worker must not pick up the
    next item in the moment before the calling thread wakes up to cancel it."""
    server = serve(Script(error(403, "forbidden"), Reply(content="ok")))
    client = client_for(server)
    for _ in range(20):  # a race lost once in a while would show here
        before = len(server.requests)
        with pytest.raises(EndpointRefused):
            run_concurrently([str(i) for i in range(5)],
                             lambda item, stop: client.create([{"role": "user", "content": item}], stop=stop),
                             concurrency=1, on_done=lambda i, r: None)
        assert len(server.requests) == before + 1
        server.handler = Script(error(403, "forbidden"), Reply(content="ok"))


def test_a_fatal_error_cancels_waiting_retries_and_wins_over_them(serve: Serve) -> None:
    def handler(body: dict[str, Any]) -> Reply:
        if user(body) == "busy":
            return error(503, "busy", **{"Retry-After": "3"})
        time.sleep(0.1)  # the busy request is waiting out its Retry-After by now
        return error(404, "no such model")

    server = serve(handler)
    client = client_for(server)
    t0 = time.monotonic()
    with pytest.raises(EndpointRefused) as err:
        run_concurrently(["busy", "gone"],
                         lambda item, stop: client.create([{"role": "user", "content": item}], stop=stop),
                         concurrency=2, on_done=lambda i, r: None)
    elapsed = time.monotonic() - t0
    assert err.value.status == 404  # not the waiting request's "cancelled"
    assert elapsed < 2  # the 3 s Retry-After was not waited out
    assert len(server.requests) == 2


def test_run_concurrently_with_nothing_to_do() -> None:
    calls: list[int] = []
    run_concurrently([], lambda item, stop: calls.append(1), concurrency=4, on_done=lambda i, r: calls.append(2))
    assert calls == []
