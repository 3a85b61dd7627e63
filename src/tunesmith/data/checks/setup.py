"""Builds a CheckContext from the project file and flags: the one place check/fix/sample agree on it."""

from __future__ import annotations

from pathlib import Path

from tunesmith.data.checks.base import CheckContext
from tunesmith.project import Project, load_json_schema
from tunesmith.progress import Say


def check_context(
    file: Path,
    project: Project | None,
    *,
    schema: Path | None = None,
    regex: str | None = None,
    model: str | None = None,
    max_length: int | None = None,
    task_kind: str | None = None,
    tokens: bool = True,
    say: Say | None = None,
) -> CheckContext:
    """Flags win over the project file, which wins over defaults."""
    ctx = CheckContext(file=file)
    test_file = None
    if project is not None:
        ctx.schema = project.load_schema()
        ctx.regex = project.output.regex
        ctx.expects_json = project.output.expects_json
        ctx.system_prompt = project.system_prompt
        ctx.task_kind = project.task_kind
        ctx.max_length = project.max_length
        ctx.near_threshold = project.checks.near_duplicate_threshold
        test_file = project.path(project.data.test)
    if schema is not None:
        ctx.schema, ctx.regex, ctx.expects_json = load_json_schema(schema), None, True
    if regex is not None:
        ctx.regex = regex
    if max_length is not None:
        ctx.max_length = max_length
    if task_kind is not None:
        ctx.task_kind = task_kind
    if test_file is not None and test_file.exists():
        if test_file.resolve() == file.resolve():
            ctx.sealed = True
        else:
            ctx.test_file = test_file
    model_ref = model or (project.base_model if project is not None else None)
    if tokens and model_ref:
        from tunesmith.errors import ModelError
        from tunesmith.models.resolve import load_tokenizer, resolve_model

        try:
            ctx.tokenizer = load_tokenizer(resolve_model(model_ref, progress=say))
            if project is not None:  # what training renders with: the project's template where it gives one
                from tunesmith.models.chat_template import apply_project_template

                apply_project_template(ctx.tokenizer, project)
        except ModelError as exc:
            if model is not None:
                raise  # asked for by flag: an error, not a silent skip
            ctx.stats["tokens_skipped"] = f"{exc.message} ({exc.hint})"
            if say is not None:
                say(f"warning: token statistics skipped: {exc.message}\nhint: {exc.hint}")
    return ctx
