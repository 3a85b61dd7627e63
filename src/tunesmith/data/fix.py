"""`tunesmith fix`: drop what `check` calls errors and duplicates, log every dropped line and why."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.checks import CheckContext, CheckReport, run_check
from tunesmith.data.reader import iter_raw_lines
from tunesmith.errors import UsageError
from tunesmith.io import atomic_writer, write_jsonl_atomic

#: Findings whose lines are all dropped, apart from a first occurrence kept for the duplicate kinds.
KEEP_FIRST = {"exact_duplicate", "near_duplicate"}


@dataclass
class FixResult:
    output: Path
    log: Path
    kept: int
    dropped: int
    report: CheckReport

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "log": str(self.log), "kept": self.kept, "dropped": self.dropped}


def lines_to_drop(report: CheckReport) -> dict[int, list[tuple[str, str]]]:
    drop: dict[int, list[tuple[str, str]]] = {}
    for f in report.findings:
        if f.check in KEEP_FIRST:
            lines = f.lines[1:]
        elif f.severity == "error":
            lines = f.lines
        else:
            continue
        for ln in lines:
            drop.setdefault(ln, []).append((f.check, f.message))
    return drop


def fix_file(ctx: CheckContext, output: Path) -> FixResult:
    source = ctx.file
    if output.resolve() == source.resolve():
        raise UsageError(f"fix never writes over its input ({source})", "pass another path with -o, e.g. data.fixed.jsonl")
    report = run_check(ctx)
    drop = lines_to_drop(report)
    kept = 0
    with atomic_writer(output, "wb") as fh:
        for lineno, raw in iter_raw_lines(source):
            if raw.strip() and lineno not in drop:
                fh.write(raw + b"\n")
                kept += 1
    log = output.with_name(output.name + ".dropped.jsonl")
    write_jsonl_atomic(log, (
        {"line": ln, "checks": [c for c, _ in why], "reasons": [m for _, m in why]}
        for ln, why in sorted(drop.items())
    ))
    return FixResult(output, log, kept, len(drop), report)
