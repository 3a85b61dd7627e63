"""Options that set a tunesmith.yaml setting: their help is the field's, so the two cannot drift."""

from __future__ import annotations

from typing import Any

import typer

from tunesmith.cli._settings_help import BOUNDS, CHOICES, HELP


def setting_option(path: str, *param_decls: str, default: Any = None, when: str = "", bounded: bool = False,
                   **kwargs: Any) -> Any:
    """A typer option for the setting at `path` ("train.rank"), unset unless given so the file's value
    stands; `when` prefixes the help with the option's condition ("with --backend openai"); `bounded`
    rejects a value outside the field's inclusive bounds before any work starts (explicit min/max win)."""
    if bounded:
        low, high = BOUNDS[path]
        kwargs = {"min": low, "max": high} | kwargs
    text = HELP[path]
    if when:  # "With --backend openai: the provider's ...", keeping a name's capitals ("LoRA ...")
        text = f"{when[0].upper()}{when[1:]}: {text[0].lower() if text[1:2].islower() else text[0]}{text[1:]}"
    return typer.Option(default, *param_decls, help=text, **kwargs)


def choices(path: str) -> tuple[str, ...]:
    """The named values the setting at `path` takes ("task_kind": format, style, ...)."""
    return CHOICES[path]
