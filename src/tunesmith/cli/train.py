"""`tunesmith train`: plan from the data, print the plan and why, train, record the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from tunesmith.cli import app
from tunesmith.cli._errors import handle_errors
from tunesmith.cli._output import console
from tunesmith.cli._settings import setting_option
from tunesmith.errors import UsageError


def _layers(value: str | None) -> int | str | None:
    if value is None or value.strip().lower() == "all":
        return None if value is None else "all"
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"--layers {value!r} is not a number of layers", "use a positive number (the top N layers) or all")
    return n


def time_budget_flag(value: str | None) -> float | None:
    """--time-budget in seconds (`tunesmith run` takes the same flag)."""
    if value is None:
        return None
    from tunesmith.units import DURATION_FORMS, parse_duration

    try:
        return parse_duration(value)
    except ValueError:
        raise UsageError(f"--time-budget {value!r} is not a training time longer than zero",
                         f"use {DURATION_FORMS}, e.g. --time-budget 10m") from None


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


@app.command()
@handle_errors
def train(
    project: Path = typer.Option(Path("."), "--project", "-p", help="Project directory."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (with measured step time) and stop."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue RUN (id, prefix or 'latest') from its last checkpoint."),
    name: Optional[str] = typer.Option(None, "--name", help="A short name added to the run id."),
    run_id: Optional[str] = typer.Option(None, "--run-id", hidden=True, help="Exact run id (used by multi-process launches)."),
    # the options that set a tunesmith.yaml setting take its field's help (cli/_settings.py)
    method: Optional[str] = setting_option("train.method", "--method"),
    rank: Optional[int] = setting_option("train.rank", "--rank"),
    alpha: Optional[float] = setting_option("train.alpha", "--alpha"),
    layers: Optional[str] = setting_option("train.layers", "--layers"),
    learning_rate: Optional[float] = setting_option("train.learning_rate", "--learning-rate", "--lr"),
    epochs: Optional[float] = setting_option("train.epochs", "--epochs"),
    batch_size: Optional[int] = setting_option("train.batch_size", "--batch-size"),
    effective_batch: Optional[int] = setting_option("train.effective_batch", "--effective-batch"),
    max_length: Optional[int] = setting_option("max_length", "--max-length"),
    eval_every: Optional[int] = setting_option("train.eval_every", "--eval-every"),
    patience: Optional[int] = setting_option("train.patience", "--patience"),
    converge: Optional[bool] = setting_option("train.converge", "--converge/--no-converge"),
    precision: Optional[str] = setting_option("train.precision", "--precision"),
    time_budget: Optional[str] = setting_option("train.time_budget", "--time-budget"),
    seed: Optional[int] = setting_option("train.seed", "--seed"),
    num_processes: Optional[int] = typer.Option(
        None, "--num-processes", min=1,
        help="Processes via accelerate: data-parallel (DDP), or the config's kind with --accelerate-config (default 1, or the config's)."),
    accelerate_config: Optional[Path] = setting_option("train.accelerate_config", "--accelerate-config"),
    num_machines: Optional[int] = typer.Option(None, "--num-machines", "--num_machines", min=1,
                                               help="Machines in a multi-node run (accelerate's --num_machines)."),
    machine_rank: Optional[int] = typer.Option(None, "--machine-rank", "--machine_rank", min=0,
                                               help="This machine's rank in a multi-node run: 0 on the main machine."),
    main_process_ip: Optional[str] = typer.Option(None, "--main-process-ip", "--main_process_ip",
                                                  help="The main (rank 0) machine's address, in a multi-node run."),
    main_process_port: Optional[int] = typer.Option(None, "--main-process-port", "--main_process_port", min=1,
                                                    max=65535, help="The main machine's port, in a multi-node run."),
    print_command: bool = typer.Option(False, "--print-command",
                                       help="Print the `accelerate launch` command that would run, and stop."),
    allow_unreviewed: bool = typer.Option(False, "--allow-unreviewed", help="Train on teacher-generated rows whose review target was not met (the run records it)."),
    backend: str = typer.Option("local", "--backend", help="local (this machine) | openai (OpenAI's fine-tuning API)."),
    model: Optional[str] = setting_option("hosted.model", "--model", when="with --backend openai"),
    suffix: Optional[str] = setting_option("hosted.suffix", "--suffix", when="with --backend openai"),
    learning_rate_multiplier: Optional[float] = setting_option(
        "hosted.learning_rate_multiplier", "--learning-rate-multiplier", when="with --backend openai"),
    yes: bool = typer.Option(False, "--yes", "-y", help="With --backend openai: start without asking to confirm the cost."),
    json_out: bool = typer.Option(False, "--json", help="One JSON event per line on stdout."),
) -> None:
    """Train a LoRA / QLoRA / full fine-tune of the base model on the project's training split."""
    flags: dict[str, Any] = {
        "method": method, "rank": rank, "alpha": alpha, "learning_rate": learning_rate, "epochs": epochs,
        "batch_size": batch_size, "effective_batch": effective_batch, "max_length": max_length,
        "eval_every": eval_every, "patience": patience, "converge": converge, "precision": precision, "seed": seed,
        "allow_unreviewed": True if allow_unreviewed else None, "layers": _layers(layers),
        "time_budget": time_budget_flag(time_budget),
    }
    if method is not None and method not in ("lora", "qlora", "full"):
        raise UsageError(f"--method {method!r} is not a method", "use lora, qlora or full")
    if precision is not None and precision not in ("auto", "bf16", "fp16", "fp32"):
        raise UsageError(f"--precision {precision!r} is not a precision", "use auto, bf16, fp16 or fp32")
    if backend not in ("local", "openai"):
        raise UsageError(f"--backend {backend!r} is not a backend", "use local or openai")
    if backend == "openai" and time_budget is not None:
        raise UsageError("--time-budget limits local training; a hosted job runs as long as the provider takes",
                         "drop --time-budget with --backend openai (--epochs sets the hosted job's length)")
    if backend == "openai" or (resume is not None and _is_hosted_run(project, resume)):
        _train_hosted(project, flags, dry_run=dry_run, resume=resume, name=name, json_out=json_out, yes=yes,
                      hosted_flags={"model": model, "suffix": suffix, "learning_rate_multiplier": learning_rate_multiplier})
        return
    if any(v is not None for v in (model, suffix, learning_rate_multiplier)):
        raise UsageError("--model, --suffix and --learning-rate-multiplier go with --backend openai",
                         "add --backend openai, or drop them (local training uses the project's base_model)")
    launch, processes = _launch_plan(project, num_processes, accelerate_config, num_machines, machine_rank, main_process_ip,
                          main_process_port, print_command)
    if launch is not None:
        from tunesmith.project import load_project
        from tunesmith.train.api import refuse_unmeasured_budget

        if resume is None and not print_command:  # before launching: every process would refuse it alike
            refuse_unmeasured_budget(load_project(project), flags, processes)
        _launch(launch, run_id or _new_id(name), print_only=print_command)
        return
    from tunesmith.train.api import train_project
    from tunesmith.train.distributed import end_with_launcher, is_main_process, launched

    if launched():  # torchrun put this process out of reach of a signal to the launch: end with it
        end_with_launcher()

    def show_plan(plan: dict[str, Any]) -> None:
        from tunesmith.cost import cost_line_for_training

        if not is_main_process():  # rank 0 speaks for the launch: one plan, one done event
            return
        cost = cost_line_for_training(project, plan)
        if json_out:
            print(json.dumps({"event": "plan", **plan, "cost": cost}), flush=True)
        else:
            print_plan(plan)
            console().print(f"cost: {cost}", markup=False)

    outcome = train_project(project, flags, dry_run=dry_run, resume=resume, run_name=name, run_id=run_id,
                            json_events=json_out, progress=not json_out, say=_say, on_plan=show_plan)
    if dry_run or not is_main_process():
        return
    if json_out:
        _print_done(outcome)
        return
    print_summary(outcome)


def _print_done(outcome: Any) -> None:
    print(json.dumps({"event": "done", "run_id": outcome.run_id, "run_dir": str(outcome.run_dir),
                      "metrics": outcome.metrics}))


def _is_hosted_run(project: Path, ref: str) -> bool:
    from tunesmith.project import load_project
    from tunesmith.train.hosted.job import is_hosted

    return is_hosted(load_project(project).registry().get(ref))


def _train_hosted(project: Path, flags: dict[str, Any], *, dry_run: bool, resume: Optional[str], name: Optional[str],
                  json_out: bool, yes: bool, hosted_flags: dict[str, Any]) -> None:
    from tunesmith.train.hosted.api import train_hosted

    def show(plan: Any) -> None:
        if json_out:
            print(json.dumps({"event": "plan", **plan.to_dict()}), flush=True)
        else:
            print_plan({"settings": plan.hyperparameters, "derived": {}}, title="hosted fine-tuning plan")
            console().print(f"data: {plan.train_examples} training + {plan.validation_examples} validation examples "
                            f"(a slice of train; the sealed test set is never uploaded)", markup=False)
            console().print(f"cost: {plan.cost_line()}", markup=False)

    def confirm(plan: Any) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            raise UsageError("the job would spend money and there is nobody to confirm it",
                             "pass --yes to start it (the plan and the cost are printed above)")
        cost = "an unknown amount" if plan.cost_usd is None else f"about ${plan.cost_usd:.2f}"
        return typer.confirm(f"Upload {plan.train_examples + plan.validation_examples} examples and start a job "
                             f"on {plan.model} for {cost}?", default=False, err=True)

    def interrupted(job_id: str) -> str:
        if not sys.stdin.isatty():
            return "detach"
        cancel = typer.confirm(f"\nCancel job {job_id} on the provider too? (no: only stop watching; it keeps "
                               "running and --resume reattaches)", default=False, err=True)
        return "cancel" if cancel else "detach"

    def event(e: dict[str, Any]) -> None:
        if json_out:
            print(json.dumps(e), flush=True)

    outcome = train_hosted(project, {**flags, **hosted_flags}, dry_run=dry_run, resume=resume, run_name=name,
                           confirm=confirm, on_plan=show, on_event=event, on_interrupt=interrupted, say=_say)
    if dry_run:
        return
    if json_out:
        _print_done(outcome)
        return
    m = outcome.metrics
    console().print(f"run {outcome.run_id}: fine-tuned model {m.get('fine_tuned_model')}; {m.get('trained_tokens')} "
                    f"trained tokens, train loss {m.get('train_loss')}, valid loss {m.get('eval_loss')}"
                    + (f", ${m['cost_usd']:.2f}" if m.get("cost_usd") is not None else ""), markup=False)
    console().print(f"next: tunesmith eval {outcome.run_id} -p {project}", markup=False)


def _new_id(name: str | None) -> str:
    from tunesmith.runs import new_run_id

    return new_run_id(name)


#: the launcher's own options: the processes it starts train, they do not launch again
_LAUNCH_VALUE_FLAGS = ("--num-processes", "--accelerate-config", "--num-machines", "--num_machines", "--machine-rank",
                       "--machine_rank", "--main-process-ip", "--main_process_ip", "--main-process-port",
                       "--main_process_port")


def _launch_plan(project: Path, num_processes: int | None, config: Path | None, num_machines: int | None,
                 machine_rank: int | None, main_process_ip: str | None, main_process_port: int | None,
                 print_command: bool) -> tuple[Any, int]:
    """The launch this command asks for (flags, else train.accelerate_config) and its number of processes;
    None to train right here."""
    from tunesmith.train.distributed import Launch, launched, read_accelerate_config, refuse_missing_backend

    if launched():
        return None, 1  # a process accelerate started: the launch already happened
    where = "--accelerate-config"
    if config is None:
        config, where = _config_setting(project)
    machines = (num_machines, machine_rank, main_process_ip, main_process_port)
    if config is None and (num_processes or 1) == 1 and all(v is None for v in machines):
        if print_command:
            raise UsageError("--print-command shows the `accelerate launch` command, and this train runs in one process",
                             "add --accelerate-config FILE or --num-processes N (or train.accelerate_config)")
        return None, 1
    launch = Launch(num_processes, config.resolve() if config else None, *machines)
    if launch.config is None:
        return launch, num_processes or 1
    settings = read_accelerate_config(launch.config, where)
    if not print_command:
        refuse_missing_backend(settings, launch.config)
    configured = settings.get("num_processes")
    return launch, num_processes or (configured if isinstance(configured, int) else 1)


def _config_setting(project: Path) -> tuple[Path | None, str]:
    from tunesmith.project import load_project

    loaded = load_project(project)
    return loaded.path(loaded.train.accelerate_config), "train.accelerate_config"


#: how long a Ctrl-C'd launch may take to stop on its own before it is killed
LAUNCH_GRACE_S = 120


def _launch(launch: Any, run_id: str, *, print_only: bool = False) -> None:
    import shlex

    import torch

    from tunesmith.train.distributed import CONFIG_ENV, LAUNCHED_ENV, LAUNCHER_PID_ENV, launch_command

    cleaned: list[str] = []
    skip = False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a in _LAUNCH_VALUE_FLAGS:
            skip = True
            continue
        if a == "--print-command" or a.startswith(tuple(f"{f}=" for f in _LAUNCH_VALUE_FLAGS)):
            continue
        cleaned.append(a)
    cmd = launch_command(launch, [*cleaned, "--run-id", run_id], cpu=not torch.cuda.is_available())
    if print_only:
        print(shlex.join(cmd))
        return
    processes = launch.num_processes or "the config's"
    _say(f"launching {processes} processes: {shlex.join(cmd)}")
    env = {**os.environ, LAUNCHED_ENV: "1", LAUNCHER_PID_ENV: str(os.getpid()),
           **({CONFIG_ENV: str(launch.config)} if launch.config else {})}
    proc = subprocess.Popen(cmd, env=env)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        # the launch got the same Ctrl-C and passes it to its ranks: let rank 0 record "interrupted" before
        # they end (killing the launcher now would kill them at once, as they end with it)
        _say("interrupted: waiting for the launched processes to stop (Ctrl-C again kills them)")
        try:
            proc.wait(timeout=LAUNCH_GRACE_S)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        raise typer.Exit(130) from None
    if code:
        raise typer.Exit(code)


def print_plan(plan: dict[str, Any], title: str = "training plan") -> None:
    from rich.table import Table

    out = console()
    table = Table(title=title, show_lines=False)
    for col in ("setting", "value", "from", "why"):
        table.add_column(col)
    for key, s in plan["settings"].items():
        table.add_row(key, str(s["value"]), s["source"], s["why"])
    out.print(table)
    d = plan["derived"]
    if not d:
        return
    out.print(f"data: {d['examples']} examples -> {d['train_examples']} train + {d['eval_examples']} validation "
              f"(a slice of train; the sealed test set is never used); {d['tokens_per_epoch']:,} tokens per epoch")
    out.print(f"steps: {d['total_steps']} ({d['steps_per_epoch']} per epoch, gradient accumulation "
              f"{d['gradient_accumulation']} x {d.get('processes', 1)} process(es)); {d['batching']}; device {d['device']}")
    if "estimated_minutes" in d:
        out.print(f"time: about {d['estimated_minutes']} min ({d['seconds_per_step']} s per step, measured on this machine)")
    if "gave_up" in d:
        out.print(f"budget: {d['gave_up']}; about {d['budget_overhead_s']} s of it for evaluations and checkpoints")
    if "disk" in d:
        out.print(f"disk: about {d['disk']['total_mb']} MB (output {d['disk']['output_mb']} MB + checkpoints)")
    a = d.get("audit")
    if a:
        eot = "yes" if a["end_of_turn_trained"] == a["rows"] else f"NO for {a['rows'] - a['end_of_turn_trained']} row(s)"
        out.print(f"labels: {a['trainable_share_mean']:.0%} of tokens trained on average (min {a['trainable_share_min']:.0%}); "
                  f"{a['truncated']} row(s) truncated; end-of-turn token trained: {eot}")


def print_summary(outcome) -> None:
    m = outcome.metrics
    out = console()
    out.print(f"[bold]run {outcome.run_id}[/] -> {outcome.run_dir}")
    out.print(f"train loss {m.get('train_loss')}, best eval loss {m.get('best_eval_loss')} (step {m.get('best_step')}); "
              f"{m.get('steps')} steps in {m.get('wall_seconds')} s, {m.get('trained_tokens_per_s')} trained tokens/s")
    if m.get("stopped_early"):
        out.print(f"[yellow]stopped early:[/] {m['stopped_early']['why']}")
    if m.get("converged"):
        c = m["converged"]
        out.print(f"converged: stopped at step {c['at_step']} of {c['of_steps']} (epoch {c['epoch']}): {c['why']}")
