#!/usr/bin/env python
"""Scale benchmark for `tunesmith check`: throughput, peak memory and near-duplicate recall.

For each size it writes a synthetic OpenAI-chat JSONL dataset with planted exact and near
duplicates, then runs the same library call the CLI makes (`run_check(CheckContext(file=...))`)
in a fresh child process, so the peak RSS reported is that of one check of one size.

    python benchmarks/check_scale.py                     # 10k, 100k, 1M
    python benchmarks/check_scale.py --quick             # 10k, 100k
    python benchmarks/check_scale.py --sizes 50000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)

SYSTEM_PROMPT = (
    "You are a support-ticket triage assistant. Read the customer's message and answer with exactly "
    "one JSON object with the fields intent, priority (1-5), entities, confidence and needs_review. "
    "Output only the JSON, no prose."
)
VOCAB_SIZE = 20_000
ZIPF_S = 1.05
USER_WORDS = (20, 80)  # inclusive
EXACT_SHARE = 0.02
NEAR_SHARE = 0.03
NEAR_MIN_JACCARD = 0.85
NEAR_ATTEMPTS = 6
RESERVOIR = 50_000  # sources of planted copies: a uniform sample of earlier original examples
CHUNK = 20_000

# Goals
GOAL_EXAMPLES_PER_S = 5_000
GOAL_RSS_MB_AT_1M = 3_000  # MB = 10**6 bytes, i.e. 3 GB
GOAL_TIME_RATIO = 12.0
GOAL_RECALL = 0.95

# The line layout; user texts and assistant JSON only ever hold [A-Za-z0-9 .,?:\[\]{}"], so the only
# escaping needed is of the quotes inside the assistant's JSON (checked by `_selftest_line`).
_PREFIX = '{"messages":[{"role":"system","content":' + json.dumps(SYSTEM_PROMPT) + '},{"role":"user","content":"'
_MID = '"},{"role":"assistant","content":"'
_SUFFIX = '"}]}\n'


# --------------------------------------------------------------------------------------------------
# dataset generation (parent process)
# --------------------------------------------------------------------------------------------------

def make_vocab(rng: random.Random, n: int = VOCAB_SIZE) -> list[str]:
    """n distinct pronounceable pseudo-words, roughly ordered short-to-long so that, as in real text,
    the frequent (low-rank) words tend to be the short ones. Mean length ~7 letters, ~5 by frequency."""
    onsets = ["", "", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
              "z", "br", "ch", "cl", "dr", "gr", "pl", "sh", "st", "th", "tr", "qu"]
    vowels = ["a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ea", "ou", "io", "y"]
    codas = ["", "", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck", "ng", "x"]
    words: set[str] = set()
    while len(words) < n:
        k = rng.choices((1, 2, 3, 4), weights=(4, 6, 3, 1))[0]
        w = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(k))
        if len(w) >= 2:
            words.add(w)
    ordered = sorted(words)  # a set's order varies between runs (hash randomisation); this does not
    noise = [rng.gauss(0, 2.5) for _ in ordered]
    return [w for _, w in sorted(zip((len(w) + e for w, e in zip(ordered, noise)), ordered))]


def _edit(tokens: list[str], rng: random.Random, vocab: list[str], n_edits: int) -> list[str]:
    toks = list(tokens)
    for _ in range(n_edits):
        op = rng.randrange(3)
        if op == 0:  # replace
            pos = rng.randrange(len(toks))
            new = toks[pos]
            while new == toks[pos]:
                new = vocab[rng.randrange(len(vocab))]
            toks[pos] = new
        elif op == 1 or len(toks) <= 2:  # insert
            toks.insert(rng.randrange(len(toks) + 1), vocab[rng.randrange(len(vocab))])
        else:  # delete
            del toks[rng.randrange(len(toks))]
    return toks


def generate(path: Path, n: int, seed: int) -> dict:
    """Write n examples to path, streaming; return stats and the planted pairs (1-based lines)."""
    from tunesmith.data.minhash import jaccard, shingle_set

    t0 = time.perf_counter()
    pyrng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    vocab = make_vocab(random.Random(seed ^ 0x5EED))
    ranks = np.arange(1, len(vocab) + 1, dtype=np.float64)
    cdf = np.cumsum(1.0 / (ranks + 2.7) ** ZIPF_S)
    cdf /= cdf[-1]
    intents = vocab[:400]  # a few hundred frequent-ish labels
    reservoir: list[tuple[int, str, str]] = []  # (line, user, assistant)
    originals = 0
    exact_pairs: list[tuple[int, int]] = []
    near_pairs: list[tuple[int, int, float]] = []  # kept: true Jaccard >= NEAR_MIN_JACCARD
    near_low: list[tuple[int, int, float]] = []  # planted but below it: written, not scored
    near_written: set[tuple[int, str]] = set()  # (source line, edited text) of every near copy so far
    line = 0
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as fh:
        done = 0
        while done < n:
            m = min(CHUNK, n - done)
            lens = nprng.integers(USER_WORDS[0], USER_WORDS[1] + 1, size=m)
            flat = np.searchsorted(cdf, nprng.random(int(lens.sum())), side="right").tolist()
            words = [vocab[i] for i in flat]
            bounds = np.concatenate(([0], np.cumsum(lens))).tolist()
            kind = nprng.random(m).tolist()
            f_intent = nprng.integers(0, len(intents), size=m).tolist()
            f_prio = nprng.integers(1, 6, size=m).tolist()
            f_ent = nprng.integers(0, len(vocab), size=(m, 3)).tolist()
            f_nent = nprng.integers(0, 4, size=m).tolist()
            f_conf = nprng.integers(50, 100, size=m).tolist()
            f_review = (nprng.random(m) < 0.15).tolist()
            out: list[str] = []
            for i in range(m):
                line += 1
                u = kind[i]
                if u < EXACT_SHARE and reservoir:
                    src_line, user, asst = reservoir[pyrng.randrange(len(reservoir))]
                    exact_pairs.append((src_line, line))
                elif u < EXACT_SHARE + NEAR_SHARE and reservoir:
                    src_line, src_user, asst = reservoir[pyrng.randrange(len(reservoir))]
                    tokens = src_user.split(" ")
                    base = shingle_set(src_user + "\n" + asst)
                    for attempt in range(NEAR_ATTEMPTS):
                        n_edits = pyrng.choice((1, 2)) if attempt == 0 else 1
                        user = " ".join(_edit(tokens, pyrng, vocab, n_edits))
                        if user == src_user or (src_line, user) in near_written:
                            # two edits that cancel out, or the same edit as an earlier copy of this
                            # source: that line would be an exact duplicate, not a near one
                            sim = 0.0
                            continue
                        sim = jaccard(base, shingle_set(user + "\n" + asst))
                        if sim >= NEAR_MIN_JACCARD:
                            break
                    near_written.add((src_line, user))
                    (near_pairs if sim >= NEAR_MIN_JACCARD else near_low).append((src_line, line, round(sim, 4)))
                else:
                    a, b = bounds[i], bounds[i + 1]
                    user = " ".join(words[a:b])
                    user = user[0].upper() + user[1:] + ("?" if (a & 3) == 0 else ".")
                    ents = ",".join(f'"{vocab[e]}"' for e in f_ent[i][: f_nent[i]])
                    asst = (
                        f'{{"intent":"{intents[f_intent[i]]}","priority":{f_prio[i]},"entities":[{ents}],'
                        f'"confidence":0.{f_conf[i]},"needs_review":{"true" if f_review[i] else "false"}}}'
                    )
                    originals += 1
                    if len(reservoir) < RESERVOIR:
                        reservoir.append((line, user, asst))
                    else:
                        j = pyrng.randrange(originals)
                        if j < RESERVOIR:
                            reservoir[j] = (line, user, asst)
                out.append(_PREFIX + user + _MID + asst.replace('"', '\\"') + _SUFFIX)
            fh.writelines(out)
            done += m
    return {
        "examples": n,
        "bytes": path.stat().st_size,
        "gen_s": time.perf_counter() - t0,
        "exact_pairs": exact_pairs,
        "near_pairs": near_pairs,
        "near_low": near_low,
    }


def _selftest_line(path: Path) -> None:
    """The hand-built lines must be exactly what json.dumps would describe."""
    with open(path, encoding="utf-8") as fh:
        for _, raw in zip(range(200), fh):
            rec = json.loads(raw)
            roles = [m["role"] for m in rec["messages"]]
            assert roles == ["system", "user", "assistant"], roles
            assert rec["messages"][0]["content"] == SYSTEM_PROMPT
            json.loads(rec["messages"][2]["content"])


# --------------------------------------------------------------------------------------------------
# the measured check (child process)
# --------------------------------------------------------------------------------------------------

def _vm_hwm_kb() -> int:
    """Peak RSS of this process image in kB. VmHWM is per address space, so unlike ru_maxrss it does
    not inherit the parent's high-water mark through fork/exec."""
    try:
        with open("/proc/self/status") as fh:
            for row in fh:
                if row.startswith("VmHWM:"):
                    return int(row.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux


def child(file: str, planted_file: str, out_file: str) -> None:
    from tunesmith.data.checks import CheckContext, run_check

    rss_before_kb = _vm_hwm_kb()
    load_before = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    report = run_check(CheckContext(file=Path(file)))
    check_s = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    load_after = os.getloadavg()[0]
    rss_kb = _vm_hwm_kb()
    ru_maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    # --- scoring, after the measurement ---
    planted = json.loads(Path(planted_file).read_text())
    near_of: dict[int, int] = {}
    exact_of: dict[int, int] = {}
    near_findings = [f for f in report.findings if f.check == "near_duplicate"]
    exact_findings = [f for f in report.findings if f.check == "exact_duplicate"]
    for k, f in enumerate(near_findings):
        for ln in f.lines:
            near_of[ln] = k
    for k, f in enumerate(exact_findings):
        for ln in f.lines:
            exact_of[ln] = k

    def found(a: int, b: int) -> bool:
        return (a in near_of and near_of.get(b) == near_of[a]) or (a in exact_of and exact_of.get(b) == exact_of[a])

    near_pairs = planted["near_pairs"]
    exact_pairs = planted["exact_pairs"]
    near_found = sum(found(a, b) for a, b, _ in near_pairs)
    missed = [(a, b, j) for a, b, j in near_pairs if not found(a, b)]
    exact_found = sum(found(a, b) for a, b in exact_pairs)
    # precision-ish: lines flagged as near duplicates that no planted near pair explains
    planted_lines = {ln for a, b, _ in near_pairs + planted["near_low"] for ln in (a, b)}
    near_lines = [ln for f in near_findings for ln in f.lines]
    unexplained = [ln for ln in near_lines if ln not in planted_lines]

    result = {
        "examples": report.examples,
        "check_s": check_s,
        "examples_per_s": report.examples / check_s if check_s > 0 else float("inf"),
        "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        "loadavg_1m": [round(load_before, 2), round(load_after, 2)],
        "peak_rss_mb": rss_kb * 1024 / 1e6,
        "rss_after_import_mb": rss_before_kb * 1024 / 1e6,
        "ru_maxrss_mb": ru_maxrss_kb * 1024 / 1e6,
        "near_planted": len(near_pairs),
        "near_planted_below_085": len(planted["near_low"]),
        "near_found": near_found,
        "near_recall": near_found / len(near_pairs) if near_pairs else 1.0,
        "near_missed_sample": missed[:10],
        "exact_planted": len(exact_pairs),
        "exact_found": exact_found,
        "exact_recall": exact_found / len(exact_pairs) if exact_pairs else 1.0,
        "near_findings": len(near_findings),
        "near_finding_lines": len(near_lines),
        "near_lines_unexplained": len(unexplained),
        "exact_findings": len(exact_findings),
        "findings_by_check": dict(Counter(f.check for f in report.findings)),
        "stats": {k: v for k, v in report.stats.items() if k != "system_prompts"},
    }
    Path(out_file).write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------------

def _limit_memory(gb: float | None):
    if gb is None:
        return None

    def apply() -> None:  # runs in the child between fork and exec
        limit = int(gb * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def run_size(n: int, workdir: Path, seed: int, keep: bool, log, memory_limit_gb: float | None = None) -> dict:
    data = workdir / f"chat_{n}.jsonl"
    log(f"[{n:>9,}] generating {data} ...")
    gen = generate(data, n, seed + n)
    _selftest_line(data)
    log(f"[{n:>9,}] {gen['bytes'] / 1e6:.0f} MB in {gen['gen_s']:.1f}s; "
        f"{len(gen['exact_pairs'])} exact copies, {len(gen['near_pairs'])} near pairs >= {NEAR_MIN_JACCARD} "
        f"(+{len(gen['near_low'])} below, not scored); checking in a child process ...")
    planted = workdir / f"planted_{n}.json"
    planted.write_text(json.dumps({k: gen[k] for k in ("exact_pairs", "near_pairs", "near_low")}))
    out = workdir / f"result_{n}.json"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--_child", str(data), str(planted), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_limit_memory(memory_limit_gb),
    )
    proc_s = time.perf_counter() - t0
    base = {"size": n, "file_mb": gen["bytes"] / 1e6, "gen_s": gen["gen_s"], "process_s": proc_s,
            "near_planted": len(gen["near_pairs"]), "exact_planted": len(gen["exact_pairs"])}
    if proc.returncode != 0 or not out.exists():
        tail = proc.stdout.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        log(f"[{n:>9,}] check FAILED after {proc_s:.0f}s (exit {proc.returncode}): {tail[0]}")
        res = {**base, "error": f"exit {proc.returncode}: {tail[0]}"}
    else:
        res = {**json.loads(out.read_text()), **base}
        log(f"[{n:>9,}] check {res['check_s']:.1f}s, {res['examples_per_s']:,.0f} ex/s, "
            f"peak RSS {res['peak_rss_mb']:,.0f} MB, near recall {res['near_recall']:.4f}")
    if not keep:
        for p in (data, planted, out):
            p.unlink(missing_ok=True)
    return res


def evaluate(results: list[dict]) -> list[dict]:
    """Goal lines. A size whose check failed (crash, MemoryError under --memory-limit-gb) fails every
    goal it takes part in."""
    by_size = {r["size"]: r for r in results}
    ok = [r for r in results if "error" not in r]
    failed = [r for r in results if "error" in r]
    failed_sizes = ", ".join(f"{r['size']:,}" for r in failed)
    failed_note = f"; check failed at {failed_sizes}" if failed else ""
    goals = []

    goal = f"throughput >= {GOAL_EXAMPLES_PER_S:,} examples/s (whole check, every size)"
    if ok:
        worst = min(ok, key=lambda r: r["examples_per_s"])
        value = f"worst {worst['examples_per_s']:,.0f}/s at {worst['size']:,}"
        passed = worst["examples_per_s"] >= GOAL_EXAMPLES_PER_S and not failed
    else:
        value, passed = "no size completed", False
    goals.append({"goal": goal, "value": value + failed_note, "status": "PASS" if passed else "FAIL"})

    goal = f"1M examples: peak RSS < {GOAL_RSS_MB_AT_1M:,} MB"
    r = by_size.get(1_000_000)
    if r is None:
        goals.append({"goal": goal, "value": "1M not run", "status": "SKIP"})
    elif "error" in r:
        goals.append({"goal": goal, "value": f"check failed: {r['error']}", "status": "FAIL"})
    else:
        goals.append({"goal": goal, "value": f"{r['peak_rss_mb']:,.0f} MB",
                      "status": "PASS" if r["peak_rss_mb"] < GOAL_RSS_MB_AT_1M else "FAIL"})

    goal = f"time(1M) / time(100k) <= {GOAL_TIME_RATIO:g}"
    big, small = by_size.get(1_000_000), by_size.get(100_000)
    if big is None or small is None:
        goals.append({"goal": goal, "value": "needs 100k and 1M", "status": "SKIP"})
    elif "error" in big or "error" in small:
        goals.append({"goal": goal, "value": "check failed", "status": "FAIL"})
    else:
        ratio = big["check_s"] / small["check_s"]
        goals.append({"goal": goal, "value": f"{ratio:.2f}", "status": "PASS" if ratio <= GOAL_TIME_RATIO else "FAIL"})

    goal = f"near-duplicate recall >= {GOAL_RECALL} (planted pairs, Jaccard >= {NEAR_MIN_JACCARD}, every size)"
    if ok:
        worst = min(ok, key=lambda r: r["near_recall"])
        value = f"worst {worst['near_recall']:.4f} at {worst['size']:,}"
        passed = worst["near_recall"] >= GOAL_RECALL and not failed
    else:
        value, passed = "no size completed", False
    goals.append({"goal": goal, "value": value + failed_note, "status": "PASS" if passed else "FAIL"})
    return goals


def print_table(results: list[dict], goals: list[dict]) -> None:
    cols = [
        ("examples", lambda r: f"{r['size']:,}"),
        ("file MB", lambda r: f"{r['file_mb']:,.0f}"),
        ("gen s", lambda r: f"{r['gen_s']:.1f}"),
        ("check s", lambda r: f"{r['check_s']:.1f}"),
        ("cpu s", lambda r: f"{r['cpu_s']:.1f}"),
        ("ex/s", lambda r: f"{r['examples_per_s']:,.0f}"),
        ("peak RSS MB", lambda r: f"{r['peak_rss_mb']:,.0f}"),
        ("near recall", lambda r: f"{r['near_recall']:.4f} ({r['near_found']}/{r['near_planted']})"),
        ("exact recall", lambda r: f"{r['exact_recall']:.4f} ({r['exact_found']}/{r['exact_planted']})"),
        ("near findings", lambda r: f"{r['near_findings']:,}"),
        ("unexplained lines", lambda r: f"{r['near_lines_unexplained']:,}"),
    ]
    rows = [[c[0] for c in cols]]
    for r in results:
        if "error" in r:
            rows.append([f"{r['size']:,}", f"{r['file_mb']:,.0f}", f"{r['gen_s']:.1f}",
                         f"FAILED after {r['process_s']:.0f}s"] + [""] * (len(cols) - 4))
        else:
            rows.append([c[1](r) for c in cols])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    for k, row in enumerate(rows):
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    for r in results:
        if "error" in r:
            print(f"  {r['size']:,}: {r['error']}")
    busy = [r for r in results if "loadavg_1m" in r and max(r["loadavg_1m"]) > 0.75 * (os.cpu_count() or 1)]
    if busy:
        sizes = ", ".join(f"{r['size']:,} (load {max(r['loadavg_1m']):.1f})" for r in busy)
        print(f"note: other processes were busy during {sizes}; wall times are inflated, compare cpu s")
    print()
    for g in goals:
        print(f"{g['status']:4}  {g['goal']}: {g['value']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", help="comma-separated sizes (default 10000,100000,1000000)")
    ap.add_argument("--quick", action="store_true", help="10000,100000 only")
    ap.add_argument("--json", action="store_true", help="print one JSON object (results and goals) instead of the table")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--workdir", type=Path, help="where to write the datasets (default: a temp dir, removed after)")
    ap.add_argument("--keep", action="store_true", help="keep the generated datasets (use with --workdir)")
    ap.add_argument("--memory-limit-gb", type=float, default=None,
                    help="cap the checking child's address space (RLIMIT_AS); a check that exceeds it is reported as failed")
    ap.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        child(*args._child)
        return 0
    if args.sizes:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    else:
        sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix="tunesmith-check-scale-")
        workdir = Path(tmp)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = [run_size(n, workdir, args.seed, args.keep, log, args.memory_limit_gb) for n in sizes]
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    goals = evaluate(results)
    if args.json:
        print(json.dumps({"results": results, "goals": goals}, indent=2))
    else:
        print_table(results, goals)
    return 0 if all(g["status"] != "FAIL" for g in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
