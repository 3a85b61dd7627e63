"""What a constrained answer must be, independent of the grammar engine that enforces it.

A `Constraint` is a value: the serve API builds one from a request's ``response_format``, evaluation
builds one from the project's output contract (`for_contract`), and `tunesmith.inference.grammar`
compiles it into a per-token mask. It is hashable and has a stable `key()`, so compiled grammars and
cached answers can be keyed on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

JSON_OBJECT = "json_object"
JSON_ANY = "json"
JSON_SCHEMA = "json_schema"
REGEX = "regex"


@dataclass(frozen=True)
class Constraint:
    """Any JSON object (`json_object`, OpenAI's JSON mode), any JSON object or array (`json`, the project
    contract's ``output.json``), JSON valid against a schema (`json_schema`), or a full regex match
    (`regex`, with ``.`` matching newlines too, as the project contract applies it everywhere)."""

    kind: str
    #: the schema as compact JSON text (no spaces), for json_schema; keys keep their order: a grammar
    #: writes an object's properties in the order the schema declares them, the order the model learnt
    schema: str | None = None
    pattern: str | None = None

    @classmethod
    def json_object(cls) -> Constraint:
        return cls(JSON_OBJECT)

    @classmethod
    def json_value(cls) -> Constraint:
        return cls(JSON_ANY)

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | bool) -> Constraint:
        return cls(JSON_SCHEMA, schema=json.dumps(schema, separators=(",", ":")))

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        return cls(REGEX, pattern=pattern)

    @property
    def schema_dict(self) -> Any:
        return json.loads(self.schema) if self.schema is not None else None

    def key(self) -> str:
        return json.dumps({"kind": self.kind, "schema": self.schema, "pattern": self.pattern}, sort_keys=True)

    def describe(self) -> str:
        if self.kind == JSON_SCHEMA:
            return "JSON valid against the output schema"
        if self.kind == REGEX:
            return f"a full match of /{self.pattern}/"
        if self.kind == JSON_ANY:
            return "a JSON object or array"
        return "a JSON object"


def for_contract(schema: dict[str, Any] | None, regex: str | None, expects_json: bool) -> Constraint | None:
    """The constraint that enforces a project's output contract at decode time, or None when it has none."""
    if schema is not None:
        return Constraint.json_schema(schema)
    if regex is not None:
        return Constraint.regex(regex)
    if expects_json:
        return Constraint.json_value()
    return None
