"""Load test of `tunesmith serve`: 16 concurrent clients vs one client at a time, same server.

Starts `tunesmith serve` (its own process) on the embedded SmolLM2-135M-Instruct with two LoRA adapters,
then drives it through the official `openai` client with a fixed list of requests that mixes the base
model and both adapters (greedy, so every answer is reproducible):

  1. sequential: one client, one request at a time (the plain alternative);
  2. concurrent: the same requests from --clients threads at once.

It prints requests/s, output tokens/s and p50/p95 latency for both, the throughput ratio, errors, and
whether each concurrent answer equals the answer the same model gave alone in the sequential pass
(any answer that instead equals another model's answer is counted as cross-talk).

A share of the requests (--json-share, default 0.25) asks for a JSON answer with OpenAI's
``response_format: {"type": "json_schema", ...}``: they decode in the same batches as the free ones,
under the grammar mask, and every one of them must validate (the count of schema-invalid answers is
printed; goal 0).

The adapters are the runs you name (--adapter NAME=DIR, twice) or, by default, two LoRA adapters with
small random weights made once under --work (enough to make the three models answer differently;
throughput does not depend on what an adapter learned).

    python benchmarks/serve_load.py                 # defaults: 16 clients, 48 requests, 48 tokens
    python benchmarks/serve_load.py --requests 48 --max-tokens 32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

QUESTIONS = [
    "Name a fruit that is yellow.", "What is the capital of France?", "Give me a synonym for happy.",
    "How many legs does a spider have?", "Write a haiku about rain.", "What colour is the sky on a clear day?",
    "Translate 'thank you' into Spanish.", "List three primary colours.", "What is 12 times 12?",
    "Describe a cat in one sentence.", "What does a thermometer measure?", "Suggest a name for a pet fish.",
    "Why do leaves change colour in autumn?", "What is the opposite of cold?", "Give an example of a mammal.",
    "How do you make a cup of tea?", "What is the boiling point of water in Celsius?", "Name a planet.",
    "Write one sentence about the sea.", "What is a verb?", "Which is bigger, a mouse or an elephant?",
    "Say something kind.", "What day comes after Monday?", "Explain what a map is.",
]
#: what the response_format share of the requests asks for
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 200},
                                           "confident": {"type": "boolean"}},
          "required": ["answer", "confident"], "additionalProperties": False}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}


def make_adapters(base_dir: Path, work: Path,
                  names: tuple[tuple[str, int], ...] = (("alpha", 1), ("beta", 2))) -> list[tuple[str, Path]]:
    """r=16 LoRA adapters on `base_dir` with small random B, one per (name, seed), made once under `work`
    (serve_soak.py asks for more of them)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = []
    for name, seed in names:
        path = work / "adapters" / name
        if not (path / "adapter_model.safetensors").is_file():
            model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
            peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                          lora_dropout=0.0, task_type="CAUSAL_LM"))
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for pname, param in peft_model.named_parameters():
                    if "lora_B" in pname:
                        param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
            peft_model.save_pretrained(str(path), safe_serialization=True)
        out.append((name, path))
    return out


def start_server(base: str, adapters: list[tuple[str, Path]], port: int, allow: Path, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "tunesmith", "serve", "--base", base, "--port", str(port), "--allow-dir", str(allow),
               "--project", str(allow)]
    for name, path in adapters:
        command += ["--adapter", f"{name}={path}"]
    proc = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start in 5 minutes")


def run_pass(url: str, jobs: list[tuple[str, str, bool]], clients: int, max_tokens: int) -> dict:
    import openai

    local = threading.local()

    def one(job: tuple[str, str, bool]) -> tuple[float, str | None, int, str | None]:
        if not hasattr(local, "client"):
            local.client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)
        model, question, constrained = job
        extra = {"response_format": RESPONSE_FORMAT} if constrained else {}
        t0 = time.perf_counter()
        try:
            reply = local.client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0,
                **extra)
        except Exception as exc:  # noqa: BLE001 - counted, not fatal
            return time.perf_counter() - t0, None, 0, f"{type(exc).__name__}: {exc}"
        return time.perf_counter() - t0, reply.choices[0].message.content, reply.usage.completion_tokens, None

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, jobs))
    wall = time.perf_counter() - started
    latencies = sorted(r[0] for r in results)
    tokens = sum(r[2] for r in results)
    return {"wall_s": wall, "requests": len(jobs), "requests_per_s": len(jobs) / wall, "output_tokens": tokens,
            "output_tokens_per_s": tokens / wall, "p50_s": statistics.median(latencies),
            "p95_s": latencies[max(0, round(0.95 * len(latencies)) - 1)],
            "errors": [r[3] for r in results if r[3]], "answers": [r[1] for r in results]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--adapter", action="append", default=[], help="NAME=DIR (give two); default: made ones")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=48, help="requests in each pass")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tunesmith-serve-bench")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--json-share", type=float, default=0.25,
                    help="share of requests with a response_format JSON Schema (default 0.25)")
    args = ap.parse_args()

    from tunesmith.models.resolve import resolve_model

    args.work.mkdir(parents=True, exist_ok=True)
    base_dir = resolve_model(args.base).path
    if args.adapter:
        adapters = [(a.split("=", 1)[0], Path(a.split("=", 1)[1]).resolve()) for a in args.adapter]
        allow = Path(os.path.commonpath([str(p) for _, p in adapters]))
    else:
        adapters = make_adapters(base_dir, args.work)
        allow = args.work / "adapters"
    models = ["base"] + [name for name, _ in adapters]
    # every question to every model in turn, so each answer has the other models' answers to compare with
    pairs = [(m, q) for q in QUESTIONS for m in models]
    every = round(1 / args.json_share) if args.json_share > 0 else 0
    jobs = [(*pairs[i % len(pairs)], bool(every) and i % every == every - 1) for i in range(args.requests)]

    proc = start_server(args.base, adapters, args.port, allow, args.work / "server.log")
    url = f"http://127.0.0.1:{args.port}/v1"
    try:
        run_pass(url, jobs[: len(models)], 1, 8)  # warm-up: first calls pay for lazy initialisation
        sequential = run_pass(url, jobs, 1, args.max_tokens)
        concurrent = run_pass(url, jobs, args.clients, args.max_tokens)
    finally:
        proc.terminate()
        proc.wait(60)

    alone: dict[tuple[str, str, bool], str | None] = dict(zip(jobs, sequential["answers"]))
    same = crossed = 0
    for (model, question, constrained), answer in zip(jobs, concurrent["answers"]):
        if answer == alone[(model, question, constrained)]:
            same += 1
        elif any(answer == alone.get((other, question, constrained)) for other in models if other != model):
            crossed += 1
    free = [(m, q) for m, q, c in jobs if not c]
    asked = sorted({q for _, q in free})
    # cross-talk is only visible where the models disagree: say on how many questions they all do
    apart = sum(len({alone.get((m, q, False)) for m in models}) == len(models) for q in asked
                if all((m, q, False) in alone for m in models))
    covered = sum(all((m, q, False) in alone for m in models) for q in asked)
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(SCHEMA)

    def valid(text: str | None) -> bool:
        try:
            return text is not None and validator.is_valid(json.loads(text))
        except ValueError:
            return False

    constrained_answers = [a for p in (sequential, concurrent) for (_, _, c), a in zip(jobs, p["answers"]) if c]
    invalid = sum(not valid(a) for a in constrained_answers)
    ratio = concurrent["output_tokens_per_s"] / sequential["output_tokens_per_s"]

    print(f"tunesmith serve on {args.base} with adapters {', '.join(n for n, _ in adapters)}; "
          f"{args.requests} requests per pass, max_tokens {args.max_tokens}, greedy, on {os.cpu_count()} CPUs")
    print(f"{'':<26}{'requests/s':>12}{'output tok/s':>14}{'p50 s':>9}{'p95 s':>9}{'wall s':>9}{'errors':>8}")
    for label, r in ((f"sequential (1 client)", sequential), (f"concurrent ({args.clients} clients)", concurrent)):
        print(f"{label:<26}{r['requests_per_s']:>12.2f}{r['output_tokens_per_s']:>14.1f}{r['p50_s']:>9.2f}"
              f"{r['p95_s']:>9.2f}{r['wall_s']:>9.1f}{len(r['errors']):>8}")
    print(f"throughput ratio (output tokens/s, concurrent / sequential): {ratio:.2f}x  (goal >= 3.0x)")
    print(f"concurrent answers identical to the same model's answer alone: {same}/{len(jobs)}; "
          f"cross-talk (another model's answer): {crossed}; all {len(models)} models answer differently on "
          f"{apart}/{covered} questions asked of every model")
    print(f"response_format json_schema requests: {len(constrained_answers)} answers over both passes, "
          f"{invalid} schema-invalid (goal 0)")
    if sequential["errors"] or concurrent["errors"]:
        print("errors:", (sequential["errors"] + concurrent["errors"])[:3])
    if args.json:
        keep = {k: v for k, v in concurrent.items() if k != "answers"}
        args.json.write_text(json.dumps({"sequential": {k: v for k, v in sequential.items() if k != "answers"},
                                         "concurrent": keep, "ratio": ratio, "identical": same,
                                         "cross_talk": crossed, "constrained_answers": len(constrained_answers),
                                         "schema_invalid": invalid}, indent=2))


if __name__ == "__main__":
    main()
