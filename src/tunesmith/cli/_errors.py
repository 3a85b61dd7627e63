"""The one place where exceptions become messages for people (huggingface_hub's CLI does the same).

Every command is wrapped by `handle_errors`; a TunesmithError prints what went wrong and the hint
and exits with its code. Tracebacks only with TUNESMITH_DEBUG=1.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from tunesmith.errors import TunesmithError

F = TypeVar("F", bound=Callable[..., Any])


def debug_enabled() -> bool:
    return os.environ.get("TUNESMITH_DEBUG", "") not in ("", "0", "false")


def format_error(exc: TunesmithError) -> str:
    lines = [f"error: {exc.message}"]
    lines += [f"  - {d}" for d in exc.details]
    if exc.hint:
        lines.append(f"hint: {exc.hint}")
    return "\n".join(lines)


def handle_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TunesmithError as exc:
            if debug_enabled():
                raise
            return _report(exc, kwargs)
        except OSError as exc:
            # a file or network problem no command foresaw: still a sentence, not a traceback
            if debug_enabled():
                raise
            return _report(TunesmithError(
                f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else (str(exc) or type(exc).__name__),
                ("check the path and its permissions" if exc.filename else "check the network and the names given")
                + " (TUNESMITH_DEBUG=1 shows where it happened)"), kwargs)
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            print("interrupted; nothing was written half-way", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _report(exc: TunesmithError, kwargs: dict[str, Any]) -> Any:
    if kwargs.get("json_out"):
        # scripts that asked for JSON get the failure as JSON too, on stdout; "event" lets readers of
        # the JSON-lines commands (train, run) tell it from their progress events
        json.dump({"event": "error", "error": {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint,
                             "details": exc.details, "exit_code": exc.exit_code}}, sys.stdout)
        sys.stdout.write("\n")
        sys.stdout.flush()
    print(format_error(exc), file=sys.stderr)
    raise typer.Exit(exc.exit_code) from None
