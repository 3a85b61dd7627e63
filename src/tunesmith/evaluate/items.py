"""What an evaluation runs on: the sealed test set and the regression suite, as EvalItems."""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.formats import iter_examples
from tunesmith.data.split import broken_seal_error, verify_seal
from tunesmith.errors import DataError
from tunesmith.evaluate.types import EvalItem
from tunesmith.models.chat import to_chat
from tunesmith.project import Project


def test_items(project: Project) -> list[EvalItem]:
    """Sealed test rows: the prompt is every turn before the last assistant turn, the answer is expected."""
    test = project.path(project.data.test)
    report = verify_seal(test)  # raises SealError when the seal is missing
    if not report.ok:
        raise broken_seal_error(report)
    return examples_as_items(test, project.system_prompt, prefix="test", what="sealed test set")


def examples_as_items(path: Path, system_prompt: str | None, *, prefix: str, what: str) -> list[EvalItem]:
    items = []
    for ex in iter_examples(path):
        if ex.problems:
            continue
        last = max((i for i, m in enumerate(ex.messages) if m.role == "assistant"), default=None)
        if last is None:
            continue
        chat = to_chat(ex.messages[:last], system_prompt)
        items.append(EvalItem(f"{prefix}:{ex.line}", chat, ex.messages[last].content, [], ex.line))
    if not items:
        raise DataError(f"{path}: the {what} is empty", "split more data into it with `tunesmith split`")
    return items


def regression_items(project: Project) -> tuple[list[EvalItem], list[str]]:
    from tunesmith.evaluate.regression import load_suite

    path = project.path(project.data.regression)
    if path is None:
        return [], ["no regression suite (data.regression in tunesmith.yaml): the gate has nothing to check"]
    return load_suite(path, project.system_prompt)
