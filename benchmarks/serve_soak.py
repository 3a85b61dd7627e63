"""Soak of `tunesmith serve`: many clients for many minutes, checked for errors, memory growth, latency
drift and cross-talk between adapters.

Starts `tunesmith serve` (its own process, on 127.0.0.1) on a small model with four LoRA adapters
(alpha, beta, gamma, delta). By default the model is the tests' tiny random Llama with its weights
scaled up (so that its greedy answers depend on the prompt) and the adapters are random LoRA weights on
it, all built offline under --work; `--model builtin:smollm2-135m-instruct` soaks the embedded SmolLM2
with adapters made from it instead. Then:

  1. references: every (model, prompt, response format) is asked once, one request at a time, greedy;
     two more adapters (hot1, hot2) are loaded for this and unloaded after it;
  2. soak: --clients threads send requests for --minutes: the base model or an adapter, free text or
     response_format json_object / json_schema, non-streamed through the official `openai` client or
     streamed over httpx (a tenth of the streams hang up after a few deltas by closing the connection);
     beside them one thread loads and unloads hot1 and hot2 in turn (POST / DELETE /v1/adapters);
  3. a thread samples the server process's RSS every few seconds.

It reports errors (goal 0: any 5xx, refused request, broken connection, malformed answer or stream,
JSON answer that does not parse although it finished "stop", failed adapter load/unload, traceback in
the server log; a hang-up the client caused is not one, nor a 404 for hot1/hot2 while unloaded), the
RSS growth from the end of the warm-up (the first minute, or the first quarter of a shorter soak) to
the end (goal < 10 %), p50/p95 latency of the complete answers started in the first vs the last
minute, and cross-talk (goal 0): answers that differ from the reference of the same (model, prompt,
format); a hung-up stream must be a prefix of it. The exit status is 1 when a goal is missed.

    taskset -c 1 .venv/bin/python benchmarks/serve_soak.py              # 10 minutes, 32 clients
    .venv/bin/python benchmarks/serve_soak.py --minutes 0.33 --clients 4 --prompts 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny random model and its adapters are the tests' fixtures

from serve_load import QUESTIONS, RESPONSE_FORMAT, SCHEMA, make_adapters, start_server  # noqa: E402

#: shared by every request, so that the server's shared-prefix cache is used as a project's prompt would
SYSTEM = "You are a helpful assistant. Answer the question below in one short sentence, plainly, without a preamble."
FORMATS: dict[str, dict[str, Any] | None] = {"text": None, "json_object": {"type": "json_object"},
                                             "json_schema": RESPONSE_FORMAT}
STATIC = (("alpha", 1), ("beta", 2), ("gamma", 3), ("delta", 4))
HOT = (("hot1", 11), ("hot2", 12))
FINISH = ("stop", "length", "grammar")
GOAL_RSS_GROWTH = 0.10


@dataclass(frozen=True)
class Job:
    model: str
    prompt: int
    fmt: str
    mode: str  # "sdk": non-streamed (openai client); "stream": read to the end (httpx); "hangup": closed early
    hangup_after: int = 1  # content deltas read before a "hangup" closes the connection


@dataclass
class Outcome:
    status: str  # ok | hangup | unavailable | error
    text: str = ""
    finish: str | None = None
    tokens: int = 0
    error: str | None = None
    job: Job | None = None
    start: float = 0.0  # seconds since the soak began
    latency: float = 0.0


def draw_job(rng: random.Random, models: list[str], prompts: int) -> Job:
    model = "base" if rng.random() < 0.25 else rng.choice(models[1:])
    fmt = rng.choices(list(FORMATS), weights=(8, 1, 1))[0]
    mode = rng.choices(("sdk", "stream", "hangup"), weights=(45, 45, 10))[0]
    return Job(model, rng.randrange(prompts), fmt, mode, rng.randint(1, 4))


def payload(job: Job, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model": job.model, "max_tokens": max_tokens, "temperature": 0,
                            "messages": [{"role": "system", "content": SYSTEM},
                                         {"role": "user", "content": QUESTIONS[job.prompt]}]}
    if FORMATS[job.fmt] is not None:
        body["response_format"] = FORMATS[job.fmt]
    return body


class Client:
    """One simulated user: its own `openai` client and its own httpx connection pool."""

    def __init__(self, url: str, timeout: float, hot: set[str]) -> None:
        import httpx
        import openai

        self.sdk = openai.OpenAI(base_url=url + "/v1", api_key="soak", max_retries=0, timeout=timeout)
        self.http = httpx.Client(base_url=url, timeout=timeout)
        self.hot = hot

    def run(self, job: Job, max_tokens: int) -> Outcome:
        body = payload(job, max_tokens)
        return self._sdk(job, body) if job.mode == "sdk" else self._stream(job, body)

    def _refused(self, job: Job, status: int, message: str) -> Outcome:
        if status == 404 and job.model in self.hot:  # asked for while the cycler had it unloaded
            return Outcome("unavailable")
        return Outcome("error", error=f"HTTP {status}: {message[:300]}")

    def _sdk(self, job: Job, body: dict[str, Any]) -> Outcome:
        import openai

        try:
            reply = self.sdk.chat.completions.create(**body)
        except openai.APIStatusError as exc:
            return self._refused(job, exc.status_code, exc.message)
        except openai.APIError as exc:  # connection refused or reset, timeout
            return Outcome("error", error=f"{type(exc).__name__}: {exc}")
        try:
            (choice,) = reply.choices
            text, finish, tokens = choice.message.content, choice.finish_reason, reply.usage.completion_tokens
        except (AttributeError, TypeError, ValueError) as exc:
            return Outcome("error", error=f"malformed answer: {exc}: {reply!r:.300}")
        if not isinstance(text, str) or finish not in FINISH or not isinstance(tokens, int):
            return Outcome("error", error=f"malformed answer: {reply!r:.300}")
        return Outcome("ok", text, finish, tokens)

    def _stream(self, job: Job, body: dict[str, Any]) -> Outcome:
        import httpx

        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        try:
            with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    response.read()
                    return self._refused(job, response.status_code, response.text)
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    return Outcome("error", error=f"stream with content-type {response.headers.get('content-type')}")
                # returning inside the `with` closes the response unread: httpx drops the connection
                return read_events(response.iter_lines(), job)
        except httpx.HTTPError as exc:
            return Outcome("error", error=f"{type(exc).__name__}: {exc}")


def read_events(lines: Any, job: Job) -> Outcome:
    """The answer of one server-sent event stream, checked chunk by chunk; a "hangup" job stops reading
    after `job.hangup_after` content deltas."""
    text, finish, tokens, deltas, done = "", None, None, 0, False
    for line in lines:
        if not line:
            continue
        if done or not line.startswith("data: "):
            return Outcome("error", error=f"malformed stream line {line[:200]!r}" + (" after [DONE]" if done else ""))
        if line == "data: [DONE]":
            done = True
            continue
        try:
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return Outcome("error", error=f"error event: {json.dumps(chunk)[:300]}")
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
                continue
            (choice,) = chunk["choices"]
            content = choice["delta"].get("content")
        except (ValueError, KeyError, TypeError) as exc:
            return Outcome("error", error=f"malformed chunk ({type(exc).__name__}): {line[:200]!r}")
        if finish is not None and (content or choice["finish_reason"]):
            return Outcome("error", error=f"chunk after finish_reason {finish!r}: {line[:200]!r}")
        finish = choice["finish_reason"] or finish
        if content:
            text, deltas = text + content, deltas + 1
        if job.mode == "hangup" and finish is None and deltas >= job.hangup_after:
            return Outcome("hangup", text)
    if not done or finish not in FINISH or not isinstance(tokens, int):
        return Outcome("error", error=f"stream ended early: [DONE] {done}, finish_reason {finish!r}, usage {tokens!r}")
    return Outcome("ok", text, finish, tokens)


# -- the phases --------------------------------------------------------------------------------------


def adapter_call(http: Any, method: str, path: str, body: dict[str, Any] | None, expect: int) -> str | None:
    """None when the server answered `expect`, else what went wrong. A JSON content type on both verbs:
    the server refuses state changes in form or text types (a browser could send those cross-site)."""
    import httpx

    try:
        response = http.request(method, path, content=json.dumps(body) if body is not None else None,
                                headers={"Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        return f"{method} {path}: {type(exc).__name__}: {exc}"
    if response.status_code != expect:
        return f"{method} {path}: HTTP {response.status_code}: {response.text[:300]}"
    return None


def references(url: str, models: list[str], prompts: int, max_tokens: int, timeout: float) -> dict[tuple, Outcome]:
    """Every (model, prompt, format) answered alone, one request at a time."""
    client = Client(url, timeout, hot=set())
    refs = {}
    for model in models:
        for prompt in range(prompts):
            for fmt in FORMATS:
                job = Job(model, prompt, fmt, "sdk")
                answer = client.run(job, max_tokens)
                if answer.status != "ok":
                    raise SystemExit(f"the reference answer of {job} failed: {answer.error}")
                refs[(model, prompt, fmt)] = answer
    return refs


def cycle_adapters(url: str, hot: list[tuple[str, Path]], deadline: float, hold: float, seed: int,
                   out: dict[str, Any]) -> None:
    """Load and unload the hot adapters in turn until `deadline`, each loaded for about `hold` seconds."""
    import httpx

    rng = random.Random(seed)
    http = httpx.Client(base_url=url, timeout=300)
    loads, unloads, errors = out["loads"], out["unloads"], out["errors"]  # seconds of each successful call
    turn = 0
    while time.monotonic() < deadline:
        name, path = hot[turn % len(hot)]
        turn += 1
        t = time.monotonic()
        problem = adapter_call(http, "POST", "/v1/adapters", {"name": name, "source": str(path)}, 201)
        if problem:
            errors.append(problem)
            time.sleep(1)
            continue
        loads.append(time.monotonic() - t)
        time.sleep(rng.uniform(0.5, 1.5) * hold)  # the clients use it meanwhile
        t = time.monotonic()
        problem = adapter_call(http, "DELETE", f"/v1/adapters/{name}", None, 200)
        if problem:
            errors.append(problem)
        else:
            unloads.append(time.monotonic() - t)
        time.sleep(rng.uniform(0.1, 0.5))


def rss_bytes(pid: int) -> int:
    try:
        import psutil
    except ImportError:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024
    return psutil.Process(pid).memory_info().rss


def sample_rss(pid: int, t0: float, every: float, stop: threading.Event, out: list[tuple[float, int]]) -> None:
    while True:
        try:
            out.append((time.monotonic() - t0, rss_bytes(pid)))
        except Exception:  # noqa: BLE001 - the server is gone: its death is reported elsewhere
            return
        if stop.wait(every):
            return


def soak(url: str, args: argparse.Namespace, models: list[str], hot: list[tuple[str, Path]],
         pid: int) -> tuple[list[Outcome], dict[str, Any], list[tuple[float, int]], float]:
    """Run the clients, the adapter cycler and the RSS sampler; (outcomes, cycler record, RSS, seconds)."""
    outcomes: list[Outcome] = []
    cycler: dict[str, Any] = {"errors": [], "loads": [], "unloads": []}
    rss: list[tuple[float, int]] = []
    duration = args.minutes * 60
    t0 = time.monotonic()
    deadline = t0 + duration
    hot_names = {name for name, _ in hot}

    def client(index: int) -> None:
        rng = random.Random(args.seed * 1000 + index)
        user = Client(url, args.request_timeout, hot_names)
        while time.monotonic() < deadline:
            job = draw_job(rng, models, args.prompts)
            start = time.monotonic()
            try:
                outcome = user.run(job, args.max_tokens)
            except Exception as exc:  # noqa: BLE001 - an answer this script did not expect: counted, and go on
                outcome = Outcome("error", error=f"client: {type(exc).__name__}: {exc}")
            outcome.job, outcome.start, outcome.latency = job, start - t0, time.monotonic() - start
            outcomes.append(outcome)

    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(pid, t0, min(5.0, duration / 20), stop, rss), daemon=True)
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]

    def cycle() -> None:
        try:
            cycle_adapters(url, hot, deadline, args.hold, args.seed, cycler)
        except Exception as exc:  # noqa: BLE001 - reported with the errors; the clients go on
            cycler["errors"].append(f"adapter cycler: {type(exc).__name__}: {exc}")

    threads.append(threading.Thread(target=cycle, daemon=True))
    sampler.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - t0
    stop.set()
    sampler.join()
    sample_rss(pid, t0, 0, stop, rss)  # one last sample (stop is set), after every request has its answer
    return outcomes, cycler, rss, elapsed


# -- the checks --------------------------------------------------------------------------------------


def valid_json(text: str, fmt: str) -> bool:
    from jsonschema import Draft202012Validator

    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) if fmt == "json_object" else Draft202012Validator(SCHEMA).is_valid(value)


def check_answers(outcomes: list[Outcome], refs: dict[tuple, Outcome], models: list[str]) -> dict[str, Any]:
    """Cross-talk: answers unlike the same (model, prompt, format) alone; and JSON answers that do not parse."""
    differ, foreign, whole, partial, unclosed = 0, 0, 0, 0, 0
    malformed: list[str] = []
    examples: list[dict[str, Any]] = []
    for o in outcomes:
        if o.status not in ("ok", "hangup"):
            continue
        job = o.job
        ref = refs[(job.model, job.prompt, job.fmt)]
        if o.status == "hangup":
            partial += 1
            same = ref.text.startswith(o.text)
        else:
            whole += 1
            same = (o.text, o.finish) == (ref.text, ref.finish)
            if job.fmt != "text" and not valid_json(o.text, job.fmt):
                if o.finish == "stop":  # a complete constrained answer must parse
                    malformed.append(f"malformed: a {job.fmt} answer that finished 'stop' is invalid: {o.text[:120]!r}")
                else:  # cut at max_tokens before its close: the server's steer is best effort
                    unclosed += 1
        if not same:
            differ += 1
            matches = [m for m in models if m != job.model and refs[(m, job.prompt, job.fmt)].text.startswith(o.text)
                       and (o.status == "hangup" or refs[(m, job.prompt, job.fmt)].text == o.text)]
            foreign += bool(matches)
            if len(examples) < 3:
                examples.append({"model": job.model, "prompt": job.prompt, "format": job.fmt, "mode": job.mode,
                                 "got": o.text, "finish": o.finish, "alone": ref.text, "alone_finish": ref.finish,
                                 "equals": matches})
    return {"count": differ, "another_models_answer": foreign, "whole_answers": whole, "hung_up_prefixes": partial,
            "json_cut_at_max_tokens": unclosed, "examples": examples, "malformed": malformed}


def percentile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return ordered[max(0, round(q * len(ordered)) - 1)] if ordered else None


def latency_windows(outcomes: list[Outcome], window: float) -> dict[str, Any]:
    """p50/p95 of the complete answers started in the first and in the last `window` seconds of the soak."""
    done = [o for o in outcomes if o.status == "ok"]
    end = max((o.start for o in outcomes), default=0.0)  # the last start, not the wait for the last answers
    parts = {"first": [o.latency for o in done if o.start < window],
             "last": [o.latency for o in done if o.start >= end - window]}
    out: dict[str, Any] = {"window_s": window}
    for name, values in parts.items():
        out[name] = {"n": len(values), "p50_s": percentile(values, 0.5), "p95_s": percentile(values, 0.95)}
    for q in ("p50_s", "p95_s"):
        first, last = out["first"][q], out["last"][q]
        out[f"drift_{q[:3]}"] = last / first if first and last else None
    return out


def rss_growth(rss: list[tuple[float, int]], warmup: float) -> dict[str, Any]:
    mb = 2**20
    if not rss:
        return {"growth": None, "series_mb": []}
    warm = [b for t, b in rss if t <= warmup] or [rss[0][1]]
    baseline, end, peak = warm[-1], rss[-1][1], max(b for _, b in rss)
    return {"warmup_s": warmup, "start_mb": rss[0][1] / mb, "after_warmup_mb": baseline / mb, "end_mb": end / mb,
            "peak_mb": peak / mb, "growth": (end - baseline) / baseline, "peak_growth": (peak - baseline) / baseline,
            "series_mb": [(round(t, 1), round(b / mb, 1)) for t, b in rss]}


def server_tracebacks(log: Path) -> list[str]:
    """The last line (the exception) of every traceback the server logged."""
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    found = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            tail = next((lines[j] for j in range(i + 1, len(lines)) if lines[j] and not lines[j][0].isspace()), "?")
            found.append(f"server log: {tail[:200]}")
    return found


def request_counts(outcomes: list[Outcome], seconds: float) -> dict[str, Any]:
    ok = [o for o in outcomes if o.status == "ok"]
    tokens = sum(o.tokens for o in ok)
    return {"sent": len(outcomes), "answered": len(ok), "non_streamed": sum(o.job.mode == "sdk" for o in ok),
            "streamed": sum(o.job.mode != "sdk" for o in ok), "hung_up": sum(o.status == "hangup" for o in outcomes),
            "adapter_unloaded_404": sum(o.status == "unavailable" for o in outcomes),
            "json_object": sum(o.job.fmt == "json_object" for o in outcomes),
            "json_schema": sum(o.job.fmt == "json_schema" for o in outcomes),
            "answers_per_s": len(ok) / seconds, "output_tokens": tokens, "output_tokens_per_s": tokens / seconds}


def summarise(outcomes: list[Outcome], cycler: dict[str, Any], rss: list[tuple[float, int]], seconds: float,
              refs: dict[tuple, Outcome], models: list[str], extra_errors: list[str]) -> dict[str, Any]:
    window = min(60.0, seconds / 4)
    answers = check_answers(outcomes, refs, models)
    errors = [o.error or "?" for o in outcomes if o.status == "error"] + cycler["errors"] + answers.pop("malformed")
    errors += extra_errors
    kinds = dict(Counter(e.split(":")[0] for e in errors))
    pairs = {(p, f) for _, p, f in refs}
    apart = sum(len({refs[(m, p, f)].text for m in models}) == len(models) for p, f in pairs)
    memory = rss_growth(rss, window)
    goals = {"errors": not errors, "cross_talk": answers["count"] == 0,
             "rss_growth": memory["growth"] is not None and memory["growth"] < GOAL_RSS_GROWTH}
    return {"seconds": seconds, "requests": request_counts(outcomes, seconds),
            "errors": {"count": len(errors), "by_kind": kinds, "first": errors[:5]}, "cross_talk": answers,
            "latency": latency_windows(outcomes, window), "rss": memory,
            "adapter_cycles": {"loads": len(cycler["loads"]), "unloads": len(cycler["unloads"]),
                               "load_p50_s": percentile(cycler["loads"], 0.5),
                               "unload_p50_s": percentile(cycler["unloads"], 0.5),
                               "unload_p95_s": percentile(cycler["unloads"], 0.95)},
            "references": {"count": len(refs), "pairs": len(pairs), "all_models_differ": apart}, "goals": goals}


# -- setup and report --------------------------------------------------------------------------------


def build_models(model: str, work: Path) -> tuple[str, list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(the --base to serve, the adapters loaded at start, the ones cycled), made once under `work`."""
    names = STATIC + HOT
    if model != "tiny":
        from tunesmith.models.resolve import resolve_model

        adapters = make_adapters(resolve_model(model).path, work, names)
        return model, adapters[: len(STATIC)], adapters[len(STATIC):]
    import shutil

    from fixtures.serving import loud_copy, make_adapter
    from fixtures.tiny_models import build_tiny_llama

    base = work / "loud"
    if not base.is_dir():  # built aside and renamed, so an interrupted build is not taken for a model
        partial = work / "loud.partial"
        shutil.rmtree(partial, ignore_errors=True)
        loud_copy(build_tiny_llama(work / "tiny"), partial)
        partial.rename(base)
    adapters = []
    for name, seed in names:
        path = work / "adapters" / name
        if not (path / "adapter_model.safetensors").is_file():
            make_adapter(base, path, seed)
        adapters.append((name, path))
    return str(base), adapters[: len(STATIC)], adapters[len(STATIC):]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def fmt_s(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{unit}"


def print_table(r: dict[str, Any]) -> None:
    q, lat, mem, cross, cyc = r["requests"], r["latency"], r["rss"], r["cross_talk"], r["adapter_cycles"]
    mark = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    ref = r["references"]
    print(f"tunesmith serve soak on {r['model']}: adapters {', '.join(r['adapters'])} + {', '.join(r['hot'])} "
          f"loaded and unloaded in turn; {r['clients']} clients, {r['seconds']:.0f} s, max_tokens {r['max_tokens']}, "
          f"greedy; CPU {r['cpu']} (cores {r['cores']}, load {r['load_before']:.2f} before, "
          f"{r['load_after']:.2f} after)")
    print(f"references: {ref['count']} answers alone; all {len(r['adapters']) + len(r['hot']) + 1} models answer "
          f"differently on {ref['all_models_differ']}/{ref['pairs']} (prompt, format) pairs")
    print(f"requests: {q['sent']} sent, {q['answered']} answered ({q['non_streamed']} non-streamed, {q['streamed']} "
          f"streamed), {q['hung_up']} hung up mid-stream, {q['adapter_unloaded_404']} 404 while their adapter was "
          f"unloaded; {q['json_object']} json_object, {q['json_schema']} json_schema")
    print(f"throughput: {q['answers_per_s']:.2f} answers/s, {q['output_tokens_per_s']:.1f} output tokens/s")
    print(f"adapter cycles: {cyc['loads']} loads, {cyc['unloads']} unloads; "
          f"load p50 {fmt_s(cyc['load_p50_s'], ' s')}, unload p50 {fmt_s(cyc['unload_p50_s'], ' s')}, "
          f"p95 {fmt_s(cyc['unload_p95_s'], ' s')}")
    print(f"\n{'':<34}{'answers':>9}{'p50 s':>9}{'p95 s':>9}")
    for name in ("first", "last"):
        part = lat[name]
        print(f"{name + ' ' + format(lat['window_s'], '.0f') + ' s':<34}{part['n']:>9}{fmt_s(part['p50_s']):>9}"
              f"{fmt_s(part['p95_s']):>9}")
    print(f"{'drift (last / first)':<34}{'':>9}{fmt_s(lat['drift_p50'], 'x'):>9}{fmt_s(lat['drift_p95'], 'x'):>9}\n")
    if mem["growth"] is not None:
        series = " ".join(f"{t:.0f}s:{b:.0f}" for t, b in mem["series_mb"][:: max(1, len(mem["series_mb"]) // 12)])
        print(f"server RSS MB: start {mem['start_mb']:.0f}, after the {mem['warmup_s']:.0f} s warm-up "
              f"{mem['after_warmup_mb']:.0f}, end {mem['end_mb']:.0f}, peak {mem['peak_mb']:.0f} ({series})")
    growth = "-" if mem["growth"] is None else f"{100 * mem['growth']:+.1f} %"
    print(f"RSS growth after warm-up: {growth} (goal < {100 * GOAL_RSS_GROWTH:.0f} %)  "
          f"{mark(r['goals']['rss_growth'])}")
    print(f"cross-talk: {cross['count']} of {cross['whole_answers']} answers and {cross['hung_up_prefixes']} hung-up "
          f"prefixes differ from the same request alone ({cross['another_models_answer']} equal another model's); "
          f"goal 0  {mark(r['goals']['cross_talk'])}")
    kinds = f" {r['errors']['by_kind']}" if r["errors"]["by_kind"] else ""
    print(f"errors: {r['errors']['count']}{kinds} (goal 0)  {mark(r['goals']['errors'])}")
    for line in r["errors"]["first"]:
        print("  ", line)
    for example in cross["examples"]:
        print("   cross-talk:", json.dumps(example)[:400])
    if cross["json_cut_at_max_tokens"]:
        print(f"({cross['json_cut_at_max_tokens']} JSON answers were cut at max_tokens before they closed: not errors)")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="'tiny' (default: a tiny random model built here) or a model "
                                                    "reference, e.g. builtin:smollm2-135m-instruct")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=8, help=f"questions used (at most {len(QUESTIONS)})")
    ap.add_argument("--hold", type=float, default=2.0, help="mean seconds a hot adapter stays loaded")
    ap.add_argument("--request-timeout", type=float, default=300.0)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="torch threads of the server (default: the CPUs this process may use)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tunesmith-serve-soak")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()
    args.prompts = max(1, min(args.prompts, len(QUESTIONS)))
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    began = time.monotonic()
    say = lambda m: print(f"[{time.monotonic() - began:4.0f} s] {m}", file=sys.stderr, flush=True)  # noqa: E731
    work = args.work / ("tiny" if args.model == "tiny" else re.sub(r"[^A-Za-z0-9._-]+", "_", args.model))
    work.mkdir(parents=True, exist_ok=True)
    say(f"building the model and adapters under {work}")
    base, static, hot = build_models(args.model, work)
    models = ["base"] + [n for n, _ in static] + [n for n, _ in hot]
    port, load_before = free_port(), os.getloadavg()[0]
    say(f"starting tunesmith serve on 127.0.0.1:{port} (log: {work / 'server.log'})")
    proc = start_server(base, static, port, work / "adapters", work / "server.log")
    url, extra = f"http://127.0.0.1:{port}", []
    try:
        http = httpx.Client(base_url=url, timeout=300)
        for problem in [adapter_call(http, "POST", "/v1/adapters", {"name": n, "source": str(p)}, 201) for n, p in hot]:
            if problem:
                raise SystemExit(f"loading the hot adapters for the references failed: {problem}")
        say(f"collecting {len(models) * args.prompts * len(FORMATS)} reference answers one at a time")
        refs = references(url, models, args.prompts, args.max_tokens, args.request_timeout)
        for problem in [adapter_call(http, "DELETE", f"/v1/adapters/{n}", None, 200) for n, _ in hot]:
            if problem:
                raise SystemExit(f"unloading the hot adapters after the references failed: {problem}")
        say(f"soaking: {args.clients} clients for {args.minutes:g} min")
        outcomes, cycler, rss, seconds = soak(url, args, models, hot, proc.pid)
        if proc.poll() is not None:
            extra.append(f"server exited: code {proc.returncode} during the soak")
        else:  # the hot adapters must be gone again, the others still served
            listed = sorted(m["id"] for m in http.get("/v1/models").json()["data"][1:])
            if listed != sorted(n for n, _ in static):
                extra.append(f"models listed after the soak: {listed}")
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except Exception:  # noqa: BLE001 - it did not stop: the soak's numbers still stand
            proc.kill()
    result = summarise(outcomes, cycler, rss, seconds, refs, models, extra + server_tracebacks(work / "server.log"))
    return {"model": args.model, "adapters": [n for n, _ in static], "hot": [n for n, _ in hot],
            "clients": args.clients, "max_tokens": args.max_tokens, "prompts": args.prompts, "cpu": cpu_name(),
            "cores": sorted(os.sched_getaffinity(0)), "threads": args.threads, "load_before": load_before,
            "load_after": os.getloadavg()[0], **result}


def main() -> None:
    args = parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch loads, here and in the server
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    sys.exit(0 if all(result["goals"].values()) else 1)


if __name__ == "__main__":
    main()
