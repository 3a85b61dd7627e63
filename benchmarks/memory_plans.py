"""The training plan's memory estimate against measured peaks, on models in the shapes of real 0.5B-3B ones.

Random weights in the published shapes (no download): each shape is built with `AutoConfig.for_model` +
`from_config` and saved once as a bf16 checkpoint (as the real ones are stored), then every cell (method x
sequence length) runs in its own process: tunesmith's `build_model` loads it as training would, and a few
real optimizer steps run (tunesmith's loss, AdamW, bf16 autocast where the plan picks it). The child's peak
RSS (`ru_maxrss`) is the measurement, so peaks of different cells never mix. Beside it: the plan's
estimate and the ratio. A cell the plan refuses (over `--memory-gb`) is not loaded at all.

    python benchmarks/memory_plans.py --shapes qwen2.5-0.5b --lengths 256 1024
    python benchmarks/memory_plans.py --shapes qwen2.5-3b --plan-only
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: config.json of the Hugging Face releases (Qwen/Qwen2.5-0.5B, Qwen/Qwen2.5-1.5B, Qwen/Qwen2.5-3B):
#: hidden size, MLP width, layers, attention heads, key/value heads, vocabulary, tied embeddings
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True, "max_position_embeddings": 32768},
    "qwen2.5-1.5b": {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True, "max_position_embeddings": 32768},
    "qwen2.5-3b": {"model_type": "qwen2", "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                   "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936,
                   "tie_word_embeddings": True, "max_position_embeddings": 32768},
}
METHODS = ("lora", "qlora", "full")
#: the last quarter of each row carries labels (a narrow task's answer after its prompt)
LABEL_SHARE = 0.25


def plan_for(shape: dict[str, Any], method: str, length: int, memory_gb: float, batch: int) -> Any:
    """The plan tunesmith makes for this cell on a CPU with `memory_gb` free (raises UsageError on refusal)."""
    from tunesmith.train.device import DeviceInfo, cpu_supports_bf16, qlora_blocker
    from tunesmith.train.plan import PlanInputs, make_plan

    dev = DeviceInfo("cpu", "x86_64", cpu_supports_bf16(), memory_gb)
    return make_plan(PlanInputs(
        n_examples=100, token_lengths=[length] * 100, model_max_length=shape["max_position_embeddings"], device=dev,
        n_params=None, flags={"method": method, "batch_size": batch, "effective_batch": batch, "max_length": length},
        n_layers=shape["num_hidden_layers"], shape=shape, qlora_check=qlora_blocker, label_share=LABEL_SHARE))


def build_checkpoint(name: str, out: Path) -> Path:
    """A random model in the shape `name`, saved in bf16 (once; reused while `out` exists)."""
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(SHAPES[name])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(str(out))
    return out


def run_cell(checkpoint: Path, plan_json: str, steps: int) -> dict[str, Any]:
    """In a fresh process: load as `build_model` does, train `steps` steps; peak RSS and seconds per step."""
    import torch

    from tunesmith.train.device import DeviceInfo
    from tunesmith.train.local import build_model
    from tunesmith.train.plan import TrainPlan
    from tunesmith.train.trainer import selective_lm_loss
    from types import SimpleNamespace

    plan = TrainPlan.from_dict(json.loads(plan_json))
    dev = DeviceInfo("cpu", "x86_64", plan["precision"] == "bf16", None)
    started = time.perf_counter()
    model = build_model(SimpleNamespace(plan=plan, device=dev, model_path=checkpoint))
    model.train()
    load_s = time.perf_counter() - started
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch, length = plan["batch_size"], plan["max_length"]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (batch, length), generator=gen)
    labels = ids.clone()
    labels[:, : int(length * (1 - LABEL_SHARE))] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=plan["precision"] == "bf16"):
            loss = selective_lm_loss(model, inputs, None)
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return {"peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "after_load_gb": round(after_load, 2), "load_s": round(load_s, 1),
            "step_s": round(min(times), 1), "steps": steps}


def measure(checkpoint: Path, plan: Any, steps: int, timeout: float) -> dict[str, Any]:
    code = ("import json, sys; sys.path.insert(0, 'benchmarks'); from memory_plans import run_cell; "
            "from pathlib import Path; print(json.dumps(run_cell(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))))")
    done = subprocess.run([sys.executable, "-c", code, str(checkpoint), json.dumps(plan.to_dict()), str(steps)],
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["qwen2.5-0.5b"], choices=sorted(SHAPES))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--lengths", nargs="+", type=int, default=[256, 1024])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps per cell (2: the second holds gradients, AdamW state and activations at once)")
    ap.add_argument("--memory-gb", type=float, default=16.0,
                    help="RAM the plan may use (this 24 GiB machine is shared: 16 by default)")
    ap.add_argument("--plan-only", action="store_true", help="print the plans and refusals, measure nothing")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "tunesmith-memory-plans")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds one cell may take")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    from tunesmith.errors import UsageError

    rows = []
    print(f"{'shape':14} {'method':6} {'len':>5} {'plan GiB':>8} {'peak GiB':>8} {'ratio':>6} {'s/step':>7}  note")
    for name in args.shapes:
        for length in args.lengths:
            for method in args.methods:
                row: dict[str, Any] = {"shape": name, "method": method, "length": length, "batch": args.batch}
                try:
                    plan = plan_for(SHAPES[name], method, length, args.memory_gb, args.batch)
                except UsageError as exc:
                    row["refused"] = f"{exc} -> {exc.hint}"
                    rows.append(row)
                    print(f"{name:14} {method:6} {length:5} {'-':>8} {'-':>8} {'-':>6} {'-':>7}  refused: {exc.hint}")
                    continue
                row["plan_gb"] = plan.derived["memory_gb"]["total"]
                row["parts"] = plan.derived["memory_gb"]
                row["checkpointing"] = plan["gradient_checkpointing"]
                if not args.plan_only:
                    ckpt = build_checkpoint(name, args.cache / name)
                    row.update(measure(ckpt, plan, args.steps, args.timeout))
                rows.append(row)
                peak = row.get("peak_gb")
                ratio = f"{row['plan_gb'] / peak:.2f}" if peak else "-"
                note = row.get("error", "") + (" checkpointing" if row["checkpointing"] else "")
                print(f"{name:14} {method:6} {length:5} {row['plan_gb']:8.2f} {peak or '-':>8} {ratio:>6} "
                      f"{row.get('step_s', '-'):>7}  {note}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
