"""`tunesmith fix`: drop what `check` calls errors and duplicates, log every dropped line and why."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.checks import CheckContext, CheckReport, run_check
from tunesmith.data.reader import iter_raw_lines
from tunesmith.errors import UsageError
from tunesmith.io import StagedGroup, destination, writes_over

#: Findings whose lines are all dropped, apart from a first occurrence kept for the duplicate kinds.
KEEP_FIRST = {"exact_duplicate", "near_duplicate"}


@dataclass
class FixResult:
    output: Path
    #: None when the output is a stream (stdout, a device, a FIFO): there is no file to put the log beside
    log: Path | None
    kept: int
    dropped: int
    report: CheckReport

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "log": str(self.log) if self.log else None,
                "kept": self.kept, "dropped": self.dropped}


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
    if writes_over(output, source):
        raise UsageError(f"fix never writes over its input ({source})", "pass another path with -o, e.g. data.fixed.jsonl")
    report = run_check(ctx)
    drop = lines_to_drop(report)
    log = None if destination(output).streamed else output.with_name(output.name + ".dropped.jsonl")
    kept = 0
    with StagedGroup() as group:  # the cleaned file and its log: both new, or both as they were
        out = group.open(output, "wb")
        log_out = group.open(log, "w") if log is not None else None
        for lineno, raw in iter_raw_lines(source):
            if raw.strip() and lineno not in drop:
                out.write(raw + b"\n")
                kept += 1
        for ln, why in sorted(drop.items()) if log_out is not None else ():
            entry = {"line": ln, "checks": [c for c, _ in why], "reasons": [m for _, m in why]}
            log_out.write(json.dumps(entry, ensure_ascii=False, separators=(", ", ": ")) + "\n")
        group.commit()
    return FixResult(output, log, kept, len(drop), report)
