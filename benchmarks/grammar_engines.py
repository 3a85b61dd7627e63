"""Grammar engines for constrained decoding, side by side: xgrammar vs llguidance on this CPU.

    .venv/bin/python benchmarks/grammar_engines.py              # SmolLM2's tokenizer and a real forward step
    .venv/bin/python benchmarks/grammar_engines.py --no-model --json

Both engines get SmolLM2-135M-Instruct's tokenizer (49,152 tokens; the tests' tiny tokenizer when the
embedded model cannot be resolved) and two constraints: the pyfunc-json example's output schema (taken
from examples/pyfunc-json/build.py, less ``uniqueItems``, which neither engine enforces) and a
date-and-label regex. For each it measures:

* compile: tokenizer-specific compilation up to the first mask (the engines' caches off);
* mask per decoding step, batch 1 and 16: fill the bitmask of every row (xgrammar's BatchGrammarMatcher,
  llguidance's LLExecutor) + apply it to [rows, vocab] float32 logits (xgrammar's CPU kernel; llguidance
  has none for CPUs: the numpy unpack + copyto `tunesmith.inference.grammar` uses) + accept each row's
  token; and fill + accept alone. The rows replay real answers (facts of stdlib functions, computed by
  build.py), so the masks are the ones decoding meets: a handful of tokens allowed between keys,
  nearly all inside strings;
* the same through `tunesmith.inference.grammar.mask_batch` (llguidance plus its Python checks);
* a SmolLM2-135M decoding step (KV cache, 256-token prompts) at batch 1 and 16, and each mask's
  share of it (goal: <= 10 %).

It also prints which schema keywords each engine refuses, and which it compiles but ignores (a
violating answer accepted). Exit status 1 when the chosen engine's share misses the goal.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GOAL = 0.10
REGEX = r"\d{4}-\d{2}-\d{2}: (positive|negative|neutral)( \(confidence 0\.[0-9]{2}\))?"
#: keyword -> (schema, an answer that breaks only that keyword)
PROBES: dict[str, tuple[Any, str]] = {
    "not": ({"type": "object", "not": {"required": ["a"]}}, '{"a":1}'),
    "if/then": ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, '{"a":1}'),
    "uniqueItems": ({"type": "array", "uniqueItems": True}, "[1,1]"),
    "contains": ({"type": "array", "contains": {"type": "integer"}}, '["a"]'),
    "dependentRequired": ({"type": "object", "dependentRequired": {"a": ["b"]}}, '{"a":1}'),
    "propertyNames": ({"type": "object", "propertyNames": {"pattern": "^a"}}, '{"b":1}'),
    "unevaluatedProperties": ({"type": "object", "unevaluatedProperties": False}, '{"b":1}'),
    "oneOf": ({"type": "array", "items": {"oneOf": [{"type": "integer"}, {"type": "number"}]}}, "[1]"),
    "allOf": ({"type": "array", "items": {"allOf": [{"type": "integer"}, {"minimum": 5}]}}, "[3]"),
    "remote $ref": ({"type": "array", "items": {"$ref": "https://example.com/s.json"}}, '["x"]'),
    "patternProperties": ({"type": "object", "patternProperties": {"^a": {"type": "integer"}}}, '{"ab":"x"}'),
    "multipleOf": ({"type": "array", "items": {"type": "integer", "multipleOf": 3}}, "[4]"),
    "format": ({"type": "array", "items": {"type": "string", "format": "email"}}, '["x"]'),
}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_build() -> Any:
    spec = importlib.util.spec_from_file_location("pyfunc_build", ROOT / "examples" / "pyfunc-json" / "build.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["pyfunc_build"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def answers(build: Any, n: int) -> list[str]:
    """Compact facts of stdlib functions, keys in the schema's order (what a tuned model writes)."""
    out: list[str] = []
    for mod in ("json", "argparse", "pathlib", "shutil", "tempfile", "textwrap", "inspect", "ast"):
        src = inspect.getsource(importlib.import_module(mod))
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                facts = build.compute_facts(node)
                if facts is not None:
                    out.append(json.dumps(facts, separators=(",", ":")))
            if len(out) >= n:
                return out
    return out


def regex_answers(n: int) -> list[str]:
    labels = ("positive", "negative", "neutral")
    return [f"20{i % 30:02d}-{1 + i % 12:02d}-{1 + i % 28:02d}: {labels[i % 3]}"
            + (f" (confidence 0.{(i * 37) % 100:02d})" if i % 2 else "") for i in range(n)]


class Xgrammar:
    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab: int, stops: list[int]) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab, stop_token_ids=stops)
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=os.cpu_count() or 1, cache_enabled=False)
        self.batch = xgr.BatchGrammarMatcher(max_threads=os.cpu_count() or 1)
        self.vocab = vocab
        self.version = importlib.metadata.version("xgrammar")

    def compile(self, kind: str, spec: Any) -> Any:
        if kind == "regex":
            return self.compiler.compile_regex(spec)
        return self.compiler.compile_json_schema(json.dumps(spec), any_whitespace=False, separators=(",", ":"),
                                                 strict_mode=False)

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def bitmask(self, rows: int) -> Any:
        return self.xgr.allocate_token_bitmask(rows, self.vocab)

    def fill(self, matchers: list[Any], bitmask: Any) -> None:
        if len(matchers) == 1:
            matchers[0].fill_next_token_bitmask(bitmask, 0)
        else:
            self.batch.batch_fill_next_token_bitmask(matchers, bitmask)

    def apply(self, logits: Any, bitmask: Any) -> None:
        self.xgr.apply_token_bitmask_inplace(logits, bitmask)

    def accept(self, matcher: Any, token: int) -> bool:
        return matcher.accept_token(token)

    def accepts_text(self, compiled: Any, text: str) -> bool:
        m = self.matcher(compiled)
        return m.accept_string(text) and m.is_completed()


class Llguidance:
    name = "llguidance"

    def __init__(self, tokenizer: Any, vocab: int, stops: list[int]) -> None:
        import llguidance
        import llguidance.hf

        self.llg = llguidance
        self.tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab, eos_token=stops)
        self.executor = llguidance.LLExecutor(num_threads=os.cpu_count() or 1)
        self.vocab = vocab
        self.version = llguidance.__version__

    def compile(self, kind: str, spec: Any) -> Any:
        llg = self.llg
        if kind == "regex":
            g = llg.LLMatcher.grammar_from_regex(f"(?s:{spec})")
        else:
            g = llg.LLMatcher.grammar_from_json_schema(
                spec, overrides={"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"})
        failed, messages = llg.LLMatcher.validate_grammar_with_warnings(g, self.tok)
        if failed:
            raise ValueError(messages[0].splitlines()[0])
        m = llg.LLMatcher(self.tok, g, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error().splitlines()[0])
        return m

    def matcher(self, compiled: Any) -> Any:
        return compiled.deep_copy()

    def bitmask(self, rows: int) -> Any:
        import torch

        return torch.full((rows, (self.vocab + 31) // 32), -1, dtype=torch.int32)

    def fill(self, matchers: list[Any], bitmask: Any) -> None:
        if len(matchers) == 1:
            matchers[0].unsafe_compute_mask_ptr(bitmask.data_ptr(), bitmask.shape[1] * 4)
        else:
            self.executor.unsafe_compute_mask_ptr([(m, i) for i, m in enumerate(matchers)], bitmask.data_ptr(),
                                                  bitmask.shape[1] * 4, bitmask.shape[0])

    def apply(self, logits: Any, bitmask: Any) -> None:
        import numpy as np

        banned = np.unpackbits((~bitmask.numpy()).view(np.uint8), axis=1, bitorder="little").view(np.bool_)
        np.copyto(logits.numpy(), -np.inf, where=banned[:, :logits.shape[1]])

    def accept(self, matcher: Any, token: int) -> bool:
        return matcher.consume_token(token)

    def accepts_text(self, compiled: Any, text: str) -> bool:
        m = self.matcher(compiled)
        return m.consume_tokens(self.tok.tokenize_str(text)) and m.is_accepting()


def timed_compile(engine: Any, kind: str, spec: Any, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        compiled = engine.compile(kind, spec)
        m = engine.matcher(compiled)
        engine.fill([m], engine.bitmask(1))
        best = min(best, time.perf_counter() - t0)
    return best


def replay(step: Any, sequences: list[list[int]], rows: int, steps: int) -> dict[str, float]:
    """Decode `steps` steps of `rows` rows, each replaying token sequences (a finished row starts the
    next sequence); `step(row_tokens)` does one masked step. Per-step seconds: the median wall time,
    and the mean CPU time of this process (all its threads; steadier on a busy machine)."""
    cursor = [0] * rows
    which = list(range(rows))
    nxt = rows
    for r in range(rows):
        step.restart(r, r)
    times, cpu = [], 0.0
    for _ in range(steps):
        tokens = [sequences[which[r] % len(sequences)][cursor[r]] for r in range(rows)]
        t0, c0 = time.perf_counter(), time.process_time()
        step(tokens)
        times.append(time.perf_counter() - t0)
        cpu += time.process_time() - c0
        for r in range(rows):
            cursor[r] += 1
            if cursor[r] == len(sequences[which[r] % len(sequences)]):
                which[r], cursor[r], nxt = nxt, 0, nxt + 1
                step.restart(r, which[r])
    times.sort()
    return {"median_s": times[len(times) // 2], "mean_s": sum(times) / len(times), "cpu_s": cpu / steps}


class RawStep:
    """One step straight on an engine's API: fill + apply + accept."""

    def __init__(self, engine: Any, compiled: Any, rows: int, vocab: int, apply: bool = True) -> None:
        import torch

        self.engine, self.compiled, self.apply = engine, compiled, apply
        self.matchers = [engine.matcher(compiled) for _ in range(rows)]
        self.bitmask = engine.bitmask(rows)
        self.logits = torch.randn(rows, vocab)
        self.rejected = 0

    def __call__(self, tokens: list[int]) -> None:
        self.engine.fill(self.matchers, self.bitmask)
        if self.apply:
            self.engine.apply(self.logits, self.bitmask)
        for m, t in zip(self.matchers, tokens):
            self.rejected += not self.engine.accept(m, t)

    def restart(self, row: int, _seq: int) -> None:
        self.matchers[row] = self.engine.matcher(self.compiled)


class TunesmithStep:
    """One step through `tunesmith.inference.grammar`: mask_batch + accept."""

    def __init__(self, compiled: Any, rows: int, vocab: int) -> None:
        import torch

        self.compiled = compiled
        self.matchers = [compiled.matcher() for _ in range(rows)]
        self.logits = torch.randn(rows, vocab)
        self.rejected = 0

    def __call__(self, tokens: list[int]) -> None:
        from tunesmith.inference.grammar import mask_batch

        mask_batch(self.logits, self.matchers)
        for m, t in zip(self.matchers, tokens):
            self.rejected += not m.accept(t)

    def restart(self, row: int, _seq: int) -> None:
        self.matchers[row] = self.compiled.matcher()


def forward_step_s(path: Path, rows: int, prompt_len: int = 256, steps: int = 8) -> float:
    """Median seconds of one SmolLM2 decoding step (one new token per row, KV cache)."""
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (rows, prompt_len), generator=gen)
    cache = DynamicCache(config=model.config)
    times = []
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{kwarg: cache})
        for _ in range(steps + 2):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            t0 = time.perf_counter()
            out = model(input_ids=nxt, use_cache=True, logits_to_keep=1, **{kwarg: cache})
            times.append(time.perf_counter() - t0)
    times = sorted(times[2:])
    return times[len(times) // 2]


def coverage(engine: Any) -> dict[str, str]:
    """Per probed keyword: "refused" (compile error), "ENFORCED" or "IGNORED" (violating answer accepted)."""
    out = {}
    for key, (schema, bad) in PROBES.items():
        try:
            compiled = engine.compile("json", schema)
        except Exception:  # noqa: BLE001 - either engine's own error type
            out[key] = "refused"
            continue
        out[key] = "IGNORED" if engine.accepts_text(compiled, bad) else "enforced"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200, help="decoding steps per measurement (default 200)")
    ap.add_argument("--no-model", action="store_true", help="skip the SmolLM2 forward step")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)

    import torch

    from tunesmith.inference.constraints import Constraint
    from tunesmith.inference.grammar import GrammarCompiler

    try:
        from tunesmith.models.resolve import resolve_model

        path: Path | None = Path(resolve_model("builtin:smollm2-135m-instruct").path)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - no embedded model here: the tests' tiny tokenizer
        say(f"SmolLM2 unavailable ({exc}); using the tiny test tokenizer")
        sys.path.insert(0, str(ROOT / "tests"))
        from fixtures.tiny_models import build_tiny_tokenizer

        path, tokenizer = None, build_tiny_tokenizer("chatml")
    vocab = max(len(tokenizer), 49152 if path else len(tokenizer))
    stops = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    build = load_build()
    schema = json.loads(json.dumps(build.SCHEMA))
    schema["properties"]["raises"].pop("uniqueItems")
    cases = {"schema": ("json", schema, answers(build, 64)), "regex": ("regex", REGEX, regex_answers(64))}
    say(f"tokenizer: {len(tokenizer)} tokens, logits width {vocab}; torch threads {torch.get_num_threads()}")

    engines, setup = [], {}
    for cls in (Xgrammar, Llguidance):
        t0 = time.perf_counter()
        try:
            engines.append(cls(tokenizer, vocab, stops))
        except ImportError:
            say(f"{cls.name} is not installed: measuring without it (.venv/bin/python -m pip install --no-deps "
                "xgrammar apache-tvm-ffi: its triton dependency is for GPUs only)")
            continue
        setup[cls.name] = time.perf_counter() - t0
    ours = GrammarCompiler(tokenizer, vocab, stops)

    result: dict[str, Any] = {"cpu": cpu_name(), "vocab": vocab, "versions": {e.name: e.version for e in engines},
                              "tokenizer_setup_s": setup, "compile_s": {}, "mask_s": {}, "mask_cpu_s": {}, "fill_s": {},
                              "coverage": {},
                              "loadavg": [os.getloadavg()[0]]}
    for case, (kind, spec, texts) in cases.items():
        seqs = [tokenizer.encode(t, add_special_tokens=False) + stops for t in texts]
        for e in engines:
            result["compile_s"][f"{e.name}/{case}"] = timed_compile(e, kind, spec)
            for rows in (1, 16):
                step = RawStep(e, e.compile(kind, spec), rows, vocab)
                replay(step, seqs, rows, 10)  # warm-up
                r = replay(step, seqs, rows, args.steps)
                assert step.rejected == 0, f"{e.name} rejected a valid answer's token"
                result["mask_s"][f"{e.name}/{case}/{rows}"] = r["median_s"]
                result["mask_cpu_s"][f"{e.name}/{case}/{rows}"] = r["cpu_s"]
                say(f"{e.name} {case} batch {rows}: {r['median_s'] * 1e3:.2f} ms/step")
                fill = RawStep(e, e.compile(kind, spec), rows, vocab, apply=False)
                result["fill_s"][f"{e.name}/{case}/{rows}"] = replay(fill, seqs, rows, args.steps)["median_s"]
        constraint = Constraint.json_schema(spec) if kind == "json" else Constraint.regex(spec)
        ours.compile(constraint)  # the first one in the process pays for imports (jsonschema)
        best = float("inf")
        for _ in range(3):
            ours._cache.clear()
            t0 = time.perf_counter()
            compiled = ours.compile(constraint)
            compiled.matcher().mask_logits(torch.zeros(vocab))
            best = min(best, time.perf_counter() - t0)
        result["compile_s"][f"tunesmith/{case}"] = best
        for rows in (1, 16):
            step = TunesmithStep(compiled, rows, vocab)
            replay(step, seqs, rows, 10)
            r = replay(step, seqs, rows, args.steps)
            assert step.rejected == 0, "tunesmith.inference.grammar rejected a valid answer's token"
            result["mask_s"][f"tunesmith/{case}/{rows}"] = r["median_s"]
            result["mask_cpu_s"][f"tunesmith/{case}/{rows}"] = r["cpu_s"]
    for e in engines:
        result["coverage"][e.name] = coverage(e)
    if path is not None and not args.no_model:
        say("timing SmolLM2-135M decoding steps")
        result["forward_s"] = {str(rows): forward_step_s(path, rows) for rows in (1, 16)}

    result["loadavg"].append(os.getloadavg()[0])
    share = {}
    if "forward_s" in result:
        for key, s in result["mask_s"].items():
            share[key] = s / result["forward_s"][key.rsplit("/", 1)[1]]
        result["share_of_step"] = share
    worst = max((v for k, v in share.items() if k.startswith("tunesmith/")), default=None)
    result["goal_met"] = None if worst is None else worst <= GOAL
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result, engines)
    return 0 if result["goal_met"] in (None, True) else 1


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return f"unknown ({os.cpu_count()} CPUs)"


def print_table(r: dict[str, Any], engines: list[Any]) -> None:
    names = [e.name for e in engines] + ["tunesmith"]
    print(f"{r['cpu']}; logits width {r['vocab']}; " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()))
    fwd = r.get("forward_s")
    if fwd:
        print(f"SmolLM2-135M decoding step: {fwd['1'] * 1e3:.1f} ms (batch 1), {fwd['16'] * 1e3:.1f} ms (batch 16)")
    print(f"load average {r['loadavg'][0]:.2f} at the start, {r['loadavg'][1]:.2f} at the end")
    print("mask/step: median wall ms (mean CPU ms, all threads) and share of a decoding step")
    print(f"{'':30}" + "".join(f"{n:>24}" for n in names))
    print(f"{'tokenizer setup (once)':30}" + "".join(
        f"{r['tokenizer_setup_s'][n] * 1e3:>21.0f} ms" if n in r["tokenizer_setup_s"] else f"{'':>24}" for n in names))
    for case in ("schema", "regex"):
        print(f"{'compile, ' + case:30}" + "".join(
            f"{r['compile_s'][f'{n}/{case}'] * 1e3:>21.1f} ms" if f"{n}/{case}" in r["compile_s"] else f"{'':>24}"
            for n in names))
        for rows in (1, 16):
            cells = []
            for n in names:
                key = f"{n}/{case}/{rows}"
                pct = r.get("share_of_step", {}).get(key)
                cells.append(f"{r['mask_s'][key] * 1e3:.2f} ({r['mask_cpu_s'][key] * 1e3:.2f})"
                             + (f" {pct:>5.1%}" if pct is not None else ""))
            print(f"{f'mask/step, {case}, batch {rows}':30}" + "".join(f"{c:>24}" for c in cells))
            print(f"{'  fill + accept only':30}" + "".join(
                f"{r['fill_s'][f'{n}/{case}/{rows}'] * 1e3:>21.2f} ms" for n in names if n != "tunesmith"))
    if "xgrammar/schema/1" in r["mask_s"]:
        print("xgrammar / llguidance, mask per step: " + ", ".join(
            f"{case} b{rows} {r['mask_s'][f'xgrammar/{case}/{rows}'] / r['mask_s'][f'llguidance/{case}/{rows}']:.1f}x"
            for case in ("schema", "regex") for rows in (1, 16)))
    print("schema keywords (refused / enforced / IGNORED = a violating answer passes):")
    for key in PROBES:
        print(f"  {key:28}" + "".join(f"{r['coverage'][e.name][key]:>24}" for e in engines))
    if r["goal_met"] is not None:
        print(f"goal: tunesmith mask <= {GOAL:.0%} of a decoding step: {'PASS' if r['goal_met'] else 'FAIL'}")


if __name__ == "__main__":
    sys.exit(main())
