"""The output contract: JSON, JSON Schema, regex, and one key style across all outputs."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data.checks.base import CheckContext, Finding, finding
from tunesmith.data.formats import Example
from tunesmith.io import loads_strict_json
from tunesmith.project import output_pattern

#: Outputs are treated as a JSON contract without being told when at least this share parses.
INFER_JSON_SHARE = 0.9

_SNAKE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)+$")
_CAMEL = re.compile(r"^[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)+$")
_PASCAL = re.compile(r"^[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+$")
_KEBAB = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)+$")
_PLAIN = re.compile(r"^[a-z][a-z0-9]*$")


def key_style(key: str) -> str | None:
    """snake_case, camelCase, PascalCase, kebab-case, other; None for one lower-case word (fits any)."""
    if _PLAIN.match(key):
        return None
    for name, rx in (("snake_case", _SNAKE), ("camelCase", _CAMEL), ("PascalCase", _PASCAL), ("kebab-case", _KEBAB)):
        if rx.match(key):
            return name
    return "other"


def _keys(value: Any, out: set[str], depth: int = 0) -> None:
    if depth > 32:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            out.add(k)
            _keys(v, out, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _keys(v, out, depth + 1)


def schema_keys(schema: Any, out: set[str] | None = None) -> set[str]:
    """Property names a schema declares, at any depth."""
    out = set() if out is None else out
    if isinstance(schema, dict):
        props = schema.get("properties")
        if isinstance(props, dict):
            out.update(props)
        for v in schema.values():
            schema_keys(v, out)
    elif isinstance(schema, list):
        for v in schema:
            schema_keys(v, out)
    return out


@dataclass
class Verdict:
    """One answer against the contract: `problems` (none: it meets it) and the parsed JSON, when it is JSON."""

    problems: list[str] = field(default_factory=list)
    value: Any = None
    is_json: bool = False
    #: the first schema error, as jsonschema reports it (check groups findings by it)
    schema_error: Any = None
    regex_ok: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems


class AnswerContract:
    """The output contract applied to one answer: the code `check`, the teacher and review share.

    `expects_json` makes a non-JSON answer a problem; without it JSON is only parsed (for the schema
    and for check's statistics). A JSON answer is an object or array, strictly parsed (no NaN).
    """

    def __init__(self, schema: dict | None = None, regex: str | None = None, expects_json: bool = False) -> None:
        self._validator = None
        if schema is not None:
            from jsonschema import validators

            self._validator = validators.validator_for(schema)(schema)
        self.regex = regex
        self._regex = output_pattern(regex) if regex else None
        self.expects_json = expects_json or schema is not None

    @classmethod
    def for_project(cls, project: Any) -> AnswerContract:
        return cls(project.load_schema(), project.output.regex, project.output.expects_json)

    @property
    def empty(self) -> bool:
        return self._regex is None and not self.expects_json

    def describe(self) -> str:
        """The contract in a sentence, for people and for a teacher model."""
        if self._validator is not None:
            return "one JSON value that validates against the JSON Schema given"
        if self.expects_json:
            return "one valid JSON object or array"
        if self.regex:
            return f"text that matches the regular expression {self.regex} in full"
        return "free text"

    def check(self, answer: str) -> Verdict:
        verdict = Verdict()
        if self._regex is not None and not self._regex.fullmatch(answer):
            verdict.regex_ok = False
            verdict.problems.append(f"does not match output.regex {self.regex!r}")
        stripped = answer.strip()
        if stripped and stripped[0] in "{[":
            try:
                verdict.value = loads_strict_json(stripped)
                verdict.is_json = True
            except (ValueError, RecursionError) as exc:  # nested thousands deep: no parser in production reads it either
                if self.expects_json:
                    verdict.problems.append(f"is not valid JSON ({_json_problem(exc)})")
        elif self.expects_json:
            verdict.problems.append("is not JSON: it must start with { or [" if stripped else "is empty")
        if verdict.is_json and self._validator is not None:
            for err in self._validator.iter_errors(verdict.value):
                verdict.schema_error = err
                path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
                verdict.problems.append(f"breaks the schema at {path}: {err.message[:200]}")
                break
        return verdict


def _json_problem(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)  # NaN / Infinity


class OutputContract:
    def __init__(self, ctx: CheckContext) -> None:
        self._answers = AnswerContract(ctx.schema, ctx.regex)
        self._sealed = ctx.sealed
        self._not_json: list[int] = []
        self._json_count = 0
        self._outputs = 0
        self._schema_errors: dict[str, list[int]] = {}
        self._schema_examples: dict[str, str] = {}
        self._regex_misses: list[int] = []
        self._styles: Counter[str] = Counter()
        self._lines_by_style: dict[str, list[int]] = {}
        self._example_key: dict[str, str] = {}

    def observe(self, ex: Example) -> None:
        seen_styles: set[str] = set()
        for out in ex.outputs():
            self._outputs += 1
            verdict = self._answers.check(out)
            if not verdict.regex_ok:
                self._regex_misses.append(ex.line)
            if not verdict.is_json:
                self._not_json.append(ex.line)
                continue
            self._json_count += 1
            err = verdict.schema_error
            if err is not None:
                key = self._describe(err)
                self._schema_errors.setdefault(key, []).append(ex.line)
                if not self._sealed:
                    self._schema_examples.setdefault(key, err.message[:160])
            keys: set[str] = set()
            _keys(verdict.value, keys)
            for k in keys:
                style = key_style(k)
                if style is not None:
                    seen_styles.add(style)
                    self._example_key.setdefault(style, k)
        for style in seen_styles:
            self._styles[style] += 1
            self._lines_by_style.setdefault(style, []).append(ex.line)

    def _describe(self, err) -> str:
        """jsonschema's message quotes the data; a sealed file only gets the schema rule that failed."""
        if self._sealed:
            rule = "/".join(str(p) for p in err.schema_path)
            return f"schema rule {rule or err.validator} failed"
        # Grouped by where and which rule, so 1,000 different bad values make one finding, not 1,000.
        path = "$" + "".join("[*]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        return f"{path} ({err.validator})"

    def finish(self, ctx: CheckContext) -> list[Finding]:
        out: list[Finding] = []
        inferred = not ctx.expects_json and self._outputs and self._json_count / self._outputs >= INFER_JSON_SHARE
        ctx.stats["json_outputs"] = {"parsed": self._json_count, "outputs": self._outputs}
        if (ctx.expects_json or inferred) and self._not_json:
            severity = "error" if ctx.expects_json else "warning"
            why = "the project's contract is JSON" if ctx.expects_json else (
                f"{self._json_count} of {self._outputs} outputs are JSON, so the rest look like mistakes")
            out.append(finding(
                "output_not_json", self._not_json,
                f"{len(set(self._not_json))} example(s) have an output that is not valid JSON ({why})",
                severity=severity,
                hint=None if ctx.expects_json else "fix them, or declare the contract with output.json: true in tunesmith.yaml",
            ))
        for where, lines in sorted(self._schema_errors.items(), key=lambda kv: -len(kv[1])):
            example = self._schema_examples.get(where)
            out.append(finding("output_schema", lines, f"{len(lines)} output(s) break the schema at {where}"
                               + (f", e.g. {example}" if example else "")))
        if self._regex_misses:
            out.append(finding(
                "output_regex", self._regex_misses,
                f"{len(set(self._regex_misses))} output(s) do not match output.regex {ctx.regex!r}",
            ))
        out.extend(self._key_style(ctx))
        return out

    def _key_style(self, ctx: CheckContext) -> list[Finding]:
        expected, source = None, ""
        if ctx.schema is not None:
            declared = Counter(s for s in map(key_style, schema_keys(ctx.schema)) if s)
            if declared:
                expected, source = declared.most_common(1)[0][0], "the schema uses"
        if expected is None and self._styles:
            expected, source = self._styles.most_common(1)[0][0], "most examples use"
        if expected is None:
            return []
        ctx.stats["key_styles"] = dict(self._styles)
        out = []
        for style, lines in self._lines_by_style.items():
            if style != expected:
                sample = "<sealed>" if ctx.sealed else repr(self._example_key[style])
                out.append(finding(
                    "key_style", lines,
                    f"{len(lines)} example(s) use {style} keys (e.g. {sample}) but {source} {expected}",
                ))
        return out
