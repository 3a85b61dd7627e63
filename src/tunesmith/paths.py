"""Why a path names nothing usable: symlink loops and dangling links, which Path.exists() reports as a plain
"no such file". Every reader of user-named files (data, the project file, the seal, the regression suite) says it
the same way."""

from __future__ import annotations

import errno
import os
import shlex
from pathlib import Path


def symlink_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a path leads nowhere through symlinks (a loop, or a link to nothing), else None.

    Path.exists() is False for both, which would otherwise read as "no such file"."""
    p = Path(path)
    try:
        os.stat(p)
        return None
    except ValueError:  # a NUL byte in the path
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            chain = _link_chain(p)
            return f"{p} is a symlink loop ({chain})" if chain else f"{p}: its path runs through a symlink loop"
        if exc.errno == errno.ENOENT and p.is_symlink():
            return f"{p} is a symlink to {_link_target(p)}, which does not exist"
        return None


def link_hint(path: str | os.PathLike[str]) -> str:
    return f"remove or repoint the link (`ls -l {shlex.quote(str(path))}` shows where it leads), or pass the real file"


def _link_target(p: Path) -> Path:
    target = Path(os.readlink(p))
    return target if target.is_absolute() else p.parent / target


def _link_chain(p: Path) -> str:
    """'a -> b -> a' for a loop of links starting at p; '' when p itself is not a link."""
    seen: list[Path] = []
    while p.is_symlink() and p not in seen and len(seen) < 40:
        seen.append(p)
        p = _link_target(p)
    return " -> ".join(map(str, [*seen, p])) if seen else ""
