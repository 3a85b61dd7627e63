"""Contract-aware stopping: end an answer the moment it can no longer meet the output contract.

A base model that answers prose to a JSON task fails the contract at its first character and would
then ramble to the token limit; every token after that is paid for and changes nothing a metric says
(the answer fails whatever follows). `ContractWatch` reads an answer as it grows and says when it is
dead:

* JSON contract (`output.json` or a schema): the first non-space character must open an object or an
  array; the text must stay a prefix of one JSON value (strict: no NaN, no single quotes, no trailing
  commas); once that value is complete, only whitespace may follow.
* regex contract: the text must stay a prefix of some full match (the `regex` module's partial
  matching, with the DOTALL flag the contract uses everywhere else).

Such an answer ends with finish_reason "contract". Only an answer that is already wrong is cut, so
every contract metric (valid JSON, schema-valid, regex, exact match) is what the uncut answer would
have scored; stop rate counts a cut answer as "did not stop".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WS = " \t\n\r"
_LITERALS = ("true", "false", "null")
_ESCAPES = set('"\\/bfnrtu')
_HEX = set("0123456789abcdefABCDEF")


@dataclass(frozen=True)
class ContractSpec:
    """What an answer must be, for the watch: JSON (an object or an array) and/or a full regex match."""

    json: bool = False
    regex: str | None = None

    @property
    def active(self) -> bool:
        return self.json or self.regex is not None


class JsonPrefix:
    """A character-by-character check that a text is a prefix of one JSON object or array (strict JSON).

    `feed(text)` returns False from the first character that no JSON value could continue with."""

    def __init__(self) -> None:
        #: open containers, innermost last: "{" or "["
        self.stack: list[str] = []
        #: what may come next: "start", "value", "key", "colon", "comma", "string", "escape", "unicode",
        #: "number", "literal", "done"
        self.state = "start"
        #: the container just opened holds nothing yet (so it may close: {} and [] are values)
        self.empty = False
        self.in_key = False  # the string being read is an object key
        self.pending = ""  # an unfinished literal, number or \u escape
        self.dead = False

    def feed(self, text: str) -> bool:
        for ch in text:
            if self.dead or not self._step(ch):
                self.dead = True
                return False
        return not self.dead

    def _step(self, ch: str) -> bool:
        handler = getattr(self, "_in_" + self.state)
        return handler(ch)

    # -- inside a token ---------------------------------------------------------------------------

    def _in_string(self, ch: str) -> bool:
        if ch == "\\":
            self.state = "escape"
        elif ch == '"':
            self.state = "colon" if self.in_key else "comma"
        elif ord(ch) < 0x20:
            return False  # control characters must be escaped inside a JSON string
        return True

    def _in_escape(self, ch: str) -> bool:
        if ch not in _ESCAPES:
            return False
        self.state, self.pending = ("unicode", "") if ch == "u" else ("string", "")
        return True

    def _in_unicode(self, ch: str) -> bool:
        if ch not in _HEX:
            return False
        self.pending += ch
        if len(self.pending) == 4:
            self.state, self.pending = "string", ""
        return True

    def _in_literal(self, ch: str) -> bool:
        candidate = self.pending + ch
        if not any(lit.startswith(candidate) for lit in _LITERALS):
            return False
        self.pending = candidate
        if candidate in _LITERALS:
            self.state, self.pending = "comma", ""
        return True

    def _in_number(self, ch: str) -> bool:
        if ch in "0123456789+-.eE" and _NUMBER_PREFIX.fullmatch(self.pending + ch):
            self.pending += ch
            return True
        if not _NUMBER.fullmatch(self.pending):
            return False
        self.state, self.pending = "comma", ""
        return self._step(ch)

    # -- between tokens ---------------------------------------------------------------------------

    def _in_start(self, ch: str) -> bool:
        if ch in _WS:
            return True
        if ch not in "{[":
            return False
        self._open(ch)
        return True

    def _in_done(self, ch: str) -> bool:
        return ch in _WS  # anything else is a second value, or prose, after the complete answer

    def _in_key(self, ch: str) -> bool:
        if ch in _WS:
            return True
        if ch == '"':
            self.state, self.in_key, self.empty = "string", True, False
            return True
        return ch == "}" and self.empty and self._close(ch)

    def _in_colon(self, ch: str) -> bool:
        if ch in _WS:
            return True
        if ch != ":":
            return False
        self.state = "value"
        return True

    def _in_value(self, ch: str) -> bool:
        if ch in _WS:
            return True
        if ch == "]":
            return self.empty and self._close(ch)
        self.empty = False
        if ch in "{[":
            self._open(ch)
        elif ch == '"':
            self.state, self.in_key = "string", False
        elif ch in "-0123456789":
            self.state, self.pending = "number", ch
        elif ch in "tfn":
            self.state, self.pending = "literal", ch
        else:
            return False
        return True

    def _in_comma(self, ch: str) -> bool:
        if ch in _WS:
            return True
        if ch == ",":
            self.state = "key" if self.stack[-1] == "{" else "value"
            return True
        return ch in "}]" and self._close(ch)

    def _open(self, ch: str) -> None:
        self.stack.append(ch)
        self.state = "key" if ch == "{" else "value"
        self.empty = True

    def _close(self, ch: str) -> bool:
        if not self.stack or {"{": "}", "[": "]"}[self.stack[-1]] != ch:
            return False
        self.stack.pop()
        self.state = "comma" if self.stack else "done"
        self.empty = False
        return True


_NUMBER_PREFIX = re.compile(r"-|-?(0|[1-9]\d*)(\.\d*)?([eE][+-]?\d*)?")
_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")


class ContractWatch:
    """Follows one answer as it grows (the full text so far, at each step) and says when it is dead."""

    def __init__(self, spec: ContractSpec) -> None:
        self.spec = spec
        self._seen = ""
        self._json = JsonPrefix() if spec.json else None
        self._pattern = None
        if spec.regex is not None:
            import regex

            self._pattern = regex.compile(spec.regex, regex.DOTALL)

    def alive(self, text: str) -> bool:
        """False once `text` (the whole answer so far) can no longer meet the contract."""
        text = text.rstrip("\ufffd")  # half of a character: wait for the rest of its bytes
        if self._json is not None:
            if text.startswith(self._seen):
                ok = self._json.feed(text[len(self._seen):])
            else:  # the tokenizer re-read earlier bytes differently: start over
                self._json = JsonPrefix()
                ok = self._json.feed(text)
            self._seen = text
            if not ok:
                return False
        if self._pattern is not None and not (self._pattern.fullmatch(text, partial=True)
                                              or self._pattern.fullmatch(text.strip(), partial=True)):
            return False  # neither the raw answer (regex_ok) nor the stripped one (exact match) can match
        return True
