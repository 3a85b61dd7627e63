"""What pyproject.toml promises about dependencies holds for the code.

Whether the newest transformers allowed by the bound still works is checked by
scripts/test-newest.sh (it needs the package index, so it is a CI job, not a test here).
"""

import ast
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import tunesmith

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(tunesmith.__file__).parent


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _requirement(name: str, reqs: list[str]) -> Requirement:
    return next(r for r in map(Requirement, reqs) if r.name == name)


def _imported_top_level_names() -> set[str]:
    names = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def test_transformers_has_an_upper_bound_and_the_installed_release_is_inside_it():
    """The decoder and the trainer use transformers internals: a new major release must be tried first."""
    req = _requirement("transformers", _project()["dependencies"])
    uppers = [s for s in req.specifier if s.operator == "<"]
    assert [s.version for s in uppers] == ["6"], f"transformers needs an upper bound: {req}"
    installed = metadata.version("transformers")
    assert req.specifier.contains(installed, prereleases=True), f"installed transformers {installed} is outside {req}"


def test_the_bench_extra_holds_what_only_the_benchmarks_import():
    extras = _project()["optional-dependencies"]
    bench = {Requirement(r).name for r in extras["bench"]}
    assert "trl" in bench
    runtime = {Requirement(r).name for name, reqs in extras.items() if name != "bench" for r in reqs}
    assert not bench & runtime, "a package tunesmith itself needs belongs in its own extra, not in bench"
    imported = _imported_top_level_names()
    assert not bench & imported, f"src/ imports {sorted(bench & imported)}: move it to the extra that needs it"
    benchmarks = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "benchmarks").glob("*.py"))
    for name in bench:
        assert re.search(rf"^\s*(import|from) {name}\b", benchmarks, re.M), f"no benchmark imports {name}"


def test_setup_installs_the_extras_the_tests_and_benchmarks_need():
    setup = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    extras = re.search(r'-e "\.\[([a-z,]+)\]"', setup)
    assert extras, "scripts/setup.sh no longer installs tunesmith with its extras"
    assert {"train", "test", "serve", "bench", "data", "qlora"} <= set(extras.group(1).split(","))
