#!/usr/bin/env python3
"""LoRA on every decoder layer vs on the top K only: training time and quality, on one task, side by side.

    python benchmarks/layers_quality.py [--task orders|demo] [--layers 10] [--epochs 3] [--workdir DIR] [--keep] [--json]

Below the lowest adapted layer nothing needs a gradient, so `--layers K` makes each step cheaper; this
script measures what that costs in quality. It makes one project, splits it once (so both runs are judged
on the same sealed test set), then trains it twice through the CLI with the same seed, epochs and every
other setting (`--layers all`, then `--layers K`), evaluates both, and prints training time, steps/s and
the test set's schema-valid rate, field accuracy and exact match with their 95 % intervals.

Tasks:
* ``orders`` (default): a second format task beside the demo. Order-shipping emails, written from many
  templates with varied dates, currencies, quantities in words or digits and noise lines, answered with
  one compact JSON object (order id, customer, items with SKU and quantity, total, currency, ship date in
  ISO form, express or not). 250 rows, about 240 tokens each (the size class of a real JSON-extraction
  task: ~212 training rows). The rows are drawn from a fixed seed: the same on every machine.
* ``demo``: the example project (``examples/pyfunc-json``, its data built first when missing).

Training runs with the project's own precision choice (``--precision`` overrides; the layers lever's
quality cost does not depend on it, its speed ratio does a little).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TUNESMITH = [sys.executable, "-m", "tunesmith"]

ORDERS_SYSTEM = ("You read one order-shipping email and reply with one compact JSON object with exactly these keys: "
                 "order_id, customer, items (each with sku and qty), total, currency, ship_date (YYYY-MM-DD), "
                 "express.")
ORDERS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Order shipping facts",
    "type": "object",
    "properties": {
        "order_id": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{5,7}$"},
        "customer": {"type": "string", "minLength": 3},
        "items": {"type": "array", "minItems": 1, "items": {
            "type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
            "required": ["sku", "qty"], "additionalProperties": False}},
        "total": {"type": "number", "minimum": 0},
        "currency": {"type": "string", "enum": ["EUR", "USD", "GBP", "CHF", "JPY"]},
        "ship_date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        "express": {"type": "boolean"},
    },
    "required": ["order_id", "customer", "items", "total", "currency", "ship_date", "express"],
    "additionalProperties": False,
}

_FIRST = ("Ana", "Ben", "Chloé", "Dmitri", "Elif", "Farah", "Goran", "Hana", "Ivo", "Jana", "Kofi", "Lena", "Mateo",
          "Nia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tomás", "Uma", "Viktor", "Wen", "Yusuf", "Zoe")
_LAST = ("Novak", "Schmidt", "García", "Okafor", "Lindqvist", "Tanaka", "Moreau", "Kowalski", "Haddad", "Rossi",
         "Byrne", "Petrov", "Silva", "Yilmaz", "Dubois", "Jensen", "Costa", "Horvat", "Nakamura", "Fischer")
_PRODUCTS = ("desk lamp", "USB-C cable", "notebook (A5)", "ceramic mug", "wireless mouse", "phone case", "tea sampler",
             "yoga mat", "water bottle", "HDMI adapter", "bike light", "sketch pens", "wall clock", "laptop stand",
             "hand cream", "puzzle (1000 pieces)", "rain jacket", "chef's knife", "headphones", "plant pot")
_NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
_CURRENCIES = {"EUR": ("€", "EUR", "euros"), "USD": ("$", "USD", "US dollars"), "GBP": ("£", "GBP", "pounds"),
               "CHF": ("CHF ", "CHF", "Swiss francs"), "JPY": ("¥", "JPY", "yen")}
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_NOISE = ("Thanks for shopping with us!", "Questions? Reply to this email and we'll help.",
          "Please keep this email for your records.", "Track your parcel in the app.",
          "Our returns window is 30 days.", "This is an automated message.", "Have a great day!",
          "Don't forget to leave a review.")


def _date_text(rng: random.Random, y: int, m: int, d: int) -> str:
    style = rng.randrange(5)
    if style == 0:
        return f"{y:04d}-{m:02d}-{d:02d}"
    if style == 1:
        return f"{d} {_MONTHS[m - 1]} {y}"
    if style == 2:
        return f"{_MONTHS[m - 1]} {d}, {y}"
    if style == 3:
        return f"{d:02d}.{m:02d}.{y}"
    return f"{_MONTHS[m - 1][:3]} {d} {y}"


def _money_text(rng: random.Random, amount: float, currency: str) -> str:
    symbol, code, word = _CURRENCIES[currency]
    value = f"{amount:.0f}" if currency == "JPY" else f"{amount:.2f}"
    style = rng.randrange(3)
    return (f"{symbol}{value}" if style == 0 else f"{value} {code}" if style == 1 else f"{value} {word}")


def _order(rng: random.Random) -> tuple[str, dict[str, Any]]:
    order_id = f"{rng.choice('ABCDEFGHKLMNPRSTUVWXZ')}{rng.choice('ABCDEFGHKLMNPRSTUVWXZ')}-{rng.randrange(10**4, 10**7)}"
    customer = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    items = []
    for product in rng.sample(_PRODUCTS, rng.randint(1, 4)):
        sku = f"{product[:2].upper().replace(' ', 'X')}{rng.randrange(100, 9999)}"
        items.append((product, sku, rng.choice((1, 1, 1, 2, 2, 3, 4, 5, 6, 10, 12))))
    currency = rng.choice(tuple(_CURRENCIES))
    total = float(rng.randrange(300, 90000)) if currency == "JPY" else rng.randrange(500, 60000) / 100
    y, m, d = rng.choice((2025, 2026)), rng.randint(1, 12), rng.randint(1, 28)
    express = rng.random() < 0.4
    facts = {"order_id": order_id, "customer": customer, "items": [{"sku": s, "qty": q} for _, s, q in items],
             "total": total, "currency": currency, "ship_date": f"{y:04d}-{m:02d}-{d:02d}", "express": express}

    def qty(q: int) -> str:
        return _NUMBERS[q - 1] if q <= len(_NUMBERS) and rng.random() < 0.35 else str(q)

    lines = [rng.choice((f"Hi {customer.split()[0]},", f"Dear {customer},", f"Hello {customer},", "Hi there,"))]
    if not lines[0].startswith(("Dear", "Hello")) or rng.random() < 0.3:
        lines.append(rng.choice((f"Customer: {customer}", f"Account holder: {customer}", f"Name on order: {customer}")))
    lines.append(rng.choice((f"Good news: your order {order_id} is on its way.", f"Order #{order_id} has shipped.",
                             f"We've dispatched order {order_id}.", f"Your parcel for order {order_id} left our warehouse.")))
    when = _date_text(rng, y, m, d)
    lines.append(rng.choice((f"Shipped on {when}.", f"Dispatch date: {when}", f"It left us {when}.", f"Ship date: {when}")))
    item_style = rng.randrange(3)
    for product, sku, q in items:
        lines.append(f"- {qty(q)} x {product} (SKU {sku})" if item_style == 0 else
                     f"* {product}, item {sku}, quantity {qty(q)}" if item_style == 1 else
                     f"{sku}  {product}  qty {qty(q)}")
    money = _money_text(rng, total, currency)
    lines.append(rng.choice((f"Order total: {money}", f"Total charged: {money}.", f"You paid {money} in total.")))
    if express:
        lines.append(rng.choice(("Shipping: Express (1-2 days)", "You chose express delivery.",
                                 "Delivery method: next-day express")))
    elif rng.random() < 0.7:
        lines.append(rng.choice(("Shipping: Standard (3-5 days)", "Delivery method: standard post",
                                 "Standard shipping, no rush.")))
    lines += rng.sample(_NOISE, rng.randint(1, 3))
    lines.append(rng.choice(("— The Parcelworks team", "Best, Customer Care", "Kind regards,\nShop support")))
    return "\n".join(lines), facts


def write_orders(project: Path, n: int = 250, seed: int = 20261203) -> None:
    """The orders project: tunesmith.yaml, data.jsonl and schema.json (atomically, all or nothing)."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        email, facts = _order(rng)
        if email in seen:
            continue
        seen.add(email)
        rows.append({"messages": [{"role": "system", "content": ORDERS_SYSTEM}, {"role": "user", "content": email},
                                  {"role": "assistant", "content": json.dumps(facts, ensure_ascii=False,
                                                                              separators=(",", ":"))}]})
    tmp = project.with_name(project.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "data.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (tmp / "schema.json").write_text(json.dumps(ORDERS_SCHEMA, indent=2) + "\n", encoding="utf-8")
    (tmp / "tunesmith.yaml").write_text(
        "task: \"Read one order-shipping email and answer with its facts as one compact JSON object.\"\n"
        "task_kind: format\n"
        "base_model: builtin:smollm2-135m-instruct\n"
        f"system_prompt: {json.dumps(ORDERS_SYSTEM)}\n"
        "output:\n  json_schema: schema.json\n"
        "data:\n  source: data.jsonl\n  train: data/train.jsonl\n  test: data/test.jsonl\n  test_fraction: 0.15\n"
        "max_length: 768\n", encoding="utf-8")
    shutil.rmtree(project, ignore_errors=True)
    tmp.rename(project)


def write_demo(project: Path) -> None:
    source = ROOT / "examples" / "pyfunc-json"
    if not (source / "data.jsonl").is_file():
        subprocess.run([sys.executable, "build.py"], cwd=source, check=True)
    shutil.rmtree(project, ignore_errors=True)
    shutil.copytree(source, project, ignore=shutil.ignore_patterns("runs", "data", ".tunesmith"))


def _cli(args: list[str], project: Path) -> str:
    """`tunesmith ARGS -p PROJECT`'s standard output. Its standard error (progress: a plain line at least
    every 30 s when it is not a terminal, and any error with its hint) goes straight to ours."""
    print(f"== tunesmith {' '.join(args)}", file=sys.stderr, flush=True)
    proc = subprocess.run([*TUNESMITH, *args, "-p", str(project)], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"tunesmith {' '.join(args)} failed (exit {proc.returncode}); its message is above")
    return proc.stdout


def _last_json(stdout: str) -> dict[str, Any]:
    """The last JSON object printed (train --json prints one event per line; eval --json one object)."""
    text = stdout.strip()
    try:
        return json.loads(text)
    except ValueError:
        for line in reversed(text.splitlines()):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise SystemExit(f"no JSON in: {text[-500:]}")


def train_and_eval(project: Path, layers: str, args: argparse.Namespace) -> dict[str, Any]:
    name = f"layers-{layers}"
    train = ["train", "--layers", layers, "--name", name, "--epochs", str(args.epochs), "--seed", "0",
             "--no-converge", "--json"]
    if args.precision:
        train += ["--precision", args.precision]
    done = [d for d in sorted((project / "runs").glob(f"*-{name}")) if (d / "summary.json").is_file()]
    if args.keep and done:  # a finished run of an earlier call: measured already
        run_id, train_s = done[-1].name, None
    else:
        t0 = time.perf_counter()
        _cli(train, project)
        train_s = round(time.perf_counter() - t0, 1)
        run_id = sorted((project / "runs").glob(f"*-{name}"))[-1].name
    metrics = json.loads((project / "runs" / run_id / "metrics.json").read_text(encoding="utf-8"))
    summary = _last_json(_cli(["eval", run_id, "--json"], project))["summary"]["test"]["metrics"]
    return {"layers": layers, "run": run_id, "train_wall_s": train_s, "steps": metrics["steps"],
            "train_loop_s": metrics["wall_seconds"], "s_per_step": round(metrics["wall_seconds"] / metrics["steps"], 2),
            "best_eval_loss": round(metrics["best_eval_loss"], 4),
            **{k: {m: round(summary[k][m], 3) for m in ("mean", "lo", "hi")}
               for k in ("schema_valid", "field_accuracy", "exact_match")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("orders", "demo"), default="orders")
    parser.add_argument("--layers", type=int, default=10, help="the top-K run's K (the other run adapts all layers)")
    parser.add_argument("--epochs", type=float, default=3.0, help="both runs: the guide's 3 passes by default")
    parser.add_argument("--precision", default=None, help="fp32 / bf16 (default: the plan's choice)")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "tunesmith-layers")
    parser.add_argument("--keep", action="store_true",
                        help="reuse the project, its split and finished runs in --workdir from an earlier call")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()

    project = args.workdir / args.task
    if not (args.keep and (project / "data" / "test.jsonl").is_file()):
        (write_orders if args.task == "orders" else write_demo)(project)
        _cli(["split"], project)
    rows = [train_and_eval(project, layers, args) for layers in ("all", str(args.layers))]
    # paired on the same test rows: the top-K run minus the all-layers run, with its interval and verdict
    paired = _last_json(_cli(["compare", rows[0]["run"], rows[1]["run"], "--json"], project))["comparison"]
    out = {"task": args.task, "epochs": args.epochs, "precision": args.precision or "plan", "load": os.getloadavg(),
           "rows": rows, "step_speedup": round(rows[0]["s_per_step"] / rows[1]["s_per_step"], 2),
           "top_minus_all": {k: {"diff": round(paired[k]["diff"]["mean"], 3), "lo": round(paired[k]["diff"]["lo"], 3),
                                 "hi": round(paired[k]["diff"]["hi"], 3), "verdict": paired[k]["verdict"]}
                             for k in ("schema_valid", "field_accuracy", "exact_match") if k in paired}}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"task {args.task}, {args.epochs} epochs, precision {out['precision']}")
    print(f"{'layers':>7} {'steps':>5} {'s/step':>7} {'eval loss':>9} {'schema-valid':>20} {'field acc':>20} {'exact':>20}")
    for r in rows:
        cells = [f"{r[k]['mean']:.3f} [{r[k]['lo']:.2f}, {r[k]['hi']:.2f}]"
                 for k in ("schema_valid", "field_accuracy", "exact_match")]
        print(f"{r['layers']:>7} {r['steps']:>5} {r['s_per_step']:>7} {r['best_eval_loss']:>9} "
              + " ".join(f"{c:>20}" for c in cells))
    print(f"top {args.layers} layers: {out['step_speedup']}x faster steps; paired on the same test rows, top minus all:")
    for k, d in out["top_minus_all"].items():
        print(f"  {k}: {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] ({d['verdict']})")


if __name__ == "__main__":
    main()
