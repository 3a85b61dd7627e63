"""Teacher generation throughput: `tunesmith generate` at concurrency 8 vs 1, then a cached re-run.

    .venv/bin/python benchmarks/generate_throughput.py               # 500 examples, 200 ms per request
    .venv/bin/python benchmarks/generate_throughput.py --n 100 --latency 0.1 --json

A local OpenAI-compatible server on 127.0.0.1 (the tests' scripted teacher: a diversity plan, new
inputs, JSON answers checked against a schema) answers every request after a fixed latency, the way a
remote teacher does. The same generation (plan -> inputs -> dedup -> answers, --n examples) runs in
two fresh project directories, one at concurrency 8 and one at concurrency 1, through the library call
the CLI makes; then the concurrency-8 one runs again, which the request cache must answer alone.

It prints, per side: wall time, examples/s, requests sent, and the ratio of examples/s (goal: >= 6x),
and for the re-run the requests sent (goal: 0) and whether it wrote the same file. Exit status 1 when a
goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the scripted teacher lives with the test fixtures

GOAL_RATIO = 6.0


def _side(root: Path, url: str, n: int, concurrency: int) -> dict[str, Any]:
    from tunesmith.distill.generate import generate, options_for
    from tunesmith.project import load_project

    project = load_project(root)
    opts = options_for(project, {"teacher_model": "bench-teacher", "base_url": url, "n": n, "concurrency": concurrency})
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    result = generate(project, opts)
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "rows": result.rows, "wall_s": round(wall, 2),
            "cpu_s": round(time.process_time() - cpu0, 2), "examples_per_s": round(result.rows / wall, 2),
            "requests_sent": result.tally.sent, "from_cache": result.tally.cached}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--n", type=int, default=500, help="examples to generate on each side")
    ap.add_argument("--latency", type=float, default=0.2, help="seconds the server waits before each reply")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)

    from fixtures.fake_openai import FakeOpenAI, Reply
    from fixtures.fake_teacher import FakeTeacher, write_project

    teacher = FakeTeacher()

    def handler(body: dict[str, Any]) -> Reply:
        reply = teacher(body)
        reply.delay = args.latency
        return reply

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tunesmith-gen-bench-") as tmp, FakeOpenAI(handler) as server:
        fast_dir = write_project(Path(tmp) / "c8")
        slow_dir = write_project(Path(tmp) / "c1")
        fast = _side(fast_dir, server.base_url, args.n, 8)
        first_file = (fast_dir / "generated.jsonl").read_bytes()
        slow = _side(slow_dir, server.base_url, args.n, 1)
        again = _side(fast_dir, server.base_url, args.n, 8)
        same_file = (fast_dir / "generated.jsonl").read_bytes() == first_file
    ratio = fast["examples_per_s"] / slow["examples_per_s"]
    goals = {"ratio_at_least_6x": ratio >= GOAL_RATIO, "rerun_sends_no_request": again["requests_sent"] == 0,
             "rerun_writes_the_same_file": same_file}
    report = {"n": args.n, "latency_s": args.latency, "concurrency_8": fast, "concurrency_1": slow,
              "ratio": round(ratio, 2), "rerun": again, "goals": goals,
              "loadavg": [round(load_before, 2), round(os.getloadavg()[0], 2)], "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.n} examples, server latency {args.latency * 1000:.0f} ms per request, "
              f"load average {load_before:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        print(f"{'':14}{'wall s':>9}{'cpu s':>8}{'examples/s':>12}{'requests':>10}{'cached':>8}")
        for name, side in (("concurrency 8", fast), ("concurrency 1", slow), ("re-run (c8)", again)):
            print(f"{name:14}{side['wall_s']:>9}{side['cpu_s']:>8}{side['examples_per_s']:>12}"
                  f"{side['requests_sent']:>10}{side['from_cache']:>8}")
        print(f"throughput ratio {ratio:.2f}x (goal >= {GOAL_RATIO:g}x): {'PASS' if goals['ratio_at_least_6x'] else 'FAIL'}")
        print(f"re-run: {again['requests_sent']} requests sent (goal 0): "
              f"{'PASS' if goals['rerun_sends_no_request'] else 'FAIL'}; same file: {same_file}")
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
