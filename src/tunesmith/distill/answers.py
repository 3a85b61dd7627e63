"""The teacher's answers: under the project's system prompt and output contract, validated by check's
code, retried with the problem shown, else dropped to the log.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from tunesmith.data.diversity import hashed_vectors, k_center
from tunesmith.data.formats import Example
from tunesmith.distill import prompts as P
from tunesmith.distill.inputs import Prompt
from tunesmith.distill.provenance import PROVENANCE, REVIEW, TEACHER
from tunesmith.distill.session import Session
from tunesmith.distill.teacher import Asked
from tunesmith.inference.concurrent import run_concurrently
from tunesmith.inference.openai_client import RequestFailed, endpoint_host
from tunesmith.inference.replies import unfence


def _json_style(answers: list[str]) -> Callable[[Any], str] | None:
    """How the seed answers write JSON (compact, spaced or indented), when they all agree."""
    writers: dict[str, Callable[[Any], str]] = {
        "compact": lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":")),
        "spaced": lambda v: json.dumps(v, ensure_ascii=False),
        "indented": lambda v: json.dumps(v, ensure_ascii=False, indent=2),
    }
    styles = set()
    for a in answers:
        try:
            value = json.loads(a)
        except (ValueError, RecursionError):
            return None
        match = [name for name, w in writers.items() if w(value) == a.strip()]
        if not match:
            return None
        styles.add(match[0])
    return writers[styles.pop()] if len(styles) == 1 else None


def fewshot(seeds: list[Example], k: int) -> list[tuple[str, str]]:
    """The k most mutually different single-turn seeds, as (question, answer)."""
    pairs = []
    for ex in seeds:
        turns = [m for m in ex.messages if m.role != "system"]
        if len(turns) == 2 and turns[0].role == "user" and turns[1].role == "assistant":
            pairs.append((turns[0].content, turns[1].content))
    if not pairs or k == 0:
        return []
    chosen = k_center(hashed_vectors([q + "\n" + a for q, a in pairs]), min(k, len(pairs)))
    return [pairs[i] for i in chosen]


def answer_all(run: Session, prompts: list[Prompt], seeds: list[Example], generation: str) -> list[dict[str, Any]]:
    opts, project = run.opts, run.project
    seed_answers = [o for ex in seeds for o in ex.outputs()]
    restyle = _json_style(seed_answers) if run.contract.expects_json and seed_answers else None
    longest = max((len(a) for a in seed_answers), default=0)
    max_tokens = opts.max_tokens or max(1024, 2 * longest // 3)
    system = P.answer_system(project.task, project.system_prompt, run.contract, run.schema)
    shots = fewshot(seeds, opts.fewshot)
    params: dict[str, Any] = {"temperature": opts.answer_temperature, "max_tokens": max_tokens}
    if (rf := P.response_format(run.contract, run.schema)) is not None:
        params["response_format"] = rf
    host = endpoint_host(run.teacher.client.base_url)
    rows: dict[int, dict[str, Any]] = {}
    finished = [0]

    def work(indexed: tuple[int, Prompt], stop: threading.Event) -> dict[str, Any] | None:
        index, prompt = indexed
        chat = P.answer_messages(system, shots, prompt.chat)
        found = _one_answer(run, chat, params, stop, index)
        if found is None:
            return None
        text, asked = found
        if restyle is not None:  # the seeds' JSON layout, unless that would break the contract (a regex)
            restyled = restyle(json.loads(text))
            text = restyled if run.contract.check(restyled).ok else text
        turns = ([{"role": "system", "content": project.system_prompt}] if project.system_prompt else []) + prompt.chat
        return {"messages": [*turns, {"role": "assistant", "content": text}],
                PROVENANCE: {"source": TEACHER, "teacher_model": opts.teacher_model, "answered_by": asked.reply.model,
                             "base_url_host": host, "request_sha256": asked.key, "created": asked.reply.created,
                             "generation": generation, "input": prompt.origin},
                REVIEW: {"status": "unreviewed"}}

    def done(index: int, row: dict[str, Any] | None) -> None:
        if row is not None:
            rows[index] = row
        finished[0] += 1
        run.progress("answers", finished[0], len(prompts))

    items = list(enumerate(prompts))
    if items:  # the first alone: an unreachable teacher stops the run before anything else is sent
        done(0, work(items[0], threading.Event()))
        run_concurrently(items[1:], work, concurrency=opts.concurrency, on_done=lambda i, r: done(i + 1, r))
    return [rows[i] for i in sorted(rows)]


def _one_answer(run: Session, chat: list[dict[str, str]], params: dict[str, Any], stop: threading.Event,
                index: int) -> tuple[str, Asked] | None:
    """An answer that meets the contract, and what got it; None (logged) when there is none."""
    problems: list[str] = []
    ceiling = 4 * params["max_tokens"]
    question = _snippet(chat)
    order = (2, index)
    for attempt in range(run.opts.max_attempts):
        try:
            asked = run.first(chat, params, order) if index == 0 and attempt == 0 else run.teacher.ask(chat, params, stop)
        except RequestFailed as exc:
            asked = None
            if exc.reason != "cancelled":
                run.note("dropped", order, reason=f"request failed: {exc.reason}", prompt=question)
        if asked is None:
            if not stop.is_set():
                run.count("failed_requests")
                run.count("dropped")
            return None
        reply = asked.reply
        text = (reply.content or "").strip()
        fenced = False
        if run.contract.expects_json:  # a fence around JSON is wrapping; around free text it may be the answer
            text, fenced = unfence(text)
        if reply.finish_reason == "length":
            run.count("truncated")
            problems = [f"was cut off at the token limit ({asked.max_tokens})"]
            if asked.max_tokens < params["max_tokens"] or params["max_tokens"] >= ceiling:
                break  # the endpoint gives no more room than this: asking again gets the same cut
            params = {**params, "max_tokens": min(ceiling, 2 * params["max_tokens"])}  # the same question, more room
            continue
        if not text:
            run.count("empty")
            problems = ["is empty"]
        else:
            problems = run.contract.check(text).problems
        if not problems:
            run.count("ok")
            run.count("code_fences_removed", fenced)
            return text, asked
        run.count("retried_for_contract")
        chat = P.fix_messages(chat, text or "(empty)", problems)
    run.count("dropped")
    run.note("dropped", order, reason=f"no answer met the contract in {attempt + 1} attempt(s): " + "; ".join(problems),
             prompt=question)
    return None


def _snippet(chat: list[dict[str, str]]) -> str:
    users = [m["content"] for m in chat if m["role"] == "user"]
    text = " ".join((users[-1] if users else "").split())
    return text[:200] + ("..." if len(text) > 200 else "")
