"""The pyfunc-json example: build.py produces a valid, clean, deterministic data set."""

from __future__ import annotations

import ast
import json
import random
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "pyfunc-json"
BUILD = EXAMPLE / "build.py"
N = 420
N_REGRESSION = 30
FACT_KEYS = ["name", "params", "returns", "raises", "is_async", "decorators", "has_docstring"]


def run_build(out: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(BUILD), "--out", str(out), "--n", str(N),
         "--regression", str(N_REGRESSION)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pyfunc-json")
    proc = run_build(out)
    assert "examples" in proc.stdout and f"{N} examples" in proc.stdout
    return out


@pytest.fixture(scope="module")
def rows(built: Path) -> list[dict]:
    return [json.loads(line) for line in (built / "data.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def regression(built: Path) -> list[dict]:
    return [json.loads(line) for line in (built / "regression.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def validator(built: Path) -> jsonschema.protocols.Validator:
    schema = json.loads((built / "schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert sorted(schema["required"]) == sorted(FACT_KEYS)
    return cls(schema)


def parse_function(source: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    module = ast.parse(source)
    assert len(module.body) == 1
    node = module.body[0]
    assert isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    return node


def has_nested_def(node: ast.AST) -> bool:
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
               for n in ast.walk(node) if n is not node)


def test_system_prompt_matches_project_file() -> None:
    import yaml

    project = yaml.safe_load((EXAMPLE / "tunesmith.yaml").read_text())
    module = ast.parse(BUILD.read_text())
    (prompt,) = [ast.literal_eval(s.value) for s in module.body if isinstance(s, ast.Assign)
                 and [ast.unparse(t) for t in s.targets] == ["SYSTEM_PROMPT"]]
    assert project["system_prompt"] == prompt
    assert project["task_kind"] == "format" and project["max_length"] == 768
    assert project["output"]["json_schema"] == "schema.json"
    assert project["data"]["source"] == "data.jsonl"
    assert project["data"]["regression"] == "regression.jsonl"


def test_data_lines_are_chat_examples(rows: list[dict], validator) -> None:
    assert len(rows) >= 400
    sources = set()
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"])
        answer = row["messages"][2]["content"]
        facts = json.loads(answer)
        assert list(facts) == FACT_KEYS
        assert answer == json.dumps(facts, separators=(",", ":"))
        validator.validate(facts)
        source = row["messages"][1]["content"]
        assert source.isascii() and len(source) <= 900 and len(source.splitlines()) <= 30
        sources.add(source)
    assert len(sources) == len(rows)


def test_facts_agree_with_independent_parse(rows: list[dict]) -> None:
    sample = random.Random(1234).sample(rows, 50)
    for row in sample:
        source = row["messages"][1]["content"]
        facts = json.loads(row["messages"][2]["content"])
        node = parse_function(source)
        assert facts["name"] == node.name
        assert facts["is_async"] is isinstance(node, ast.AsyncFunctionDef)
        assert facts["has_docstring"] is (ast.get_docstring(node) is not None)
        assert len(facts["decorators"]) == len(node.decorator_list)
        assert (facts["returns"] is None) is (node.returns is None)


def test_edge_cases_are_represented(rows: list[dict]) -> None:
    nodes = [parse_function(r["messages"][1]["content"]) for r in rows]
    n = len(nodes)
    share = lambda pred: sum(1 for x in nodes if pred(x)) / n  # noqa: E731
    assert share(lambda x: isinstance(x, ast.AsyncFunctionDef)) >= 0.08
    assert share(lambda x: bool(x.decorator_list)) >= 0.15
    assert share(lambda x: x.args.vararg is not None or x.args.kwarg is not None) >= 0.15
    assert share(has_nested_def) >= 0.05
    raising = sum(1 for r in rows if json.loads(r["messages"][2]["content"])["raises"])
    assert raising / n >= 0.20
    docstring = share(lambda x: ast.get_docstring(x) is not None)
    assert 0.2 <= docstring <= 0.8


def test_regression_prompts(regression: list[dict], rows: list[dict], validator) -> None:
    assert len(regression) == N_REGRESSION
    ids = [r["id"] for r in regression]
    assert len(set(ids)) == len(ids)
    data_sources = {r["messages"][1]["content"] for r in rows}
    nodes = []
    for rec in regression:
        assert [m["role"] for m in rec["messages"]] == ["user"]
        source = rec["messages"][0]["content"]
        assert source not in data_sources
        node = parse_function(source)
        nodes.append(node)
        expected = rec["expected"]
        validator.validate(expected)
        assert expected["name"] == node.name
        assert rec["assertions"][0] == {"type": "json_schema"}
        fields = [a for a in rec["assertions"] if a["type"] == "json_field"]
        assert 2 <= len(fields) <= 4
        assert len(fields) == len(rec["assertions"]) - 1
        assert "name" in {a["path"] for a in fields}
        for a in fields:
            assert a["equals"] == expected[a["path"]]
    assert any(isinstance(x, ast.AsyncFunctionDef) for x in nodes)
    assert any(x.decorator_list for x in nodes)
    assert any(x.args.vararg is not None for x in nodes)
    assert any(x.args.kwarg is not None for x in nodes)
    assert any(has_nested_def(x) for x in nodes)
    assert any(x.args.posonlyargs for x in nodes)
    assert any(x.args.kwonlyargs for x in nodes)


def test_build_is_deterministic(built: Path, tmp_path: Path) -> None:
    run_build(tmp_path)
    for name in ("data.jsonl", "regression.jsonl", "schema.json"):
        assert (tmp_path / name).read_bytes() == (built / name).read_bytes(), name
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
