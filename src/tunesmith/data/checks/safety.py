"""Secrets and personal data that must not be trained into a model."""

from __future__ import annotations

import re

from tunesmith.data.checks.base import CheckContext, Finding, finding
from tunesmith.data.formats import Example

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


def _combined(patterns: dict[str, str]) -> tuple[re.Pattern[str], list[str]]:
    names = list(patterns)
    return re.compile("|".join(f"(?P<g{i}>{patterns[n]})" for i, n in enumerate(names))), names


class Safety:
    def __init__(self) -> None:
        self._secret_re, self._secret_names = _combined(SECRET_PATTERNS)
        self._pii_re, self._pii_names = _combined(PII_PATTERNS)
        self._hits: dict[tuple[str, str], list[int]] = {}

    def _scan(self, check: str, regex: re.Pattern[str], names: list[str], text: str, line: int) -> None:
        for m in regex.finditer(text):
            kind = names[int(m.lastgroup[1:])]
            lines = self._hits.setdefault((check, kind), [])
            if not lines or lines[-1] != line:
                lines.append(line)

    def observe(self, ex: Example) -> None:
        for m in ex.messages:
            self._scan("secret", self._secret_re, self._secret_names, m.content, ex.line)
            self._scan("pii", self._pii_re, self._pii_names, m.content, ex.line)

    def finish(self, ctx: CheckContext) -> list[Finding]:
        return [
            finding(check, lines, f"{len(lines)} example(s) contain what looks like a {kind}")
            for (check, kind), lines in sorted(self._hits.items())
        ]
