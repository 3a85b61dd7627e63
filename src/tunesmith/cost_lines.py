"""The parts of `tunesmith cost` priced by the token: its data types, the rows it counts, and the
teacher's and the judge's lines (tokens of the real requests x the model's token price)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tunesmith import cost_tables as T
from tunesmith.project import Project

ITERATIONS = 3
#: Seed rows whose teacher prompts are counted, at most (evenly spaced over the split).
MAX_MEASURED = 500
Backend = Literal["local", "openai"]


@dataclass
class CostLine:
    #: teacher | judge | train_local | train_hosted | inference_self_hosted | inference_hosted
    id: str
    what: str
    inputs: dict[str, Any]
    #: None when a price is unknown (a note says what fixes it)
    usd: float | None
    #: where the price comes from (a dated table, a setting, a flag)
    source: str
    #: "once", "run" (paid again every iteration) or "1M tokens" (running cost, not in the total)
    per: str
    #: the sum with its numbers, for people
    formula: str = ""
    #: part of the subtotal
    counted: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["usd"] = None if self.usd is None else round(self.usd, 6)
        return d


@dataclass
class CostReport:
    lines: list[CostLine]
    subtotal_usd: float
    iterations: int
    total_usd: float
    backend: str
    notes: list[str] = field(default_factory=list)
    tables: dict[str, str] = field(default_factory=dict)
    #: counted lines whose price is unknown (left out of the sums)
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"lines": [ln.to_dict() for ln in self.lines], "subtotal_usd": round(self.subtotal_usd, 6),
                "iterations": self.iterations, "total_usd": round(self.total_usd, 6), "backend": self.backend,
                "complete": not self.missing, "missing": self.missing, "notes": self.notes, "tables": self.tables}


@dataclass
class CostOptions:
    """What the command line may change; None means "from tunesmith.yaml, else the default"."""

    teacher_model: str | None = None
    n: int | None = None
    #: the teacher only labels existing inputs (`generate --inputs`): no plan or input-writing requests
    labelling_only: bool = False
    judge_model: str | None = None
    judge_price: tuple[float, float] | None = None
    hosted_model: str | None = None
    #: which training route the subtotal counts
    backend: Backend = "local"
    gpu: str | None = None
    gpu_dollars_per_hour: float | None = None
    #: time real training steps on this machine (loads the model)
    measure: bool = False
    #: never load the base model's tokenizer: no local-training token count
    no_model: bool = False
    iterations: int = ITERATIONS


@dataclass
class Row:
    """A valid example as trained: its chat, the prompt up to the last answer, and that answer."""

    example: Any
    chat: list[dict[str, str]]
    prompt: list[dict[str, str]]
    answer: str


def read_rows(project: Project, rel: str) -> list[Row] | None:
    """Valid rows of a data file, as trained (the project's system prompt applied); None if it is missing."""
    from tunesmith.data.formats import iter_examples
    from tunesmith.models.chat import to_chat

    path = project.path(rel)
    if path is None or not path.is_file():
        return None
    out = []
    for ex in iter_examples(path):
        if ex.problems:
            continue
        chat = to_chat(ex.messages, project.system_prompt)
        last = max((i for i, m in enumerate(chat) if m["role"] == "assistant"), default=None)
        if last is not None:
            out.append(Row(ex, chat, chat[:last], chat[last]["content"]))
    return out


def count_tokens(counter: Any, text: str) -> int:
    """Tokens of `text` under the counter's encoding; text that looks like a special token counts as text."""
    return len(counter.encoding.encode(text, disallowed_special=()))


def _approximate(counter: Any, line_id: str, notes: list[str]) -> None:
    if not counter.exact:
        notes.append(f"{line_id}: token counts are {counter.describe()}")


def missing_line(what: str, line_id: str, per: str, why: str, notes: list[str], **inputs: Any) -> CostLine:
    """A line whose price is unknown: usd None, and `why` (which names the fix) in the notes."""
    notes.append(f"{line_id}: {why}")
    return CostLine(line_id, what, inputs, None, "unknown", per, formula=f"unknown: {why}")


def _token_line(line_id: str, what: str, per: str, ins: dict[str, Any], price: Any, counted: str, fix: str,
                notes: list[str]) -> CostLine:
    """prompt_tokens and completion_tokens (in `ins`) x a per-1M price; unknown, with `fix`, without one."""
    model, tokens_in, tokens_out = ins[f"{line_id}_model"], ins["prompt_tokens"], ins["completion_tokens"]
    if price is None:
        return missing_line(what, line_id, per, f"{model} is not in the price table: {fix}", notes, **ins)
    ins["price_per_1m"] = {"input": price.input_per_m, "output": price.output_per_m}
    formula = (f"{counted} = {tokens_in:,} in + {tokens_out:,} out tokens at ${T.money(price.input_per_m)}/"
               f"${T.money(price.output_per_m)} per 1M")
    return CostLine(line_id, what, ins, price.cost(tokens_in, tokens_out), price.source, per, formula)


# --- teacher and judge: tokens x token price ---------------------------------------------------------


def teacher_line(project: Project, opts: CostOptions, train: list[Row] | None, notes: list[str]) -> CostLine:
    from tunesmith.data.checks.contract import AnswerContract
    from tunesmith.distill import prompts as P
    from tunesmith.distill.answers import fewshot
    from tunesmith.distill.inputs import user_text
    from tunesmith.distill.prices import price_for
    from tunesmith.train.hosted.tokens import counter_for

    g, what = project.generate, "teacher generation"
    model, n = opts.teacher_model or g.teacher_model, opts.n or g.n
    if not model:
        return CostLine("teacher", what, {"teacher_model": None}, 0.0, "no teacher configured", "once",
                        "no teacher: generate.teacher_model is not set (--teacher-model prices one)")
    if not train:
        return missing_line(what, "teacher", "once", "no training split to measure the teacher's requests on: run "
                            "`tunesmith split` first", notes, teacher_model=model, n=n)
    counter = counter_for(model)
    _approximate(counter, "teacher", notes)
    contract, schema = AnswerContract.for_project(project), project.load_schema()
    seeds = [r.example for r in train]
    inputs = [user_text(ex) for ex in seeds]
    system = P.answer_system(project.task, project.system_prompt, contract, schema)
    shots = fewshot(seeds, g.fewshot)
    step = math.ceil(len(inputs) / MAX_MEASURED)  # a large split: every step-th seed is enough for a mean
    prompt_each = [counter.chat_tokens(P.answer_messages(system, shots, [{"role": "user", "content": t}]))
                   for t in inputs[::step]]
    mean_prompt = sum(prompt_each) / len(prompt_each)
    mean_answer = sum(count_tokens(counter, r.answer) for r in train) / len(train)
    tokens_in, tokens_out = n * mean_prompt, n * mean_answer
    writing: dict[str, Any] = {"skipped": "--labelling-only: the teacher only answers existing inputs"}
    if not opts.labelling_only:
        writing = _input_writing(project, counter, contract, inputs, n)
        tokens_in, tokens_out = tokens_in + writing["prompt_tokens"], tokens_out + writing["completion_tokens"]
    total_in, total_out = round(tokens_in), round(tokens_out)
    price = price_for(model, (g.price.input, g.price.output) if g.price else None)
    ins = {"teacher_model": model, "n": n, "measured_on": f"{len(prompt_each)} of {len(train)} seed rows of {project.data.train}",
           "fewshot": len(shots), "prompt_tokens_per_answer": round(mean_prompt, 2),
           "answer_tokens_per_answer": round(mean_answer, 2), "input_writing": writing, "prompt_tokens": total_in,
           "completion_tokens": total_out, "tokenizer": counter.describe()}
    shown_sum = (f"{n:,} answers x ({mean_prompt:,.1f} prompt + {mean_answer:,.1f} answer tokens, mean over "
                 f"{len(prompt_each)} seeds)" + ("" if opts.labelling_only else
                                           f" + {writing['input_requests'] + 1} input-writing requests"))
    fix = "set generate.price: {input, output} (US$ per 1M tokens) in tunesmith.yaml"
    return _token_line("teacher", what, "once", ins, price, shown_sum, fix, notes)


def _input_writing(project: Project, counter: Any, contract: Any, inputs: list[str], n: int) -> dict[str, Any]:
    """The requests `generate` sends before any answer: one diversity plan, then new inputs PER_REQUEST at a
    time (OVERSHOOT against dedup losses), each shown a few seeds, in the order and with the seeds it picks."""
    from tunesmith.distill import prompts as P
    from tunesmith.distill.generate import OVERSHOOT, PER_REQUEST, SEEDS_PER_REQUEST

    seed, task, system = project.generate.seed, project.task, project.system_prompt
    shown = random.Random(f"{seed}:plan").sample(inputs, min(8, len(inputs)))
    topics = max(5, min(50, math.ceil(n / 10)))
    tokens_in = counter.chat_tokens(P.plan_messages(task, system, contract, shown, topics))
    tokens_out = topics * T.TOKENS_PER_TOPIC + count_tokens(counter, '{"topics": []}')
    requests = math.ceil(n * OVERSHOOT / PER_REQUEST)
    for i in range(requests):
        r = random.Random(f"{seed}:0:{i}")
        req = P.InputRequest(i, 0, " ".join(["topic"] * T.TOKENS_PER_TOPIC), r.choice(P.KIND_CYCLE),
                             r.choice(P.LENGTH_CYCLE), PER_REQUEST)
        shown = random.Random(f"{seed}:0:{i}:seeds").sample(inputs, min(SEEDS_PER_REQUEST, len(inputs)))
        tokens_in += counter.chat_tokens(P.input_messages(task, system, contract, shown, req))
        # the reply: PER_REQUEST new inputs as long as the seeds shown, in the JSON object asked for
        reply = {"inputs": [shown[k % len(shown)] for k in range(PER_REQUEST)]}
        tokens_out += count_tokens(counter, json.dumps(reply, ensure_ascii=False))
    return {"plan_requests": 1, "topics": topics, "input_requests": requests, "inputs_per_request": PER_REQUEST,
            "overshoot": OVERSHOOT, "prompt_tokens": tokens_in, "completion_tokens": tokens_out}


def judge_line(project: Project, opts: CostOptions, test: list[Row] | None, notes: list[str]) -> CostLine:
    from tunesmith.distill.prices import Price, price_for
    from tunesmith.judge.results import RubricInput
    from tunesmith.judge.prompts import pairwise_messages, rubric_messages
    from tunesmith.train.hosted.tokens import counter_for

    j, what = project.eval.judge, "LLM-judge evaluation"
    model = opts.judge_model or (j.model if j else None)
    if model is None:
        return CostLine("judge", what, {"judge_model": None}, 0.0, "no judge configured", "run",
                        "no judge: eval.judge is not set, so eval runs without one (--judge-model prices one)")
    if not test:
        return missing_line(what, "judge", "run", "no sealed test set to count: run `tunesmith split` first", notes,
                            judge_model=model)
    counter = counter_for(model)
    _approximate(counter, "judge", notes)
    pairwise = j.pairwise if j else True
    tokens_in = 0
    for i, r in enumerate(test):  # the model's answers are not known yet: as long as the expected ones
        prompt = "\n".join(m["content"] for m in r.prompt if m["role"] == "user")
        rubric = counter.chat_tokens(rubric_messages(RubricInput(str(i), prompt, r.answer, r.answer)))
        pair = counter.chat_tokens(pairwise_messages(prompt, r.answer, r.answer, r.answer))
        tokens_in += 2 * rubric + (2 * pair if pairwise else 0)
    rubric_out = count_tokens(counter, T.TYPICAL_RUBRIC_REPLY)
    pair_out = count_tokens(counter, T.TYPICAL_PAIRWISE_REPLY)
    calls = 2 + (2 if pairwise else 0)
    tokens_out = len(test) * (2 * rubric_out + (2 * pair_out if pairwise else 0))
    price = Price(*opts.judge_price, "--judge-price") if opts.judge_price else price_for(model)
    if price is not None and not opts.judge_price:
        price = Price(price.input_per_m, price.output_per_m, price.source.replace("set generate.price", "pass --judge-price"))
    ins = {"judge_model": model, "test_items": len(test), "calls_per_item": calls,
           "calls": {"rubric": "tuned + base", "pairwise": "2 orders" if pairwise else "off (eval.judge.pairwise)"},
           "prompt_tokens": tokens_in, "completion_tokens": tokens_out,
           "reply_tokens": {"rubric": rubric_out, "pairwise": pair_out}, "answers_assumed": "as long as the expected ones",
           "tokenizer": counter.describe()}
    fix = "pass --judge-price INPUT,OUTPUT (US$ per 1M tokens)"
    return _token_line("judge", what, "run", ins, price, f"{len(test)} test items x {calls} calls", fix, notes)
