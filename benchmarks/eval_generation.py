"""Evaluation generation throughput: LocalBackend's batched decoding vs plain one-at-a-time generate.

    .venv/bin/python benchmarks/eval_generation.py            # 200 prompts, 128 new tokens
    .venv/bin/python benchmarks/eval_generation.py --n 60 --json

Both sides answer the same prompts (the pyfunc-json example's sealed test prompts, topped up with its
training prompts to reach --n) with SmolLM2-135M-Instruct, greedy, on the CPU, with the same loaded
weights:

* sequential: plain ``model.generate`` one prompt at a time (batch 1, no padding), greedy,
  ``max_new_tokens``, eos = the model's end-of-turn ids;
* batched: ``LocalBackend.generate`` (length-sorted batches, left padding, KV cache, finished rows
  leaving the batch).

With ``--constrained`` it also answers the same prompts constrained to the project's JSON Schema (the
grammar mask of `tunesmith.inference.grammar`) and prints the time spent in the grammar (masks and
matchers) against the rest of constrained decoding, i.e. its overhead per output token (goal: <= 10 %),
the plain wall time per output token of both runs, and the share of constrained answers that validate
(goal: 100 %).
With ``--prefix`` it answers them once more with the shared-prefix cache off and prints the prefill
tokens the cache saved and the wall-time ratio.

It prints output tokens/s of both, their ratio (goal: >= 4x) and whether the answers are identical
(text, finish reason and token count per prompt), showing the first difference if any. Exit status
1 when the answers differ or the wall-clock ratio misses the goal. Wall times depend on what else the
machine runs: the load average is printed before and after each side, and tokens per CPU second of this
process are printed beside tokens/s (with --threads 1 they barely move with the load, where the wall
clock follows whatever else shares the cores).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "examples" / "pyfunc-json"
GOAL = 4.0


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prompt_chats(n: int) -> list[list[dict[str, str]]]:
    """The first n test prompts; if there are fewer, cycle through test then train prompts."""
    test, train = PROJECT / "data" / "test.jsonl", PROJECT / "data" / "train.jsonl"
    if not test.is_file() or not train.is_file():
        tunesmith = Path(sys.executable).parent / "tunesmith"
        say(f"building the example project: {tunesmith} split -p {PROJECT}")
        subprocess.run([str(tunesmith), "split", "-p", str(PROJECT)], check=True, cwd=ROOT)

    def chats(path: Path) -> list[list[dict[str, str]]]:
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            messages = json.loads(line)["messages"]
            while messages and messages[-1]["role"] == "assistant":
                messages = messages[:-1]
            out.append([{"role": m["role"], "content": m["content"]} for m in messages])
        return out

    pool = chats(test)
    if len(pool) < n:
        pool += chats(train)
    return list(itertools.islice(itertools.cycle(pool), n))


def sequential(model: Any, tokenizer: Any, chats: list[list[dict[str, str]]], max_new_tokens: int) -> list[dict]:
    """Plain model.generate, one prompt at a time: the reference the batched answers must equal."""
    import torch

    from tunesmith.models.chat import end_of_turn_ids, render

    eot = sorted(end_of_turn_ids(tokenizer))
    out = []
    for i, chat in enumerate(chats):
        enc = tokenizer(render(tokenizer, chat, add_generation_prompt=True), add_special_tokens=False,
                        return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eot,
                                 pad_token_id=tokenizer.pad_token_id)
        tokens = ids[0, enc["input_ids"].shape[1]:].tolist()
        ended = bool(tokens) and tokens[-1] in eot
        text = tokenizer.decode(tokens[:-1] if ended else tokens, skip_special_tokens=True)
        out.append({"text": text, "finish_reason": "stop" if ended else "length", "output_tokens": len(tokens),
                    "error": None})
        if (i + 1) % 10 == 0:
            say(f"  sequential: {i + 1}/{len(chats)}")
    return out


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="prompts (default 200)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=None, help="LocalBackend batch size (default: automatic)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--constrained", action="store_true",
                        help="also decode constrained to the project's JSON Schema: the grammar mask's overhead")
    parser.add_argument("--prefix", action="store_true",
                        help="also decode with the shared-prefix cache off: what reusing the prefix saves")
    args = parser.parse_args(argv)

    import torch

    from tunesmith.evaluate.generate import LocalBackend
    from tunesmith.evaluate.types import DecodeSettings
    from tunesmith.models.resolve import resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    chats = prompt_chats(args.n)
    path = resolve_model(args.model).path
    backend = LocalBackend(path, batch_size=args.batch_size, device="cpu")
    model, tokenizer = backend.model, backend.tokenizer  # the same weights for both sides
    settings = DecodeSettings(max_new_tokens=args.max_new_tokens)
    prompt_tokens = [len(tokenizer(backend_render(tokenizer, c), add_special_tokens=False)["input_ids"])
                     for c in chats]

    # warm up both paths (first-call allocations, kernel selection)
    sequential(model, tokenizer, chats[:1], 4)
    backend.generate(chats[:2], DecodeSettings(max_new_tokens=4))

    load = {"start": loadavg()}
    say(f"sequential: {len(chats)} prompts, one at a time (load {load['start']})")
    t0, c0 = time.perf_counter(), time.process_time()
    seq = sequential(model, tokenizer, chats, args.max_new_tokens)
    seq_s, seq_cpu = time.perf_counter() - t0, time.process_time() - c0
    load["after_sequential"] = loadavg()

    say(f"batched: {len(chats)} prompts with LocalBackend (load {load['after_sequential']})")
    done = [0]

    def progress(n: int) -> None:
        if n // 10 > done[0] // 10:
            say(f"  batched: {n}/{len(chats)}")
        done[0] = n

    t0, c0 = time.perf_counter(), time.process_time()
    bat = [g.to_dict() for g in backend.generate(chats, settings, progress)]
    bat_s, bat_cpu = time.perf_counter() - t0, time.process_time() - c0
    load["after_batched"] = loadavg()

    seq_tokens = sum(g["output_tokens"] for g in seq)
    bat_tokens = sum(g["output_tokens"] for g in bat)
    differ = [i for i, (a, b) in enumerate(zip(seq, bat)) if a != b]
    first: dict[str, Any] | None = None
    if differ:
        i = differ[0]
        at = first_difference(seq[i]["text"], bat[i]["text"])
        first = {"index": i, "char": at,
                 "sequential": {**seq[i], "text": seq[i]["text"][max(0, at - 40): at + 40]},
                 "batched": {**bat[i], "text": bat[i]["text"][max(0, at - 40): at + 40]}}
    seq_rate, bat_rate = seq_tokens / seq_s, bat_tokens / bat_s
    result = {
        "model": args.model, "prompts": len(chats), "max_new_tokens": args.max_new_tokens,
        "prompt_tokens": {"mean": sum(prompt_tokens) / len(prompt_tokens), "min": min(prompt_tokens),
                          "max": max(prompt_tokens)},
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "batch_size": args.batch_size or "auto",
        "sequential": {"seconds": round(seq_s, 2), "cpu_seconds": round(seq_cpu, 2), "output_tokens": seq_tokens,
                       "tokens_per_s": round(seq_rate, 2), "tokens_per_cpu_s": round(seq_tokens / seq_cpu, 2)},
        "batched": {"seconds": round(bat_s, 2), "cpu_seconds": round(bat_cpu, 2), "output_tokens": bat_tokens,
                    "tokens_per_s": round(bat_rate, 2), "tokens_per_cpu_s": round(bat_tokens / bat_cpu, 2)},
        "speedup": round(bat_rate / seq_rate, 2),
        "speedup_cpu_time": round((bat_tokens / bat_cpu) / (seq_tokens / seq_cpu), 2),
        "finish_reasons": {r: sum(g["finish_reason"] == r for g in bat) for r in ("stop", "length")},
        "identical": not differ, "differing": len(differ), "first_difference": first,
        "loadavg": load, "goal": GOAL,
    }
    ok = not differ and result["speedup"] >= GOAL
    prefixes = backend.decoder().prefixes
    result["prefix_cache"] = {"prefilled_tokens": prefixes.prefilled, "reused_tokens": prefixes.reused}
    if args.prefix:
        result["prefix"] = prefix_ratio(backend, chats, settings, bat_s)
        load["after_prefix"] = loadavg()
    if args.constrained:
        result["constrained"] = constrained_overhead(backend, chats, settings, bat_s, bat_tokens)
        ok = ok and result["constrained"]["schema_valid"] == result["constrained"]["answers"]
        load["after_constrained"] = loadavg()
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        pt = result["prompt_tokens"]
        print(f"{len(chats)} prompts ({pt['mean']:.0f} prompt tokens on average, {pt['min']}-{pt['max']}), "
              f"max_new_tokens {args.max_new_tokens}, {result['threads']} torch threads on {result['cpus']} CPUs")
        print(f"{'':12} {'seconds':>9} {'tokens':>8} {'tokens/s':>9} {'CPU s':>9} {'tokens/CPU s':>13}")
        for name in ("sequential", "batched"):
            r = result[name]
            print(f"{name:12} {r['seconds']:>9.1f} {r['output_tokens']:>8} {r['tokens_per_s']:>9.1f} "
                  f"{r['cpu_seconds']:>9.1f} {r['tokens_per_cpu_s']:>13.1f}")
        print(f"speedup {result['speedup']:.2f}x wall-clock (goal >= {GOAL:g}x): "
              f"{'PASS' if result['speedup'] >= GOAL else 'FAIL'}; {result['speedup_cpu_time']:.2f}x per CPU second")
        print(f"answers identical: {'yes' if not differ else f'NO, {len(differ)} of {len(chats)} differ'}"
              f" (finish reasons: {result['finish_reasons']})")
        if first:
            print(f"first difference: prompt {first['index']}, character {first['char']}")
            print(f"  sequential: {first['sequential']}")
            print(f"  batched:    {first['batched']}")
        if "prefix" in result:
            p = result["prefix"]
            print(f"shared prefix: {p['reused_tokens']} of {p['prompt_tokens']} prompt tokens reused "
                  f"({p['reused_share']:.0%}); batched {p['without_s']:.1f} s without, {p['with_s']:.1f} s with "
                  f"({p['ratio']:.2f}x), answers identical: {'yes' if p['identical'] else 'NO'}")
        if "constrained" in result:
            c = result["constrained"]
            print(f"constrained: {c['schema_valid']}/{c['answers']} answers schema-valid; the grammar (masks + "
                  f"matchers) took {c['grammar_s']:.2f} s of {c['seconds']:.1f} s: {c['grammar_overhead']:+.1%} per "
                  f"output token (goal <= +10%); grammar compile {c['compile_s']:.2f} s")
            print(f"  wall per output token: {c['ms_per_token_free']:.2f} ms free, {c['ms_per_token_constrained']:.2f}"
                  f" ms constrained ({c['overhead']:+.1%}: shorter constrained answers share the prefill among "
                  "fewer tokens)")
        print("load average: " + " | ".join(f"{k} {v}" for k, v in load.items()))
    return 0 if ok else 1


def prefix_ratio(backend: Any, chats: list[list[dict[str, str]]], settings: Any, with_s: float) -> dict[str, Any]:
    """Batched again with the shared-prefix cache off, against the run above (cache on)."""
    decoder = backend.decoder()
    on = decoder.prefixes
    reused, prefilled = on.reused, on.prefilled
    first = backend.generate(chats, settings)  # cache on, warm: the answers to compare with
    on.enabled = False
    on.clear()
    t0 = time.perf_counter()
    without = backend.generate(chats, settings)
    without_s = time.perf_counter() - t0
    on.enabled = True
    total = reused + prefilled
    return {"prompt_tokens": total, "reused_tokens": reused, "reused_share": reused / max(total, 1),
            "with_s": round(with_s, 2), "without_s": round(without_s, 2), "ratio": round(without_s / with_s, 2),
            "identical": [g.to_dict() for g in first] == [g.to_dict() for g in without]}


def constrained_overhead(backend: Any, chats: list[list[dict[str, str]]], settings: Any, free_s: float,
                         free_tokens: int) -> dict[str, Any]:
    """The same prompts constrained to the example project's schema: seconds per output token against
    the free run above, and how many constrained answers validate."""
    import dataclasses

    from jsonschema import validators

    from tunesmith.inference.constraints import Constraint

    schema = json.loads((PROJECT / "schema.json").read_text(encoding="utf-8"))
    constraint = Constraint.json_schema(schema)
    t0 = time.perf_counter()
    backend.check_constraint(dataclasses.replace(settings, constraint=constraint))  # compile once, timed apart
    compile_s = time.perf_counter() - t0
    from tunesmith.inference import grammar

    spent = [0.0]  # seconds inside the grammar: the masks, and advancing each row's matcher

    def timed(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t
        return wrapper

    mask_batch, accept = grammar.mask_batch, grammar.RowMatcher.accept
    grammar.mask_batch, grammar.RowMatcher.accept = timed(mask_batch), timed(accept)  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        gens = backend.generate(chats, dataclasses.replace(settings, constraint=constraint))
        seconds = time.perf_counter() - t0
    finally:
        grammar.mask_batch, grammar.RowMatcher.accept = mask_batch, accept  # type: ignore[method-assign]
    tokens = sum(g.output_tokens for g in gens)
    validator = validators.validator_for(schema)(schema)
    valid = 0
    for g in gens:
        try:
            valid += validator.is_valid(json.loads(g.text))
        except ValueError:
            pass
    free, constrained = free_s / max(free_tokens, 1), seconds / max(tokens, 1)
    # the grammar's own cost per output token against what decoding those tokens cost without it: the
    # per-token wall times above also differ because constrained answers are shorter (prefill is shared
    # by fewer output tokens, the batch empties sooner)
    grammar_share = spent[0] / max(seconds - spent[0], 1e-9)
    return {"answers": len(gens), "schema_valid": valid, "output_tokens": tokens, "seconds": round(seconds, 2),
            "grammar_s": round(spent[0], 3), "grammar_overhead": round(grammar_share, 4),
            "ms_per_token_free": round(1000 * free, 3), "ms_per_token_constrained": round(1000 * constrained, 3),
            "overhead": round(constrained / free - 1, 4), "compile_s": round(compile_s, 3),
            "finish_reasons": {r: sum(g.finish_reason == r for g in gens) for r in ("stop", "length", "grammar")}}


def backend_render(tokenizer: Any, chat: list[dict[str, str]]) -> str:
    from tunesmith.models.chat import render

    return render(tokenizer, chat, add_generation_prompt=True)


if __name__ == "__main__":
    sys.exit(main())
