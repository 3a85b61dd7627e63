"""Local training with transformers + PEFT: LoRA, QLoRA (bitsandbytes, CUDA or CPU) or full fine-tuning, resumable."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import OutputError, TunesmithError
from tunesmith.io import cannot_write, write_json_atomic
from tunesmith.progress import Say
from tunesmith.train.prepare import Prepared


class TrainingError(TunesmithError):
    """Training could not run or could not finish."""


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    metrics: dict[str, Any]
    stopped_early: bool


def build_model(prep: Prepared) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from transformers import set_seed

    plan = prep.plan
    # the LoRA initialisation draws random numbers: seed it here, not only in the Trainer, so that the
    # step-time measurement (which builds a model first) cannot shift what the real run starts from
    set_seed(plan["seed"])
    method = plan["method"]
    dtype = torch.float32
    kwargs: dict[str, Any] = {}
    if prep.device.kind == "cuda":
        dtype = torch.bfloat16 if plan["precision"] == "bf16" else torch.float16 if plan["precision"] == "fp16" else torch.float32
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        from tunesmith.train.device import quiet_bitsandbytes

        quiet_bitsandbytes()

        compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan["precision"], torch.float32)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
        # the weights are quantized as they load, on the device they will train on
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0)) if prep.device.kind == "cuda" else prep.device.kind}
    from tunesmith.models.quiet import quiet_transformers

    quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(str(prep.model_path), dtype=dtype, **kwargs)
    model.config.use_cache = False
    checkpointing = bool(plan.settings["gradient_checkpointing"].value) if "gradient_checkpointing" in plan.settings else False
    if checkpointing and method != "qlora":  # the plan turned it on: the step would not fit without it
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = plan.settings["layers"].value if "layers" in plan.settings else "all"  # older plans: all
    targets: Any = plan["target_modules"]
    extra: dict[str, Any] = {}
    if layers != "all":
        total = model.config.get_text_config().num_hidden_layers
        extra["layers_to_transform"] = list(range(max(0, total - int(layers)), total))
        # PEFT takes a layer subset only with target_modules as a list of module names
        targets = decoder_linear_names(model) if targets == "all-linear" else targets
    config = LoraConfig(
        r=plan["rank"], lora_alpha=plan["alpha"], lora_dropout=plan["dropout"],
        target_modules=targets, bias="none", task_type="CAUSAL_LM", **extra,
    )
    return get_peft_model(model, config)


def decoder_linear_names(model: Any) -> list[str]:
    """The names PEFT's "all-linear" stands for: every Linear inside the decoder layers (not the LM head)."""
    import torch

    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not head and "." in name})


def training_arguments(prep: Prepared, run_dir: Path, *, report_to: list[str]) -> Any:
    from transformers import TrainingArguments

    plan, d = prep.plan, prep.plan.derived
    has_eval = len(prep.eval.rows) > 0
    every = plan["eval_every"]
    planned: dict[str, Any] = dict(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=plan["batch_size"],
        per_device_eval_batch_size=plan["batch_size"],
        gradient_accumulation_steps=d["gradient_accumulation"],
        num_train_epochs=plan["epochs"],
        # a time budget cuts the run to whole steps (fractional epochs); the warmup and schedule span them
        max_steps=d.get("max_steps", -1),
        learning_rate=plan["learning_rate"],
        warmup_steps=plan["warmup_ratio"],
        lr_scheduler_type=plan["scheduler"],
        logging_steps=1,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=2,
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
        bf16=plan["precision"] == "bf16",
        fp16=plan["precision"] == "fp16",
        use_cpu=prep.device.kind == "cpu",
        report_to=report_to,
        seed=plan["seed"],
        data_seed=plan["seed"],
        remove_unused_columns=False,
        prediction_loss_only=True,
        train_sampling_strategy="group_by_length",
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
    )
    extra = prep.project.train.extra  # checked as the file loaded: never a key a setting or the run owns
    try:
        return TrainingArguments(**{**planned, **extra})
    except (TypeError, ValueError) as exc:
        if not extra:
            raise
        raise TrainingError(f"train.extra: transformers refused the training arguments: {exc}",
                            f"fix or remove the train.extra value(s) it names ({', '.join(extra)})") from None


def _rows(data) -> list[dict[str, list[int]]]:
    return [{"input_ids": r.enc.input_ids, "labels": r.enc.labels} for r in data.rows]


def last_checkpoint(run_dir: Path, processes: int = 1) -> Path | None:
    """The newest complete checkpoint; a half-written one (killed while saving) is removed.

    `processes`: how many the run was started with. The Trainer writes trainer_state.json last on rank 0,
    so a checkpoint without a whole one never finished; the other ranks' last write is their own RNG
    file, so one without every rank's is not finished either (see _completeness).
    """
    ckpt_dir = run_dir / "checkpoints"
    if not ckpt_dir.is_dir():
        return None
    found = sorted((p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir()), key=_step_of)
    short = None
    for ckpt in reversed(found):
        verdict = _completeness(ckpt, processes)
        if verdict == "complete":
            return ckpt
        if verdict == "partial":
            shutil.rmtree(ckpt, ignore_errors=True)
        elif short is None:
            short = ckpt
    # only checkpoints of fewer processes (a resume in fewer, then rotation): rank 0's model, optimizer and
    # trainer state are whole, only the missing ranks' RNG states are not there; better than step 0
    return short


def _completeness(checkpoint: Path, processes: int) -> str:
    """What a resume may do with `checkpoint`: "complete"; "partial" when some process did not finish
    saving it (removed); "short" when it is whole for fewer processes than the run started with, which is
    either its last ranks not finishing or a resume in fewer processes (skipped, kept)."""
    if _trainer_state(checkpoint) is None:
        return "partial"
    # FSDP's sharded state (torch.distributed.checkpoint): every rank's .distcp, then .metadata once all are in
    if any(d.is_dir() and any(d.glob("*.distcp")) and not (d / ".metadata").is_file() for d in checkpoint.iterdir()):
        return "partial"
    rng = list(checkpoint.glob("rng_state*.pth"))
    if not all(_whole_torch_file(p) for p in rng):
        return "partial"
    ranks = {r for r in (_rank_of(p.name) for p in rng) if r is not None}
    if not ranks:  # one process (rng_state.pth), or save_only_model (none): rank 0's trainer state was last
        return "complete"
    # rng_state_<rank>.pth is written by each of two or more processes
    if ranks != set(range(max(max(ranks) + 1, 2))):
        return "partial"
    return "short" if len(ranks) < processes else "complete"


def _rank_of(rng_file: str) -> int | None:
    """3 for rng_state_3.pth; None for one process's rng_state.pth."""
    index = rng_file.removeprefix("rng_state_").removesuffix(".pth")
    return int(index) if index.isdigit() else None


def _whole_torch_file(path: Path) -> bool:
    """torch.save writes a zip whose directory comes last: a file cut off while written has none."""
    import zipfile

    return zipfile.is_zipfile(path)


def _trainer_state(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's trainer_state.json, or None when it is missing or not a whole JSON object."""
    import json

    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def replay_stopping_rules(checkpoint: Path, rules: list[Any]) -> bool:
    """Feed the stopping rules (OverfitGuard, ConvergenceStop) the losses logged up to `checkpoint`, as
    the Trainer fed them live: a resumed run then stops where the uninterrupted run stops. True when
    they had already stopped training at the checkpoint (it was saved right after that decision)."""
    from types import SimpleNamespace

    from transformers import TrainerControl

    control = TrainerControl()
    for logs in (_trainer_state(checkpoint) or {}).get("log_history", []):
        state = SimpleNamespace(global_step=logs.get("step", 0), epoch=logs.get("epoch"), is_world_process_zero=True)
        for rule in rules:
            rule.on_log(None, state, control, logs=logs)
            if "eval_loss" in logs:
                rule.on_evaluate(None, state, control, metrics=logs)
    return control.should_training_stop


def run_training(prep: Prepared, run_dir: Path, *, resume: bool = False, json_events: bool = False,
                 progress: bool = True, started_with: int = 1, say: Say | None = None) -> TrainResult:
    """Train (or, with `resume`, continue from the last complete checkpoint); `started_with`: the processes
    the run was started with, whose files a complete checkpoint has."""
    from tunesmith.train.callbacks import OverfitGuard, StepLog, TrainProgress, json_emitter
    from tunesmith.train.batching import pad_multiple
    from tunesmith.train.trainer import PadCollator, TunesmithTrainer

    plan = prep.plan
    model = build_model(prep)
    args = training_arguments(prep, run_dir, report_to=trackers(prep.project.train.report_to))
    emit = json_emitter(json_events)
    bar = TrainProgress(plan.derived["total_steps"], enabled=progress and not json_events)
    tokens_per_step = sum(len(r.enc.input_ids) for r in prep.train.rows) / max(1, plan.derived["steps_per_epoch"])

    def forward(event: dict[str, Any]) -> None:
        emit(event)
        bar.update(event)

    guard = OverfitGuard(plan["patience"])
    from tunesmith.train.convergence import ConvergenceStop

    converge = ConvergenceStop() if plan.settings.get("converge") and plan["converge"] else None
    pad_id = prep.tokenizer.pad_token_id if prep.tokenizer.pad_token_id is not None else prep.tokenizer.eos_token_id
    trainer = TunesmithTrainer(
        model=model, args=args, train_dataset=_rows(prep.train),
        # in length order: evaluation batches are padded to their longest row, and their order does not matter
        eval_dataset=sorted(_rows(prep.eval), key=lambda r: len(r["input_ids"])) or None,
        data_collator=PadCollator(pad_id, pad_multiple(prep.device.kind)), processing_class=prep.tokenizer,
        callbacks=[StepLog(run_dir / "steps.jsonl", forward, tokens_per_step), guard, *([converge] if converge else []),
                   bar, *_tensorboard(run_dir)],
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # stdout is for --json events; people get TrainProgress
    trainer.remove_callback(ProgressCallback)
    record_what_ran(prep, run_dir, trainer, say)
    checkpoint = agreed_checkpoint(run_dir, started_with) if resume else None
    started = time.perf_counter()
    try:
        output = _train(trainer, run_dir, checkpoint, [guard, *([converge] if converge else [])],
                        plan.derived["total_steps"])
    finally:
        bar.close()  # a run that raised never reached on_train_end: end the bar and its heartbeat
    wall = time.perf_counter() - started
    adapter_dir = run_dir / ("model" if plan["method"] == "full" else "adapter")
    if trainer.is_world_process_zero():
        _save_atomically(trainer, prep.tokenizer, adapter_dir)
    history = [h for h in trainer.state.log_history if "eval_loss" in h]
    steps_done = trainer.state.global_step - (_step_of(checkpoint) if checkpoint else 0)
    metrics = {
        # the Trainer averages over this process's steps only; a resumed run reports its whole run
        "train_loss": round(float(_logged_mean_loss(trainer) if checkpoint else output.training_loss), 6),
        "final_step_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
        "best_eval_loss": trainer.state.best_metric,
        "best_step": _step_of(Path(trainer.state.best_model_checkpoint)) if trainer.state.best_model_checkpoint else None,
        "eval_losses": [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in history],
        "steps": trainer.state.global_step,
        "wall_seconds": round(wall, 1),
        "trained_tokens_per_s": round(steps_done * tokens_per_step / wall, 1) if wall > 0 else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "resumed_from_step": _step_of(checkpoint) if checkpoint else None,
        **_peak_gpu(prep.device.kind),
    }
    stopped = guard.stopped_at is not None
    if stopped:
        metrics["stopped_early"] = {
            "at_step": guard.stopped_at, "best_step": guard.best_step, "best_eval_loss": guard.best,
            "why": f"eval loss rose for {guard.patience} evaluations while train loss kept falling (overfitting); "
                   f"the best checkpoint (step {guard.best_step}) was restored",
        }
    if converge is not None and converge.stopped_at is not None and not stopped:
        metrics["converged"] = {"at_step": converge.stopped_at, "epoch": converge.epoch,
                                "of_steps": plan.derived["total_steps"], "why": converge.rule.why()}
    return TrainResult(run_dir, adapter_dir, metrics, stopped)


def agreed_checkpoint(run_dir: Path, processes: int) -> Path | None:
    """last_checkpoint, chosen (and cleaned up) by rank 0 alone and the same on every rank: ranks that
    judged on their own could pick different steps, or remove a checkpoint another one was loading."""
    from tunesmith.train.distributed import is_main_process, shared_value, world_size

    if world_size() <= 1:
        return last_checkpoint(run_dir, processes)
    mine = last_checkpoint(run_dir, processes) if is_main_process() else None
    chosen = shared_value(str(mine) if mine else "")
    return Path(chosen) if chosen else None


def _peak_gpu(kind: str) -> dict[str, float]:
    """The GPU's own peak (ru_maxrss says nothing of it): what a plan for a smaller card must fit."""
    if kind != "cuda":
        return {}
    import torch

    return {"peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


#: errno values that mean no room to write
OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: how the libraries that write checkpoints word those when they drop the errno
_NO_SPACE_WORDS = (("os error 28", errno.ENOSPC), ("no space left on device", errno.ENOSPC),
                   ("os error 122", errno.EDQUOT), ("disk quota exceeded", errno.EDQUOT),
                   ("os error 27", errno.EFBIG), ("file too large", errno.EFBIG))
#: below this, a save that failed for any reason failed for want of space
NEARLY_FULL_BYTES = 1 << 20


def out_of_space(exc: BaseException, target: Path) -> OutputError | None:
    """A failed save as io's "the disk is full" OutputError naming `target`, or None when space was not it.

    Only an OSError carries an errno: safetensors raises SafetensorError("... (os error 28)"), and torch.save
    a RuntimeError ("unexpected pos ...") that says nothing of why, so the free space left decides that one.
    """
    if isinstance(exc, OutputError):
        return exc if exc.errno in OUT_OF_SPACE else None
    code = getattr(exc, "errno", None)
    if code not in OUT_OF_SPACE:
        text = str(exc).lower()
        code = next((c for words, c in _NO_SPACE_WORDS if words in text), None)
    if code is None and _free_bytes(target) < NEARLY_FULL_BYTES:
        code = errno.ENOSPC
    if code is None:
        return None
    return cannot_write(Path(getattr(exc, "filename", None) or target), OSError(code, os.strerror(code)))


def _free_bytes(path: Path) -> int:
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    try:
        return shutil.disk_usage(existing).free
    except OSError:
        return NEARLY_FULL_BYTES  # unknown: not evidence of a full disk


def _partial_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose save did not finish (no whole trainer state), if any."""
    ckpt_dir = run_dir / "checkpoints"
    partial = [p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir() and _trainer_state(p) is None]
    return max(partial, key=_step_of, default=None)


def _train(trainer: Any, run_dir: Path, checkpoint: Path | None, rules: list[Any], total_steps: int) -> Any:
    """`trainer.train`, resumed from `checkpoint` with the stopping rules replayed up to it; a failure
    for want of disk space comes out as io's "the disk is full" OutputError."""
    try:
        if checkpoint is not None and (replay_stopping_rules(checkpoint, rules) or _step_of(checkpoint) >= total_steps):
            return _finish_at(trainer, checkpoint)  # killed after training ended: train() would go past the stop
        return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except Exception as exc:
        raise out_of_space(exc, _partial_checkpoint(run_dir) or run_dir / "checkpoints") or exc


def _logged_mean_loss(trainer: Any) -> float:
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return sum(logged) / max(1, len(logged))


def _finish_at(trainer: Any, checkpoint: Path) -> Any:
    """What `train` ends with, from a checkpoint where training had already ended: its state, and the
    best checkpoint's weights (else the checkpoint's own), without another step."""
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    best = trainer.state.best_model_checkpoint
    if trainer.args.load_best_model_at_end and best and Path(best).is_dir():
        trainer._load_best_model()
    else:
        trainer._load_from_checkpoint(str(checkpoint))
    return TrainOutput(trainer.state.global_step, _logged_mean_loss(trainer), {})


def _step_of(checkpoint: Path) -> int:
    try:
        return int(checkpoint.name.rsplit("-", 1)[-1])
    except ValueError:
        return 0


def _save_atomically(trainer: Any, tokenizer: Any, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        trainer.model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # what fitted of it only takes space
        raise out_of_space(exc, target) or exc
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def trackers(asked: list[str] | str) -> list[str]:
    """The trackers train.report_to names, only when asked for and then only if installed (never a
    surprise upload). TensorBoard is left out: the run always logs it, into its own directory."""
    if asked == "none" or not asked:
        return []
    from tunesmith.train_arguments import integrations

    _, installed = integrations()
    if asked == "all":
        return [name for name in installed if name != "tensorboard"]
    missing = [name for name in asked if name not in installed]
    if missing:
        raise TrainingError(f"train.report_to asks for {', '.join(missing)}, which is not installed",
                            f"pip install {' '.join(_PACKAGE_OF.get(n, n) for n in missing)}, "
                            "or remove it from train.report_to")
    return [name for name in asked if name != "tensorboard"]


#: tracker names whose package is named otherwise
_PACKAGE_OF = {"azure_ml": "azureml-core", "comet_ml": "comet-ml"}


def _tensorboard(run_dir: Path) -> list[Any]:
    """TensorBoard logs in the run directory when tensorboard is installed (it is in the train extra)."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run_dir / "tensorboard")))]


def record_what_ran(prep: Prepared, run_dir: Path, trainer: Any, say: Say | None) -> None:
    """plan.json's topology gets the distributed type the Trainer's Accelerator set up, beside the one asked
    for: they differ where accelerate falls back (an FSDP config on CPU runs as MULTI_CPU, unsharded)."""
    from tunesmith.train.distributed import what_ran_line

    topology = prep.plan.derived.get("topology")
    if not isinstance(topology, dict) or not trainer.is_world_process_zero():
        return
    kind = trainer.accelerator.distributed_type
    topology["distributed_type"] = str(getattr(kind, "value", kind))
    write_json_atomic(run_dir / "plan.json", prep.plan.to_dict())
    line = what_ran_line(topology.get("requested"), topology["distributed_type"], prep.device.kind)
    if line is not None and say is not None:
        say(line)


def write_run_files(run_dir: Path, prep: Prepared) -> None:
    write_json_atomic(run_dir / "plan.json", prep.plan.to_dict())
    write_json_atomic(run_dir / "device.json", {"device": prep.device.describe(), "kind": prep.device.kind,
                                                 "bf16": prep.device.bf16})
    (run_dir / "steps.jsonl").touch()
