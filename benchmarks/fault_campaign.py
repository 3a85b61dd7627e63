"""Fault injection for `tunesmith run`: kill -9 at random points, then a re-run must finish with the
artifacts of an uninterrupted run.

    .venv/bin/python benchmarks/fault_campaign.py                  # 10 trials, seed 0
    .venv/bin/python benchmarks/fault_campaign.py --trials 3 --seed 7 --keep /tmp/campaign

A tiny random Llama (the tests' fixture) and a 60-example project make one whole run take seconds.
One uninterrupted reference run is timed first; each trial starts `tunesmith run` on a fresh copy of
the project, SIGKILLs it after a delay drawn (seeded) uniformly over the reference run's wall time,
re-runs it to completion and compares what it made with the reference. A run that finished before its
kill (run times vary on a busy machine) is tried once more with a delay drawn over its own duration.

"Same" where CPU training is deterministic (fp32, LoRA dropout 0 on CPU, seeded data order, the same
thread count): the tuned model's test predictions are identical strings, its eval metrics and
regression results are equal, and every adapter tensor is equal within 1e-6 (max abs difference
shown; it is 0 when the resume restored the checkpoint's exact weights, optimizer and RNG state).
eval_every is set in the project: left to the plan it follows the measured step time, and two
uninterrupted runs on a busy machine could then checkpoint at different steps.

Prints a table (trial, kill time, the stage it hit, resumed ok, artifacts same, notes); exit status
1 when a trial did not resume or its artifacts differ.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tiny model and the example data live with the test fixtures

STAGES = ("check", "split", "baseline", "train", "eval", "report")
ATOL = 1e-6


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_fixture(workdir: Path, *, epochs: int = 8, eval_every: int = 3) -> Path:
    """The tiny model and a pristine project (nothing run yet) under `workdir`; returns the project."""
    from datagen import SYSTEM, clean_examples, write_jsonl
    from fixtures.tiny_models import build_tiny_llama

    model = build_tiny_llama(workdir / "model")
    root = workdir / "pristine"
    root.mkdir(parents=True)
    (root / "tunesmith.yaml").write_text(
        f"task: 'Answer with one compact JSON object.'\nbase_model: {model}\n"
        f"system_prompt: {json.dumps(SYSTEM)}\noutput:\n  json: true\n"
        "data:\n  regression: regression.jsonl\n  test_fraction: 0.2\n"
        "eval:\n  max_new_tokens: 8\nbaseline:\n  constrained: false\n"
        f"train:\n  epochs: {epochs}\n  eval_every: {eval_every}\n")
    write_jsonl(root / "data.jsonl", clean_examples(60))
    write_jsonl(root / "regression.jsonl", [
        {"id": f"r{i}", "prompt": f"regression {i}", "assertions": [{"type": "not_contains", "value": "ZZZZ"}]}
        for i in range(20)])
    return root


def run_command(project: Path) -> list[str]:
    return [sys.executable, "-m", "tunesmith", "run", str(project), "--force", "--json"]


def _env() -> dict[str, str]:
    # the same thread count in every run: a different reduction order would change the low bits
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


@dataclass
class Artifacts:
    """What a finished run leaves that a person uses: the eval summary, the predictions, the adapter."""

    run_id: str
    metrics: dict[str, Any]
    regression: dict[str, Any]
    predictions: dict[str, str | None]
    adapter: dict[str, Any] = field(repr=False)

    def differences(self, other: Artifacts) -> list[str]:
        import torch

        out = []
        if self.metrics != other.metrics:
            out.append("eval metrics")
        if self.regression != other.regression:
            out.append("regression results")
        if self.predictions != other.predictions:
            changed = sum(self.predictions.get(k) != other.predictions.get(k)
                          for k in set(self.predictions) | set(other.predictions))
            out.append(f"{changed} test prediction(s)")
        if self.adapter.keys() != other.adapter.keys():
            out.append("adapter tensor names")
        else:
            worst = max_abs_difference(self.adapter, other.adapter)
            if not worst <= ATOL or not all(torch.equal(self.adapter[k].isnan(), other.adapter[k].isnan())
                                            for k in self.adapter):
                out.append(f"adapter weights (max abs difference {worst:.3g})")
        return out


def max_abs_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()), default=0.0)


def collect(project: Path, done: dict[str, Any]) -> Artifacts:
    from safetensors.torch import load_file

    from tunesmith.evaluate.store import EvalStore
    from tunesmith.runs import RunRegistry

    run_id = done["run_id"]
    registry = RunRegistry(project / "runs")
    stored = EvalStore(registry).latest(run_id, "test")
    predictions = {k: v.output for k, v in stored.items.items()} if stored else {}
    summary = done["summary"]
    return Artifacts(run_id, summary["test"]["metrics"], summary["regression"], predictions,
                     load_file(str(project / "runs" / run_id / "adapter" / "adapter_model.safetensors")))


def _events(stdout: str) -> list[dict[str, Any]]:
    out = []
    for line in stdout.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by the kill
    return out


def run_to_end(project: Path, timeout: float = 900) -> tuple[subprocess.CompletedProcess, list[dict[str, Any]]]:
    proc = subprocess.run(run_command(project), capture_output=True, text=True, env=_env(), timeout=timeout)
    return proc, _events(proc.stdout)


def reference(pristine: Path, workdir: Path) -> tuple[float, Artifacts]:
    """One uninterrupted run: its wall time (the range kill delays are drawn from) and its artifacts."""
    project = workdir / "reference"
    shutil.copytree(pristine, project)
    began = time.monotonic()
    proc, events = run_to_end(project)
    took = time.monotonic() - began
    if proc.returncode != 0:
        raise SystemExit(f"the reference run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return took, collect(project, next(e for e in events if e.get("event") == "done"))


@dataclass
class Trial:
    n: int
    kill_at: float
    hit: str
    resumed: bool
    same: bool
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        return (f"{self.n:>5}  {self.kill_at:>7.1f} s  {self.hit:<22} {'yes' if self.resumed else 'NO':<8} "
                f"{'yes' if self.same else 'NO':<6} {'; '.join(self.notes)}")


HEADER = f"{'trial':>5}  {'kill at':>9}  {'stage hit':<22} {'resumed':<8} {'same':<6} notes"


def _stage_hit(events: list[dict[str, Any]], project: Path) -> str:
    """The first stage that had not reported when the kill came; for training, the step it had reached."""
    finished = {e["stage"] for e in events if e.get("event") == "stage"}
    stage = next((s for s in STAGES if s not in finished), "done")
    if stage == "check" and not (project / ".tunesmith").exists():
        return "startup/check"
    if stage == "train":
        steps = [json.loads(line).get("step", 0) for p in (project / "runs").glob("*/steps.jsonl")
                 for line in p.read_text().splitlines() if line.strip()]
        return f"train (step {max(steps)})" if steps else "train (before step 1)"
    return stage


def leftovers(project: Path) -> list[str]:
    """Temp files of writes a kill cut short (harmless, but clutter a person would wonder about)."""
    return sorted(str(p.relative_to(project)) for p in project.rglob("*.tmp"))


def kill_at_random(project: Path, pristine: Path, limit: float, rng: random.Random) -> tuple[float, str, list[str]]:
    """Start `tunesmith run` on a fresh copy and SIGKILL it at a seeded time in [0, limit): (the time,
    the stage it hit, notes). A run that ends first (a busy machine times runs unevenly) is started
    again on a fresh copy with a time drawn over the duration it just took."""
    notes = []
    for _ in range(2):
        shutil.rmtree(project, ignore_errors=True)
        shutil.copytree(pristine, project)
        kill_at = round(rng.uniform(0.0, limit), 1)
        began = time.monotonic()
        proc = subprocess.Popen(run_command(project), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env=_env())
        try:
            proc.communicate(timeout=kill_at)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)  # no cleanup, no atexit: a real crash
            out, _ = proc.communicate()
            return kill_at, _stage_hit(_events(out), project), notes
        limit = time.monotonic() - began
        notes.append(f"finished in {limit:.1f} s before a kill at {kill_at} s; redrawn")
    return kill_at, "none (it had finished)", notes


def trial(n: int, limit: float, rng: random.Random, pristine: Path, workdir: Path, ref: Artifacts) -> Trial:
    project = workdir / f"trial-{n}"
    kill_at, hit, notes = kill_at_random(project, pristine, limit, rng)
    done, events = run_to_end(project)
    result = Trial(n, kill_at, hit, resumed=done.returncode == 0, same=False, notes=notes)
    if not result.resumed:
        tail = done.stderr.strip().splitlines()[-3:]
        result.notes.append(f"re-run exit {done.returncode}: {' | '.join(tail)}")
        return result
    got = collect(project, next(e for e in events if e.get("event") == "done"))
    diffs = got.differences(ref)
    result.same = not diffs
    result.notes += [f"differs: {', '.join(diffs)}"] if diffs else []
    train = next((e for e in events if e.get("event") == "stage" and e["stage"] == "train"), {})
    if train.get("status") == "resumed":
        step = _resumed_from(project, got.run_id)
        result.notes.append(f"training resumed from {f'step {step}' if step else 'the start'}")
    from tunesmith.runs import RunRegistry

    stuck = [r.id for r in RunRegistry(project / "runs").list(limit=None) if r.status == "running"]
    if stuck:
        result.notes.append(f"registry rows left running: {', '.join(stuck)}")
    if (tmp := leftovers(project)):
        result.notes.append(f"temp files left: {', '.join(tmp)}")
    return result


def _resumed_from(project: Path, run_id: str) -> Any:
    metrics = json.loads((project / "runs" / run_id / "metrics.json").read_text())
    return metrics.get("resumed_from_step")


def campaign(trials: int, seed: int, workdir: Path, *, epochs: int = 8, eval_every: int = 3,
             report: Any = say) -> tuple[float, list[Trial]]:
    pristine = make_fixture(workdir, epochs=epochs, eval_every=eval_every)
    took, ref = reference(pristine, workdir)
    report(f"reference run: {took:.1f} s, run {ref.run_id}, {len(ref.predictions)} test predictions")
    rng = random.Random(seed)
    results = []
    for n in range(1, trials + 1):
        results.append(trial(n, took, rng, pristine, workdir, ref))
        report(results[-1].row())
    return took, results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="Seeds the kill delays.")
    ap.add_argument("--epochs", type=int, default=8, help="Training length of the tiny project.")
    ap.add_argument("--keep", type=Path, default=None, help="Work in this (new) directory and keep it.")
    args = ap.parse_args(argv)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="fault-campaign-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        say(HEADER)
        took, results = campaign(args.trials, args.seed, workdir, epochs=args.epochs, report=say)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"reference run {took:.1f} s; kill delays uniform over [0, {took:.1f}) s, seed {args.seed}")
    print(HEADER)
    for r in results:
        print(r.row())
    bad = [r.n for r in results if not (r.resumed and r.same)]
    print(f"{len(results) - len(bad)} of {len(results)} trials resumed with the same artifacts"
          + (f"; failed: {', '.join(map(str, bad))}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
