"""`tunesmith convert`: between the four formats, without loss where the target can hold it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.formats import FORMATS, Example, Problem, iter_examples, parse_record
from tunesmith.data.reader import BOM, SURROGATE_HINT, lone_surrogate, looks_like_json_array, open_checked
from tunesmith.errors import FormatError, UsageError
from tunesmith.io import write_jsonl_atomic, writes_over


@dataclass
class ConvertResult:
    output: Path
    to: str
    written: int
    failed: list[tuple[int, str]] = field(default_factory=list)
    unit: str = "line"  # what the numbers in `failed` count: a table's rows are numbered, not its lines

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "to": self.to, "written": self.written,
                "failed": [{"line": ln, "reason": why} for ln, why in self.failed]}


def _examples(source: Path):
    """Examples from JSONL, or from a single JSON array (a common export) read as if it were JSONL."""
    if looks_like_json_array(source):
        try:
            items = json.loads(source.read_bytes().lstrip(BOM).decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            items = None  # read line by line instead, where each bad line gets its own problem
        if isinstance(items, list):
            for i, item in enumerate(items, start=1):
                lone = lone_surrogate(item)
                if lone is not None:
                    yield Example(i, "?", [], 0, [Problem("invalid_utf8", lone, hint=SURROGATE_HINT)])
                else:
                    yield parse_record(item, i)
            return
    yield from iter_examples(source)


def convert_file(source: Path | str, output: Path, to: str, *, column_map: str | None = None,
                 split: str = "train") -> ConvertResult:
    """JSONL (or a JSON array) in any format; or, through `tunesmith.data.tables`, parquet, CSV/TSV and
    hf:ORG/NAME[:CONFIG] sources, and any of them with a --map of format fields to columns."""
    from tunesmith.data.tables import is_table, table_examples

    if to not in FORMATS:
        raise UsageError(f"unknown target format {to!r}", f"use one of: {', '.join(FORMATS)}")
    if column_map is not None or is_table(str(source)):
        if not str(source).startswith("hf:") and writes_over(output, source):
            raise UsageError(f"convert never writes over its input ({source})", "pass another path with -o")
        table = table_examples(str(source), column_map, split)
        source, examples, unit = table.label, table.rows, table.unit
    else:
        source = open_checked(source)  # a stream is read once, into a temporary copy
        if writes_over(output, source):
            raise UsageError(f"convert never writes over its input ({source})", "pass another path with -o")
        examples, unit = _examples(source), "line"
    target = FORMATS[to]
    result = ConvertResult(output, to, 0, unit=unit)

    def records():
        converted = False
        for ex in examples:
            if ex.problems:
                result.failed.append((ex.line, "; ".join(p.message for p in ex.problems)))
                continue
            rec, why = target.dump(ex.messages)
            if rec is None:
                result.failed.append((ex.line, why))
                continue
            yield {**rec, **ex.meta}  # provenance and review travel with the row
            converted = True
        if not converted:  # raised while writing: the temp file goes, an older output stays as it was
            first = "; ".join(f"{unit} {ln}: {why}" for ln, why in result.failed[:3])
            raise FormatError(f"no row of {source} converts to {to}" + (f" ({first})" if first else " (it is empty)"),
                              "`tunesmith check` lists every row's problems; another --to may fit these rows")

    result.written = write_jsonl_atomic(output, records())
    return result
