"""Sampling for review: read, vectorise, choose, write the chosen lines in file order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.diversity import default_sample_size, hashed_vectors, k_center
from tunesmith.data.formats import parse_record
from tunesmith.data.reader import iter_raw, iter_raw_lines
from tunesmith.errors import DataError, UsageError
from tunesmith.io import atomic_writer, writes_over


@dataclass
class SampleResult:
    lines: list[int]
    candidates: int
    output: Path | None

    def to_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "candidates": self.candidates, "output": str(self.output) if self.output else None}


def sample_diverse(file: Path, n: int | None = None, output: Path | None = None) -> SampleResult:
    if n is not None and n < 1:
        raise UsageError(f"--diverse {n}: must be at least 1", "ask for e.g. --diverse 50")
    lines, texts = [], []
    for raw in iter_raw(file):
        if raw.error is None:
            ex = parse_record(raw.value, raw.line, raw.offset)
            if not ex.problems:
                lines.append(raw.line)
                texts.append(ex.dialogue_text())
    if not lines:
        raise DataError(f"{file}: no well-formed examples to sample", f"run `tunesmith check {file}` first")
    k = default_sample_size(len(lines)) if n is None else min(n, len(lines))
    chosen = sorted(lines[i] for i in k_center(hashed_vectors(texts), k))
    if output is not None:
        if writes_over(output, file):
            raise UsageError(f"sample never writes over its input ({file})", "pass another path with -o")
        keep = set(chosen)
        with atomic_writer(output, "wb") as fh:
            for lineno, raw_line in iter_raw_lines(file):
                if lineno in keep:
                    fh.write(raw_line + b"\n")
    return SampleResult(chosen, len(lines), output)
