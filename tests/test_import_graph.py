"""The top-level pieces of tunesmith (subpackages and modules) depend on each other one way only, and
no module reaches for another's private names (issue #15): either would let a change in one part
break an unrelated one through a path nobody reads."""

from __future__ import annotations

import ast
from pathlib import Path

import tunesmith

SRC = Path(tunesmith.__file__).parent


def _part(module: str) -> str:
    """`tunesmith.evaluate.api` -> `evaluate`; `tunesmith.project` -> `project`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported tunesmith module, names taken from it) for every import in the file, top-level or not."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return [(module, names) for module, names in found if module.startswith("tunesmith.")]


def _module_of(path: Path) -> str:
    return ".".join(("tunesmith", *path.relative_to(SRC).with_suffix("").parts))


def test_no_two_parts_import_each_other():
    edges: set[tuple[str, str]] = set()
    for path in SRC.rglob("*.py"):
        here = _part(_module_of(path))
        edges |= {(here, _part(module)) for module, _ in _imports(path) if _part(module) != here}
    both_ways = sorted((a, b) for a, b in edges if a < b and (b, a) in edges)
    assert both_ways == []


def test_no_module_imports_another_parts_private_name():
    private = []
    for path in SRC.rglob("*.py"):
        here = _part(_module_of(path))
        private += [f"{path.relative_to(SRC)}: {name} from {module}" for module, names in _imports(path)
                    if _part(module) != here for name in names if name.startswith("_") and not name.startswith("__")]
    assert private == []
