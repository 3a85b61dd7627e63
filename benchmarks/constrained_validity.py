"""Constrained decoding's promise: every constrained answer validates against the schema.

    .venv/bin/python benchmarks/constrained_validity.py                  # base, the whole sealed test set
    .venv/bin/python benchmarks/constrained_validity.py --run RUN --n 20  # and a trained run of the project
    .venv/bin/python benchmarks/constrained_validity.py --json

The sealed test prompts of examples/pyfunc-json are answered by the embedded SmolLM2-135M-Instruct
(and, with --run, by that run of the example project), constrained to the project's JSON Schema the
way `tunesmith eval --constrained` and `baseline` do it (`evaluate.constrained`): the budget `eval`
uses, greedy, batched by LocalBackend, no generation cache (every answer is decoded now).

It prints, per model, the share of constrained answers that are schema-valid (goal: 100 %), how the
answers finished (a "length" finish is an answer cut by the token budget, the only way a constrained
answer can be invalid), exact match, per-field accuracy and tokens/s, and the first invalid answers.
Exit status 1 when any constrained answer is not schema-valid.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "examples" / "pyfunc-json"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(name: str, backend, items, settings, project) -> dict:
    from tunesmith.evaluate.metrics import score_item

    say(f"{name}: {len(items)} prompts, constrained, up to {settings.max_new_tokens} new tokens")
    t0 = time.perf_counter()
    gens = backend.generate([it.chat for it in items], settings)
    wall = time.perf_counter() - t0
    scores = [score_item(it, g, schema=project.load_schema(), expects_json=True) for it, g in zip(items, gens)]
    valid = sum(bool(s.schema_valid) for s in scores)
    tokens = sum(g.output_tokens for g in gens)
    fields = [s.field_accuracy for s in scores if s.field_accuracy is not None]
    return {"n": len(items), "schema_valid": valid / len(items), "invalid": len(items) - valid,
            "exact_match": sum(bool(s.exact_match) for s in scores) / len(items),
            "field_accuracy": sum(fields) / len(fields) if fields else None,
            "finish_reasons": dict(collections.Counter(g.finish_reason for g in gens)),
            "tokens_per_s": round(tokens / wall, 1) if wall else None, "wall_s": round(wall, 1),
            "invalid_examples": [{"id": it.id, "finish_reason": g.finish_reason, "text": g.text[-300:]}
                                 for it, g, s in zip(items, gens, scores) if not s.schema_valid][:3]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=None, help="test prompts (default: all of the sealed test set)")
    ap.add_argument("--run", default=None, help="also a trained run of the example project (id, prefix or latest)")
    ap.add_argument("--project", type=Path, default=PROJECT, help="the project (default: examples/pyfunc-json)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the lines")
    args = ap.parse_args(argv)

    import torch

    from tunesmith.evaluate.api import EvalOptions, _settings
    from tunesmith.evaluate.constrained import constrained_settings, require_constraint
    from tunesmith.evaluate.generate import LocalBackend
    from tunesmith.evaluate.items import test_items
    from tunesmith.evaluate.subject import resolve_subject
    from tunesmith.models.resolve import resolve_model
    from tunesmith.project import load_project

    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.project / "data" / "test.jsonl").is_file():
        say("building the project's data and split")
        subprocess.run([str(Path(sys.executable).parent / "tunesmith"), "split", "-p", str(args.project)],
                       check=True, cwd=ROOT)
    project = load_project(args.project)
    items = test_items(project)[: args.n]
    base = LocalBackend(resolve_model(project.base_model).path, device="cpu")
    plain = _settings(project, EvalOptions(judge=False), say, SimpleNamespace(backend=base), test=items)
    settings = constrained_settings(plain, require_constraint(project, "this benchmark"))
    models = [("base", base)]
    if args.run:
        subject = resolve_subject(project, args.run)
        models.append((subject.name, getattr(subject.backend, "backend", subject.backend)))  # past the cache
    results = {name: measure(name, backend, items, settings, project) for name, backend in models}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, r in results.items():
            print(f"{name} + constrained: schema-valid {r['schema_valid']:.1%} ({r['n'] - r['invalid']}/{r['n']}), "
                  f"finished {r['finish_reasons']}, exact match {r['exact_match']:.1%}, "
                  f"{r['tokens_per_s']} tokens/s ({r['wall_s']} s)")
            for bad in r["invalid_examples"]:
                print(f"  invalid {bad['id']} ({bad['finish_reason']}): ...{bad['text'][-120:]!r}")
    return 1 if any(r["invalid"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
