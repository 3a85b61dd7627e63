"""`tunesmith generate`: a teacher model writes inputs and answers them under the output contract.

    seeds (the train split, never the test set)
      -> a diversity plan (topics / personas)          one request, sent first and alone
      -> new inputs: kind (typical, edge case, error path) x length, rounds until N survive dedup
      -> dedup against each other, train and the sealed test set (check's MinHash index)
      -> answers under the project's system prompt and contract (JSON modes where the endpoint takes them),
         each validated by check's code and retried with the problem shown, else dropped to the log
      -> OUT (default generate.output): chat rows with provenance, review status "unreviewed"

`--inputs FILE` skips the first three steps: the teacher only labels the user's own inputs. Every
request and reply is cached in ``.tunesmith/teacher-cache.sqlite``: a run killed half-way and run
again sends only what was never answered, and writes the same file.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.checks.contract import AnswerContract
from tunesmith.data.diversity import hashed_vectors, k_center
from tunesmith.data.formats import Example, iter_examples
from tunesmith.distill import prompts as P
from tunesmith.distill.inputs import DedupReport, InputFilter, Prompt, read_inputs, user_text
from tunesmith.distill.provenance import PROVENANCE, REVIEW, TEACHER, row_status
from tunesmith.distill.teacher import Tally, Teacher, TeacherError
from tunesmith.errors import DataError, UsageError
from tunesmith.inference.openai_client import (
    ChatClient, EndpointRefused, RequestCache, RequestFailed, RetryPolicy, endpoint_host, run_concurrently,
)
from tunesmith.io import write_jsonl_atomic
from tunesmith.project import Project

#: Inputs asked for per request, the surplus asked for against dedup losses, and rounds before giving up.
PER_REQUEST = 8
OVERSHOOT = 1.25
MAX_ROUNDS = 4
SEEDS_PER_REQUEST = 4
Progress = Callable[[str, int, int], None]


@dataclass
class GenerateOptions:
    """Resolved settings: defaults < tunesmith.yaml `generate:` < flags (`options_for`)."""

    teacher_model: str
    base_url: str | None
    api_key: str | None
    n: int
    output: Path
    inputs_file: Path | None = None
    concurrency: int = 8
    temperature: float = 0.9
    answer_temperature: float = 0.2
    max_attempts: int = 3
    max_tokens: int | None = None
    timeout: float = 120.0
    fewshot: int = 3
    seed: int = 0
    price: tuple[float, float] | None = None
    max_retries: int = 5
    #: first wait after a failed request, in seconds (doubles per retry, unless Retry-After says)
    backoff: float = 1.0
    #: replace a file whose reviewed rows this run would not reproduce
    force: bool = False


@dataclass
class GenerateResult:
    output: Path
    log: Path
    generation: str
    rows: int
    inputs: dict[str, Any]
    answers: dict[str, int]
    tally: Tally
    #: review decisions carried over from the file being replaced
    kept_reviews: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "log": str(self.log), "generation": self.generation, "rows": self.rows,
                "inputs": self.inputs, "answers": self.answers, "usage": self.tally.to_dict(),
                "kept_reviews": self.kept_reviews, "warnings": self.warnings}


def options_for(project: Project, flags: dict[str, Any]) -> GenerateOptions:
    """Defaults < the project's `generate:` section < flags (None means not given)."""
    import os

    g = project.generate
    given = {k: v for k, v in flags.items() if v is not None}
    model = given.get("teacher_model") or g.teacher_model
    if not model:
        raise UsageError("no teacher model: name the stronger model that writes the data",
                         "pass --teacher-model NAME (e.g. gpt-4o-mini), or set generate.teacher_model in tunesmith.yaml")
    output = given.get("output")
    output = Path(output) if output is not None else project.path(g.output)
    inputs = given.get("inputs_file")
    return GenerateOptions(
        teacher_model=model, base_url=given.get("base_url") or g.base_url, api_key=os.environ.get(g.api_key_env),
        n=int(given.get("n", g.n)), output=output, inputs_file=Path(inputs) if inputs else None,
        concurrency=int(given.get("concurrency", g.concurrency)), temperature=g.temperature,
        answer_temperature=g.answer_temperature, max_attempts=g.max_attempts, max_tokens=g.max_tokens,
        timeout=float(given.get("timeout", g.timeout)), fewshot=g.fewshot, seed=g.seed,
        price=(g.price.input, g.price.output) if g.price else None, force=bool(given.get("force", False)))


# --- where the run starts ------------------------------------------------------------------------


def _guard_output(project: Project, out: Path) -> None:
    from tunesmith.data.split import seal_path_for

    protected = {"data.source": project.data.source, "data.train": project.data.train, "data.test": project.data.test,
                 "data.regression": project.data.regression}
    target = out.resolve()
    for role, rel in protected.items():
        path = project.path(rel)
        if path is not None and path.resolve() == target:
            raise UsageError(f"{out} is the project's {role}: generate never writes over the project's data",
                             "write to its own file (-o generated.jsonl), review it, then add the export to data.source")
    test = project.path(project.data.test)
    if test is not None and seal_path_for(test).resolve() == target:
        raise UsageError(f"{out} is the seal of the test set", "pass another -o")
    if out.exists() and not out.is_file():
        raise UsageError(f"{out} is not a regular file", "pass a file path with -o")


def _valid_rows(path: Path) -> list[Example]:
    return [ex for ex in iter_examples(path) if not ex.problems]


def _seeds_and_references(project: Project) -> tuple[list[Example], list[str], list[str]]:
    """Seed examples (the train split), and the texts new inputs must not repeat: train's and test's."""
    train = project.path(project.data.train)
    test = project.path(project.data.test)
    source = project.path(project.data.source)
    if train is None or not train.exists():
        if source is not None and source.exists():
            raise DataError(f"{train}: no training split yet, so no seed examples the sealed test set cannot see",
                            f"run `tunesmith split -p {project.root}` first: the test set is sealed before the "
                            "teacher sees any example")
        return [], [], []  # no data at all yet: the teacher starts from the task sentence
    seeds = _valid_rows(train)
    test_texts = [user_text(ex) for ex in _valid_rows(test)] if test is not None and test.exists() else []
    return seeds, [user_text(ex) for ex in seeds], test_texts


def _generation_id(project: Project, opts: GenerateOptions, inputs_sha: str | None) -> str:
    blob = json.dumps({"task": project.task, "system": project.system_prompt, "output": project.resolved()["output"],
                       "model": opts.teacher_model, "base_url": opts.base_url, "n": opts.n, "seed": opts.seed,
                       "inputs": inputs_sha}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --- replies -----------------------------------------------------------------------------------------

_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n(.*?)\n?```$", re.DOTALL)


def _unfence(text: str) -> tuple[str, bool]:
    m = _FENCE.match(text.strip())
    return (m.group(1).strip(), True) if m else (text, False)


def _json_list(text: str | None, key: str) -> tuple[list[str] | None, str]:
    """The list under `key` in a JSON reply (or a bare list); items that are not strings are JSON-encoded."""
    if not text or not text.strip():
        return None, "the reply was empty"
    body, _ = _unfence(text)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return None, f"it is not JSON ({exc})"
    if isinstance(value, dict):
        value = value.get(key)
    if not isinstance(value, list):
        return None, f"it has no list under {key!r}"
    items = [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in value]
    return [v.strip() for v in items if v and v.strip()], ""


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


# --- the run -----------------------------------------------------------------------------------------


class _Run:
    def __init__(self, project: Project, opts: GenerateOptions, progress: Progress | None) -> None:
        from tunesmith.distill.prices import price_for

        self.project, self.opts = project, opts
        self.progress = progress or (lambda _stage, _done, _total: None)
        self.contract = AnswerContract.for_project(project)
        self.schema = project.load_schema()
        self.tally = Tally(price=price_for(opts.teacher_model, opts.price))
        self.log: list[dict[str, Any]] = []
        self.log_lock = threading.Lock()
        cache = RequestCache(project.root / ".tunesmith" / "teacher-cache.sqlite")
        client = ChatClient(opts.base_url, opts.teacher_model, api_key=opts.api_key, timeout=opts.timeout,
                            policy=RetryPolicy(max_retries=opts.max_retries, backoff=opts.backoff), cache=cache, what="teacher")
        self.teacher = Teacher(client, self.tally)
        self.answers: dict[str, int] = {"ok": 0, "dropped": 0, "retried_for_contract": 0, "truncated": 0, "empty": 0,
                                        "code_fences_removed": 0, "failed_requests": 0}
        self._count_lock = threading.Lock()

    def count(self, key: str, n: int = 1) -> None:
        with self._count_lock:
            self.answers[key] += n

    def close(self) -> None:
        self.teacher.client.close()
        if self.teacher.client.cache is not None:
            self.teacher.client.cache.close()

    def note(self, event: str, **data: Any) -> None:
        with self.log_lock:
            self.log.append({"event": event, **data})

    def first(self, messages: list[dict[str, str]], params: dict[str, Any]) -> tuple[Any, str] | None:
        """The run's first request, sent alone: an endpoint that cannot be reached stops the run here."""
        try:
            return self.teacher.ask(messages, params)
        except RequestFailed as exc:
            if exc.unreachable:
                raise TeacherError(f"cannot reach the teacher at {self.teacher.client.base_url}: {exc.reason}",
                                   "start the server or fix --base-url (an OpenAI-compatible base URL, usually "
                                   "ending in /v1)") from None
            self.note("request_failed", stage="first", reason=exc.reason)
            return None


def generate(project: Project, opts: GenerateOptions, *, progress: Progress | None = None,
             on_start: Callable[[Tally], None] | None = None) -> GenerateResult:
    """Write `opts.output` from the teacher; see the module docstring. Raises TeacherError when the
    teacher cannot be used at all, and EndpointRefused-based TeacherError on 401/403/404."""
    _guard_output(project, opts.output)
    user_prompts = read_inputs(opts.inputs_file) if opts.inputs_file is not None else None
    seeds, train_texts, test_texts = _seeds_and_references(project)
    inputs_sha = None
    if opts.inputs_file is not None:
        from tunesmith.io import sha256_file

        inputs_sha = sha256_file(opts.inputs_file)
    generation = _generation_id(project, opts, inputs_sha)
    run = _Run(project, opts, progress)
    if on_start is not None:
        on_start(run.tally)
    warnings: list[str] = []
    if not seeds:
        warnings.append("no seed examples (no training split): the teacher works from the task sentence alone")
    try:
        filt = InputFilter(project.checks.near_duplicate_threshold)
        filt.add_reference(train_texts, "train")
        filt.add_reference(test_texts, "test")
        dedup = DedupReport()
        if user_prompts is not None:
            prompts = filt.keep(user_prompts, dedup, limit=None)
        else:
            prompts = _new_inputs(run, seeds, filt, dedup)
        rows = _answer_all(run, prompts, seeds, generation)
    except EndpointRefused as exc:
        raise TeacherError(exc.message, "check --teacher-model, --base-url and the API key "
                           f"({project.generate.api_key_env}); nothing already answered is lost: it is cached") from None
    finally:
        for kind, times in run.teacher.client.retries.items():
            run.tally.count(f"retried after {kind}", times)
        run.close()
    if not rows:
        reasons = [e.get("reason", "") for e in run.log if e.get("reason")][:5]
        raise TeacherError("the teacher produced no usable example", "see the reasons below; they are in the log too",
                           details=reasons)
    rows, kept_reviews = _carry_reviews(opts.output, rows, opts.force)
    write_jsonl_atomic(opts.output, rows)
    log_path = opts.output.with_name(opts.output.name + ".log")
    write_jsonl_atomic(log_path, run.log)
    if run.tally.other_models:
        warnings.append("the endpoint answered as " + ", ".join(sorted(run.tally.other_models))
                        + f" when asked for {opts.teacher_model}")
    inputs = {"source": str(opts.inputs_file) if opts.inputs_file else "generated", **dedup.to_dict()}
    return GenerateResult(opts.output, log_path, generation, len(rows), inputs, run.answers, run.tally,
                          kept_reviews, warnings)


# --- inputs ------------------------------------------------------------------------------------------


def _ask_json_list(run: _Run, messages: list[dict[str, str]], params: dict[str, Any], key: str,
                   stop: threading.Event | None, first: bool = False) -> list[str]:
    """Ask, read the list under `key`; a reply that is not that JSON is retried with the reason shown."""
    for attempt in range(run.opts.max_attempts):
        if first and attempt == 0:
            got = run.first(messages, params)
            if got is None:
                return []
            reply, _key = got
        else:
            try:
                reply, _key = run.teacher.ask(messages, params, stop)
            except RequestFailed as exc:
                run.note("request_failed", stage=key, reason=exc.reason)
                return []
        items, why = _json_list(reply.content, key)
        if items is not None:
            return items
        run.tally.count(f"{key} reply not readable JSON")
        messages = P.json_fix(messages, reply.content or "(empty)", why)
    run.note("dropped_request", stage=key, reason=f"no readable {key} list after {run.opts.max_attempts} attempts")
    return []


def _new_inputs(run: _Run, seeds: list[Example], filt: InputFilter, dedup: DedupReport) -> list[Prompt]:
    opts, project = run.opts, run.project
    seed_inputs = [user_text(ex) for ex in seeds]
    rng = random.Random(f"{opts.seed}:plan")
    shown = rng.sample(seed_inputs, min(8, len(seed_inputs)))
    n_topics = max(5, min(50, math.ceil(opts.n / 10)))
    plan = P.plan_messages(project.task, project.system_prompt, run.contract, shown, n_topics)
    run.progress("plan", 0, 1)
    topics = _ask_json_list(run, plan, {"temperature": opts.temperature, "max_tokens": 2048}, "topics", None, first=True)
    run.note("plan", topics=topics)
    run.progress("plan", 1, 1)
    kept: list[Prompt] = []
    asked = 0
    for rnd in range(MAX_ROUNDS):
        need = opts.n - len(kept)
        if need <= 0:
            break
        requests = []
        for i in range(math.ceil(need * OVERSHOOT / PER_REQUEST)):
            r = random.Random(f"{opts.seed}:{rnd}:{i}")
            topic = topics[(asked + i) % len(topics)] if topics else None
            requests.append(P.InputRequest(i, rnd, topic, r.choice(P.KIND_CYCLE), r.choice(P.LENGTH_CYCLE), PER_REQUEST))
        asked += len(requests)
        replies: dict[int, list[str]] = {}

        def work(req: P.InputRequest, stop: threading.Event) -> list[str]:
            r = random.Random(f"{opts.seed}:{req.round}:{req.index}:seeds")
            shown = r.sample(seed_inputs, min(SEEDS_PER_REQUEST, len(seed_inputs)))
            chat = P.input_messages(project.task, project.system_prompt, run.contract, shown, req)
            return _ask_json_list(run, chat, {"temperature": opts.temperature, "max_tokens": 4096}, "inputs", stop)

        def done(index: int, items: list[str]) -> None:
            replies[index] = items
            run.progress("inputs", len(kept) + sum(map(len, replies.values())), opts.n)

        run_concurrently(requests, work, concurrency=opts.concurrency, on_done=done)
        candidates = [Prompt([{"role": "user", "content": t}], "generated")
                      for i in sorted(replies) for t in replies[i]]
        fresh = filt.keep(candidates, dedup, limit=need)
        kept += fresh
        run.note("round", round=rnd + 1, requests=len(requests), candidates=len(candidates), kept=len(fresh))
        if not fresh:
            break  # the teacher only repeats itself now
    run.progress("inputs", len(kept), opts.n)
    return kept


# --- answers -----------------------------------------------------------------------------------------


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


def _answer_all(run: _Run, prompts: list[Prompt], seeds: list[Example], generation: str) -> list[dict[str, Any]]:
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


def _one_answer(run: _Run, chat: list[dict[str, str]], params: dict[str, Any], stop: threading.Event,
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
        text, fenced = _unfence((reply.content or "").strip())
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


# --- the output file ---------------------------------------------------------------------------------


def _carry_reviews(out: Path, rows: list[dict[str, Any]], force: bool) -> tuple[list[dict[str, Any]], int]:
    """Rows of the file being replaced that a person already reviewed are kept as reviewed (matched by
    request hash); a run that would lose reviewed rows stops unless `force`."""
    if not out.is_file():
        return rows, 0
    from tunesmith.data.reader import iter_raw

    reviewed: dict[str, dict[str, Any]] = {}
    for raw in iter_raw(out):
        status = row_status(raw.value) if raw.error is None else None
        if status not in (None, "unreviewed"):
            key = raw.value[PROVENANCE].get("request_sha256")  # type: ignore[index]
            if isinstance(key, str):
                reviewed[key] = raw.value  # type: ignore[assignment]
    if not reviewed:
        return rows, 0
    new_keys = {r[PROVENANCE]["request_sha256"] for r in rows}
    lost = [k for k in reviewed if k not in new_keys]
    if lost and not force:
        raise UsageError(f"{out} holds {len(lost)} reviewed row(s) this run does not produce: replacing it would lose "
                         "those review decisions",
                         f"write elsewhere with -o, or pass --force to replace {out}")
    out_rows = [reviewed.get(r[PROVENANCE]["request_sha256"], r) for r in rows]
    return out_rows, sum(1 for r in rows if r[PROVENANCE]["request_sha256"] in reviewed)
