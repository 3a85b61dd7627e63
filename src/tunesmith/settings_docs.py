"""tunesmith.yaml's fields, read once for everything that explains them: the CLI options' help, `init`'s
commented template, the JSON Schema for editors (`tunesmith schema`) and the README's settings table.

`python -m tunesmith.settings_docs` rewrites the two generated files, README.md's table and
cli/_settings_help.py (the CLI reads its help from there, so that `tunesmith --help` needs no pydantic);
`--check` only says which are stale. tests/test_settings_docs.py fails while one is.
"""

from __future__ import annotations

import argparse
import functools
import sys
import textwrap
import types
import typing
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tunesmith.errors import UsageError
from tunesmith.project import PROJECT_FILE, Project

HELP_MODULE = Path("src/tunesmith/cli/_settings_help.py")
TABLE_START = "<!-- settings table: generated from src/tunesmith/project.py by `python -m tunesmith.settings_docs` -->"
TABLE_END = "<!-- end of settings table -->"
STALE_FIX = "run `python -m tunesmith.settings_docs` and commit the result"
JSON_SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class Setting:
    path: str  # dotted, as the file spells it: "train.rank", "output.json"
    field: FieldInfo
    section: type[BaseModel] | None  # the model a section holds; None for a value

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def choices(self) -> tuple[str, ...]:
        """The values of a setting that takes only named values (a Literal), else ()."""
        args = _without_none(self.field.annotation)
        if all(typing.get_origin(a) is typing.Literal for a in args):
            return tuple(str(v) for a in args for v in typing.get_args(a))
        return ()

    def limit(self, kind: str) -> Any:
        """The field's bound of one kind ("ge", "lt", "max_length", ... as Field() takes it), or None."""
        return next((getattr(m, kind) for m in self.field.metadata if getattr(m, kind, None) is not None), None)

    @property
    def default(self) -> Any:
        """The value an absent key takes; None when it is required, unset or a whole section."""
        if self.section is not None or self.field.is_required():
            return None
        value = self.field.get_default(call_default_factory=True)
        return value if value not in ([], {}) else None


@functools.cache
def settings() -> tuple[Setting, ...]:
    """Every key a tunesmith.yaml can hold, in the order the models declare them, sections before their keys."""
    return tuple(_walk(Project, ""))


def _walk(model: type[BaseModel], prefix: str) -> typing.Iterator[Setting]:
    for name, field in model.model_fields.items():
        if field.exclude:
            continue  # Project.root: where the file was read from, not a key in it
        section = next((a for a in _without_none(field.annotation) if _is_model(a)), None)
        setting = Setting(prefix + (field.alias or name), field, section)
        yield setting
        if section is not None:
            yield from _walk(section, setting.path + ".")


def setting(path: str) -> Setting:
    for s in settings():
        if s.path == path:
            return s
    raise KeyError(f"no setting {path} in {PROJECT_FILE}")


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _without_none(tp: Any) -> list[Any]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def _number(v: Any) -> str:
    return str(int(v)) if isinstance(v, (int, float)) and float(v).is_integer() else repr(v)


def bounds(s: Setting) -> str:
    """The field's constraints as people read them: "1 <= rank <= 1024", "alpha > 0", ""."""
    ge, gt, le, lt = (s.limit(k) for k in ("ge", "gt", "le", "lt"))
    low = (f"{_number(ge)} <=" if ge is not None else f"{_number(gt)} <") if (ge, gt) != (None, None) else ""
    high = (f"<= {_number(le)}" if le is not None else f"< {_number(lt)}") if (le, lt) != (None, None) else ""
    if low and high:
        return f"{low} {s.name} {high}"
    if low:  # "0 <" reads better turned round: "alpha > 0"
        number, op = low.split()
        return f"{s.name} {'>=' if op == '<=' else '>'} {number}"
    if high:
        return f"{s.name} {high}"
    shortest, longest = s.limit("min_length"), s.limit("max_length")
    return f"at least {shortest} characters" if shortest else f"at most {longest} characters" if longest else ""


def _yaml_value(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else _number(v) if isinstance(v, (int, float)) else str(v)


def help_text(path: str, *, default: bool = True) -> str:
    """The setting's description with its choices, bounds and (with `default`) default value: its help everywhere."""
    s = setting(path)
    extras = [" | ".join(s.choices), bounds(s)]
    if default and s.default is not None:
        extras.append(f"default {_yaml_value(s.default)}")
    extras = [e for e in extras if e]
    text = (s.field.description or "").rstrip(".")
    if not extras:
        return text + "."
    if text.endswith(")"):  # one parenthesis, not two in a row: "(--n; 1 <= n <= 100000)"
        return f"{text[:-1]}; {'; '.join(extras)})."
    return f"{text} ({'; '.join(extras)})."


# --- the JSON Schema -------------------------------------------------------------------------------


def project_schema() -> dict[str, Any]:
    """The JSON Schema of tunesmith.yaml, for editors (`# yaml-language-server: $schema=...`)."""
    schema = Project.model_json_schema(by_alias=True)
    schema["properties"].pop("root")
    schema.pop("title", None)
    return {"$schema": JSON_SCHEMA_DRAFT, "title": PROJECT_FILE,
            "description": "The tunesmith project file (`tunesmith init` writes a commented one).", **schema}


# --- the README table and the CLI help module ------------------------------------------------------


def _kind(tp: Any) -> str:
    args = _without_none(tp)
    if len(args) > 1:
        return " or ".join(_kind(a) for a in args)
    (tp,) = args
    if typing.get_origin(tp) is typing.Literal:
        return ", ".join(f"`{v}`" for v in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return "list of " + _kind(typing.get_args(tp)[0])
    if typing.get_origin(tp) is dict:
        return "mapping"
    names = {str: "text", int: "integer", float: "number", bool: "`true`, `false`"}
    return "section" if _is_model(tp) else names.get(tp, getattr(tp, "__name__", str(tp)))


def _values(s: Setting) -> str:
    extra = s.field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("anyOf"), list):  # a field that also reads text ("10m")
        names = {"number": "number", "integer": "integer", "string": "text", "boolean": "`true`, `false`"}
        return " or ".join(names[t["type"]] for t in extra["anyOf"] if t["type"] != "null")
    return ", ".join(v for v in (_kind(s.field.annotation), bounds(s)) if v)


def readme_table() -> str:
    rows = ["| setting | values | default | what it does |", "|---|---|---|---|"]
    for s in settings():
        values = _values(s)
        default = "required" if s.field.is_required() else "" if s.default is None else f"`{_yaml_value(s.default)}`"
        cells = [f"`{s.path}`", values, default, s.field.description or ""]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def with_table(readme: str) -> str:
    """README.md's text with the settings table between its two marker lines regenerated."""
    before, start, rest = readme.partition(TABLE_START + "\n")
    _, end, after = rest.partition(TABLE_END)
    if not start or not end:
        raise UsageError("README.md has no settings table to rewrite",
                         f"put the two lines {TABLE_START} and {TABLE_END} where the table goes")
    return f"{before}{TABLE_START}\n{readme_table()}\n{TABLE_END}{after}"


def help_module() -> str:
    values = [s for s in settings() if s.section is None]
    entries = "".join(f"    {s.path!r}: {help_text(s.path)!r},\n" for s in values)
    # inclusive bounds only: they are what a typer option's min/max mean
    bounds_ = "".join(f"    {s.path!r}: ({s.limit('ge')!r}, {s.limit('le')!r}),\n" for s in values
                      if (s.limit("ge"), s.limit("le")) != (None, None))
    choices = "".join(f"    {s.path!r}: {s.choices!r},\n" for s in values if s.choices)
    return (f'"""Help for the CLI options that set a {PROJECT_FILE} setting: generated from the fields in\n'
            "tunesmith/project.py by `python -m tunesmith.settings_docs`; do not edit by hand.\n\n"
            'Text, not an import of the fields, so that building the CLI (and `tunesmith --help`) needs no pydantic.\n"""\n\n'
            f"HELP: dict[str, str] = {{\n{entries}}}\n\n"
            f"#: a setting's inclusive (min, max), None where it has no such bound\n"
            f"BOUNDS: dict[str, tuple[float | None, float | None]] = {{\n{bounds_}}}\n\n"
            f"#: the values of a setting that takes only named ones\n"
            f"CHOICES: dict[str, tuple[str, ...]] = {{\n{choices}}}\n")


# --- `init`'s template ----------------------------------------------------------------------------

#: What `init` writes: (setting, example value as YAML, written commented out). The comments are the
#: fields' help. `{task}` and `{base_model}` are filled in by `init`.
TEMPLATE: tuple[tuple[str, str, bool], ...] = (
    ("task", "{task}", False),
    ("task_kind", "format", False),
    ("base_model", "{base_model}", False),
    ("system_prompt", '"You are a precise assistant. Reply with one compact JSON object."', False),
    ("output.json", "true", False),
    ("output.json_schema", "schema.json", True),
    ("output.regex", '"^(yes|no)$"', True),
    ("data.source", "data.jsonl", False),
    ("data.train", "data/train.jsonl", False),
    ("data.test", "data/test.jsonl", False),
    ("data.test_fraction", "0.15", False),
    ("data.regression", "regression.jsonl", True),
    ("max_length", "1024", False),
    ("baseline.constrained", "true", True),
    ("baseline.few_shot", "3", True),
    ("eval.constrained", "true", True),
    ("generate.teacher_model", "gpt-4o-mini", True),
    ("generate.base_url", "https://api.openai.com/v1", True),
    ("generate.n", "500", True),
    ("generate.concurrency", "8", True),
    ("generate.price", "{input: 0.15, output: 0.60}", True),
)
WIDTH = 110


def project_template() -> str:
    """`init`'s tunesmith.yaml as a str.format template with {task} and {base_model}."""
    lines = ["# tunesmith project file. Paths are relative to this directory."]
    for top, group in groupby(TEMPLATE, key=lambda entry: entry[0].split(".")[0]):
        entries = list(group)
        lines += ["", *(f"# {chunk}" for chunk in _wrap(help_text(top, default=False), WIDTH - 2))]
        if entries[0][0] == top:  # a value, not a section
            _, value, off = entries[0]
            lines.append(f"{'# ' if off else ''}{top}: {value}")
        else:
            lines += _section_lines(top, entries)
    text = "\n".join(lines) + "\n"
    escaped = text.replace("{", "{{").replace("}", "}}")
    return escaped.replace("{{task}}", "{task}").replace("{{base_model}}", "{base_model}")


def _section_lines(top: str, entries: list[tuple[str, str, bool]]) -> list[str]:
    """The section's keys, each with its help as a trailing comment: `#   key: value` when the whole
    section is commented out (so that deleting "# " from its lines turns it on), `  # key: value` otherwise."""
    off = all(o for _, _, o in entries)
    keys = [(f"#   {path.split('.', 1)[1]}: {value}" if off else
             f"  {'# ' if o else ''}{path.split('.', 1)[1]}: {value}", help_text(path, default=False))
            for path, value, o in entries]
    column = max(len(k) for k, _ in keys) + 2
    lines = [f"{'# ' if off else ''}{top}:"]
    for key, text in keys:
        first, *more = _wrap(text, max(40, WIDTH - column - 2))
        lines.append(f"{key.ljust(column)}# {first}")
        lines += [f"{('#' if off else '').ljust(column)}# {chunk}" for chunk in more]
    return lines


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most `width`, never breaking "a | b" or "1 <= n <= 9" (textwrap breaks at ASCII spaces only)."""
    glued = text
    for op in (" | ", " <= ", " < ", " >= ", " > "):
        glued = glued.replace(op, op.replace(" ", "\N{NO-BREAK SPACE}"))
    return [line.replace("\N{NO-BREAK SPACE}", " ") for line in textwrap.wrap(glued, width)]


# --- python -m tunesmith.settings_docs ------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunesmith.settings_docs",
                                     description="Rewrite README.md's settings table and the CLI's help from the fields.")
    parser.add_argument("--check", action="store_true", help="Only list the stale files (exit status 1 when any is).")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2], help="The repository checkout.")
    args = parser.parse_args(argv)
    readme = args.root / "README.md"
    if not readme.is_file():
        print(f"error: {readme} does not exist\nhint: run it in a tunesmith checkout, or pass --root", file=sys.stderr)
        return 2
    renders = {readme: with_table, args.root / HELP_MODULE: lambda _old: help_module()}
    stale = []
    for path, render in renders.items():
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        new = render(old)
        if new != old:
            stale.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if args.check and stale:
        print("\n".join([*(f"stale: {p}" for p in stale), STALE_FIX]), file=sys.stderr)
        return 1
    for path in stale:
        print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
