"""Contract-aware stopping: the base-model evaluation of a JSON-contract project with and without it.

    .venv/bin/python benchmarks/early_stop.py                 # the example project's sealed test set
    .venv/bin/python benchmarks/early_stop.py --n 40 --json

The base model is what `tunesmith baseline` evaluates: it has never seen the task, fails the JSON
contract from its first characters and then writes on to the token budget. Both sides answer the same
sealed test prompts of examples/pyfunc-json with the same loaded SmolLM2-135M-Instruct, the budget
`baseline` uses (1.25 x the longest training answer + 16 tokens), greedy, batched by LocalBackend:
once decoding every answer to its end, once cutting each answer as soon as it can no longer be JSON.

It prints wall time and output tokens of both, the ratio (goal: >= 3x less wall time), and whether
every contract metric (valid JSON, schema-valid, per-field accuracy, exact match) is the same per item
on both sides; stop rate is shown too (a cut answer counts as "did not stop", as an answer that ran
to the budget does). Exit status 1 when a metric differs or the goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "examples" / "pyfunc-json"
GOAL = 3.0
CONTRACT_METRICS = ("json_valid", "schema_valid", "field_accuracy", "exact_match")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="test prompts (default: all of the sealed test set)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)

    import torch

    from tunesmith.evaluate.api import EvalOptions, _settings
    from tunesmith.evaluate.generate import LocalBackend
    from tunesmith.evaluate.items import test_items
    from tunesmith.evaluate.metrics import score_item
    from tunesmith.evaluate.types import DecodeSettings
    from tunesmith.models.resolve import resolve_model
    from tunesmith.project import load_project

    if args.threads:
        torch.set_num_threads(args.threads)
    if not (PROJECT / "data" / "test.jsonl").is_file():
        say("building the example project's data and split")
        subprocess.run([str(Path(sys.executable).parent / "tunesmith"), "split", "-p", str(PROJECT)], check=True,
                       cwd=ROOT)
    project = load_project(PROJECT)
    items = test_items(project)[: args.n]
    backend = LocalBackend(resolve_model(project.base_model).path, device="cpu")
    subject = SimpleNamespace(backend=backend)  # what `baseline` evaluates: the base model on this machine
    cut_settings = _settings(project, EvalOptions(judge=False), say, subject, test=items)
    assert cut_settings.contract is not None, "the example project's contract is JSON: early stop must be on"
    full_settings = DecodeSettings(max_new_tokens=cut_settings.max_new_tokens)
    backend.generate([items[0].chat], DecodeSettings(max_new_tokens=4))  # warm-up: allocations, kernels
    schema = project.load_schema()

    sides = {}
    for name, settings in (("decoded to the end", full_settings), ("contract-aware stop", cut_settings)):
        say(f"{name}: {len(items)} prompts, up to {settings.max_new_tokens} new tokens (load {os.getloadavg()[0]:.2f})")
        t0 = time.perf_counter()
        gens = backend.generate([it.chat for it in items], settings)
        wall = time.perf_counter() - t0
        scores = [score_item(it, g, schema=schema, regex=project.output.regex, expects_json=True)
                  for it, g in zip(items, gens)]
        sides[name] = {"wall_s": round(wall, 1), "output_tokens": sum(g.output_tokens for g in gens),
                       "cut": sum(g.finish_reason == "contract" for g in gens),
                       "stop_rate": round(sum(s.stopped for s in scores) / len(scores), 3),
                       "scores": [{m: getattr(s, m) for m in CONTRACT_METRICS} for s in scores]}
    full, cut = sides["decoded to the end"], sides["contract-aware stop"]
    same = full["scores"] == cut["scores"]
    ratio = full["wall_s"] / cut["wall_s"] if cut["wall_s"] else float("inf")
    report = {"n": len(items), "max_new_tokens": cut_settings.max_new_tokens, "ratio": round(ratio, 2),
              "metrics_identical": same, "threads": torch.get_num_threads(),
              **{k: {kk: vv for kk, vv in v.items() if kk != "scores"} for k, v in sides.items()}}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, side in sides.items():
            print(f"{name:22} {side['wall_s']:>8} s  {side['output_tokens']:>7} output tokens  "
                  f"{side['cut']:>4} cut  stop rate {side['stop_rate']:.0%}")
        print(f"wall time {ratio:.2f}x less (goal >= {GOAL:g}x): {'PASS' if ratio >= GOAL else 'FAIL'}; "
              f"contract metrics identical per item: {same}")
    return 0 if same and ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
