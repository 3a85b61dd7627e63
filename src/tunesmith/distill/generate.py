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
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.formats import Example, iter_examples
from tunesmith.distill import prompts as P
from tunesmith.distill.answers import answer_all
from tunesmith.distill.inputs import DedupReport, InputFilter, Prompt, read_inputs, user_text
from tunesmith.distill.provenance import PROVENANCE, row_status
from tunesmith.distill.session import GenerateOptions, Progress, Session
from tunesmith.distill.teacher import Tally, TeacherError
from tunesmith.errors import DataError, UsageError
from tunesmith.inference.openai_client import (
    EndpointRefused, RequestFailed, api_key_from, endpoint_host, resolve_base_url,
)
from tunesmith.inference.concurrent import run_concurrently
from tunesmith.inference.replies import unfence
from tunesmith.io import write_jsonl_atomic
from tunesmith.project import Project

#: Inputs asked for per request, the surplus asked for against dedup losses, and rounds before giving up.
PER_REQUEST = 8
OVERSHOOT = 1.25
MAX_ROUNDS = 4
SEEDS_PER_REQUEST = 4


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
    g = project.generate
    given = {k: v for k, v in flags.items() if v is not None}
    model = given.get("teacher_model") or g.teacher_model
    if not model:
        raise UsageError("no teacher model: name the stronger model that writes the data",
                         "pass --teacher-model NAME (e.g. gpt-4o-mini), or set generate.teacher_model in tunesmith.yaml")
    base_url = resolve_base_url(given.get("base_url") or g.base_url)
    api_key = api_key_from(g.api_key_env)
    if api_key in (None, "none") and endpoint_host(base_url) == "api.openai.com":
        raise UsageError(f"{g.api_key_env} is not set: the teacher at {base_url} needs an API key",
                         f"export {g.api_key_env}=sk-... (or point --base-url at another OpenAI-compatible server)")
    output = given.get("output")
    output = Path(output) if output is not None else project.path(g.output)
    inputs = given.get("inputs_file")
    return GenerateOptions(
        teacher_model=model, base_url=base_url, api_key=api_key,
        n=int(given.get("n", g.n)), output=output, inputs_file=Path(inputs) if inputs else None,
        concurrency=int(given.get("concurrency", g.concurrency)), temperature=g.temperature,
        answer_temperature=g.answer_temperature, max_attempts=g.max_attempts, max_tokens=g.max_tokens,
        timeout=float(given.get("timeout", g.timeout)), fewshot=g.fewshot, seed=g.seed,
        price=(g.price.input, g.price.output) if g.price else None, force=bool(given.get("force", False)))


# --- where the run starts ------------------------------------------------------------------------


def _guard_output(project: Project, out: Path, inputs: Path | None) -> None:
    from tunesmith.data.split import seal_path_for

    if inputs is not None and out.resolve() == inputs.resolve():
        raise UsageError(f"-o {out} is the --inputs file: generate never writes over the inputs it reads",
                         "write the rows to their own file, e.g. -o generated.jsonl")

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


def _json_list(text: str | None, key: str) -> tuple[list[str] | None, str]:
    """The list under `key` in a JSON reply (or a bare list); items that are not strings are JSON-encoded."""
    if not text or not text.strip():
        return None, "the reply was empty"
    body, _ = unfence(text)
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


def generate(project: Project, opts: GenerateOptions, *, progress: Progress | None = None,
             on_start: Callable[[Tally], None] | None = None) -> GenerateResult:
    """Write `opts.output` from the teacher; see the module docstring. Raises TeacherError when the
    teacher cannot be used at all, and EndpointRefused-based TeacherError on 401/403/404."""
    _guard_output(project, opts.output, opts.inputs_file)
    user_prompts = read_inputs(opts.inputs_file) if opts.inputs_file is not None else None
    seeds, train_texts, test_texts = _seeds_and_references(project)
    inputs_sha = None
    if opts.inputs_file is not None:
        from tunesmith.io import sha256_file

        inputs_sha = sha256_file(opts.inputs_file)
    generation = _generation_id(project, opts, inputs_sha)
    run = Session(project, opts, progress)
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
        rows = answer_all(run, prompts, seeds, generation)
    except EndpointRefused as exc:
        raise TeacherError(exc.message, "check --teacher-model, --base-url and the API key "
                           f"({project.generate.api_key_env}); nothing already answered is lost: it is cached") from None
    finally:
        for kind, times in run.teacher.client.retries.items():
            run.tally.count(f"retried after {kind}", times)
        run.close()
    log_path = opts.output.with_name(opts.output.name + ".log")
    log = run.ordered_log()
    write_jsonl_atomic(log_path, log)
    if not rows:
        reasons = [e.get("reason", "") for e in log if e.get("reason")][:5]
        raise TeacherError("the teacher produced no usable example",
                           f"see the first reasons below; all of them are in {log_path}", details=reasons)
    rows, kept_reviews = _carry_reviews(opts.output, rows, opts.force)
    write_jsonl_atomic(opts.output, rows)
    if run.tally.other_models:
        warnings.append("the endpoint answered as " + ", ".join(sorted(run.tally.other_models))
                        + f" when asked for {opts.teacher_model}")
    inputs = {"source": str(opts.inputs_file) if opts.inputs_file else "generated", **dedup.to_dict()}
    return GenerateResult(opts.output, log_path, generation, len(rows), inputs, run.answers, run.tally,
                          kept_reviews, warnings)


# --- inputs ------------------------------------------------------------------------------------------


def _ask_json_list(run: Session, messages: list[dict[str, str]], params: dict[str, Any], key: str,
                   stop: threading.Event | None, order: tuple[int, ...], first: bool = False) -> list[str]:
    """Ask, read the list under `key`; a reply that is not that JSON is retried with the reason shown."""
    for attempt in range(run.opts.max_attempts):
        try:
            asked = run.first(messages, params, order) if first and attempt == 0 else run.teacher.ask(messages, params, stop)
        except RequestFailed as exc:
            if exc.reason != "cancelled":
                run.note("request_failed", order, stage=key, reason=exc.reason)
            return []
        if asked is None:
            return []
        content = asked.reply.content
        items, why = _json_list(content, key)
        if items is not None:
            return items
        run.tally.count(f"{key} reply not readable JSON")
        messages = P.json_fix(messages, content or "(empty)", why)
    run.note("dropped_request", order, stage=key, reason=f"no readable {key} list after {run.opts.max_attempts} attempts")
    return []


def _new_inputs(run: Session, seeds: list[Example], filt: InputFilter, dedup: DedupReport) -> list[Prompt]:
    opts, project = run.opts, run.project
    seed_inputs = [user_text(ex) for ex in seeds]
    rng = random.Random(f"{opts.seed}:plan")
    shown = rng.sample(seed_inputs, min(8, len(seed_inputs)))
    n_topics = max(5, min(50, math.ceil(opts.n / 10)))
    plan = P.plan_messages(project.task, project.system_prompt, run.contract, shown, n_topics)
    run.progress("plan", 0, 1)
    topics = _ask_json_list(run, plan, {"temperature": opts.temperature, "max_tokens": 2048}, "topics", None, (0,),
                            first=True)
    run.note("plan", (0, 1), topics=topics)
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
            return _ask_json_list(run, chat, {"temperature": opts.temperature, "max_tokens": 4096}, "inputs", stop,
                                  (1, req.round, req.index))

        def done(index: int, items: list[str]) -> None:
            replies[index] = items
            run.progress("inputs", min(opts.n, len(kept) + sum(map(len, replies.values()))), opts.n)

        run_concurrently(requests, work, concurrency=opts.concurrency, on_done=done)
        candidates = [Prompt([{"role": "user", "content": t}], "generated")
                      for i in sorted(replies) for t in replies[i]]
        fresh = filt.keep(candidates, dedup, limit=need)
        kept += fresh
        run.note("round", (1, rnd, len(requests)), round=rnd + 1, requests=len(requests), candidates=len(candidates),
                 kept=len(fresh))
        if not fresh:
            break  # the teacher only repeats itself now
    run.progress("inputs", len(kept), opts.n)
    return kept


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
