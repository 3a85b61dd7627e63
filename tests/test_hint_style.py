"""One hint style: a TunesmithError's hint starts in lower case and has no final full stop, like
"pass --project DIR" or "set train.rank in tunesmith.yaml". The test reads the source, so a new hint
written the other way fails here before anyone sees it."""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "tunesmith"
#: words a hint may start with although capitalised: names as their owners spell them
PROPER = {"OpenAI", "PEFT", "Hub", "JSON", "JSONL", "YAML", "GGUF", "LoRA", "QLoRA", "CUDA", "HF", "Python", "CPU", "GPU",
          "MPS", "SQLite", "TensorBoard", "Ollama", "vLLM", "llama.cpp", "II", "URL", "HTTP", "HTTPS", "PyTorch", "I"}
#: a capital that is not a sentence's start: a backticked command, an env var (HF_TOKEN), a flag's value (-o FILE)
ALLOWED_START = re.compile(r"`|[A-Z][A-Z0-9]*_[A-Z0-9_]+|[A-Z]{2,}\b")
#: the constructors whose second argument (or hint=) is a hint; the family is found from the source
ROOT_ERROR = "TunesmithError"


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"), str(p))) for p in sorted(SRC.rglob("*.py"))]


def _error_classes(modules: list[tuple[Path, ast.Module]]) -> set[str]:
    """TunesmithError and every class in src that derives from it, however deep."""
    bases = {n.name: {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in n.bases}
             for _, tree in modules for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    family = {ROOT_ERROR}
    while grown := {name for name, of in bases.items() if of & family} - family:
        family |= grown
    return family


def _callee(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _hint_node(call: ast.Call) -> ast.expr | None:
    keyword = next((k.value for k in call.keywords if k.arg == "hint"), None)
    return keyword if keyword is not None else call.args[1] if len(call.args) > 1 else None


def _ends(node: ast.expr) -> list[tuple[str, str]]:
    """(first literal text, last literal text) of each way the expression can read; ("", "") parts unknown."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [(node.value, node.value)]
    if isinstance(node, ast.JoinedStr):
        head, tail = node.values[0], node.values[-1]
        return [(head.value if isinstance(head, ast.Constant) else "", tail.value if isinstance(tail, ast.Constant) else "")]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return [(h, "") for h, _ in _ends(node.left)] + [("", t) for _, t in _ends(node.right)]
    if isinstance(node, ast.IfExp):
        return _ends(node.body) + _ends(node.orelse)
    if isinstance(node, ast.BoolOp):
        return [e for v in node.values for e in _ends(v)]
    return []


def _bad(head: str, tail: str) -> str | None:
    word = re.match(r"[\w.]*", head).group().rstrip(".")  # "OpenAI's" -> "OpenAI", "llama.cpp" stays whole
    if head[:1].isupper() and word not in PROPER and not ALLOWED_START.match(head):
        return "starts with a capital"
    if tail.endswith(".") and not tail.endswith(("...", ".jsonl", ".yaml", ".py", ".gguf", ".json")):
        return "ends with a full stop"
    return None


def _hints(tree: ast.Module, family: set[str]) -> typing.Iterator[ast.expr]:
    """Every expression that becomes a hint: an error's hint argument, a value given to a `hint`
    variable, and what a `..._hint()` function returns."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _callee(node) in family and (hint := _hint_node(node)) is not None:
            yield hint
        elif isinstance(node, (ast.Assign, ast.AugAssign)) and any(
                isinstance(t, ast.Name) and t.id == "hint" for t in getattr(node, "targets", [getattr(node, "target", None)])):
            yield node.value
        elif isinstance(node, ast.FunctionDef) and node.name.endswith("hint"):
            yield from (r.value for r in ast.walk(node) if isinstance(r, ast.Return) and r.value is not None)


def offending_hints() -> list[str]:
    modules = _modules()
    family = _error_classes(modules)
    found = []
    for path, tree in modules:
        for hint in _hints(tree, family):
            for head, tail in _ends(hint):
                if why := _bad(head, tail):
                    found.append(f"{path.relative_to(SRC.parent)}:{hint.lineno}: {why}: {ast.unparse(hint)[:80]}")
    return found


def test_hints_start_in_lower_case_and_have_no_final_full_stop():
    assert offending_hints() == []


def test_the_style_check_sees_a_bad_hint_and_lets_names_through():
    assert _bad("Run it again.", "Run it again.") == "starts with a capital"
    assert _bad("run it again.", "run it again.") == "ends with a full stop"
    assert _bad("pass --project DIR", "pass --project DIR") is None
    for name_first in ("OpenAI's key is read from OPENAI_API_KEY", "`tunesmith split` first", "HF_TOKEN must be set",
                       "PEFT adapters only", "Hub ids look like org/name"):
        assert _bad(name_first, "x") is None, name_first
    assert _bad("use -o data.jsonl", "use -o data.jsonl") is None
