#!/usr/bin/env python
"""Training throughput: the guide's plain TRL recipe vs tunesmith, same model, same examples, same machine.

One run trains SmolLM2-135M-Instruct (the embedded builtin) twice on the same subset of the example
project's training file (examples/pyfunc-json):

  (A) plain      TRL `SFTTrainer` + `SFTConfig` + PEFT `LoraConfig` as the guide writes them: the
                 dataset is `{"text": apply_chat_template(messages)}` (loss on every token), the pad
                 token is the eos token; only what this CPU / TRL 1.x / transformers 5 require is
                 adapted, and each adaptation is printed.
  (B) tunesmith  `tunesmith.train.api.train_project(...)` on a temporary copy of the project whose
                 data/train.jsonl holds the subset (plus the rows tunesmith holds out for validation,
                 so that both sides train on exactly the same N examples).

Each side runs in its own child process (so peak RSS is per side). For both, the same wrapper around
`transformers.Trainer.training_step` / `Trainer.train` measures:

  trained tokens/s  non-padding input tokens (attention_mask sum) of every micro-batch the training
                    loop runs, divided by the wall time of `Trainer.train()` (model loading, dataset
                    preparation and tunesmith's planning are outside it)
  wall              the child's whole run: imports, data, model, planning, training, adapter saved
  peak RSS          ru_maxrss of the child (os.wait4)

Then one evaluation child loads base + each adapter with PEFT and computes the mean cross-entropy on
assistant tokens only (end-of-turn token included; `tunesmith.models.chat.encode_chat` masks) of 32
fixed examples of the training file that neither side trained on, in fp32, token-weighted.

Before each timed child the 1-minute load average must fall below --max-load (polled, up to
--load-wait seconds) so both sides run under the same conditions; the load seen is reported.

    python benchmarks/train_throughput.py                   # 96 examples, 1 epoch
    python benchmarks/train_throughput.py --examples 160 --epochs 3 --json
    python benchmarks/train_throughput.py --profile 4       # + torch.profiler over 4 micro-batches per side
    python benchmarks/train_throughput.py --precision fp32  # both sides in fp32 (a CPU without fast bf16)
    python benchmarks/train_throughput.py --layers 10       # tunesmith with LoRA on the top 10 layers only
    python benchmarks/train_throughput.py --method qlora    # tunesmith LoRA vs tunesmith QLoRA (NF4 base), same rows

MFU (model FLOPs utilisation): the FLOPs each side's objective needs per trained token
(`tunesmith.train.flops.training_flops_per_token`: decoder matmuls and attention forward, input
gradients through the adapted layers, LoRA gradients, the LM head where there is a loss; no
recomputation) x its trained tokens/s, divided by the best torch.mm FLOP/s measured in a child with
the same threads and precision (`matmul_peak`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pyfunc-json"
MODEL_REF = "builtin:smollm2-135m-instruct"
HELD_OUT = 32
SELECT_SEED = 20240611
GOAL_RATIO = 3.0
LOSS_TOLERANCE = 0.02
EVAL_FRACTION = 0.01  # tunesmith's validation slice: > 0 is required; gives the plan's floor of 2 rows

# The guide's recipe, verbatim where this stack allows it.
GUIDE_LORA = dict(r=16, lora_alpha=32,
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                  lora_dropout=0.05, bias="none", task_type="CAUSAL_LM")
GUIDE_SFT = dict(num_train_epochs=3, per_device_train_batch_size=4, gradient_accumulation_steps=4,
                 learning_rate=2e-4, warmup_ratio=0.1, lr_scheduler_type="cosine", bf16=True, max_length=2048,
                 packing=False, report_to="none", logging_steps=1, save_strategy="no")
# tunesmith with the same hyper-parameters as flags (epochs is replaced by --epochs on both sides)
TUNESMITH_FLAGS = {"rank": 16, "alpha": 32, "learning_rate": 2e-4, "epochs": 3, "effective_batch": 16, "batch_size": 4}


# --------------------------------------------------------------------------------------------------
# measurement shared by both children
# --------------------------------------------------------------------------------------------------

def _instrument(profile_micro: int) -> dict:
    """Wrap Trainer.train / Trainer.training_step / <trainer>.compute_loss; the same code for both sides."""
    import torch
    import transformers

    stats = {"micro_batches": 0, "tokens": 0, "padded_tokens": 0, "loss_tokens": 0, "step_seconds": 0.0,
             "loss_seconds": 0.0, "eval_seconds": 0.0, "checkpoint_seconds": 0.0, "train_seconds": None,
             "train_cpu_seconds": None,
             "profile": None, "linear_compute": None}
    prof_state: dict = {}
    orig_step = transformers.Trainer.training_step
    orig_train = transformers.Trainer.train

    def _timed(name: str, key: str) -> None:
        inner = getattr(transformers.Trainer, name)

        def wrapper(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(self, *args, **kwargs)
            finally:
                stats[key] += time.perf_counter() - t0

        setattr(transformers.Trainer, name, wrapper)

    _timed("evaluate", "eval_seconds")
    _timed("_save_checkpoint", "checkpoint_seconds")

    def _watch_precision(model) -> None:
        """Record, once, whether the first decoder Linear runs under autocast and in which dtype."""
        first = next((m for n, m in model.named_modules() if n.endswith("q_proj.base_layer")
                      or (n.endswith("q_proj") and isinstance(m, torch.nn.Linear))), None)
        if first is None:
            return

        def hook(mod, inp, out):
            if stats["linear_compute"] is None:
                stats["linear_compute"] = (f"autocast={'on' if torch.is_autocast_enabled('cpu') else 'off'}, "
                                           f"output {str(out.dtype).replace('torch.', '')}")
            handle.remove()

        handle = first.register_forward_hook(hook)

    def _wrap_compute_loss(cls) -> None:
        if getattr(cls.compute_loss, "_bench_wrapped", False):
            return
        inner = cls.compute_loss

        def compute_loss(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(self, *args, **kwargs)
            finally:
                if self.model.training:
                    stats["loss_seconds"] += time.perf_counter() - t0

        compute_loss._bench_wrapped = True
        cls.compute_loss = compute_loss

    def training_step(self, model, inputs, *args, **kwargs):
        _wrap_compute_loss(type(self))
        if stats["micro_batches"] == 0:
            _watch_precision(model)
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        stats["tokens"] += int(mask.sum()) if mask is not None else int(ids.numel())
        stats["padded_tokens"] += int(ids.numel())
        labels = inputs.get("labels")
        if labels is not None:
            stats["loss_tokens"] += int((labels[:, 1:] != -100).sum())
        i = stats["micro_batches"]
        if profile_micro and i == 2:  # after two warm-up micro-batches
            prof_state["p"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            prof_state["p"].__enter__()
        t0 = time.perf_counter()
        out = orig_step(self, model, inputs, *args, **kwargs)
        stats["step_seconds"] += time.perf_counter() - t0
        stats["micro_batches"] += 1
        if profile_micro and i == 2 + profile_micro - 1 and "p" in prof_state:
            p = prof_state.pop("p")
            p.__exit__(None, None, None)
            stats["profile"] = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=48)
        return out

    def train(self, *args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return orig_train(self, *args, **kwargs)
        finally:
            stats["train_seconds"] = time.perf_counter() - t0
            stats["train_cpu_seconds"] = time.process_time() - c0

    transformers.Trainer.training_step = training_step
    transformers.Trainer.train = train
    return stats


def _finish(stats: dict, started: float, extra: dict) -> dict:
    wall = time.perf_counter() - started
    train_s = stats["train_seconds"] or 0.0
    return {
        **extra,
        "wall_seconds": round(wall, 2),
        "train_loop_seconds": round(train_s, 2),
        "setup_seconds": round(wall - train_s, 2),
        "micro_batches": stats["micro_batches"],
        "tokens": stats["tokens"],
        "padded_tokens": stats["padded_tokens"],
        "padding_share": round(1 - stats["tokens"] / stats["padded_tokens"], 4) if stats["padded_tokens"] else None,
        "loss_tokens": stats["loss_tokens"],
        "tokens_per_s": round(stats["tokens"] / train_s, 1) if train_s else None,
        "train_loop_cpu_seconds": round(stats["train_cpu_seconds"] or 0.0, 2),
        # less sensitive to other processes than tokens/s, but it counts OpenMP spin-waiting when threads > 1
        "tokens_per_cpu_s": round(stats["tokens"] / stats["train_cpu_seconds"], 1) if stats["train_cpu_seconds"] else None,
        "fwd_bwd_seconds": round(stats["step_seconds"], 2),
        "loss_fwd_seconds": round(stats["loss_seconds"], 2),
        "outside_fwd_bwd_seconds": round(train_s - stats["step_seconds"], 2),
        "eval_seconds": round(stats["eval_seconds"], 2),
        "checkpoint_seconds": round(stats["checkpoint_seconds"], 2),
        "linear_compute": stats["linear_compute"],
        "profile": stats["profile"],
    }


# --------------------------------------------------------------------------------------------------
# children
# --------------------------------------------------------------------------------------------------

def child_plain(spec: dict) -> dict:
    started = time.perf_counter()
    stats = _instrument(spec["profile"])
    import inspect

    import trl
    import transformers
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model_path = spec["model_path"]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.pad_token = tokenizer.eos_token  # as the guide does
    model = AutoModelForCausalLM.from_pretrained(model_path)

    rows = [json.loads(line) for line in Path(spec["train_file"]).read_text(encoding="utf-8").splitlines() if line.strip()]
    dataset = Dataset.from_list([
        {"text": tokenizer.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=False)} for r in rows
    ])

    sft = dict(GUIDE_SFT)
    adaptations = []
    accepted = set(inspect.signature(SFTConfig).parameters)
    if "warmup_ratio" not in accepted:
        sft["warmup_steps"] = sft.pop("warmup_ratio")
        adaptations.append("warmup_ratio=0.1 -> warmup_steps=0.1 (transformers 5 removed warmup_ratio; a float < 1 is a ratio)")
    sft["num_train_epochs"] = spec["epochs"]
    adaptations.append(f"num_train_epochs=3 -> {spec['epochs']} (benchmark --epochs, the same on both sides)")
    sft["output_dir"] = spec["output_dir"]
    adaptations.append("output_dir set to a temporary directory (nothing is saved during training: save_strategy='no')")
    import torch

    if not torch.cuda.is_available():
        sft["use_cpu"] = True
        adaptations.append("use_cpu=True (transformers 5 refuses bf16=True without a GPU unless use_cpu is set; "
                           "on CPU bf16=True means torch.autocast('cpu', bfloat16) over fp32 weights)")
    if spec.get("precision") == "fp32":
        sft["bf16"] = False
        adaptations.append("bf16=True -> False (benchmark --precision fp32, the same on both sides)")
    gc = spec["plain_gradient_checkpointing"]
    if gc is not None:
        sft["gradient_checkpointing"] = gc
        adaptations.append(f"gradient_checkpointing={gc} (ablation flag; the guide leaves TRL's default)")
    args = SFTConfig(**sft)
    lora = LoraConfig(**GUIDE_LORA)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    trainer.train()
    trainer.save_model(spec["adapter_dir"])
    cfg = trainer.args
    return _finish(stats, started, {
        "side": "plain",
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "adaptations": adaptations,
        "settings": {
            "lora": {k: (sorted(v) if isinstance(v, (set, list)) else v) for k, v in GUIDE_LORA.items()},
            "epochs": cfg.num_train_epochs, "per_device_train_batch_size": cfg.per_device_train_batch_size,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "learning_rate": cfg.learning_rate,
            "warmup_steps": cfg.warmup_steps, "lr_scheduler_type": str(cfg.lr_scheduler_type), "bf16": cfg.bf16,
            "max_length": cfg.max_length, "packing": cfg.packing, "gradient_checkpointing": cfg.gradient_checkpointing,
            "train_sampling_strategy": str(getattr(cfg, "train_sampling_strategy", "random")),
            "loss": "every token of the rendered text (+ the eos TRL appends)", "seed": cfg.seed,
            "model_dtype": str(model.dtype), "torch_threads": torch.get_num_threads(),
        },
        "optimizer_steps": trainer.state.global_step,
        "train_loss": trainer.state.log_history[-1].get("train_loss") if trainer.state.log_history else None,
        "examples": len(rows),
        "adapter_dir": spec["adapter_dir"],
    })


def child_tunesmith(spec: dict) -> dict:
    started = time.perf_counter()
    stats = _instrument(spec["profile"])
    import torch
    from transformers import set_seed

    from tunesmith.train.api import train_project

    # tunesmith builds the LoRA model before the Trainer seeds the RNGs, so its adapter init is
    # unseeded; seed here (as SFTTrainer does for the plain side) so runs are comparable/repeatable.
    set_seed(spec["seed"])
    outcome = train_project(spec["project_dir"], flags=spec["flags"], progress=False)
    side = spec.get("side", "tunesmith")
    settings = {k: v["value"] for k, v in outcome.plan["settings"].items()}
    settings["torch_threads"] = torch.get_num_threads()
    return _finish(stats, started, {
        "side": side,
        "settings": settings,
        "derived": {k: outcome.plan["derived"].get(k) for k in
                    ("examples", "train_examples", "eval_examples", "gradient_accumulation", "steps_per_epoch",
                     "total_steps", "seconds_per_step", "batching")},
        "optimizer_steps": outcome.metrics.get("steps"),
        "train_loss": outcome.metrics.get("train_loss"),
        "tunesmith_reported_tokens_per_s": outcome.metrics.get("trained_tokens_per_s"),
        "examples": outcome.plan["derived"].get("train_examples"),
        "adapter_dir": str(Path(outcome.run_dir) / "adapter"),
    })


def child_eval(spec: dict) -> dict:
    """Mean CE over assistant tokens (eot included) of the held-out rows: base, then each adapter."""
    import torch
    from peft import PeftModel
    from torch.nn import functional as F
    from transformers import AutoModelForCausalLM

    from tunesmith.data.formats import iter_examples
    from tunesmith.models.chat import IGNORE, chat_weights, encode_chat, to_chat
    from tunesmith.models.resolve import load_tokenizer
    from tunesmith.project import load_project

    torch.set_grad_enabled(False)
    system_prompt = load_project(spec["project_dir"]).system_prompt
    tokenizer = load_tokenizer(MODEL_REF)
    encoded = []
    for ex in iter_examples(spec["heldout_file"]):
        enc = encode_chat(tokenizer, to_chat(ex.messages, system_prompt), weights=chat_weights(ex.messages, system_prompt))
        encoded.append((torch.tensor([enc.input_ids]), torch.tensor([enc.labels])))

    def mean_ce(model) -> dict:
        model.eval()
        total, count = 0.0, 0
        for ids, labels in encoded:
            logits = model(input_ids=ids).logits[0, :-1].float()
            target = labels[0, 1:]
            keep = target != IGNORE
            total += float(F.cross_entropy(logits[keep], target[keep], reduction="sum"))
            count += int(keep.sum())
        return {"loss": round(total / count, 5), "tokens": count, "examples": len(encoded)}

    def base():
        return AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=torch.float32)

    out = {"base": mean_ce(base())}
    for name, adapter in spec["adapters"].items():
        out[name] = mean_ce(PeftModel.from_pretrained(base(), adapter))
    return out


def child_peak(spec: dict) -> dict:
    """The matmul peak of this machine with the training children's threads, fp32 and bf16."""
    import torch

    from tunesmith.train.device import detect_device
    from tunesmith.train.flops import matmul_peak

    out = {"threads": torch.get_num_threads(), "fp32": matmul_peak("fp32")}
    out["bf16"] = matmul_peak("bf16") if detect_device().bf16 else None
    return out


def _child_main(kind: str, spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    result = {"plain": child_plain, "tunesmith": child_tunesmith, "qlora": child_tunesmith, "eval": child_eval,
              "peak": child_peak}[kind](spec)
    Path(spec["result_file"]).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------------------

def loadavg() -> tuple[float, float, float]:
    a, b, c = Path("/proc/loadavg").read_text().split()[:3]
    return float(a), float(b), float(c)


def wait_for_quiet(max_load: float, max_wait: float, log) -> dict:
    t0 = time.time()
    first = loadavg()
    while True:
        now = loadavg()
        if now[0] < max_load:
            return {"load_at_start": now, "load_when_asked": first, "waited_s": round(time.time() - t0), "quiet": True}
        if time.time() - t0 >= max_wait:
            log(f"  load {now[0]:.2f} still >= {max_load} after {max_wait:.0f} s; running anyway")
            return {"load_at_start": now, "load_when_asked": first, "waited_s": round(time.time() - t0), "quiet": False}
        log(f"  waiting for quiet: 1-min load {now[0]:.2f} >= {max_load}")
        time.sleep(15)


def _cpu_busy_jiffies() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]) - idle, sum(fields[:8])


def run_child(kind: str, spec: dict, workdir: Path, log) -> dict:
    spec_file = workdir / f"{kind}.spec.json"
    spec["result_file"] = str(workdir / f"{kind}.result.json")
    spec_file.write_text(json.dumps(spec))
    log_file = workdir / f"{kind}.log"
    busy0, total0 = _cpu_busy_jiffies()
    t0 = time.perf_counter()
    with open(log_file, "w") as fh:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--_child", kind, str(spec_file)],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=str(workdir))
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    busy1, total1 = _cpu_busy_jiffies()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log_file.read_text(errors="replace")[-4000:]
        raise SystemExit(f"{kind} child failed (exit {code}); log {log_file}:\n{tail}")
    result = json.loads(Path(spec["result_file"]).read_text())
    hz = os.sysconf("SC_CLK_TCK")
    ncpu = os.cpu_count() or 1
    child_cpu = usage.ru_utime + usage.ru_stime
    other = max(0.0, (busy1 - busy0) / hz - child_cpu)
    result.update({
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "child_cpu_seconds": round(child_cpu, 1),
        "other_processes_cpu_share": round(other / (wall * ncpu), 3) if wall else None,
        "load_at_end": loadavg(),
        "log": str(log_file),
    })
    return result


def ensure_split(log) -> None:
    if (EXAMPLE / "data" / "train.jsonl").exists():
        return
    exe = Path(sys.executable).with_name("tunesmith")
    log(f"building the example split: {exe} split -p {EXAMPLE}")
    subprocess.run([str(exe), "split", "-p", str(EXAMPLE)], check=True)


def _n_eval(total: int, frac: float) -> int:
    """tunesmith.train.plan's validation slice size for `total` rows (checked against prepare() below)."""
    return max(2, min(200, int(round(total * frac)))) if total >= 10 else 0


def build_inputs(n: int, epochs: int, workdir: Path, log, extra_flags: dict | None = None) -> dict:
    """Held-out rows, the tunesmith project copy, and the plain side's file with exactly tunesmith's trained rows."""
    from tunesmith.project import load_project
    from tunesmith.train.prepare import prepare

    lines = [ln for ln in (EXAMPLE / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines() if ln.strip()]
    order = list(range(len(lines)))
    random.Random(SELECT_SEED).shuffle(order)
    held = [lines[i] for i in order[:HELD_OUT]]
    total = next(t for t in range(n, n + 400) if t - _n_eval(t, EVAL_FRACTION) == n)
    if HELD_OUT + total > len(lines):
        raise SystemExit(f"--examples {n} needs {HELD_OUT + total} rows; the training file has {len(lines)}")
    pool = [lines[i] for i in order[HELD_OUT:HELD_OUT + total]]

    project_dir = workdir / "project"
    (project_dir / "data").mkdir(parents=True)
    for name in ("tunesmith.yaml", "schema.json"):
        shutil.copy2(EXAMPLE / name, project_dir / name)
    if (EXAMPLE / "regression.jsonl").exists():
        shutil.copy2(EXAMPLE / "regression.jsonl", project_dir / "regression.jsonl")
    for name in ("test.jsonl", "test.seal.json"):
        shutil.copy2(EXAMPLE / "data" / name, project_dir / "data" / name)
    (project_dir / "data" / "train.jsonl").write_text("\n".join(pool) + "\n", encoding="utf-8")
    (workdir / "heldout.jsonl").write_text("\n".join(held) + "\n", encoding="utf-8")

    # Evaluation costs little: no periodic eval (eval_every beyond the run), the smallest validation
    # slice the plan allows (eval_fraction 0.01 -> 2 rows). The Trainer still evaluates and checkpoints
    # once at the last step (timed separately below).
    flags = {**TUNESMITH_FLAGS, "epochs": epochs, "eval_every": 10**6, "eval_fraction": EVAL_FRACTION,
             **(extra_flags or {})}
    prep = prepare(load_project(project_dir), flags)
    trained = [pool[r.line - 1] for r in prep.train.rows]
    if len(trained) != n:
        raise SystemExit(f"tunesmith would train on {len(trained)} rows, expected {n}")
    (workdir / "plain_train.jsonl").write_text("\n".join(trained) + "\n", encoding="utf-8")
    # Both sides must see the same text: the guide's rendering of the raw messages == tunesmith's encoding.
    tok = prep.tokenizer
    same = all(
        tok(tok.apply_chat_template(json.loads(t)["messages"], tokenize=False), add_special_tokens=False)["input_ids"]
        == r.enc.input_ids
        for t, r in zip(trained, prep.train.rows)
    )
    log(f"subset: {n} trained rows (+{total - n} tunesmith validation rows in its file, never trained on), "
        f"{HELD_OUT} held-out rows; identical token ids on both sides: {same}")
    return {
        "project_dir": str(project_dir), "model_path": str(prep.model_path), "flags": flags,
        "rows_in_tunesmith_file": total, "tunesmith_validation_rows": total - n, "same_tokens": same,
        "trained_tokens": sum(len(r.enc.input_ids) for r in prep.train.rows),
        "trained_assistant_tokens": sum(r.enc.trainable for r in prep.train.rows),
        "max_length_tunesmith": prep.plan["max_length"],
        "longest_row": max(len(r.enc.input_ids) for r in prep.train.rows),
        "lengths": [len(r.enc.input_ids) for r in prep.train.rows],
        "model_config": json.loads((prep.model_path / "config.json").read_text()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=96, help="trained examples on each side (default 96: 6 steps/epoch)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs on both sides (the guide's 3 is the plan's)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--max-load", type=float, default=1.0, help="wait until the 1-minute load is below this")
    ap.add_argument("--load-wait", type=float, default=600, help="seconds to wait for --max-load before each side")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="torch.profiler over N micro-batches (after 2 warm-up ones) of each side; printed")
    ap.add_argument("--plain-gradient-checkpointing", choices=("default", "on", "off"), default="default",
                    help="ablation: override TRL's default (on) for the plain side")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads in both training children (default: torch's own, one per core); "
                         "1 is far less sensitive to other processes on a shared machine")
    ap.add_argument("--only", choices=("plain", "tunesmith", "qlora"), help="run one side only (no comparison)")
    ap.add_argument("--method", choices=("lora", "qlora"), default="lora",
                    help="qlora: compare tunesmith's LoRA with tunesmith's QLoRA (4-bit NF4 base, bitsandbytes) on "
                         "the same rows, instead of the plain recipe with tunesmith")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                    help="both sides: bf16 autocast (the guide's bf16=True; default) or fp32 (a CPU without fast bf16)")
    ap.add_argument("--layers", default=None,
                    help="tunesmith side: LoRA on the top N decoder layers only, or all (default: the plan's choice)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (adapters, logs)")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        _child_main(*a._child)
        return

    log = (lambda m: print(m, file=sys.stderr, flush=True)) if a.json else (lambda m: print(m, flush=True))
    ensure_split(log)
    workdir = Path(tempfile.mkdtemp(prefix="tunesmith-train-bench-"))
    try:
        extra_flags = {"precision": a.precision}
        if a.layers is not None:
            extra_flags["layers"] = "all" if a.layers == "all" else int(a.layers)
        inputs = build_inputs(a.examples, a.epochs, workdir, log, extra_flags)
        gc = {"default": None, "on": True, "off": False}[a.plain_gradient_checkpointing]
        results: dict = {}
        pair = ("tunesmith", "qlora") if a.method == "qlora" else ("plain", "tunesmith")
        sides = [s for s in pair if a.only in (None, s)]
        for side in sides:
            log(f"[{side}] checking the load average ...")
            quiet = wait_for_quiet(a.max_load, a.load_wait, log)
            log(f"[{side}] load {quiet['load_at_start']} (waited {quiet['waited_s']} s); training ...")
            spec = {"model_path": inputs["model_path"], "epochs": a.epochs, "profile": a.profile, "seed": 42,
                    "threads": a.threads, "precision": a.precision}
            if side == "plain":
                spec.update(train_file=str(workdir / "plain_train.jsonl"), output_dir=str(workdir / "plain_out"),
                            adapter_dir=str(workdir / "plain_adapter"), plain_gradient_checkpointing=gc)
            else:
                flags = {**inputs["flags"], **({"method": "qlora"} if side == "qlora" else {})}
                spec.update(project_dir=inputs["project_dir"], flags=flags, side=side)
            results[side] = run_child(side, spec, workdir, log) | {"load": quiet}
            r = results[side]
            log(f"[{side}] {r['tokens_per_s']} tok/s, train loop {r['train_loop_seconds']} s, wall {r['wall_seconds']} s, "
                f"peak RSS {r['peak_rss_mb']} MB")
        log("matmul peak ...")
        results["peak"] = run_child("peak", {"threads": a.threads}, workdir, log)
        log("held-out evaluation ...")
        results["heldout"] = run_child("eval", {
            "project_dir": inputs["project_dir"], "model_path": inputs["model_path"],
            "heldout_file": str(workdir / "heldout.jsonl"),
            "adapters": {s: results[s]["adapter_dir"] for s in sides}}, workdir, log)
        summary = summarize(results, sides, inputs, a.precision)
        report = {"inputs": {k: v for k, v in inputs.items() if k not in ("lengths", "model_config")},
                  "examples": a.examples, "epochs": a.epochs, "results": results, "summary": summary,
                  "precision": a.precision,
                  "workdir": str(workdir) if a.keep else None, "cpu_count": os.cpu_count(),
                  "threads": a.threads}
        if a.json:
            print(json.dumps(report, indent=2, default=str))
        else:
            print_report(report, sides)
    finally:
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def mfu(results: dict, side: str, inputs: dict, precision: str) -> dict:
    """Model FLOPs per trained token of this side's objective, achieved FLOP/s, and that over the peak."""
    from tunesmith.train.flops import Shape, training_flops_per_token

    r = results[side]
    shape = Shape.from_config(inputs["model_config"])
    if side == "plain":  # loss on every token: the LM head runs (and back-propagates) at every position
        adapted, share = None, 1.0
    else:
        layers = r["settings"].get("layers", "all")
        adapted = None if layers in (None, "all") else int(layers)
        share = r["loss_tokens"] / r["tokens"] if r["tokens"] else 0.0
    per_token = training_flops_per_token(shape, inputs["lengths"], loss_share=share, adapted_layers=adapted,
                                         rank=TUNESMITH_FLAGS["rank"])
    achieved = per_token * (r["tokens_per_s"] or 0.0)
    peak = results["peak"].get(precision)
    return {"flops_per_token": round(per_token), "achieved_gflops": round(achieved / 1e9, 1),
            "peak_gflops": round(peak / 1e9, 1) if peak else None,
            "mfu": round(achieved / peak, 3) if peak else None}


def summarize(results: dict, sides: list[str], inputs: dict, precision: str) -> dict:
    out: dict = {}
    held = results["heldout"]
    for s in sides:
        out[f"{s}_heldout_loss"] = held[s]["loss"]
        out[f"{s}_mfu"] = mfu(results, s, inputs, precision)
    if sides == ["tunesmith", "qlora"]:
        lo, q = results["tunesmith"], results["qlora"]
        out.update({
            "qlora_tokens_per_s_ratio": round(q["tokens_per_s"] / lo["tokens_per_s"], 3),
            "qlora_peak_rss_ratio": round(q["peak_rss_mb"] / lo["peak_rss_mb"], 3),
            "qlora_heldout_loss_diff": round(held["qlora"]["loss"] - held["tunesmith"]["loss"], 5),
        })
    if sides == ["plain", "tunesmith"]:
        p, t = results["plain"], results["tunesmith"]
        ratio = t["tokens_per_s"] / p["tokens_per_s"]
        diff = held["tunesmith"]["loss"] - held["plain"]["loss"]
        out.update({
            "tokens_per_s_ratio": round(ratio, 3),
            "tokens_per_cpu_s_ratio": round(t["tokens_per_cpu_s"] / p["tokens_per_cpu_s"], 3),
            "train_loop_speedup": round(p["train_loop_seconds"] / t["train_loop_seconds"], 3),
            "wall_speedup": round(p["wall_seconds"] / t["wall_seconds"], 3),
            "heldout_loss_diff": round(diff, 5),
            "heldout_equal_or_lower": diff <= LOSS_TOLERANCE,
            "goal_met": ratio >= GOAL_RATIO and diff <= LOSS_TOLERANCE,
        })
    return out


def print_report(report: dict, sides: list[str]) -> None:
    res, inputs, s = report["results"], report["inputs"], report["summary"]
    print()
    print(f"train_throughput: SmolLM2-135M-Instruct, {report['examples']} trained examples x {report['epochs']} epoch(s), "
          f"precision {report['precision']}, "
          f"{report['cpu_count']} CPUs, torch threads {report['threads'] or 'default'}")
    print(f"  trained rows: {report['examples']} (identical token ids on both sides: {inputs['same_tokens']}); "
          f"{inputs['trained_tokens']} tokens, {inputs['trained_assistant_tokens']} assistant tokens; longest row "
          f"{inputs['longest_row']} tokens")
    print(f"  tunesmith's file holds {inputs['rows_in_tunesmith_file']} rows: it holds {inputs['tunesmith_validation_rows']} "
          f"out for validation (eval_every={inputs['flags']['eval_every']}: never evaluated); the plain side gets exactly "
          f"the other {report['examples']}")
    if "plain" in res:
        p = res["plain"]
        print("  plain settings:", json.dumps(p["settings"]))
        print("  plain adaptations:")
        for line in p["adaptations"]:
            print("    -", line)
    if "tunesmith" in res:
        t = res["tunesmith"]
        print("  tunesmith flags:", json.dumps(inputs["flags"]))
        print("  tunesmith plan:", json.dumps(t["settings"]))
        print("  tunesmith derived:", json.dumps(t["derived"]))
    print()
    rows = [
        ("optimizer steps", "optimizer_steps", "{}"),
        ("micro-batches", "micro_batches", "{}"),
        ("input tokens (non-pad)", "tokens", "{}"),
        ("padding share", "padding_share", "{:.1%}"),
        ("loss tokens", "loss_tokens", "{}"),
        ("trained tokens/s", "tokens_per_s", "{:.1f}"),
        ("trained tokens per CPU-s", "tokens_per_cpu_s", "{:.1f}"),
        ("train loop s", "train_loop_seconds", "{:.1f}"),
        ("  fwd+bwd s", "fwd_bwd_seconds", "{:.1f}"),
        ("    of which loss fwd s", "loss_fwd_seconds", "{:.1f}"),
        ("  optimizer/log/data/eval s", "outside_fwd_bwd_seconds", "{:.1f}"),
        ("    of which final eval s", "eval_seconds", "{:.1f}"),
        ("    of which checkpoint s", "checkpoint_seconds", "{:.1f}"),
        ("wall s (whole child)", "wall_seconds", "{:.1f}"),
        ("  setup s (outside loop)", "setup_seconds", "{:.1f}"),
        ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
        ("train loss (own objective)", "train_loss", "{:.4f}"),
        ("other processes' CPU share", "other_processes_cpu_share", "{:.1%}"),
    ]
    print(f"  {'':30s}" + "".join(f"{x:>14s}" for x in sides))
    for label, key, fmt in rows:
        cells = []
        for side in sides:
            v = res[side].get(key)
            cells.append(fmt.format(v) if v is not None else "-")
        print(f"  {label:30s}" + "".join(f"{c:>14s}" for c in cells))
    print(f"  {'1-min load before':30s}" + "".join(f"{res[sd]['load']['load_at_start'][0]:>14.2f}" for sd in sides))
    print(f"  {'held-out assistant CE':30s}" + "".join(f"{res['heldout'][sd]['loss']:>14.4f}" for sd in sides))
    print(f"  {'model GFLOP per trained token':30s}" + "".join(f"{s[sd + '_mfu']['flops_per_token'] / 1e9:>14.3f}" for sd in sides))
    print(f"  {'achieved GFLOP/s':30s}" + "".join(f"{s[sd + '_mfu']['achieved_gflops']:>14.1f}" for sd in sides))
    peak = res["peak"]
    print(f"  {'MFU (' + report['precision'] + ' matmul peak)':30s}" + "".join(
        f"{s[sd + '_mfu']['mfu']:>14.1%}" if s[sd + '_mfu']['mfu'] is not None else f"{'-':>14s}" for sd in sides))
    print(f"  matmul peak (torch.mm 2048^2, {peak['threads']} threads): fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s"
          + (f", bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s" if peak.get("bf16") else ", bf16: no fast bf16 on this CPU"))
    print("  decoder Linear during training: " + "; ".join(f"{sd}: {res[sd].get('linear_compute')}" for sd in sides))
    print(f"  (base model, no adapter: {res['heldout']['base']['loss']:.4f} over {res['heldout']['base']['tokens']} "
          f"assistant tokens of {res['heldout']['base']['examples']} held-out examples)")
    for side in sides:
        ld = res[side]["load"]
        print(f"  load {side}: before {ld['load_at_start']} (asked at {ld['load_when_asked']}, waited {ld['waited_s']} s, "
              f"quiet={ld['quiet']}); after {res[side]['load_at_end']}")
    if "qlora_tokens_per_s_ratio" in s:
        print()
        print(f"  QLoRA / LoRA (tunesmith both): tokens/s {s['qlora_tokens_per_s_ratio']:.2f}x, "
              f"peak RSS {s['qlora_peak_rss_ratio']:.2f}x, held-out loss {s['qlora_heldout_loss_diff']:+.4f}")
    if "tokens_per_s_ratio" in s:
        print()
        print(f"  tokens/s ratio tunesmith/plain: {s['tokens_per_s_ratio']:.2f}x  (goal >= {GOAL_RATIO}x); "
              f"train loop {s['train_loop_speedup']:.2f}x, wall {s['wall_speedup']:.2f}x faster; "
              f"per CPU-second {s['tokens_per_cpu_s_ratio']:.2f}x")
        print(f"  held-out loss tunesmith - plain: {s['heldout_loss_diff']:+.4f} -> "
              f"{'equal or lower' if s['heldout_equal_or_lower'] else 'HIGHER'} (tolerance {LOSS_TOLERANCE})")
        print(f"  goal met: {s['goal_met']}")
    for side in sides:
        if res[side].get("profile"):
            print(f"\n  torch.profiler, {side} (micro-batches 3..):\n{res[side]['profile']}")


if __name__ == "__main__":
    main()
