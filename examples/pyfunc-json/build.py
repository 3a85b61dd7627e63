#!/usr/bin/env python3
"""Build the pyfunc-json example data set from the installed Python standard library.

Each example pairs the source of one real function (taken from the stdlib's own ``.py``
files, so nobody here wrote the inputs) with a JSON object of facts about it, computed
exactly with :mod:`ast` from the very snippet the model is shown.

    python examples/pyfunc-json/build.py [--out DIR] [--n 600] [--regression 30]

Writes ``data.jsonl`` (chat-format training examples), ``schema.json`` (JSON Schema for the
facts object) and ``regression.jsonl`` (held-out edge-case prompts with assertions) into DIR
(default: this script's directory). Stdlib only; the same Python version gives byte-identical
output.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import re
import sys
import sysconfig
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

SYSTEM_PROMPT = (
    "You extract facts about a Python function. Reply with one compact JSON object with "
    "exactly these keys: name, params, returns, raises, is_async, decorators, has_docstring."
)

FACT_KEYS = ("name", "params", "returns", "raises", "is_async", "decorators", "has_docstring")

MIN_EXAMPLES = 400
MAX_CHARS = 900
MAX_LINES = 30

SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3",
             "__phello__", "__pycache__"}

# Share of data.jsonl each edge case is topped up to before the hash-order fill
# (a little above the targets: >= 8% async, >= 15% decorated, >= 15% *args/**kwargs,
# >= 5% nested defs, >= 20% raises, and both docstring / no docstring well represented).
QUOTAS: tuple[tuple[str, float], ...] = (
    ("async", 0.10),
    ("decorated", 0.18),
    ("varargs", 0.18),
    ("nested", 0.07),
    ("raises", 0.24),
    ("docstring", 0.30),
    ("no_docstring", 0.30),
)

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://tunesmith.invalid/examples/pyfunc-json/schema.json",
    "title": "Python function facts",
    "description": "Facts about one Python function, computed with the ast module.",
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                 "description": "The function's name."},
        "params": {"type": "array", "items": {"type": "string", "minLength": 1},
                   "description": "Parameters in signature order, as written without "
                                  "annotations; '/' and bare '*' markers included."},
        "returns": {"type": ["string", "null"],
                    "description": "The return annotation, or null when there is none."},
        "raises": {"type": "array", "items": {"type": "string", "minLength": 1},
                   "uniqueItems": True,
                   "description": "Sorted exception names raised directly in the body "
                                  "(bare re-raise and nested defs excluded)."},
        "is_async": {"type": "boolean", "description": "True for 'async def'."},
        "decorators": {"type": "array", "items": {"type": "string", "minLength": 1},
                       "description": "Decorator expressions, in order."},
        "has_docstring": {"type": "boolean",
                          "description": "Whether the function has a docstring."},
    },
    "required": list(FACT_KEYS),
    "additionalProperties": False,
}

# Keep the demo data clean: nothing that looks like an e-mail address or a credential.
_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_SECRET_RES = (
    re.compile(r"(?i)(api[_-]?key|secret|passw(?:or)?d|token|auth|credential|private[_-]?key)"
               r"\w*['\"]?\s*[:=]\s*[rbuRBU]?['\"][^'\"\s]{6,}['\"]"),
    re.compile(r"['\"][A-Za-z0-9+/_=-]{32,}['\"]"),
    re.compile(r"-----BEGIN [A-Z ]*KEY-----"),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"\b(?:sk|pk|ghp|gho|xox[abprs])[-_][A-Za-z0-9_-]{16,}"),
)
_BAD_CHARS_RE = re.compile(r"[^\t\n\x20-\x7e]")


# --------------------------------------------------------------------------- facts

def format_params(args: ast.arguments) -> list[str]:
    """Parameters in signature order, as written in the signature without annotations."""
    out: list[str] = []
    positional = list(args.posonlyargs) + list(args.args)
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += list(args.defaults)
    for i, (arg, default) in enumerate(zip(positional, defaults)):
        out.append(arg.arg if default is None else f"{arg.arg}={ast.unparse(default)}")
        if args.posonlyargs and i == len(args.posonlyargs) - 1:
            out.append("/")
    if args.vararg is not None:
        out.append(f"*{args.vararg.arg}")
    elif args.kwonlyargs:
        out.append("*")
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        out.append(arg.arg if default is None else f"{arg.arg}={ast.unparse(default)}")
    if args.kwarg is not None:
        out.append(f"**{args.kwarg.arg}")
    return out


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _own_nodes(func: ast.AST) -> Iterable[ast.AST]:
    """Nodes of the function's body, not descending into nested defs, lambdas or classes."""
    stack = list(reversed(func.body))  # type: ignore[attr-defined]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, _SCOPES):
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _raised_name(exc: ast.expr) -> str | None:
    """'ValueError' for ``raise ValueError(...)`` / ``raise ValueError``; None if not a name."""
    target = exc.func if isinstance(exc, ast.Call) else exc
    node = target
    while isinstance(node, ast.Attribute):
        node = node.value
    if isinstance(node, ast.Name):
        return ast.unparse(target)
    return None


def compute_facts(func: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, Any] | None:
    """The facts object, or None when a ``raise`` is not of a (dotted) name."""
    raises: set[str] = set()
    for node in _own_nodes(func):
        if isinstance(node, ast.Raise) and node.exc is not None:
            name = _raised_name(node.exc)
            if name is None:
                return None
            raises.add(name)
    return {
        "name": func.name,
        "params": format_params(func.args),
        "returns": ast.unparse(func.returns) if func.returns is not None else None,
        "raises": sorted(raises),
        "is_async": isinstance(func, ast.AsyncFunctionDef),
        "decorators": [ast.unparse(d) for d in func.decorator_list],
        "has_docstring": ast.get_docstring(func) is not None,
    }


# --------------------------------------------------------------------------- candidates

@dataclass
class Candidate:
    source: str
    facts: dict[str, Any]
    file: str
    start: int
    end: int
    digest: str = ""
    features: frozenset[str] = field(default_factory=frozenset)
    has_bare_reraise: bool = False
    has_nested_raise: bool = False
    decorator_is_call: bool = False

    def has(self, feature: str) -> bool:
        return feature in self.features


def _features(func: ast.FunctionDef | ast.AsyncFunctionDef, facts: dict[str, Any]) -> set[str]:
    feats: set[str] = set()
    a = func.args
    if facts["is_async"]:
        feats.add("async")
    if facts["decorators"]:
        feats.add("decorated")
    if a.vararg is not None or a.kwarg is not None:
        feats.add("varargs")
    if a.vararg is not None:
        feats.add("star_args")
    if a.kwarg is not None:
        feats.add("star_kwargs")
    if a.kwonlyargs:
        feats.add("kwonly")
        if a.vararg is None:
            feats.add("bare_star")
    if a.posonlyargs:
        feats.add("posonly")
    if any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(func)
           if n is not func):
        feats.add("nested")
    if facts["raises"]:
        feats.add("raises")
        if any("." in r for r in facts["raises"]):
            feats.add("dotted_raise")
    feats.add("docstring" if facts["has_docstring"] else "no_docstring")
    feats.add("annotated_return" if facts["returns"] is not None else "no_return_annotation")
    if any("=" in p and not p.startswith("*") for p in facts["params"]):
        feats.add("defaults")
    return feats


def _looks_unclean(src: str) -> bool:
    if _BAD_CHARS_RE.search(src):
        return True
    if _EMAIL_RE.search(src):
        return True
    return any(rx.search(src) for rx in _SECRET_RES)


def stdlib_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                files.append(Path(dirpath) / name)
    return files


def candidates_from_file(path: Path, rel: str) -> list[Candidate]:
    try:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
    except Exception:  # unreadable, undecodable, syntax errors: skip silently
        return []
    lines = text.splitlines()
    out: list[Candidate] = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        try:
            cand = _candidate(func, lines, rel)
        except Exception:
            cand = None
        if cand is not None:
            out.append(cand)
    return out


def _candidate(func: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str],
               rel: str) -> Candidate | None:
    start = min([func.lineno] + [d.lineno for d in func.decorator_list])
    end = func.end_lineno or func.lineno
    if end - start + 1 > MAX_LINES:
        return None
    raw = "\n".join(lines[start - 1:end])
    if len(raw) > 4 * MAX_CHARS:
        return None
    source = textwrap.dedent(raw).strip("\n")
    if len(source) > MAX_CHARS or source.count("\n") + 1 > MAX_LINES:
        return None
    if _looks_unclean(source):
        return None
    try:
        module = ast.parse(source)
    except SyntaxError:
        return None
    # The snippet must be exactly this one function (nothing before or after it on a line).
    if len(module.body) != 1 or not isinstance(module.body[0], (ast.FunctionDef,
                                                                 ast.AsyncFunctionDef)):
        return None
    node = module.body[0]
    if node.name != func.name or len(node.decorator_list) != len(func.decorator_list):
        return None
    facts = compute_facts(node)  # from the re-parsed snippet: input and output always agree
    if facts is None:
        return None
    feats = _features(node, facts)
    own = list(_own_nodes(node))
    bare = any(isinstance(n, ast.Raise) and n.exc is None for n in own)
    nested_raise = "nested" in feats and any(
        isinstance(n, ast.Raise) and n.exc is not None
        for inner in ast.walk(node)
        if inner is not node and isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(inner)
    )
    return Candidate(
        source=source,
        facts=facts,
        file=rel,
        start=start,
        end=end,
        digest=hashlib.sha256(source.encode("utf-8")).hexdigest(),
        features=frozenset(feats),
        has_bare_reraise=bare,
        has_nested_raise=nested_raise,
        decorator_is_call=any(isinstance(d, ast.Call) for d in node.decorator_list),
    )


def collect(root: Path) -> tuple[list[Candidate], int]:
    files = stdlib_files(root)
    seen_sources: set[str] = set()
    seen_pairs: set[str] = set()
    cands: list[Candidate] = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        for cand in candidates_from_file(path, rel):
            if cand.source in seen_sources:
                continue
            pair = json.dumps(cand.facts, sort_keys=True) + "\0" + "\n".join(
                line.rstrip() for line in cand.source.splitlines() if line.strip())
            if pair in seen_pairs:
                continue
            seen_sources.add(cand.source)
            seen_pairs.add(pair)
            cands.append(cand)
    cands.sort(key=lambda c: (c.digest, c.source))
    return cands, len(files)


# --------------------------------------------------------------------------- regression

@dataclass(frozen=True)
class EdgeCase:
    id: str
    match: Callable[[Candidate], bool]
    fields: tuple[str, ...]  # json_field assertions besides "name" (1 to 3)


EDGE_CASES: tuple[EdgeCase, ...] = (
    EdgeCase("async_function", lambda c: c.has("async") and not c.has("decorated"),
             ("is_async", "params")),
    EdgeCase("async_decorated", lambda c: c.has("async") and c.has("decorated"),
             ("is_async", "decorators")),
    EdgeCase("property_decorator", lambda c: c.facts["decorators"] == ["property"],
             ("decorators", "params")),
    EdgeCase("staticmethod_decorator", lambda c: "staticmethod" in c.facts["decorators"],
             ("decorators", "params")),
    EdgeCase("classmethod_decorator", lambda c: "classmethod" in c.facts["decorators"],
             ("decorators", "params")),
    EdgeCase("call_decorator_wraps",
             lambda c: any("wraps(" in d for d in c.facts["decorators"]),
             ("decorators", "params")),
    EdgeCase("call_decorator_other",
             lambda c: c.decorator_is_call and not any("wraps(" in d
                                                       for d in c.facts["decorators"]),
             ("decorators",)),
    EdgeCase("star_args", lambda c: c.has("star_args") and not c.has("star_kwargs"),
             ("params",)),
    EdgeCase("star_kwargs", lambda c: c.has("star_kwargs") and not c.has("star_args"),
             ("params",)),
    EdgeCase("star_args_and_kwargs", lambda c: c.has("star_args") and c.has("star_kwargs"),
             ("params",)),
    EdgeCase("keyword_only_bare_star", lambda c: c.has("bare_star"), ("params",)),
    EdgeCase("keyword_only_after_args", lambda c: c.has("kwonly") and c.has("star_args"),
             ("params",)),
    EdgeCase("positional_only", lambda c: c.has("posonly"), ("params",)),
    EdgeCase("nested_def", lambda c: c.has("nested") and not c.has_nested_raise,
             ("params", "is_async")),
    EdgeCase("nested_def_inner_raise", lambda c: c.has("nested") and c.has_nested_raise,
             ("raises", "params")),
    EdgeCase("no_return_annotation",
             lambda c: c.has("no_return_annotation") and c.facts["params"] != [],
             ("returns", "params")),
    EdgeCase("return_annotation", lambda c: c.has("annotated_return"), ("returns", "params")),
    EdgeCase("raises_one", lambda c: len(c.facts["raises"]) == 1, ("raises",)),
    EdgeCase("raises_several", lambda c: len(c.facts["raises"]) >= 2, ("raises",)),
    EdgeCase("raises_dotted_name", lambda c: c.has("dotted_raise"), ("raises",)),
    EdgeCase("bare_reraise_only",
             lambda c: c.has_bare_reraise and not c.facts["raises"], ("raises",)),
    EdgeCase("no_docstring", lambda c: c.has("no_docstring") and not c.has("decorated"),
             ("has_docstring", "raises")),
    EdgeCase("with_docstring", lambda c: c.has("docstring") and not c.has("decorated"),
             ("has_docstring", "returns")),
    EdgeCase("default_values", lambda c: c.has("defaults"), ("params",)),
)


def _overlaps(a: Candidate, b: Candidate) -> bool:
    return a.file == b.file and a.start <= b.end and b.start <= a.end


def pick_regression(cands: list[Candidate], k: int) -> list[tuple[EdgeCase, Candidate]]:
    """Round-robin over the edge cases, taking the first unused candidate (hash order)."""
    picked: list[tuple[EdgeCase, Candidate]] = []
    used: set[str] = set()
    while len(picked) < k:
        progress = False
        for case in EDGE_CASES:
            if len(picked) >= k:
                break
            for cand in cands:
                if cand.digest in used or not case.match(cand):
                    continue
                # Keep prompts independent: never a function nested in (or around) another.
                if any(_overlaps(cand, other) for _, other in picked):
                    continue
                picked.append((case, cand))
                used.add(cand.digest)
                progress = True
                break
        if not progress:
            break
    return picked


def regression_record(case: EdgeCase, cand: Candidate, index: int) -> dict[str, Any]:
    assertions: list[dict[str, Any]] = [{"type": "json_schema"}]
    for key in ("name",) + case.fields:
        assertions.append({"type": "json_field", "path": key, "equals": cand.facts[key]})
    return {
        "id": f"{case.id}_{index:02d}",
        "messages": [{"role": "user", "content": cand.source}],
        "expected": cand.facts,
        "assertions": assertions,
    }


# --------------------------------------------------------------------------- data

def pick_data(pool: list[Candidate], n: int) -> list[Candidate]:
    """Top up each edge case to its quota in hash order, then fill the rest in hash order."""
    chosen: set[str] = set()
    for feature, share in QUOTAS:
        want = math.ceil(share * n)
        have = sum(1 for c in pool if c.digest in chosen and c.has(feature))
        for cand in pool:
            if have >= want or len(chosen) >= n:
                break
            if cand.digest not in chosen and cand.has(feature):
                chosen.add(cand.digest)
                have += 1
    for cand in pool:
        if len(chosen) >= n:
            break
        chosen.add(cand.digest)
    return [c for c in pool if c.digest in chosen]


def chat_record(cand: Candidate) -> dict[str, Any]:
    return {"messages": [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": cand.source},
        {"role": "assistant", "content": json.dumps(cand.facts, separators=(",", ":"))},
    ]}


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)


def pct(items: list[Candidate], feature: str) -> str:
    share = 100.0 * sum(1 for c in items if c.has(feature)) / max(len(items), 1)
    return f"{share:.1f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output directory (default: this script's directory)")
    parser.add_argument("--n", type=int, default=600,
                        help=f"number of training examples (at least {MIN_EXAMPLES})")
    parser.add_argument("--regression", type=int, default=30,
                        help="number of held-out regression prompts")
    args = parser.parse_args(argv)
    if args.n < MIN_EXAMPLES:
        parser.error(f"--n must be at least {MIN_EXAMPLES}")
    if args.regression < 0:
        parser.error("--regression must be >= 0")

    root = Path(sysconfig.get_paths()["stdlib"])
    cands, n_files = collect(root)

    regression = pick_regression(cands, args.regression)
    held = [c for _, c in regression]
    pool = [c for c in cands if not any(_overlaps(c, h) for h in held)]
    data = pick_data(pool, args.n)
    if len(data) < MIN_EXAMPLES:
        print(f"error: only {len(data)} examples could be built from {root} "
              f"({len(cands)} candidate functions in {n_files} files); "
              f"need at least {MIN_EXAMPLES}", file=sys.stderr)
        return 1
    if len(regression) < args.regression:
        print(f"error: only {len(regression)} of {args.regression} regression prompts could "
              f"be built from {root}", file=sys.stderr)
        return 1

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "schema.json", json.dumps(SCHEMA, indent=2) + "\n")
    write_atomic(out / "data.jsonl", jsonl(chat_record(c) for c in data))
    write_atomic(out / "regression.jsonl",
                 jsonl(regression_record(case, c, i + 1)
                       for i, (case, c) in enumerate(regression)))

    print(f"pyfunc-json: {len(data)} examples + {len(regression)} regression prompts from "
          f"{len(cands)} stdlib functions in {n_files} files (Python "
          f"{sys.version_info.major}.{sys.version_info.minor}); "
          f"async {pct(data, 'async')}, decorated {pct(data, 'decorated')}, "
          f"*args/**kwargs {pct(data, 'varargs')}, nested {pct(data, 'nested')}, "
          f"raises {pct(data, 'raises')}, docstring {pct(data, 'docstring')} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
