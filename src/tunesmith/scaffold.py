"""`tunesmith init`: a new tunesmith.yaml, every field explained, that the next command accepts as it is."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError

from tunesmith.errors import ProjectError
from tunesmith.io import write_text_atomic
from tunesmith.project import DEFAULT_MODEL, PROJECT_FILE, Project
from tunesmith.settings_docs import project_template


def init_project(directory: Path, *, task: str, base_model: str = DEFAULT_MODEL, force: bool = False) -> Path:
    """Write DIRECTORY/tunesmith.yaml from the commented template; refuse to replace one unless forced."""
    target = directory / PROJECT_FILE
    if directory.exists() and not directory.is_dir():
        raise ProjectError(f"{directory} is a file, not a directory",
                           "name a new or existing directory for the project")
    if target.exists() and not force:
        raise ProjectError(f"{target} already exists", "edit it, or pass --force to overwrite it")
    text = project_template().format(task=_yaml_string(task), base_model=_yaml_string(_model_for(directory, base_model)))
    _check_template(text, target)
    write_text_atomic(target, text)
    return target


def _model_for(directory: Path, ref: str) -> str:
    """A model path typed on the command line is relative to where it was typed; the project file's
    paths are relative to the project: rewrite it so it names the same place from there."""
    here = Path(ref).expanduser()
    if here.is_absolute() or not (ref.startswith(("./", "../")) or here.exists()):
        return ref  # absolute, builtin:NAME or a hub id
    rel = os.path.relpath(here.resolve(), directory.resolve())
    return rel if rel.startswith("..") else "./" + rel  # "./": a path, even before the file exists


def _yaml_string(value: str) -> str:
    """A YAML scalar that reads back as exactly `value` (quotes, backslashes, '#', ': ' and all)."""
    import yaml

    for ensure_ascii in (False, True):  # readable first; escaped when YAML would not read it back
        quoted = json.dumps(value, ensure_ascii=ensure_ascii)
        try:
            if yaml.safe_load(f"v: {quoted}") == {"v": value}:
                return quoted
        except yaml.YAMLError:
            pass
    raise ProjectError(f"cannot write {value!r} into tunesmith.yaml", "use printable text")


def _check_template(text: str, target: Path) -> None:
    """Refuse to write a project file that the next command would reject (a too-short task, ...)."""
    import yaml

    try:
        Project.model_validate(yaml.safe_load(text))
    except ValidationError as exc:
        details = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ProjectError(f"{target} was not written: {len(details)} problem(s) in the values given",
                           "fix the options named above (--task is one full sentence)", details=details) from None
