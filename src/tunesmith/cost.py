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

from pathlib import Path
from typing import Any

from tunesmith import cost_tables as T
from tunesmith.cost_tables import usd_text
from tunesmith.errors import TunesmithError
from tunesmith.project import Project, load_project
from tunesmith.train.hosted.limits import DEFAULT_MODEL

from tunesmith.cost_lines import (  # CostOptions, CostLine and CostReport are this module's API too
    Backend, CostLine, CostOptions, CostReport, Row, count_tokens, judge_line, missing_line, read_rows, teacher_line,
)


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
            return missing_line(what, "train_local", "run", f"--gpu {opts.gpu!r} is not in the GPU table ("
                                f"{', '.join(T.GPUS)}): name one of those, or --measure on that GPU", notes, **ins)
        n_params, params_from = params
        if n_params is None:
            return missing_line(what, "train_local", "run", f"the base model's size is unknown ({params_from}): "
                                "--measure on a GPU machine times real steps instead", notes, **ins)
        label, size = T.size_class(n_params)
        tps = T.train_tokens_per_s(gpu, size, method)
        hours = trained / tps / 3600
        how = f"{trained:,} tokens / {tps:,.0f} tokens/s, {label} class ({params_from}) at MFU {T.MFU}"
        ins.update(size_class=label, params=n_params, params_from=params_from, tokens_per_s=round(tps, 1),
                   throughput_from=f"{gpu.spec_source} x MFU {T.MFU} (tunesmith/cost_tables.py)")
        from tunesmith.train.device import DeviceInfo
        from tunesmith.train.plan import needs_qlora  # the training plan's own rule

        if method != "qlora" and needs_qlora(DeviceInfo("cuda", gpu.name, True, gpu.memory_gb), int(size)):
            notes.append(f"train_local: a {label} model's 16-bit weights do not fit a {gpu.name} ({gpu.memory_gb:g} GB): "
                         "QLoRA (train.method: qlora, CUDA) or a larger GPU")
    rate, rate_source = T.hourly_rate(gpu, opts.gpu_dollars_per_hour)
    ins.update(gpu=gpu.name if gpu else device, gpu_hours=round(hours, 4), dollars_per_hour=rate)
    if rate is None:
        return missing_line(what, "train_local", "run", f"{T.hours_text(hours)} GPU-hours on {device}, which the GPU table has "
                            "no price for: pass --gpu-dollars-per-hour", notes, **ins)
    formula = f"about {T.hours_text(hours)} GPU-hours on {ins['gpu']} ({how}) x ${T.money(rate)}/hour"
    return CostLine("train_local", what, ins, hours * rate, rate_source, "run", formula)


def _hosted(project: Project, opts: CostOptions) -> tuple[str, Any]:
    """The hosted base model (--hosted-model, hosted.model, else the guide's) and its HostedPrice or None."""
    from tunesmith.train.hosted.prices import hosted_price

    model, p = opts.hosted_model or project.hosted.model or DEFAULT_MODEL, project.hosted.price
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
        return missing_line(what, "train_hosted", "run", why, notes, model=model)
    epochs = plan.hyperparameters["n_epochs"]
    ins = {"model": model, "model_from": "--hosted-model" if opts.hosted_model else "hosted.model" if project.hosted.model
           else "default (the guide's example; set hosted.model)", "train_examples": plan.train_examples,
           "validation_examples": plan.validation_examples, "train_tokens": plan.train_tokens,
           "epochs": plan.billed_epochs, "epochs_from": f"{epochs['source']}: {epochs['why']}",
           "billed_tokens": plan.billed_tokens, "tokenizer": plan.counter}
    if plan.counter.startswith("approx"):
        notes.append(f"train_hosted: token counts are {plan.counter}")
    if plan.price is None:
        return missing_line(what, "train_hosted", "run", f"no training price for {model}: set hosted.price.training in "
                            "tunesmith.yaml", notes, **ins)
    ins["training_per_1m"] = plan.price.training_per_m
    formula = (f"{plan.billed_tokens:,} billed tokens ({plan.train_tokens:,} x {plan.billed_epochs} epochs) x "
               f"${plan.price.training_per_m:.2f}/1M")
    return CostLine("train_hosted", what, ins, plan.cost_usd, plan.price.source, "run", formula)


# --- inference per 1M tokens -------------------------------------------------------------------------


def inference_lines(project: Project, opts: CostOptions, train: list[Row] | None, n_params: int | None,
                    notes: list[str], device: str = "") -> list[CostLine]:
    from tunesmith.train.hosted.tokens import counter_for

    hosted_what, self_what, per = "inference, hosted fine-tune", "inference, self-hosted", "1M tokens"
    if not train:
        why = "no training split to take the prompt/answer mix from: run `tunesmith split` first"
        return [missing_line(self_what, "inference_self_hosted", per, why, notes),
                missing_line(hosted_what, "inference_hosted", per, why, notes)]
    model, price = _hosted(project, opts)
    counter = counter_for(model)
    p = sum(counter.chat_tokens(r.prompt) for r in train)
    a = sum(count_tokens(counter, r.answer) for r in train)
    share = p / (p + a)
    mix = {"prompt_share": round(share, 4), "mix_from": f"{len(train)} training rows ({p:,} prompt, {a:,} answer tokens)"}
    lines = [_self_hosted(project, opts, share, mix, n_params, notes, device)]
    if price is None or price.input_per_m is None or price.output_per_m is None:
        lines.append(missing_line(hosted_what, "inference_hosted", per, f"no inference price for a fine-tuned {model}: set "
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
        return missing_line(what, "inference_self_hosted", per, why, notes, **mix)
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


def _local_plan(project: Project, opts: CostOptions, say: Any = None) -> tuple[dict[str, Any] | None, str]:
    """The training plan (no model weights loaded unless --measure), or why there is none."""
    from tunesmith.train.api import plan_training

    if say is not None:
        say("planning the local run" + (": timing real training steps on this machine" if opts.measure else ""))
    try:
        return plan_training(project, {"allow_unreviewed": True}, say, measure=opts.measure)[1], ""
    except TunesmithError as exc:
        return None, f"no training plan: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")


def _line(build: Any, line_id: str, what: str, per: str, project: Project, opts: CostOptions, *args: Any) -> CostLine:
    """One line, or the reason it has no price (a missing tokenizer package, a bad setting): never the
    whole table failing for one line."""
    try:
        return build(project, opts, *args)
    except TunesmithError as exc:
        return missing_line(what, line_id, per, exc.message + (f" ({exc.hint})" if exc.hint else ""), args[-1])


def estimate_costs(project: Project | str | Path, opts: CostOptions | None = None, *, say: Any = None) -> CostReport:
    """The budget table for `project`; see the module docstring. `say` hears about the slow steps (the
    model's one-time conversion, --measure's timed steps)."""
    opts = opts or CostOptions()
    project = project if isinstance(project, Project) else load_project(project)
    notes: list[str] = []
    train, test = read_rows(project, project.data.train), read_rows(project, project.data.test)
    plan, why = (None, "--no-model: the local line needs the base model's tokenizer") if opts.no_model \
        else _local_plan(project, opts, say)
    params = _params(project)
    device = str(plan["derived"].get("device", "")) if plan else ""
    lines = [_line(teacher_line, "teacher", "teacher generation", "once", project, opts, train, notes),
             _line(judge_line, "judge", "LLM-judge evaluation", "run", project, opts, test, notes)]
    if plan is not None:
        lines.append(local_line(project, plan, params, opts, notes))
    elif _is_builtin(project):
        lines.append(CostLine("train_local", "local training", {}, 0.0, "the embedded model trains on this CPU: no GPU "
                              "cost", "run", "on this CPU: no GPU cost (time unknown without the plan)"))
    else:
        lines.append(missing_line("local training", "train_local", "run", why, notes))
    lines.append(_line(hosted_line, "train_hosted", "hosted training", "run", project, opts, notes))
    try:
        lines += inference_lines(project, opts, train, params[0], notes, device)
    except TunesmithError as exc:  # e.g. no tiktoken: the other lines still stand
        why = exc.message + (f" ({exc.hint})" if exc.hint else "")
        lines += [missing_line("inference, self-hosted", "inference_self_hosted", "1M tokens", why, notes),
                  missing_line("inference, hosted fine-tune", "inference_hosted", "1M tokens", why, notes)]
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
        return f"this run: cost unknown ({exc.message}" + (f"; {exc.hint})" if exc.hint else ")")
    except (KeyError, TypeError) as exc:  # a plan of another shape (a hosted plan with backend="local")
        return f"this run: cost unknown (the plan has no {exc})"
    if not line.usd:  # unknown (the formula says why) or free (the embedded model on this CPU)
        return f"this run: {line.formula}"
    return f"this run: {line.formula} = ~{usd_text(line.usd)} ({line.source})"

