"""The continuous-batching engine: rows join and leave a running batch without changing any answer."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from tunesmith.inference.engine import Job, Sampling
from tunesmith.inference.worker import Engine, EngineClosed
from tunesmith.inference.rows import Row, held_back


def test_held_back_text():
    assert held_back("hello wor", ("world",)) == 3
    assert held_back("hello", ("xyz",)) == 0
    assert held_back("caf\ufffd", ()) == 1
    assert held_back("ab", ("abc", "b")) == 2
    # a split multi-byte character and a stop-string prefix before it are both held back
    assert held_back("xa\ufffd", ("a\u20ac",)) == 2


class _ByteTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", "replace")


def test_streamed_text_never_shows_a_stop_string_split_across_bytes():
    events: list = []
    row = Row(Job([0], None, Sampling(50, temperature=0, stop=("a\u20ac",)), events.append), {255},
               _ByteTokenizer(), "cpu")
    for byte in "xa\u20acyz".encode():
        if row.accept(byte):
            break
    assert "".join(v for k, v in events if k == "delta") == "x"
    assert events[-1][0] == "done" and events[-1][1].text == "x"


class Collector:
    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        #: set by the engine's first event for the job: its row is in the batch
        self.started = threading.Event()

    def __call__(self, event) -> None:
        self.events.put(event)
        self.started.set()

    def until(self, kind: str, timeout: float = 30) -> list:
        """The events up to the first of `kind`, as the engine sends them (queue.Empty if it never comes)."""
        seen: list = []
        deadline = time.monotonic() + timeout
        while not seen or seen[-1][0] != kind:
            seen.append(self.events.get(timeout=max(0.0, deadline - time.monotonic())))
        return seen

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
    from tunesmith.inference.types import DecodeSettings

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
    assert collectors[0].started.wait(30)
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
    assert engine.call(lambda: len(engine.decoder.rows)).result(timeout=30) == 1
    steps = engine.steps
    job.cancelled.set()
    col.until("cancelled")  # sent in the step that drops the row
    assert engine.call(lambda: len(engine.decoder.rows)).result(timeout=30) == 0
    assert engine.steps - steps < 50  # it left at once, not after its 1900 tokens


def test_a_job_dropped_after_its_client_left_says_so(engine_and_tok):
    # the HTTP handler waits on these events: without a last word it would wait forever
    engine, tok = engine_and_tok
    col = Collector()
    job = Job(_prompt(tok, "go on"), None, Sampling(max_tokens=1900, temperature=1.0, seed=3, min_tokens=1900), col)
    engine.submit(job)
    col.events.get(timeout=30)
    job.cancelled.set()
    assert col.until("cancelled")[-1] == ("cancelled", None)


def test_one_rows_sampling_failure_fails_only_that_row(engine_and_tok, monkeypatch):
    from tunesmith.inference import rows as engine_module

    engine, tok = engine_and_tok
    real = engine_module.Row.sample

    def sample(row, logits):
        if row.job.sampling.seed == 13:
            raise RuntimeError("probability tensor contains nan")
        return real(row, logits)

    monkeypatch.setattr(engine_module.Row, "sample", sample)
    bad, good = Collector(), Collector()
    engine.submit(Job(_prompt(tok, "a"), None, Sampling(max_tokens=20, temperature=1.0, seed=5, min_tokens=20), good))
    engine.submit(Job(_prompt(tok, "b"), None, Sampling(max_tokens=20, temperature=1.0, seed=13), bad))
    kind, message, _ = bad.result()
    assert kind == "error" and "nan" in message
    kind, done, _ = good.result()
    assert kind == "done" and done.completion_tokens == 20


def test_max_tokens_and_stop_strings(engine_and_tok, serve_base):
    engine, tok = engine_and_tok
    full = _alone(serve_base, ["stop test"], 30)[0]
    col = Collector()
    engine.submit(Job(_prompt(tok, "stop test"), None, Sampling(max_tokens=5, temperature=0), col))
    kind, done, _ = col.result()
    assert kind == "done" and done.completion_tokens <= 5
    assert len(full) > 6
    if True:
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


def test_models_whose_cache_cannot_be_repadded_queue_requests(serve_base):
    """Sliding-window caches cannot take a row into a running batch: requests wait their turn."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from tunesmith.models.resolve import load_tokenizer

    tok = load_tokenizer(str(serve_base))
    config = MistralConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4096,
                           max_position_embeddings=2048, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = MistralForCausalLM(config).eval()
    engine = Engine(model, tok, max_batch=8)
    try:
        collectors = [Collector() for _ in range(3)]
        for i, col in enumerate(collectors):
            engine.submit(Job(_prompt(tok, f"question {i}"), None, Sampling(max_tokens=20, temperature=0), col))
        results = [c.result() for c in collectors]
        assert [r[0] for r in results] == ["done"] * 3, results
        assert engine.peak_batch == 1
    finally:
        engine.close(0)


def _system_prompt(tok, system: str, text: str) -> list[int]:
    from tunesmith.models.chat import render

    chat = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    return tok(render(tok, chat, add_generation_prompt=True), add_special_tokens=False)["input_ids"]


def test_requests_sharing_a_system_prompt_reuse_its_cache_until_the_model_changes(engine_and_tok, serve_base):
    engine, tok = engine_and_tok
    system = "Answer in the house format. " * 8
    texts = ["first question", "second one, longer than the first", "third"]
    want = [g.text for g in _alone_without_prefix(serve_base, system, texts, 30)]
    got = []
    for text in texts:  # one after another: each finds the previous prompt in the prefix store
        col = Collector()
        engine.submit(Job(_system_prompt(tok, system, text), None, Sampling(max_tokens=30, temperature=0), col))
        kind, done, _ = col.result()
        assert kind == "done"
        got.append(done)
    assert [d.text for d in got] == want
    shared = len(_system_prompt(tok, system, ""))  # about the system prompt's length
    assert got[0].cached_tokens < shared // 2 <= got[1].cached_tokens and got[2].cached_tokens >= shared // 2
    engine.call(lambda: None, edits_model=False).result(timeout=30)  # a read (the grammar compiler) keeps it
    col = Collector()
    engine.submit(Job(_system_prompt(tok, system, texts[0]), None, Sampling(max_tokens=30, temperature=0), col))
    kind, done, _ = col.result()
    assert kind == "done" and done.cached_tokens >= shared // 2 and done.text == want[0]
    engine.call(lambda: None).result(timeout=30)  # a model edit (an adapter loaded) empties the store
    col = Collector()
    engine.submit(Job(_system_prompt(tok, system, texts[0]), None, Sampling(max_tokens=30, temperature=0), col))
    kind, done, _ = col.result()
    assert kind == "done" and done.cached_tokens == 0 and done.text == want[0]


def _alone_without_prefix(serve_base, system: str, texts: list[str], max_new: int):
    from tunesmith.evaluate.generate import LocalBackend
    from tunesmith.inference.types import DecodeSettings

    backend = LocalBackend(serve_base, batch_size=1)
    backend.prefix_reuse = False
    chats = [[{"role": "system", "content": system}, {"role": "user", "content": t}] for t in texts]
    return backend.generate(chats, DecodeSettings(max_new_tokens=max_new))
