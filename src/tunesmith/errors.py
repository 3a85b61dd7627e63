"""The error hierarchy: every user-facing failure is a TunesmithError with a hint.

The CLI turns these into messages in exactly one place (`tunesmith.cli._errors.handle_errors`);
library callers can catch them by family.
"""

from __future__ import annotations


class TunesmithError(Exception):
    """Base class. `message` says what went wrong (and where); `hint` says how to fix it."""

    exit_code = 2

    def __init__(self, message: str, hint: str = "", *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details or []

    def __str__(self) -> str:
        return self.message


class ProjectError(TunesmithError):
    """tunesmith.yaml is missing, unreadable or invalid."""


class DataError(TunesmithError):
    """A data file cannot be read at all (missing, a directory, unreadable, wrong kind of file)."""


class FormatError(DataError):
    """A record is not in any supported format, or cannot be converted to the requested one."""


class SealError(DataError):
    """The sealed test set is missing, changed, or overlaps the training data."""


class ModelError(TunesmithError):
    """A model reference cannot be resolved or loaded."""


class UsageError(TunesmithError):
    """Flags or arguments that contradict each other or the project."""


class RunNotFoundError(TunesmithError):
    """A run reference (id, id prefix or `latest`) matches no run, or more than one."""


class ExportError(TunesmithError):
    """A merged checkpoint or exported file cannot be made, or does not behave like the trained model."""


class OutputError(TunesmithError):
    """An output file or directory cannot be written (a directory in the way, no permission, disk full)."""

    errno: int | None = None  # the OS error number behind it, when there was one


def one_line(exc: BaseException) -> str:
    """`Type: first line` of an exception from a library (torch, transformers, gguf), to quote in a message:
    their own text can run to pages."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
