"""Property tests for reading tunesmith.yaml: a valid project file with fields swapped for garbage
(wrong types, numbers past Python's 4,300-digit limit, impossible dates, nesting deeper than the
recursion limit, odd paths) and damaged as text (cut, a line repeated so a key is given twice, invalid
UTF-8, NUL bytes, a BOM, tabs). It loads, or it is a ProjectError naming the file or the field."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.errors import ProjectError
from tunesmith.project import load_project

VALID: dict[str, Any] = {
    "task": "Answer with one compact JSON object.",
    "task_kind": "format",
    "base_model": "builtin:smollm2-135m-instruct",
    "system_prompt": "Reply in JSON.",
    "output": {"json": True},
    "data": {"source": "data.jsonl", "test_fraction": 0.15, "regression": "regression.jsonl"},
    "max_length": 512,
    "checks": {"near_duplicate_threshold": 0.8},
    "train": {"method": "lora", "rank": 8, "time_budget": "10m", "layers": 2, "target_modules": ["q_proj"], "seed": 1,
              "mix": {"source": "self", "fraction": 0.05}},
    "eval": {"max_new_tokens": 64, "judge": {"base_url": "http://127.0.0.1:1/v1", "model": "j"}},
    "generate": {"teacher_model": "t", "n": 10, "price": {"input": 0.1, "output": 0.2}},
    "hosted": {"n_epochs": "auto", "price": {"training": 3.0}},
}
PLACEHOLDERS = {"__huge__": "9" * 4400, "__deep__": "[" * 600 + "]" * 600, "__date__": "2024-13-45"}

words = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), words,
    st.sampled_from([*PLACEHOLDERS, "~nosuchuser-x/model", "./missing", "a\x00b", "1_000", "10x", "-1s", "nan"]),
)
garbage = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(words, inner, max_size=3)), max_leaves=6)


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    out = [path] if path else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*path, k))
    return out


def _replace(value: dict, path: tuple, new: Any) -> dict:
    head, rest = path[0], path[1:]
    return {**value, head: _replace(value[head], rest, new) if rest and isinstance(value[head], dict) else new}


@st.composite
def project_files(draw: st.DrawFn) -> bytes:
    project = VALID
    for _ in range(draw(st.integers(0, 3))):
        project = _replace(project, draw(st.sampled_from(_paths(project))), draw(garbage))
    text = yaml.safe_dump(project, allow_unicode=True, sort_keys=False)
    for placeholder, raw in PLACEHOLDERS.items():
        text = text.replace(placeholder, raw)
    data = text.encode("utf-8", "surrogatepass")
    damage = draw(st.sampled_from(["none", "none", "cut", "repeat", "bad_utf8", "nul", "bom", "tab"]))
    lines = data.split(b"\n")
    if damage == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "repeat":  # a key given twice
        i = draw(st.integers(0, len(lines) - 1))
        data = b"\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1:])
    elif damage in ("bad_utf8", "nul", "tab"):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + {"bad_utf8": b"\xff", "nul": b"\x00", "tab": b"\t"}[damage] + data[at:]
    elif damage == "bom":
        data = b"\xef\xbb\xbf" + data
    return data


_DIR = Path(tempfile.mkdtemp(prefix="tunesmith-project-properties-"))


@settings(deadline=None, max_examples=300 * int(os.environ.get("TUNESMITH_PROPERTY_SCALE", "1")),
          suppress_health_check=[HealthCheck.too_slow])
@given(data=project_files())
def test_a_project_file_loads_or_names_the_file_or_field(data: bytes) -> None:
    file = _DIR / "tunesmith.yaml"
    file.write_bytes(data)
    try:
        project = load_project(_DIR)
    except ProjectError as error:
        named = str(file) in error.message or error.message.startswith(("base_model:", "output.json_schema:"))
        assert named, error.message
        assert error.hint
        return
    assert project.task and project.root == _DIR
    project.resolved()  # what a run directory records: plain data
