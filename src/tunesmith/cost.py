"""`tunesmith cost`: the guide's budget table ("What This Costs, Honestly") for this project's real data.

Every line shows its inputs, so a reader can redo the sum by hand:

    teacher       n answers x (measured prompt + answer tokens) + the input-writing requests, x token price
    judge         test items x (rubric for tuned and base + pairwise in 2 orders) x tokens, x token price
    train_local   tokens per epoch x epochs / tokens/s (measured, or the GPU table), x $/hour
    train_hosted  training-file tokens x epochs x the provider's training price
    inference_*   1M tokens at this project's prompt/answer mix: hosted fine-tune vs a rented GPU

Teacher generation is paid once (its replies are cached); training and judging are paid per run,
and the guide budgets 3 runs ("because the first two will be wrong"). A price that is not known
stays unknown (usd None, and a note naming the setting or flag that fixes it), never guessed.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunesmith import cost_tables as T
from tunesmith.cost_tables import usd_text
from tunesmith.errors import TunesmithError
from tunesmith.project import Project, load_project

ITERATIONS = 3
#: The hosted model priced when tunesmith.yaml names none: the guide's own example.
DEFAULT_HOSTED_MODEL = "gpt-4o-mini"
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
class _Row:
    example: Any
    chat: list[dict[str, str]]
    prompt: list[dict[str, str]]
    answer: str


def _rows(project: Project, rel: str) -> list[_Row] | None:
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
            out.append(_Row(ex, chat, chat[:last], chat[last]["content"]))
    return out


def _tok(counter: Any, text: str) -> int:
    return len(counter.encoding.encode(text, disallowed_special=()))


def _approximate(counter: Any, line_id: str, notes: list[str]) -> None:
    if not counter.exact:
        notes.append(f"{line_id}: token counts are {counter.describe()}")


def _missing(what: str, line_id: str, per: str, why: str, notes: list[str], **inputs: Any) -> CostLine:
    notes.append(f"{line_id}: {why}")
    return CostLine(line_id, what, inputs, None, "unknown", per, formula=f"unknown: {why}")


def _token_line(line_id: str, what: str, per: str, ins: dict[str, Any], price: Any, counted: str, fix: str,
                notes: list[str]) -> CostLine:
    """prompt_tokens and completion_tokens (in `ins`) x a per-1M price; unknown, with `fix`, without one."""
    model, tokens_in, tokens_out = ins[f"{line_id}_model"], ins["prompt_tokens"], ins["completion_tokens"]
    if price is None:
        return _missing(what, line_id, per, f"{model} is not in the price table: {fix}", notes, **ins)
    ins["price_per_1m"] = {"input": price.input_per_m, "output": price.output_per_m}
    formula = (f"{counted} = {tokens_in:,} in + {tokens_out:,} out tokens at ${T.money(price.input_per_m)}/"
               f"${T.money(price.output_per_m)} per 1M")
    return CostLine(line_id, what, ins, price.cost(tokens_in, tokens_out), price.source, per, formula)


# --- teacher and judge: tokens x token price ---------------------------------------------------------


def teacher_line(project: Project, opts: CostOptions, train: list[_Row] | None, notes: list[str]) -> CostLine:
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
        return _missing(what, "teacher", "once", "no training split to measure the teacher's requests on: run "
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
    mean_answer = sum(_tok(counter, r.answer) for r in train) / len(train)
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
    tokens_out = topics * T.TOKENS_PER_TOPIC + _tok(counter, '{"topics": []}')
    requests = math.ceil(n * OVERSHOOT / PER_REQUEST)
    for i in range(requests):
        r = random.Random(f"{seed}:0:{i}")
        req = P.InputRequest(i, 0, " ".join(["topic"] * T.TOKENS_PER_TOPIC), r.choice(P.KIND_CYCLE),
                             r.choice(P.LENGTH_CYCLE), PER_REQUEST)
        shown = random.Random(f"{seed}:0:{i}:seeds").sample(inputs, min(SEEDS_PER_REQUEST, len(inputs)))
        tokens_in += counter.chat_tokens(P.input_messages(task, system, contract, shown, req))
        # the reply: PER_REQUEST new inputs as long as the seeds shown, in the JSON object asked for
        reply = {"inputs": [shown[k % len(shown)] for k in range(PER_REQUEST)]}
        tokens_out += _tok(counter, json.dumps(reply, ensure_ascii=False))
    return {"plan_requests": 1, "topics": topics, "input_requests": requests, "inputs_per_request": PER_REQUEST,
            "overshoot": OVERSHOOT, "prompt_tokens": tokens_in, "completion_tokens": tokens_out}


def judge_line(project: Project, opts: CostOptions, test: list[_Row] | None, notes: list[str]) -> CostLine:
    from tunesmith.distill.prices import Price, price_for
    from tunesmith.evaluate.judge import RubricInput, pairwise_messages, rubric_messages
    from tunesmith.train.hosted.tokens import counter_for

    j, what = project.eval.judge, "LLM-judge evaluation"
    model = opts.judge_model or (j.model if j else None)
    if model is None:
        return CostLine("judge", what, {"judge_model": None}, 0.0, "no judge configured", "run",
                        "no judge: eval.judge is not set, so eval runs without one (--judge-model prices one)")
    if not test:
        return _missing(what, "judge", "run", "no sealed test set to count: run `tunesmith split` first", notes,
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
    rubric_out, pair_out = _tok(counter, T.TYPICAL_RUBRIC_REPLY), _tok(counter, T.TYPICAL_PAIRWISE_REPLY)
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


# --- training: local (GPU-hours) and hosted (billed tokens) ------------------------------------------


def _is_builtin(project: Project) -> bool:
    return project.base_model.startswith("builtin:")


def local_line(project: Project, plan: dict[str, Any], params: tuple[int | None, str], opts: CostOptions,
               notes: list[str]) -> CostLine:
    s, d, what = plan["settings"], plan["derived"], "local training"
    epochs, per_epoch = s["epochs"]["value"], d["tokens_per_epoch"]
    method, device = s.get("method", {}).get("value", "lora"), str(d.get("device", ""))
    trained = round(per_epoch * epochs)
    measured = "seconds_per_step" in d
    step_hours = d["seconds_per_step"] * d["total_steps"] / 3600 if measured else None
    ins: dict[str, Any] = {"tokens_per_epoch": per_epoch, "epochs": epochs, "trained_tokens": trained, "method": method,
                           "device": device, "measured": measured}
    if _is_builtin(project):
        if measured:
            minutes, how = step_hours * 60, f"measured: {d['seconds_per_step']} s/step x {d['total_steps']} steps"
        else:
            tps = T.cpu_tokens_per_s()
            minutes, how = trained / tps / 60, f"{trained:,} tokens / {tps:,.0f} tokens/s, the README's 2-core figure"
        ins["minutes"] = round(minutes, 1)
        source = "measured on this machine" if measured else T.CPU_SOURCE
        return CostLine("train_local", what, ins, 0.0, f"the embedded model trains on this CPU: no GPU cost; time: {source}",
                        "run", f"about {minutes:,.0f} min on this CPU ({how}); no GPU cost")
    gpu = T.pick_gpu(opts.gpu, device)
    here = T.match_gpu(device) if device.startswith("cuda") else None
    if measured and device.startswith("cuda") and (opts.gpu is None or gpu is here):  # timed on the GPU priced
        hours, how, gpu = step_hours, f"measured: {d['seconds_per_step']} s/step x {d['total_steps']} steps", here
    else:
        if measured:
            ins["measured_here"] = f"{step_hours * 60:,.1f} min on {device} (not a GPU figure)"
        if gpu is None:
            return _missing(what, "train_local", "run", f"--gpu {opts.gpu!r} is not in the GPU table ("
                            f"{', '.join(T.GPUS)}): name one of those, or --measure on that GPU", notes, **ins)
        n_params, params_from = params
        if n_params is None:
            return _missing(what, "train_local", "run", f"the base model's size is unknown ({params_from}): "
                            "--measure on a GPU machine times real steps instead", notes, **ins)
        label, size = T.size_class(n_params)
        tps = T.train_tokens_per_s(gpu, size, method)
        hours = trained / tps / 3600
        how = f"{trained:,} tokens / {tps:,.0f} tokens/s, {label} class ({params_from}) at MFU {T.MFU}"
        ins.update(size_class=label, params=n_params, params_from=params_from, tokens_per_s=round(tps, 1),
                   throughput_from=f"{gpu.spec_source} x MFU {T.MFU} (tunesmith/cost_tables.py)")
        if method != "qlora" and not T.fits(gpu, size):
            notes.append(f"train_local: a {label} model's 16-bit weights do not fit a {gpu.name} ({gpu.memory_gb:g} GB): "
                         "QLoRA (train.method: qlora, CUDA) or a larger GPU")
    rate, rate_source = T.hourly_rate(gpu, opts.gpu_dollars_per_hour)
    ins.update(gpu=gpu.name if gpu else device, gpu_hours=round(hours, 4), dollars_per_hour=rate)
    if rate is None:
        return _missing(what, "train_local", "run", f"{T.hours_text(hours)} GPU-hours on {device}, which the GPU table has "
                        "no price for: pass --gpu-dollars-per-hour", notes, **ins)
    formula = f"about {T.hours_text(hours)} GPU-hours on {ins['gpu']} ({how}) x ${T.money(rate)}/hour"
    return CostLine("train_local", what, ins, hours * rate, rate_source, "run", formula)


def _hosted(project: Project, opts: CostOptions) -> tuple[str, Any]:
    """The hosted base model (--hosted-model, hosted.model, else the guide's) and its HostedPrice or None."""
    from tunesmith.train.hosted.prices import hosted_price

    model, p = opts.hosted_model or project.hosted.model or DEFAULT_HOSTED_MODEL, project.hosted.price
    return model, hosted_price(model, (p.training, p.input, p.output) if p else None)


def hosted_plan(project: Project, opts: CostOptions) -> Any:
    """The hosted job's own plan (`train --backend openai --dry-run`): its files, epochs and billed tokens."""
    from tunesmith.train.hosted.plan import plan_hosted

    return plan_hosted(project, {"model": _hosted(project, opts)[0], "allow_unreviewed": True})


def hosted_line(project: Project, opts: CostOptions, notes: list[str]) -> CostLine:
    model, what = _hosted(project, opts)[0], "hosted training"
    try:
        plan = hosted_plan(project, opts)
    except TunesmithError as exc:
        why = f"no hosted plan for {model}: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")
        return _missing(what, "train_hosted", "run", why, notes, model=model)
    epochs = plan.hyperparameters["n_epochs"]
    ins = {"model": model, "model_from": "--hosted-model" if opts.hosted_model else "hosted.model" if project.hosted.model
           else "default (the guide's example; set hosted.model)", "train_examples": plan.train_examples,
           "validation_examples": plan.validation_examples, "train_tokens": plan.train_tokens,
           "epochs": plan.billed_epochs, "epochs_from": f"{epochs['source']}: {epochs['why']}",
           "billed_tokens": plan.billed_tokens, "tokenizer": plan.counter}
    if plan.counter.startswith("approx"):
        notes.append(f"train_hosted: token counts are {plan.counter}")
    if plan.price is None:
        return _missing(what, "train_hosted", "run", f"no training price for {model}: set hosted.price.training in "
                        "tunesmith.yaml", notes, **ins)
    ins["training_per_1m"] = plan.price.training_per_m
    formula = (f"{plan.billed_tokens:,} billed tokens ({plan.train_tokens:,} x {plan.billed_epochs} epochs) x "
               f"${plan.price.training_per_m:.2f}/1M")
    return CostLine("train_hosted", what, ins, plan.cost_usd, plan.price.source, "run", formula)


# --- inference per 1M tokens -------------------------------------------------------------------------


def inference_lines(project: Project, opts: CostOptions, train: list[_Row] | None, n_params: int | None,
                    notes: list[str], device: str = "") -> list[CostLine]:
    from tunesmith.train.hosted.tokens import counter_for

    hosted_what, self_what, per = "inference, hosted fine-tune", "inference, self-hosted", "1M tokens"
    if not train:
        why = "no training split to take the prompt/answer mix from: run `tunesmith split` first"
        return [_missing(self_what, "inference_self_hosted", per, why, notes),
                _missing(hosted_what, "inference_hosted", per, why, notes)]
    model, price = _hosted(project, opts)
    counter = counter_for(model)
    p = sum(counter.chat_tokens(r.prompt) for r in train)
    a = sum(_tok(counter, r.answer) for r in train)
    share = p / (p + a)
    mix = {"prompt_share": round(share, 4), "mix_from": f"{len(train)} training rows ({p:,} prompt, {a:,} answer tokens)"}
    lines = [_self_hosted(project, opts, share, mix, n_params, notes, device)]
    if price is None or price.input_per_m is None or price.output_per_m is None:
        lines.append(_missing(hosted_what, "inference_hosted", per, f"no inference price for a fine-tuned {model}: set "
                              "hosted.price.input and .output in tunesmith.yaml", notes, model=model, **mix))
    else:
        usd = share * price.input_per_m + (1 - share) * price.output_per_m
        lines.append(CostLine("inference_hosted", hosted_what, {"model": model, **mix, "input_per_1m": price.input_per_m,
                              "output_per_1m": price.output_per_m}, usd, price.source, per,
                              f"{share:.0%} prompt x ${T.money(price.input_per_m)} + {1 - share:.0%} answer x "
                              f"${T.money(price.output_per_m)} per 1M ({model} fine-tuned)"))
    return lines


def _self_hosted(project: Project, opts: CostOptions, share: float, mix: dict[str, Any], n_params: int | None,
                 notes: list[str], device: str) -> CostLine:
    what, per = "inference, self-hosted", "1M tokens"
    if _is_builtin(project):
        return CostLine("inference_self_hosted", what, mix, 0.0, "the embedded model runs on this CPU", per,
                        "runs on this CPU: no GPU rental (the guide: 'free (local)')")
    gpu = T.pick_gpu(opts.gpu, device)
    if gpu is None or n_params is None:
        why = (f"--gpu {opts.gpu!r} is not in the GPU table ({', '.join(T.GPUS)})" if gpu is None else
               "the base model's size is unknown (a local checkpoint, a GGUF file or a name such as ...-8B tells it)")
        return _missing(what, "inference_self_hosted", per, why, notes, **mix)
    label, size = T.size_class(n_params)
    prefill, decode = T.prefill_tokens_per_s(gpu, size), T.decode_tokens_per_s(gpu, size)
    hours = (share * 1e6 / prefill + (1 - share) * 1e6 / decode) / 3600
    rate, rate_source = T.hourly_rate(gpu, opts.gpu_dollars_per_hour)
    ins = {**mix, "gpu": gpu.name, "size_class": label, "prefill_tokens_per_s": round(prefill, 1),
           "decode_tokens_per_s": round(decode, 1), "decode_streams": T.DECODE_STREAMS, "gpu_hours": round(hours, 5),
           "dollars_per_hour": rate}
    formula = (f"{share:.0%} prompt at {prefill:,.0f} + {1 - share:.0%} answer at {decode:,.0f} tokens/s ({gpu.name}, "
               f"{label} class, {T.DECODE_STREAMS} concurrent requests) = {T.hours_text(hours)} GPU-hours x ${T.money(rate)}/hour")
    return CostLine("inference_self_hosted", what, ins, hours * rate, rate_source, per, formula)


# --- the whole table ---------------------------------------------------------------------------------


def _params(project: Project) -> tuple[int | None, str]:
    """The base model's parameters and where the number comes from, read without loading or downloading
    it (models.size); the embedded model needs none (it trains on this CPU)."""
    from tunesmith.models.size import model_params

    return (None, "") if _is_builtin(project) else model_params(project.base_model)


def _local_plan(project: Project, opts: CostOptions) -> tuple[dict[str, Any] | None, str]:
    """The training plan (no model weights loaded unless --measure), or why there is none."""
    from tunesmith.train.api import plan_training

    try:
        return plan_training(project, {"allow_unreviewed": True}, measure=opts.measure)[1], ""
    except TunesmithError as exc:
        return None, f"no training plan: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")


def estimate_costs(project: Project | str | Path, opts: CostOptions | None = None) -> CostReport:
    """The budget table for `project`; see the module docstring."""
    opts = opts or CostOptions()
    project = project if isinstance(project, Project) else load_project(project)
    notes: list[str] = []
    train, test = _rows(project, project.data.train), _rows(project, project.data.test)
    plan, why = (None, "--no-model: the local line needs the base model's tokenizer") if opts.no_model \
        else _local_plan(project, opts)
    params = _params(project)
    device = str(plan["derived"].get("device", "")) if plan else ""
    lines = [teacher_line(project, opts, train, notes), judge_line(project, opts, test, notes)]
    if plan is not None:
        lines.append(local_line(project, plan, params, opts, notes))
    elif _is_builtin(project):
        lines.append(CostLine("train_local", "local training", {}, 0.0, "the embedded model trains on this CPU: no GPU "
                              "cost", "run", "on this CPU: no GPU cost (time unknown without the plan)"))
    else:
        lines.append(_missing("local training", "train_local", "run", why, notes))
    lines.append(hosted_line(project, opts, notes))
    lines += inference_lines(project, opts, train, params[0], notes, device)
    chosen = "train_local" if opts.backend == "local" else "train_hosted"
    for ln in lines:
        ln.counted = ln.id in ("teacher", "judge", chosen)
    counted = [ln for ln in lines if ln.counted]
    missing = [ln.id for ln in counted if ln.usd is None]
    once = sum(ln.usd for ln in counted if ln.per == "once" and ln.usd is not None)
    per_run = sum(ln.usd for ln in counted if ln.per == "run" and ln.usd is not None)
    notes.append(f"total = once ({usd_text(once)}: teacher replies are cached, a re-run costs nothing) + "
                 f"{opts.iterations} x per run ({usd_text(per_run)}: training + judge), the guide's 'Iteration (3 runs, "
                 f"because the first two will be wrong)'; training route counted: {opts.backend} (--backend)")
    if missing:
        notes.append(f"the sums leave out {', '.join(missing)}: price unknown (see above)")
    if any(ln.id == "judge" and ln.usd for ln in lines):
        notes.append("judge: the base model's rubric calls are cached after the first run, so later runs cost a little less")
    if any(ln.id == "teacher" and ln.usd for ln in lines):
        notes.append("teacher: answers retried for the contract (generate.max_attempts) and extra input rounds after "
                     "dedup losses are not counted")
    return CostReport(lines, once + per_run, opts.iterations, once + opts.iterations * per_run, opts.backend, notes,
                      T.tables(), missing)


def cost_line_for_training(project: Project | str | Path, plan: Any | None, *, backend: Backend = "local",
                           gpu: str | None = None, gpu_dollars_per_hour: float | None = None) -> str:
    """The one line `train --dry-run` and `run` print: what this training run (or hosted job) costs.

    `plan` is the local training plan (`plan_training`'s dict, or a TrainPlan) or, with
    backend="openai", the HostedPlan; None computes it (without loading model weights). Never raises:
    a cost that cannot be worked out says why.
    """
    try:
        project = project if isinstance(project, Project) else load_project(project)
        opts = CostOptions(backend=backend, gpu=gpu, gpu_dollars_per_hour=gpu_dollars_per_hour)
        if backend == "openai":  # the hosted job's own plan says it (HostedPlan.cost_line)
            return "this job: " + (plan if hasattr(plan, "cost_line") else hosted_plan(project, opts)).cost_line()
        plan = plan.to_dict() if hasattr(plan, "to_dict") else plan
        if plan is None:
            plan, why = _local_plan(project, opts)
            if plan is None:
                return f"this run: cost unknown ({why})"
        line = local_line(project, plan, _params(project), opts, [])
    except TunesmithError as exc:
        return f"cost: unknown ({exc.message}" + (f"; {exc.hint})" if exc.hint else ")")
    except (KeyError, TypeError) as exc:  # a plan of another shape (a hosted plan with backend="local")
        return f"cost: unknown (the plan has no {exc})"
    if not line.usd:  # unknown (the formula says why) or free (the embedded model on this CPU)
        return f"this run: {line.formula}"
    return f"this run: {line.formula} = ~{usd_text(line.usd)} ({line.source})"

