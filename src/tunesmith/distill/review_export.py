"""`tunesmith review FILE --export OUT`: the rows a person accepted or edited, ready for `split` and the gate.

    result = export_review(Path("generated.jsonl"), Path("reviewed.jsonl"))

Rows are written in file order, each stamped with ``review.of`` (the counts of the reviewed file, see
`provenance`); rejected rows never, unreviewed ones only when asked. The export never writes over the file
under review, a project data file or a sealed test set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.split import seal_path_for
from tunesmith.distill.provenance import REVIEW
from tunesmith.distill.review import ReviewProgress, dumps_row, open_review, same_file
from tunesmith.errors import UsageError
from tunesmith.io import atomic_writer


@dataclass
class ExportResult:
    file: str
    output: str
    progress: ReviewProgress
    exported: int = 0
    unreviewed_written: int = 0
    include_unreviewed: bool = False
    stamp: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        p = self.progress
        return {"file": self.file, "output": self.output, "rows": p.rows, "target": p.target,
                "exported": self.exported, "accepted": p.accepted, "edited": p.edited,
                "rejected_left_out": p.rejected, "unreviewed_written": self.unreviewed_written,
                "unreviewed_left_out": p.unreviewed - self.unreviewed_written, "reviewed": p.decided,
                "left_to_review": p.left, "target_met": p.left == 0, "include_unreviewed": self.include_unreviewed}


def _refuse_output(file: Path, out: Path, project: Any) -> None:
    if same_file(out, file):
        raise UsageError(f"--export {out}: that is the file under review; the export never writes over it",
                         "name a new file, e.g. --export reviewed.jsonl")
    if project is not None:
        for role in ("source", "train", "test", "regression"):
            target = project.path(getattr(project.data, role))
            if same_file(out, target):
                raise UsageError(
                    f"--export {out}: that is the project's data.{role}; the export never overwrites a project data file",
                    "export to a new file, then append it to data.source yourself and run `tunesmith split`")
    if seal_path_for(out).exists():
        raise UsageError(f"--export {out}: that is a sealed test set ({seal_path_for(out).name} is beside it)",
                         "export to a new file")


def export_review(file: Path, out: Path, project_dir: Path | None = None, *,
                  include_unreviewed: bool = False) -> ExportResult:
    """Write FILE's accepted and edited rows (and, with `include_unreviewed`, its unreviewed ones) to OUT,
    in file order, each stamped with ``review.of`` (the counts of FILE); rejected rows never."""
    store = open_review(file, project_dir)
    _refuse_output(store.path, out, store.project)
    progress = store.progress()
    stamp = {"file": store.path.name, "rows": progress.rows, "accepted": progress.accepted,
             "edited": progress.edited, "rejected": progress.rejected, "target": progress.target}
    keep = [r for r in store.rows if r.status in ("accepted", "edited") or (include_unreviewed and r.status == "unreviewed")]
    if not keep:
        raise UsageError(f"{file}: nothing to export: no row is accepted or edited yet ({progress.text()})",
                         f"review it first: `tunesmith review {file}`; or add --include-unreviewed")
    with atomic_writer(out, "wb") as fh:
        for row in keep:
            record = dict(row.record)
            record[REVIEW] = {**row.review, "status": row.status, "of": stamp}
            fh.write(dumps_row(record) + b"\n")
    unreviewed = sum(r.status == "unreviewed" for r in keep)
    return ExportResult(str(file), str(out), progress, len(keep), unreviewed, include_unreviewed, stamp)
