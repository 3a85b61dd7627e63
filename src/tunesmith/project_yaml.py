"""Reading tunesmith.yaml's YAML: a key given twice, a value YAML cannot convert and a file that cannot be read
are each a ProjectError naming the file and, where known, the line. Validating what it holds is project.py's."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from tunesmith.errors import ProjectError


def read_project_yaml(file: Path) -> Any:
    """The project file's YAML; every way it can fail is a ProjectError with the file and, where known, the line."""
    import yaml

    loader, value_error = _yaml_loader()
    try:
        return yaml.load(file.read_text(encoding="utf-8-sig"), Loader=loader)
    except (OSError, UnicodeDecodeError) as exc:
        raise ProjectError(f"{file}: cannot be read ({exc})", "check the file's permissions and encoding (UTF-8)") from None
    except RecursionError:
        raise ProjectError(f"{file}: nested too deeply to read; a project file is a few levels deep",
                           "look for a runaway run of [ { or - (`tunesmith init` writes a commented example)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else str(file)
        if isinstance(exc, value_error):
            raise ProjectError(f"{where}: {exc.problem}", exc.hint) from None
        raise ProjectError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})", "fix the YAML syntax") from None


@functools.cache
def _yaml_loader() -> tuple[type, type]:
    """(loader, its error): a yaml.SafeLoader that refuses a key given twice and turns a value it cannot
    convert into an error that names its line. Built on first use: yaml is imported only to read a file."""
    import yaml

    class ValueProblem(yaml.constructor.ConstructorError):
        """A key or value the file cannot hold, phrased for people, with its own hint."""

        def __init__(self, problem: str, hint: str, mark: Any) -> None:
            super().__init__(None, None, problem, mark)
            self.hint = hint

    class ProjectLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                _no_key_twice(self, node, ValueProblem)
            return super().construct_mapping(node, deep)

        def construct_object(self, node: Any, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep)
            except (ValueError, OverflowError) as exc:  # int("9" * 5000), the date 2024-13-45, ...
                raise _value_problem(ValueProblem, node, exc) from None

    return ProjectLoader, ValueProblem


def _no_key_twice(loader: Any, node: Any, problem: type) -> None:
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # keys merged in by "<<: *defaults" may be overridden: that is what merging is for
        key = loader.construct_object(key_node, deep=True)
        try:
            seen = first.get(key)
        except TypeError:
            continue  # an unhashable key: the base class reports it, with its line
        if seen is not None:
            raise problem(f"key {key!r} is given twice (first on line {seen}); YAML would keep only the last",
                          "delete the line you do not mean, or merge the two", key_node.start_mark)
        first[key] = key_node.start_mark.line + 1


def _value_problem(problem: type, node: Any, exc: Exception) -> Exception:
    text = str(getattr(node, "value", ""))
    if "integer string conversion" in str(exc):
        digits = sum(c.isdigit() for c in text)
        return problem(f"a number {digits:,} digits long; no setting takes one that long",
                       "write the number the setting needs (`tunesmith init` writes a commented example)", node.start_mark)
    shown = text if len(text) <= 40 else text[:39] + "…"
    return problem(f"cannot read {shown!r} ({exc})",
                   "quote it if it is meant as text: YAML reads 2024-01-31 as a date and 1_000 as a number", node.start_mark)
