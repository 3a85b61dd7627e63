"""`tunesmith check`: one streaming pass over a JSONL file plus a few indexes.

Structure problems come from parsing; every other check family sees only well-formed examples and
reports in `finish`. Findings are sorted errors first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.checks.base import CHECKS, SEVERITY_ORDER, Check, CheckContext, Finding, finding
from tunesmith.data.checks.base_model import completion_model
from tunesmith.data.checks.contract import OutputContract
from tunesmith.data.checks.dedup import Contradictions, ExactDuplicates
from tunesmith.data.checks.near import NearDuplicates
from tunesmith.data.checks.prompts import SystemPrompts
from tunesmith.data.checks.safety import Safety
from tunesmith.data.checks.size import TokenLengths, too_few
from tunesmith.data.formats import iter_examples
from tunesmith.data.reader import looks_like_json_array, open_checked, shown_name

__all__ = ["CHECKS", "CheckContext", "CheckReport", "Finding", "run_check", "iter_examples"]


@dataclass
class CheckReport:
    file: str
    examples: int
    findings: list[Finding]
    stats: dict[str, Any] = field(default_factory=dict)
    #: lines of well-formed examples (what `fix` and `split` may keep)
    valid_lines: int = 0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "examples": self.examples,
            "findings": [f.to_dict() for f in self.findings],
            "stats": self.stats,
        }


def run_check(ctx: CheckContext, progress: Callable[[int], None] | None = None) -> CheckReport:
    """Check one file. `progress` is called with the byte offset reached, every few thousand lines."""
    ctx.file = open_checked(ctx.file)  # a stream becomes a file here: it is read more than once below
    exact = ExactDuplicates()
    curation: list[Check] = [Contradictions(), SystemPrompts(), OutputContract(ctx), Safety(), NearDuplicates(ctx)]
    near = curation[-1]
    model_findings = completion_model(ctx)  # before the token pass: without a chat template there is none
    tokens = TokenLengths(ctx) if ctx.tokenizer is not None else None
    structure: dict[tuple[str, str, str], list[int]] = {}  # (check, message, hint) -> lines
    formats: Counter[str] = Counter()
    records = valid = 0
    for ex in iter_examples(ctx.file):
        records += 1
        if progress is not None and records % 4096 == 0:
            progress(ex.offset)
        for p in (*ex.problems, *ex.warnings):
            message = f"{p.where or 'record'}: {p.check} (details withheld: sealed test set)" if ctx.sealed else p.message
            structure.setdefault((p.check, message, p.hint), []).append(ex.line)
        if ex.problems:
            continue
        valid += 1
        formats[ex.format] += 1
        duplicate = exact.is_duplicate(ex)
        for check in curation:
            if check is near and duplicate:
                near.observe_overlap(ex)  # copies are one exact_duplicate, but each copy of a test row counts
                continue
            check.observe(ex)
        if tokens is not None:
            tokens.observe(ex)
    findings = [finding(check, lines, message, hint=hint or None) for (check, message, hint), lines in structure.items()]
    findings += model_findings
    if records == 0:
        findings.append(finding("too_few_examples", [], f"{Path(shown_name(ctx.file)).name} holds no examples (the file is empty)",
                                hint="add one JSON object per line"))
    else:
        if looks_like_json_array(ctx.file):
            findings.append(finding("invalid_json_line", [1], "the file is one JSON array, not JSON Lines",
                                    hint=f"convert it: tunesmith convert {ctx.file} -o {ctx.file.stem}.converted.jsonl --to messages"))
        findings.extend(too_few(valid, ctx))
    for check in (exact, *curation, *([tokens] if tokens else [])):
        findings.extend(check.finish(ctx))
    findings.sort(key=lambda f: (SEVERITY_ORDER[f.severity], f.check, f.lines[:1]))
    ctx.stats.update({"valid_examples": valid, "formats": dict(formats)})
    if progress is not None:
        progress(-1)
    return CheckReport(shown_name(ctx.file), records, findings, ctx.stats, valid)
