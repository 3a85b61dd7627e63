"""``response_format`` in OpenAI's wire format, read into the `Constraint` the decoding engine enforces."""

from __future__ import annotations

import re
from typing import Any

from tunesmith.inference.constraints import Constraint
from tunesmith.serve.errors import BadRequest

#: OpenAI's rule for json_schema.name
_SCHEMA_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_FORMATS_HINT = ('send {"type": "json_object"} or {"type": "json_schema", "json_schema": '
                 '{"name": "...", "schema": {...}}}, as in OpenAI\'s API')


def response_constraint(response_format: dict[str, Any] | None) -> Constraint | None:
    """The constraint a request's ``response_format`` asks for (None: free text), or a `BadRequest`
    naming the field that is wrong. Whether the grammar engine supports the schema is checked later."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint.json_object()
    if kind != "json_schema":
        what = "is missing" if kind is None else f"{kind!r} is not a response format"
        raise BadRequest(f"response_format.type {what}: use 'text', 'json_object' or 'json_schema'", _FORMATS_HINT,
                         param="response_format.type")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise BadRequest("response_format.json_schema must be an object with the schema's name and schema",
                         _FORMATS_HINT, param="response_format.json_schema")
    name = spec.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        got = "is missing" if name in (None, "") else f"{name!r} is not a valid name"
        raise BadRequest(f"response_format.json_schema.name {got}: 1 to 64 letters, digits, '_' or '-'",
                         'e.g. "name": "answer"', param="response_format.json_schema.name")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        got = "is missing" if schema is None else f"must be a JSON object, not {type(schema).__name__}"
        raise BadRequest(f"response_format.json_schema.schema {got}", 'give a JSON Schema, e.g. {"type": "object", '
                         '"properties": {...}, "required": [...]}', param="response_format.json_schema.schema")
    for key, kinds, label in (("strict", bool, "true or false"), ("description", str, "a string")):
        if spec.get(key) is not None and not isinstance(spec[key], kinds):
            raise BadRequest(f"response_format.json_schema.{key} must be {label}", _FORMATS_HINT,
                             param=f"response_format.json_schema.{key}")
    # "strict": false tells OpenAI it need not follow the schema exactly; we enforce it either way (it
    # costs nothing more here, and an answer that follows the schema is what the client wants)
    return Constraint.json_schema(schema)


def close_reserve(max_tokens: int) -> int:
    """The last tokens of a constrained answer's max_tokens spent steering it to a close, so that an answer
    the model would not end in time still parses (finish_reason "length"): half of them, at most 16. Best
    effort: an answer that needs more tokens than that to close (many required keys still to write) is
    cut at max_tokens all the same."""
    return min(16, max_tokens // 2)
