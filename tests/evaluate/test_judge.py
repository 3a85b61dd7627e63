"""The LLM judge, driven through the official openai client against a real local HTTP server."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fixtures.fake_openai import FakeOpenAI, Reply
from tunesmith.errors import TunesmithError
from tunesmith.inference.openai_client import ChatClient, RequestCache
from tunesmith.judge.config import SELF_JUDGING_HINT, JudgeConfig, check_not_self
from tunesmith.judge.parsing import JudgeParseError, parse_pairwise_reply, parse_rubric_reply
from tunesmith.judge.results import JudgeError, JudgeFailure, PairInput, RubricInput
from tunesmith.judge.runner import judge_pairwise, judge_rubric
from tunesmith.judge.prompts import rubric_messages

GOOD = {"correctness": 5, "format": 4, "completeness": 3, "notes": "fine"}
MARK = "<<GOOD>>"


def cfg_for(server: FakeOpenAI | str, **kw: Any) -> JudgeConfig:
    base_url = server if isinstance(server, str) else server.base_url
    kw.setdefault("backoff_base", 0.001)
    kw.setdefault("max_backoff", 0.01)
    kw.setdefault("timeout", 10.0)
    return JudgeConfig(base_url=base_url, model="judge-model", api_key="test-key", **kw)


def user_text(req: dict[str, Any]) -> str:
    """The first user message (the one carrying the item); follow-ups come later."""
    return next(m["content"] for m in req["messages"] if m["role"] == "user")


def rubric_items(n: int = 3) -> list[RubricInput]:
    return [RubricInput(id=f"item-{i}", prompt=f"prompt {i}", reference=f"reference {i}", output=f"output {i}")
            for i in range(n)]


# --- rubric ---------------------------------------------------------------------------------------


def test_rubric_happy_path_sends_a_strict_json_request() -> None:
    with FakeOpenAI(lambda req: Reply(content=json.dumps(GOOD))) as server:
        res = judge_rubric(rubric_items(3), cfg_for(server))
    assert [s.id for s in res.scores] == ["item-0", "item-1", "item-2"]
    assert res.failures == []
    s = res.scores[0]
    assert (s.correctness, s.format, s.completeness, s.notes) == (5, 4, 3, "fine")
    assert s.overall == pytest.approx(4.0)
    assert len(server.requests) == 3
    for req in server.requests:
        assert req["model"] == "judge-model"
        assert req["temperature"] == 0
        assert req["response_format"] == {"type": "json_object"}
    texts = sorted(user_text(r) for r in server.requests)
    assert "prompt 0" in texts[0] and "reference 0" in texts[0] and "output 0" in texts[0]


def test_rubric_without_reference_says_so() -> None:
    with FakeOpenAI(lambda req: Reply(content=json.dumps(GOOD))) as server:
        res = judge_rubric([RubricInput("x", "p", None, "o")], cfg_for(server))
    assert len(res.scores) == 1
    assert "none available" in user_text(server.requests[0])


def test_prose_then_json_is_retried_with_a_correction() -> None:
    calls = {"n": 0}
    lock = threading.Lock()

    def handler(req: dict[str, Any]) -> Reply:
        with lock:
            calls["n"] += 1
            first = calls["n"] == 1
        return Reply(content="I think this answer is pretty good, maybe a 4." if first else json.dumps(GOOD))

    with FakeOpenAI(handler) as server:
        res = judge_rubric(rubric_items(1), cfg_for(server))
    assert len(server.requests) == 2
    assert [s.id for s in res.scores] == ["item-0"] and res.failures == []
    retry = server.requests[1]["messages"]
    assert retry[-2] == {"role": "assistant", "content": "I think this answer is pretty good, maybe a 4."}
    assert retry[-1]["role"] == "user" and "not a JSON object" in retry[-1]["content"]


def test_always_prose_is_a_failure_beside_the_scores_not_a_zero() -> None:
    def handler(req: dict[str, Any]) -> Reply:
        if "prompt 1" in user_text(req):
            return Reply(content="Honestly? Great answer. 10/10.")
        return Reply(content=json.dumps(GOOD))

    with FakeOpenAI(handler) as server:
        res = judge_rubric(rubric_items(3), cfg_for(server, max_retries=3))
    assert [s.id for s in res.scores] == ["item-0", "item-2"]
    assert len(res.failures) == 1
    failure = res.failures[0]
    assert isinstance(failure, JudgeFailure) and failure.item_id == "item-1"
    assert "4 attempt" in failure.reason and "not a JSON object" in failure.reason
    assert all(s.overall > 0 for s in res.scores)
    bad_requests = [r for r in server.requests if "prompt 1" in user_text(r)]
    assert len(bad_requests) == 4  # 1 + max_retries
    assert len(server.requests) == 6


def test_out_of_range_scores_are_retried_then_fail() -> None:
    bad = dict(GOOD, correctness=7)
    with FakeOpenAI(lambda req: Reply(content=json.dumps(bad))) as server:
        res = judge_rubric(rubric_items(1), cfg_for(server, max_retries=1))
    assert res.scores == [] and [f.item_id for f in res.failures] == ["item-0"]
    assert "from 1 to 5" in res.failures[0].reason
    assert len(server.requests) == 2


def test_429_with_retry_after_is_honoured_then_succeeds() -> None:
    calls = {"n": 0}

    def handler(req: dict[str, Any]) -> Reply:
        calls["n"] += 1
        if calls["n"] == 1:
            return Reply(status=429, headers={"Retry-After": "0.3"},
                         body={"error": {"message": "slow down", "type": "rate_limit_error"}})
        return Reply(content=json.dumps(GOOD))

    with FakeOpenAI(handler) as server:
        t0 = time.monotonic()
        res = judge_rubric(rubric_items(1), cfg_for(server))
        elapsed = time.monotonic() - t0
    assert len(server.requests) == 2
    assert [s.id for s in res.scores] == ["item-0"] and res.failures == []
    assert elapsed >= 0.3  # backoff_base is 1 ms: only Retry-After explains the wait


def test_server_errors_exhaust_retries_into_a_failure() -> None:
    with FakeOpenAI(lambda req: Reply(status=500)) as server:
        res = judge_rubric(rubric_items(1), cfg_for(server, max_retries=2))
    assert res.scores == [] and len(res.failures) == 1
    assert "500" in res.failures[0].reason
    assert len(server.requests) == 3


def test_bad_api_key_stops_the_run() -> None:
    with FakeOpenAI(lambda req: Reply(status=401, body={"error": {"message": "bad key", "type": "auth"}})) as server:
        with pytest.raises(JudgeError) as ei:
            judge_rubric(rubric_items(3), cfg_for(server))
    assert len(server.requests) == 1
    assert "OPENAI_API_KEY" in ei.value.hint


def test_concurrency_is_bounded() -> None:
    with FakeOpenAI(lambda req: Reply(content=json.dumps(GOOD), delay=0.05)) as server:
        res = judge_rubric(rubric_items(9), cfg_for(server, concurrency=2))
    assert len(res.scores) == 9
    assert server.peak_in_flight == 2  # both slots used, never a third


# --- pairwise -------------------------------------------------------------------------------------


def pair_items(n: int, *, marker_in: str = "b") -> list[PairInput]:
    out = []
    for i in range(n):
        a, b = f"base answer {i}", f"tuned answer {i}"
        if marker_in == "b":
            b += f" {MARK}"
        elif marker_in == "a":
            a += f" {MARK}"
        out.append(PairInput(id=f"p{i}", prompt=f"question {i}", reference=None, a=a, b=b))
    return out


def fair_handler(items: list[PairInput]) -> Any:
    """Prefers whichever response contains MARK, wherever it is shown; a tie when neither/both do."""
    by_prompt = {it.prompt: it for it in items}

    def handler(req: dict[str, Any]) -> Reply:
        text = user_text(req)
        it = next(v for k, v in by_prompt.items() if k in text)
        a_pos, b_pos = text.index(it.a), text.index(it.b)
        first, second = (it.a, it.b) if a_pos < b_pos else (it.b, it.a)
        if (MARK in first) == (MARK in second):
            winner = "tie"
        else:
            winner = "first" if MARK in first else "second"
        return Reply(content=json.dumps({"winner": winner, "reason": "has the marker"}))

    return handler


def test_position_biased_judge_makes_every_item_an_inconsistent_tie() -> None:
    items = pair_items(4)
    with FakeOpenAI(lambda req: Reply(content='{"winner": "first", "reason": "the first one"}')) as server:
        res = judge_pairwise(items, cfg_for(server))
    assert len(server.requests) == 8  # both orders for each item
    assert (res.wins_a, res.wins_b, res.ties) == (0, 0, 4)
    assert res.position_consistency_rate == 0.0
    for v in res.items:
        assert v.verdict == "tie" and not v.consistent
        assert (v.a_first, v.b_first) == ("a", "b")
    assert res.failures == []


def test_fair_judge_prefers_the_marked_tuned_answer_in_both_orders() -> None:
    items = pair_items(5, marker_in="b")
    with FakeOpenAI(fair_handler(items)) as server:
        res = judge_pairwise(items, cfg_for(server))
    assert (res.wins_a, res.wins_b, res.ties) == (0, 5, 0)
    assert res.position_consistency_rate == 1.0
    assert all(v.verdict == "b" and v.consistent for v in res.items)
    # each item really was shown both ways round
    for it in items:
        shown = [user_text(r) for r in server.requests if it.prompt in user_text(r)]
        assert len(shown) == 2
        assert sorted(t.index(it.a) < t.index(it.b) for t in shown) == [False, True]


def test_pairwise_mix_counts_correctly() -> None:
    items = (pair_items(3, marker_in="b")  # p0..p2: b wins
             + [PairInput("a0", "qa0", "ref", "base GOOD <<GOOD>>", "tuned plain"),  # a wins
                PairInput("t0", "qt0", None, "same one", "same two"),  # fair tie (consistent)
                PairInput("x0", "qx0", None, "biased base", "biased tuned"),  # position-biased -> tie
                PairInput("x1", "qx1", None, "biased base 1", "biased tuned 1"),
                PairInput("f0", "qf0", None, "fail base", "fail tuned")])  # second order unparseable
    fair = fair_handler([it for it in items if not it.id.startswith(("x", "f"))])

    def handler(req: dict[str, Any]) -> Reply:
        text = user_text(req)
        if "qx" in text:
            return Reply(content='{"winner": "second", "reason": "later is better"}')
        if "qf0" in text:
            if text.index("fail tuned") < text.index("fail base"):
                return Reply(content="Response B, obviously.")
            return Reply(content='{"winner": "tie", "reason": "x"}')
        return fair(req)

    with FakeOpenAI(handler) as server:
        res = judge_pairwise(items, cfg_for(server, max_retries=1))
    by_id = {v.id: v for v in res.items}
    assert set(by_id) == {"p0", "p1", "p2", "a0", "t0", "x0", "x1"}
    assert (res.wins_a, res.wins_b, res.ties) == (1, 3, 3)
    assert by_id["t0"].verdict == "tie" and by_id["t0"].consistent
    assert by_id["x0"].verdict == "tie" and not by_id["x0"].consistent
    assert res.judged == 7 and res.consistent == 5
    assert res.position_consistency_rate == pytest.approx(5 / 7)
    assert [f.item_id for f in res.failures] == ["f0"]
    assert "b shown first" in res.failures[0].reason
    assert res.to_dict()["wins_b"] == 3
    assert len(server.requests) == 2 * 8 + 1  # one retry for f0's bad order


# --- self-judging ---------------------------------------------------------------------------------


@pytest.mark.parametrize("judge,subject", [
    ("gpt-4o-mini", "GPT-4o-mini"),
    ("gpt-4o-mini-2024-07-18", "ft:gpt-4o-mini-2024-07-18:acme::abc123"),
    ("gpt-4o-mini", "ft:gpt-4o-mini-2024-07-18:acme:custom:abc123"),
    ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "ft:gpt-4o-mini-2024-07-18:acme::abc123"),
    ("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
])
def test_self_judging_is_refused(judge: str, subject: str) -> None:
    cfg = JudgeConfig(base_url="http://127.0.0.1:9/v1", model=judge)
    with pytest.raises(JudgeError) as ei:
        check_not_self(judge, cfg.base_url, ["some/other-model", subject], cfg)
    assert isinstance(ei.value, TunesmithError)
    assert ei.value.hint == SELF_JUDGING_HINT
    assert judge in ei.value.message


@pytest.mark.parametrize("judge,subject", [
    ("gpt-4o", "ft:gpt-4o-mini-2024-07-18:acme::abc123"),
    ("gpt-4.1", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ("qwen2.5-72b-instruct", "qwen2.5-0.5b-instruct"),
])
def test_a_different_judge_is_accepted(judge: str, subject: str) -> None:
    cfg = JudgeConfig(base_url="http://127.0.0.1:9/v1", model=judge)
    check_not_self(judge, cfg.base_url, [subject], cfg)


def test_self_judging_allowed_with_the_flag() -> None:
    cfg = JudgeConfig(base_url="http://127.0.0.1:9/v1", model="gpt-4o-mini", allow_self_judging=True)
    check_not_self("gpt-4o-mini", cfg.base_url, ["ft:gpt-4o-mini-2024-07-18:acme::x"], cfg)


def test_judge_rubric_checks_subject_models_before_any_request() -> None:
    with FakeOpenAI(lambda req: Reply(content=json.dumps(GOOD))) as server:
        cfg = cfg_for(server)
        with pytest.raises(JudgeError):
            judge_rubric(rubric_items(1), cfg, subject_models=["JUDGE-MODEL"])
        assert server.requests == []
        cfg.allow_self_judging = True
        assert len(judge_rubric(rubric_items(1), cfg, subject_models=["JUDGE-MODEL"]).scores) == 1


# --- unreachable endpoint, cache ------------------------------------------------------------------


def dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}/v1"


def test_unreachable_endpoint_raises_with_the_url_in_the_hint() -> None:
    url = dead_url()
    with pytest.raises(JudgeError) as ei:
        judge_rubric(rubric_items(3), cfg_for(url, max_retries=1))
    assert url in ei.value.hint
    assert url in ei.value.message
    assert ei.value.partial is not None and ei.value.partial.scores == []


def test_unreachable_endpoint_keeps_the_results_already_had(tmp_path: Path) -> None:
    cache = tmp_path / "judge.sqlite"
    items = rubric_items(3)
    with FakeOpenAI(lambda req: Reply(content=json.dumps(GOOD))) as server:
        judge_rubric(items[:2], cfg_for(server, cache_path=cache))
    # the same URL, now that nothing listens there (the cache key holds the endpoint, as the shared one does)
    with pytest.raises(JudgeError) as ei:
        judge_rubric(items, cfg_for(server.base_url, cache_path=cache, max_retries=0))
    partial = ei.value.partial
    assert partial is not None
    assert [s.id for s in partial.scores] == ["item-0", "item-1"]


def test_cache_second_run_makes_no_requests(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "judge.sqlite"
    items = rubric_items(3)
    pairs = pair_items(2)
    with FakeOpenAI(fair_handler(pairs)) as pair_server, \
            FakeOpenAI(lambda req: Reply(content=json.dumps(GOOD))) as server:
        first = judge_rubric(items, cfg_for(server, cache_path=cache))
        first_pw = judge_pairwise(pairs, cfg_for(pair_server, cache_path=cache))
        assert len(server.requests) == 3 and len(pair_server.requests) == 4
        second = judge_rubric(items, cfg_for(server, cache_path=cache))
        second_pw = judge_pairwise(pairs, cfg_for(pair_server, cache_path=cache))
        assert len(server.requests) == 3 and len(pair_server.requests) == 4
    assert second.scores == first.scores and second.cache_hits == 3
    assert second_pw.items == first_pw.items and second_pw.cache_hits == 4
    # a different judge model is a different key
    with FakeOpenAI(lambda req: Reply(content=json.dumps(GOOD))) as other:
        cfg = cfg_for(other, cache_path=cache)
        cfg.model = "another-judge"
        judge_rubric(items, cfg)
        assert len(other.requests) == 3


def test_a_failed_judgement_is_asked_again_not_replayed(tmp_path: Path) -> None:
    cache = tmp_path / "judge.sqlite"
    with FakeOpenAI(lambda req: Reply(content="no json here")) as server:
        res = judge_rubric(rubric_items(1), cfg_for(server, cache_path=cache, max_retries=0))
        assert len(res.failures) == 1
        again = judge_rubric(rubric_items(1), cfg_for(server, cache_path=cache, max_retries=0))
        assert len(server.requests) == 2  # the cached unusable reply was not taken for an answer
    assert again.cache_hits == 0 and len(again.failures) == 1


def test_a_rerun_replays_a_judgement_that_needed_a_follow_up(tmp_path: Path) -> None:
    cache = tmp_path / "judge.sqlite"
    calls = {"n": 0}

    def handler(req: dict[str, Any]) -> Reply:
        calls["n"] += 1
        return Reply(content="Looks fine to me." if calls["n"] == 1 else json.dumps(GOOD))

    with FakeOpenAI(handler) as server:
        first = judge_rubric(rubric_items(1), cfg_for(server, cache_path=cache))
        second = judge_rubric(rubric_items(1), cfg_for(server, cache_path=cache))
        assert len(server.requests) == 2  # the prose reply and its follow-up, once
    assert second.scores == first.scores and second.cache_hits == 1


def test_judge_replies_live_in_the_shared_request_cache(tmp_path: Path) -> None:
    """One cache: any client of the shared layer at the same endpoint and model reads the judge's replies."""
    cache = tmp_path / "judge.sqlite"
    item = rubric_items(1)[0]
    with FakeOpenAI(lambda req: Reply(content=json.dumps(GOOD))) as server:
        judge_rubric([item], cfg_for(server, cache_path=cache))
        with ChatClient(server.base_url, "judge-model", api_key="test-key", cache=RequestCache(cache)) as client:
            reply = client.create(rubric_messages(item), temperature=0, response_format={"type": "json_object"})
        assert len(server.requests) == 1
    assert reply.cached and json.loads(reply.content or "") == GOOD


def test_a_5xx_is_retried_by_the_shared_client_then_judged() -> None:
    calls = {"n": 0}

    def handler(req: dict[str, Any]) -> Reply:
        calls["n"] += 1
        if calls["n"] == 1:
            return Reply(status=503, body={"error": {"message": "overloaded", "type": "server_error"}})
        return Reply(content=json.dumps(GOOD))

    with FakeOpenAI(handler) as server:
        res = judge_rubric(rubric_items(1), cfg_for(server, max_retries=1))
    assert [s.id for s in res.scores] == ["item-0"] and res.failures == []
    assert len(server.requests) == 2


# --- strict parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize("text,why", [
    ("The answer is good.", "not a JSON object"),
    ("", "empty"),
    (None, "empty"),
    ("[1, 2, 3]", "not an object"),
    ('{"correctness": 5, "format": 4, "notes": "x"}', "completeness"),
    ('{"correctness": 5.0, "format": 4, "completeness": 3, "notes": "x"}', "integer"),
    ('{"correctness": "5", "format": 4, "completeness": 3, "notes": "x"}', "integer"),
    ('{"correctness": true, "format": 4, "completeness": 3, "notes": "x"}', "integer"),
    ('{"correctness": 0, "format": 4, "completeness": 3, "notes": "x"}', "from 1 to 5"),
    ('{"correctness": 5, "format": 4, "completeness": 3, "notes": 7}', "notes"),
    ('{"correctness": NaN, "format": 4, "completeness": 3, "notes": "x"}', "NaN"),
    ('Sure! {"correctness": 5, "format": 4, "completeness": 3, "notes": "x"}', "not a JSON object"),
])
def test_rubric_parse_is_strict(text: str | None, why: str) -> None:
    with pytest.raises(JudgeParseError, match=why):
        parse_rubric_reply(text)


def test_rubric_parse_accepts_a_fenced_object() -> None:
    assert parse_rubric_reply("```json\n" + json.dumps(GOOD) + "\n```") == GOOD


@pytest.mark.parametrize("text", ['{"winner": "A", "reason": "x"}', '{"winner": "first"}',
                                  '{"winner": "first", "reason": null}', "first"])
def test_pairwise_parse_is_strict(text: str) -> None:
    with pytest.raises(JudgeParseError):
        parse_pairwise_reply(text)


def test_pairwise_parse_normalises_case() -> None:
    assert parse_pairwise_reply('{"winner": " Second ", "reason": "r"}') == {"winner": "second", "reason": "r"}


def test_config_api_key_falls_back_to_env_then_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert JudgeConfig(base_url="u", model="m").resolved_api_key() == "none"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert JudgeConfig(base_url="u", model="m").resolved_api_key() == "sk-env"
    assert JudgeConfig(base_url="u", model="m", api_key="sk-x").resolved_api_key() == "sk-x"
    assert "sk-x" not in repr(JudgeConfig(base_url="u", model="m", api_key="sk-x"))


def test_a_fatal_error_mid_run_stops_and_keeps_finished_items() -> None:
    calls = {"n": 0}
    lock = threading.Lock()

    def handler(req: dict[str, Any]) -> Reply:
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if n == 1:
            return Reply(content=json.dumps(GOOD))
        return Reply(status=404, body={"error": {"message": "model not found", "type": "invalid_request_error"}})

    with FakeOpenAI(handler) as server:
        with pytest.raises(JudgeError) as ei:
            judge_rubric(rubric_items(6), cfg_for(server, concurrency=2))
    assert "judge-model" in ei.value.message
    partial = ei.value.partial
    assert partial is not None and [s.id for s in partial.scores] == ["item-0"]
    assert len(server.requests) <= 1 + 2  # the first, then at most one per worker: a fatal answer stops the rest


def test_the_judge_uses_the_shared_retry_policy() -> None:
    """Retry-After longer than max_retry_after: that item fails with the reason at once, the others are judged."""
    def handler(req: dict[str, Any]) -> Reply:
        if "prompt 1" in user_text(req):
            return Reply(status=429, headers={"Retry-After": "3600"},
                         body={"error": {"message": "daily quota spent", "type": "rate_limit_error"}})
        return Reply(content=json.dumps(GOOD))

    with FakeOpenAI(handler) as server:
        t0 = time.monotonic()
        res = judge_rubric(rubric_items(3), cfg_for(server, max_retry_after=5.0))
    assert time.monotonic() - t0 < 3
    assert [s.id for s in res.scores] == ["item-0", "item-2"]
    assert [f.item_id for f in res.failures] == ["item-1"]
    assert "3600" in res.failures[0].reason and "daily quota spent" in res.failures[0].reason
    assert sum("prompt 1" in user_text(r) for r in server.requests) == 1


def test_unreachable_judge_message_names_the_judge_endpoint() -> None:
    url = dead_url()
    with pytest.raises(JudgeError) as ei:
        judge_pairwise(pair_items(2), cfg_for(url, max_retries=0))
    assert ei.value.message.startswith(f"cannot reach the judge endpoint at {url}")
    assert ei.value.partial is not None and ei.value.partial.items == []


def test_a_refused_key_mid_pairwise_run_stops_it_with_the_judge_hint() -> None:
    def handler(req: dict[str, Any]) -> Reply:
        if "question 0" in user_text(req):
            return Reply(content='{"winner": "tie", "reason": "same"}')
        return Reply(status=403, body={"error": {"message": "forbidden", "type": "permission_error"}})

    with FakeOpenAI(handler) as server:
        with pytest.raises(JudgeError) as ei:
            judge_pairwise(pair_items(10), cfg_for(server, concurrency=3))
    assert "403" in ei.value.message
    assert "--judge-url, --judge-model and OPENAI_API_KEY" in ei.value.hint
    # p0's two orders, then at most one request per worker once the first 403 is back: nothing more starts
    assert len(server.requests) <= 2 + 3
    partial = ei.value.partial
    assert partial is not None and [v.id for v in partial.items] == ["p0"]
