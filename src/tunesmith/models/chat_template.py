"""train.chat_template: a template for a base model without its own, given inline or as a file.

Training applies it to the tokenizer and saves that tokenizer with the adapter, so evaluation and
serving render prompts with the template the run was trained on; `check` applies it too.
"""

from __future__ import annotations

from typing import Any

from tunesmith.errors import ProjectError
from tunesmith.project import Project

#: what only a template holds; a value without any of these is a file name
_JINJA_MARKS = ("{{", "{%")


def template_text(project: Project) -> str | None:
    """The project's train.chat_template as template text (read from its file when it names one), or None."""
    value = project.train.chat_template
    if value is None:
        return None
    if any(mark in value for mark in _JINJA_MARKS):
        return _parsed(value, "train.chat_template")
    path = project.path(value)
    assert path is not None
    if not path.is_file():
        raise ProjectError(f"train.chat_template: {path} does not exist",
                           "give a Jinja template file (relative to the project) or the template text itself")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProjectError(f"train.chat_template: {path} cannot be read ({exc})",
                           "save the template as a UTF-8 text file") from None
    return _parsed(text, str(path))


def _parsed(text: str, where: str) -> str:
    import jinja2

    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ProjectError(f"{where}:{exc.lineno}: not a valid Jinja chat template: {exc.message}",
                           "fix the template (transformers renders chat templates with Jinja2)") from None
    return text


def apply_project_template(tokenizer: Any, project: Project) -> Any:
    """The tokenizer with train.chat_template in place of its own (when the project sets one)."""
    text = template_text(project)
    if text is not None:
        tokenizer.chat_template = text
    return tokenizer

