"""The checks `scripts/device-check.sh` runs on a lent accelerator, offline, with only this repository.

QLoRA and LoRA on the embedded model (bf16 where the device has it), the QLoRA run killed with SIGKILL
and resumed, both merged (into the full-precision base; `merge` verifies the greedy answers of the merged
model against the adapter model on the sealed test prompts), an eval of the QLoRA run, and one server
with both adapters answering on 127.0.0.1. It prints tokens/s, peak memory (GPU on CUDA, RSS anywhere)
and whether merged and adapter answers agree, and fails (exit 1) on any broken step or when the whole
check runs past --limit-s. Nothing here is tuned to a GPU: every size comes from the plan or a flag.

    python scripts/device_check.py [--quick] [--model DIR] [--limit-s 480]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pyfunc-json"
MODEL = "builtin:smollm2-135m-instruct"


def make_project(work: Path, model: str, rows: int) -> Path:
    """A copy of the example project (its sealed test set kept) training on its first `rows` rows.

    A fresh checkout has no built data (it is built, not committed): the copy then builds and splits
    its own, with the example's build command, as `make demo` would.
    """
    import yaml

    project = work / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("runs", ".tunesmith", "__pycache__"))
    if not (project / "data" / "test.jsonl").exists():
        subprocess.run([sys.executable, "-m", "tunesmith", "split", "--project", str(project)], check=True,
                       stdout=subprocess.DEVNULL)
    train_file = project / "data" / "train.jsonl"
    lines = [ln for ln in train_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    train_file.write_text("\n".join(lines[:rows]) + "\n", encoding="utf-8")
    settings = yaml.safe_load((project / "tunesmith.yaml").read_text(encoding="utf-8"))
    settings["base_model"] = model
    (project / "tunesmith.yaml").write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return project


def train(project: Path, flags: list[str], *, kill_at: int | None = None) -> dict[str, Any]:
    """`tunesmith train` in a child; with `kill_at`, SIGKILL at that step and `--resume latest`. The
    final `done` event's metrics, plus the step the resume started from."""
    cmd = [sys.executable, "-m", "tunesmith", "train", "-p", str(project), "--json", "--no-converge", *flags]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if kill_at is not None:
        errors = tempfile.TemporaryFile("w+")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("event") == "step" and event.get("step", 0) >= kill_at:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=120)
        if proc.returncode != -signal.SIGKILL:
            errors.seek(0)
            raise SystemExit(f"training ended (exit {proc.returncode}) before step {kill_at}:\n{errors.read()[-3000:]}")
        cmd = [sys.executable, "-m", "tunesmith", "train", "-p", str(project), "--json", "--resume", "latest"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"training failed:\n{done.stderr[-3000:]}")
    final = json.loads(done.stdout.strip().splitlines()[-1])
    return {"run_id": final["run_id"], **final["metrics"]}


def serve_two(project: Path, adapters: dict[str, str]) -> dict[str, str]:
    """One server, both adapters: each must answer a chat request under its own name."""
    import httpx

    from tunesmith.serve.api import ServeConfig, build_state, start_in_thread

    config = ServeConfig(project_dir=project, port=0, adapters=list(adapters.items()))
    running = start_in_thread(build_state(config), config)
    out = {}
    try:
        for name in adapters:
            reply = httpx.post(f"{running.url}/chat/completions", timeout=300, json={
                "model": name, "max_tokens": 16, "messages": [{"role": "user", "content": "def add(a, b): return a + b"}]})
            ok = reply.status_code == 200 and reply.json().get("model") == name
            out[name] = "ok" if ok else f"HTTP {reply.status_code}: {reply.text[:200]}"
    finally:
        running.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="40 rows, 2 epochs: a smoke test of every step")
    ap.add_argument("--model", default=MODEL, help=f"base model (default {MODEL}, embedded: no download)")
    ap.add_argument("--rows", type=int, default=None, help="training rows (default 40 with --quick, else 160)")
    ap.add_argument("--epochs", default=None, help="epochs (default 2 with --quick, else 1)")
    ap.add_argument("--verify-n", type=int, default=8, help="sealed test prompts merge verifies")
    ap.add_argument("--limit-s", type=float, default=480.0, help="fail when the whole check takes longer")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)
    started = time.monotonic()
    rows = a.rows or (40 if a.quick else 160)
    epochs = a.epochs or ("2" if a.quick else "1")
    import torch

    cuda = torch.cuda.is_available()
    precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "auto"
    work = Path(tempfile.mkdtemp(prefix="tunesmith-device-check-"))
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "precision": precision}
    failures: list[str] = []
    try:
        project = make_project(work, a.model, rows)
        common = ["--epochs", epochs, "--eval-every", "2", "--precision", precision]
        results["qlora"] = train(project, ["--method", "qlora", *common], kill_at=3)
        results["lora"] = train(project, ["--method", "lora", *common])
        from tunesmith.ship.merge import merge_run

        for method in ("qlora", "lora"):
            merged = merge_run(project, results[method]["run_id"], work / f"merged-{method}", verify_n=a.verify_n,
                               allow_mismatch=True)
            v = merged.verification
            # printed, not failed: in bf16 a merged model may round a near-tie the other way (fp32 on CPU is exact)
            results[method]["merged_agrees"] = f"{v.identical}/{v.total}" if v else "not verified"
        from tunesmith.evaluate.api import EvalOptions, evaluate

        outcome = evaluate(project, results["qlora"]["run_id"], EvalOptions(max_new_tokens=64, judge=False))
        results["eval"] = outcome.summary
        results["serve"] = serve_two(project, {m: results[m]["run_id"] for m in ("qlora", "lora")})
        failures += [f"serve {name}: {state}" for name, state in results["serve"].items() if state != "ok"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - started, 1)
    if results["seconds"] > a.limit_s:
        failures.append(f"took {results['seconds']} s, over the {a.limit_s:.0f} s limit")
    for method in ("qlora", "lora"):
        r = results[method]
        print(f"{method:6} {r.get('trained_tokens_per_s')} tokens/s, peak GPU {r.get('peak_gpu_mb', '-')} MB, "
              f"peak RSS {r.get('peak_rss_mb')} MB, resumed from step {r.get('resumed_from_step')}, "
              f"merged == adapter greedy: {r['merged_agrees']}")
    print(f"serve: {results['serve']}; total {results['seconds']} s on {results['device']} ({precision})")
    results["failures"] = failures
    if a.json:
        a.json.write_text(json.dumps(results, indent=1, default=str))
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
