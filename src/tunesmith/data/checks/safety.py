"""Secrets and personal data that must not be trained into a model."""

from __future__ import annotations

import re

from tunesmith.data.checks.base import CheckContext, Finding, finding
from tunesmith.data.formats import Example, a_or_an

SECRET_PATTERNS: dict[str, str] = {
    "private key": r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY(?: BLOCK)?-----",
    "OpenAI/Anthropic-style API key": r"\bsk-(?:ant-|proj-|live-)?[A-Za-z0-9_\-]{20,}",
    "AWS access key id": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "GitHub token": r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b",
    "Slack token": r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
    "Google API key": r"\bAIza[0-9A-Za-z_\-]{35}\b",
    "Hugging Face token": r"\bhf_[A-Za-z]{30,}\b",
    "Stripe key": r"\b[rs]k_live_[0-9A-Za-z]{20,}\b",
    "JSON Web Token": r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
}
PII_PATTERNS: dict[str, str] = {
    "e-mail address": r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b",
    "phone number": r"(?<![\w+])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{2,4}\)|\d{3})[ .\-]\d{3,4}[ .\-]\d{4}(?![\w])",
}


#: Literal text without which a secret pattern cannot match (case-sensitive, like the patterns). A
#: message holding none of these skips the secret regex: only a speed-up (the combined regex costs
#: ~20 us per message, this test ~2 us), never a different finding. Every pattern must be listed.
SECRET_HINTS: dict[str, tuple[str, ...]] = {
    "private key": ("-----BEGIN ",),
    "OpenAI/Anthropic-style API key": ("sk-",),
    "AWS access key id": ("AKIA", "ASIA"),
    "GitHub token": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    "Slack token": ("xox",),
    "Google API key": ("AIza",),
    "Hugging Face token": ("hf_",),
    "Stripe key": ("k_live_",),
    "JSON Web Token": ("eyJ",),
}
#: What each PII pattern cannot match without; only the patterns whose hint is present are scanned.
PII_HINTS: dict[str, str] = {
    "e-mail address": "@",
    "phone number": r"\d",
}
if SECRET_HINTS.keys() != SECRET_PATTERNS.keys() or PII_HINTS.keys() != PII_PATTERNS.keys():
    raise RuntimeError("every secret and PII pattern needs an entry in SECRET_HINTS / PII_HINTS")


def _combined(patterns: dict[str, str], only: tuple[int, ...] | None = None) -> tuple[re.Pattern[str], list[str]]:
    """One alternation of the patterns; group g<i> is pattern i of `patterns`, also in a subset (`only`)."""
    names = list(patterns)
    keep = range(len(names)) if only is None else only
    return re.compile("|".join(f"(?P<g{i}>{patterns[names[i]]})" for i in keep)), names


class Safety:
    def __init__(self) -> None:
        self._secret_re, self._secret_names = _combined(SECRET_PATTERNS)
        self._secret_hint = re.compile("|".join(re.escape(h) for hints in SECRET_HINTS.values() for h in hints))
        self._pii_re, self._pii_names = _combined(PII_PATTERNS)
        self._pii_hints = [re.compile(PII_HINTS[name]) for name in self._pii_names]
        # Alternation of only the PII patterns whose hint a message holds: patterns left out cannot match
        # anywhere in it, so finditer yields exactly what the full alternation would.
        self._pii_subsets: dict[tuple[int, ...], re.Pattern[str]] = {}
        self._hits: dict[tuple[str, str], list[int]] = {}

    def _scan(self, check: str, regex: re.Pattern[str], names: list[str], text: str, line: int) -> None:
        for m in regex.finditer(text):
            kind = names[int(m.lastgroup[1:])]
            lines = self._hits.setdefault((check, kind), [])
            if not lines or lines[-1] != line:
                lines.append(line)

    def _pii_regex(self, text: str) -> re.Pattern[str] | None:
        present = tuple(i for i, hint in enumerate(self._pii_hints) if hint.search(text))
        if not present:
            return None
        regex = self._pii_subsets.get(present)
        if regex is None:
            regex = self._pii_subsets[present] = _combined(PII_PATTERNS, present)[0]
        return regex

    def observe(self, ex: Example) -> None:
        for m in ex.messages:
            text = m.content
            if self._secret_hint.search(text):
                self._scan("secret", self._secret_re, self._secret_names, text, ex.line)
            pii = self._pii_regex(text)
            if pii is not None:
                self._scan("pii", pii, self._pii_names, text, ex.line)

    def finish(self, ctx: CheckContext) -> list[Finding]:
        return [
            finding(check, lines, f"{len(lines)} example(s) contain what looks like {a_or_an(kind)}")
            for (check, kind), lines in sorted(self._hits.items())
        ]
