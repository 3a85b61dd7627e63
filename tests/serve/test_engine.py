"""The continuous-batching engine: rows join and leave a running batch without changing any answer."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from tunesmith.serve.engine import Engine, EngineClosed, Job, Sampling, _held_back


def test_held_back_text():
    assert _held_back("hello wor", ("world",)) == 3
    assert _held_back("hello", ("xyz",)) == 0
    assert _held_back("caf\ufffd", ()) == 1
    assert _held_back("ab", ("abc", "b")) == 2


class Collector:
    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()

    def __call__(self, event) -> None:
        self.events.put(event)

    def result(self, timeout: float = 60):
        deltas = []
        while True:
            kind, value = self.events.get(timeout=timeout)
            if kind == "delta":
                deltas.append(value)
            else:
                return kind, value, "".join(deltas)


@pytest.fixture(scope="module")
def engine_and_tok(serve_base):
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.models.resolve import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(serve_base), dtype=torch.float32).eval()
    tok = load_tokenizer(str(serve_base))
    engine = Engine(model, tok, max_batch=8)
    yield engine, tok
    engine.close(0)


def _prompt(tok, text: str) -> list[int]:
    from tunesmith.models.chat import render

    return tok(render(tok, [{"role": "user", "content": text}], add_generation_prompt=True),
               add_special_tokens=False)["input_ids"]


def _alone(serve_base, texts: list[str], max_new: int) -> list[str]:
    from tunesmith.evaluate.generate import LocalBackend
    from tunesmith.evaluate.types import DecodeSettings

    chats = [[{"role": "user", "content": t}] for t in texts]
    return [g.text for g in LocalBackend(serve_base, batch_size=1).generate(chats, DecodeSettings(max_new_tokens=max_new))]


def test_rows_joining_a_running_batch_answer_as_they_would_alone(engine_and_tok, serve_base):
    engine, tok = engine_and_tok
    texts = ["a short one", "a much longer prompt " * 6, "mid length prompt here", "x"]
    # the long prompt stops early, so its leaving lets the batch drop the left padding it needed
    budgets = [60, 8, 60, 60]
    want = _alone(serve_base, texts, 60)
    want[1] = _alone(serve_base, texts[1:2], 8)[0]
    collectors = [Collector() for _ in texts]
    # the first row starts alone; the others join while it decodes (shorter and longer prompts, so the
    # batch is re-padded on both sides)
    engine.peak_batch = 0
    engine.submit(Job(_prompt(tok, texts[0]), None, Sampling(max_tokens=60, temperature=0), collectors[0]))
    while engine.call(lambda: len(engine._rows)).result(timeout=30) == 0:
        pass
    for text, col, budget in zip(texts[1:], collectors[1:], budgets[1:]):
        engine.submit(Job(_prompt(tok, text), None, Sampling(max_tokens=budget, temperature=0), col))
    results = [c.result() for c in collectors]
    assert [r[0] for r in results] == ["done"] * 4
    assert [r[1].text for r in results] == want
    assert [r[2] for r in results] == want  # the streamed deltas add up to the answer
    assert engine.peak_batch >= 3


def test_cancelled_row_leaves_and_model_calls_run_between_steps(engine_and_tok):
    engine, tok = engine_and_tok
    col = Collector()
    job = Job(_prompt(tok, "go on"), None, Sampling(max_tokens=1900, temperature=1.0, seed=3, min_tokens=1900), col)
    engine.submit(job)
    col.events.get(timeout=30)  # it is decoding
    assert engine.call(lambda: len(engine._rows)).result(timeout=30) == 1
    job.cancelled.set()
    deadline = time.monotonic() + 30
    while engine.call(lambda: len(engine._rows)).result(timeout=30) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.call(lambda: len(engine._rows)).result(timeout=30) == 0


def test_max_tokens_and_stop_strings(engine_and_tok, serve_base):
    engine, tok = engine_and_tok
    full = _alone(serve_base, ["stop test"], 30)[0]
    col = Collector()
    engine.submit(Job(_prompt(tok, "stop test"), None, Sampling(max_tokens=5, temperature=0), col))
    kind, done, _ = col.result()
    assert kind == "done" and done.completion_tokens <= 5
    if len(full) > 6:
        stop = full[3:5]
        col = Collector()
        engine.submit(Job(_prompt(tok, "stop test"), None, Sampling(max_tokens=30, temperature=0, stop=(stop,)), col))
        kind, done, streamed = col.result()
        assert done.text == full[: full.find(stop)] and done.finish_reason == "stop" and streamed == done.text


def test_close_fails_rows_in_flight_and_refuses_new_work(serve_base):
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.models.resolve import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(serve_base), dtype=torch.float32).eval()
    tok = load_tokenizer(str(serve_base))
    engine = Engine(model, tok)
    col = Collector()
    engine.submit(Job(_prompt(tok, "long"), None, Sampling(max_tokens=1900, temperature=1.0, seed=1, min_tokens=1900), col))
    col.events.get(timeout=30)
    closer = threading.Thread(target=engine.close, args=(0.2,))
    closer.start()
    kind, message, _ = col.result()
    closer.join(30)
    assert kind == "error" and "shut" in message
    with pytest.raises(EngineClosed):
        engine.submit(Job([1, 2], None, Sampling(max_tokens=2), Collector()))
    with pytest.raises(EngineClosed):
        engine.call(lambda: 1).result(timeout=5)
