"""The teacher's answers: under the project's system prompt and output contract, validated by check's
code, retried with the problem shown, else dropped to the log.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any

from tunesmith.data.diversity import hashed_vectors, k_center
from tunesmith.data.formats import Example
from tunesmith.distill import prompts as P
from tunesmith.distill.inputs import Prompt
from tunesmith.distill.provenance import PROVENANCE, REVIEW, TEACHER
from tunesmith.distill.session import Session
from tunesmith.inference.openai_client import RequestFailed, endpoint_host, run_concurrently


_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n(.*?)\n?```$", re.DOTALL)


def unfence(text: str) -> tuple[str, bool]:
    m = _FENCE.match(text.strip())
    return (m.group(1).strip(), True) if m else (text, False)


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


def _fewshot(seeds: list[Example], k: int) -> list[tuple[str, str]]:
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
    shots = _fewshot(seeds, opts.fewshot)
    params: dict[str, Any] = {"temperature": opts.answer_temperature, "max_tokens": max_tokens}
    if (rf := P.response_format(run.contract, run.schema)) is not None:
        params["response_format"] = rf
    host = endpoint_host(run.teacher.client.base_url)
    rows: dict[int, dict[str, Any]] = {}
    finished = [0]

    def work(indexed: tuple[int, Prompt], stop: threading.Event) -> dict[str, Any] | None:
        index, prompt = indexed
        chat = P.answer_messages(system, shots, prompt.chat)
        found = _one_answer(run, chat, params, stop, first=index == 0)
        if found is None:
            return None
        text, reply, key = found
        if restyle is not None:
            text = restyle(json.loads(text))
        turns = ([{"role": "system", "content": project.system_prompt}] if project.system_prompt else []) + prompt.chat
        return {"messages": [*turns, {"role": "assistant", "content": text}],
                PROVENANCE: {"source": TEACHER, "teacher_model": opts.teacher_model, "answered_by": reply.model,
                             "base_url_host": host, "request_sha256": key, "created": reply.created,
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
                first: bool) -> tuple[str, Any, str] | None:
    """An answer that meets the contract, with its reply and request key; None (logged) when there is none."""
    problems: list[str] = []
    limit = params["max_tokens"]
    asked = _snippet(chat)
    for attempt in range(run.opts.max_attempts):
        try:
            if first and attempt == 0:
                got = run.first(chat, params)
                if got is None:
                    run.count("failed_requests")
                    run.count("dropped")
                    return None
                reply, key = got
            else:
                reply, key = run.teacher.ask(chat, params, stop)
        except RequestFailed as exc:
            if exc.reason != "cancelled":
                run.count("failed_requests")
                run.count("dropped")
                run.note("dropped", reason=f"request failed: {exc.reason}", prompt=asked)
            return None
        text, fenced = unfence((reply.content or "").strip())
        if reply.finish_reason == "length":
            run.count("truncated")
            problems = [f"was cut off at the token limit ({limit})"]
            limit = min(4 * params["max_tokens"], 2 * limit)  # the same question with more room
            params = {**params, "max_tokens": limit}
            continue
        if not text:
            run.count("empty")
            problems = ["is empty"]
        else:
            problems = run.contract.check(text).problems
        if not problems:
            run.count("ok")
            run.count("code_fences_removed", fenced)
            return text, reply, key
        run.count("retried_for_contract")
        chat = P.fix_messages(chat, text or "(empty)", problems)
    run.count("dropped")
    run.note("dropped", reason=f"no answer met the contract in {run.opts.max_attempts} attempts: "
             + "; ".join(problems), prompt=asked)
    return None


def _snippet(chat: list[dict[str, str]]) -> str:
    users = [m["content"] for m in chat if m["role"] == "user"]
    text = " ".join((users[-1] if users else "").split())
    return text[:200] + ("..." if len(text) > 200 else "")
