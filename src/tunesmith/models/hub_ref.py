"""Hub model references: `org/name` or `org/name@revision` (a commit hash, branch or tag).

Only the text is parsed here; `resolve.resolve_model` tries local paths first, so a directory whose
name holds an '@' is still a path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunesmith.errors import ModelError

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}")
#: what git accepts as a ref or a hash, less its rarer corners ('..', '@{', control characters)
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,254}")
_HINT = ("write a Hub model as org/name or org/name@revision (a commit hash, branch or tag), "
         "e.g. HuggingFaceTB/SmolLM2-135M-Instruct@main")


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None = None

    @property
    def ref(self) -> str:
        """The reference as written: what a run records as its base model."""
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def looks_like_hub_id(text: str) -> bool:
    if text.startswith((".", "/", "~")) or "\\" in text or ".." in text or "--" in text:
        return False
    return _HUB_ID.fullmatch(text) is not None


def parse_hub_ref(text: str) -> HubRef | None:
    """`org/name[@revision]` as a HubRef; None when `text` is no Hub reference at all (a path, a
    builtin, a .gguf file); a ModelError when it is one with a broken revision."""
    repo_id, at, revision = text.partition("@")
    if not looks_like_hub_id(repo_id):
        return None
    if not at:
        return HubRef(repo_id)
    if not revision:
        raise ModelError(f"model reference {text!r}: the revision after '@' is empty", _HINT)
    if ".." in revision or revision.endswith(("/", ".lock")) or not _REVISION.fullmatch(revision):
        raise ModelError(f"model reference {text!r}: {revision!r} is not a git revision", _HINT)
    return HubRef(repo_id, revision)
