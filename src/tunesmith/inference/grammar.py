"""Grammar-constrained decoding: a per-row token mask that makes every answer satisfy the contract.

A `Constraint` is compiled once per tokenizer into a `CompiledGrammar`; each decoding row gets a
`RowMatcher`; `mask_batch` masks a batch's logits in place (free rows pass ``None``, untouched) with
one parallel mask computation per step. The engine is llguidance (vLLM's and SGLang's "guidance"
backend); nothing outside this module knows.

Why llguidance, not xgrammar: ``benchmarks/grammar_engines.py`` on an idle 2-core "Intel(R) Xeon(R)
Processor" VM (AVX-512), 2026-12-02: SmolLM2-135M-Instruct's 49,152-token vocabulary, the pyfunc-json
schema (less uniqueItems) and a date-and-label regex, rows replaying real answers.

    ==========================================  =================  =================
    ms (schema / regex)                         xgrammar 0.2.9     llguidance 1.9.1
    ==========================================  =================  =================
    tokenizer setup, once                       350                519
    compile, to the first mask                  16.4 / 1.1         1.2 / 3.6
    fill + accept, 16 rows                      0.18 / 0.15        0.32 / 0.28
    mask a step (fill, apply, accept), 1 row    0.05 / 0.31        0.04 / 0.07
    mask a step, 16 rows                        4.1 / 5.5          1.4 / 1.1
    ==========================================  =================  =================

A SmolLM2-135M decoding step took 40 ms (1 row) and 123 ms (16 rows): through `mask_batch` (which
adds the Python checks below) a step's mask costs 0.06-0.09 ms at 1 row and 1.2-1.9 ms at 16, 0.2 %
and 0.9-1.5 % of the step. The engines fill masks about as fast; the difference is applying them
(xgrammar's CPU kernel, ~0.3 ms a row; numpy here, ~0.07). Coverage decided it: xgrammar compiles
``not``, ``if``/``then``, ``uniqueItems``, ``contains``, ``dependentRequired``,
``unevaluatedProperties``, a remote ``$ref`` and ``oneOf`` (as anyOf) and ignores them, and drops
the ``minimum`` of ``allOf: [{type: integer}, {minimum: 5}]``: answers that break the schema,
silently. llguidance refuses what it does not implement, reads ``pattern`` as a search (as
jsonschema does; xgrammar: a full match), rejects lone surrogate escapes, and is a 3 MB wheel with
no dependencies (xgrammar pulls triton, 286 MB of GPU compiler).

Exactness, in three layers:

* `_checked` walks the schema with an allow-list of keywords whose enforcement the tests verify
  (a violating answer is refused) and names anything else with its JSON pointer
  ("#/properties/tags: contains"); `uniqueItems` alone is checked when the answer ends
  (`CHECKED_AT_END`); `scan_regex` names regex constructs the engine lacks.
* JSON is compact (no whitespace; ``,`` and ``:``): a model allowed any whitespace can ramble in it
  forever. The top level is an object or array, as the answer checker requires.
* An answer ends (the end-of-turn token is allowed, or `RowMatcher.done` says nothing more can
  follow) only when the engine says it is complete *and* Python agrees: ``re.fullmatch(p, text,
  re.DOTALL)``, or strict JSON plus the schema's validator, the checks `AnswerContract.check` makes.
  Where Rust's regex dialect and Python's differ, the row ends at a dead end with a reason, never
  with an answer that breaks the contract.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from tunesmith.errors import TunesmithError, one_line
from tunesmith.inference.constraints import JSON_ANY, JSON_OBJECT, JSON_SCHEMA, REGEX, Constraint

WITHOUT = "or evaluate without --constrained"

#: keywords whose enforcement by llguidance was verified: a violating answer is refused
ENFORCED = frozenset({
    "type", "enum", "const", "properties", "required", "additionalProperties", "patternProperties",
    "items", "prefixItems", "minItems", "maxItems", "minLength", "maxLength", "pattern", "format",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minProperties",
    "maxProperties", "anyOf", "allOf", "$ref", "$defs", "definitions", "$anchor",
})
#: keywords that never make an answer invalid (the answer checker does not assert `format` either)
ANNOTATIONS = frozenset({
    "$schema", "$id", "$comment", "title", "description", "default", "examples", "deprecated",
    "readOnly", "writeOnly", "contentEncoding", "contentMediaType", "contentSchema",
})
#: keywords the grammar cannot express but an answer can be checked for once complete: they are left
#: out of the engine's schema, and the end-of-turn token stays forbidden until Python's validator
#: (which does apply them) accepts the answer. A greedy answer that breaks one (an array with a repeated
#: item) ends at a dead end, finish_reason "grammar", never as an answer that breaks the schema.
CHECKED_AT_END = frozenset({"uniqueItems"})
_WHY = {
    "oneOf": "use anyOf when no answer can match two branches",
    "not": "a grammar cannot express a negation",
}
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("prefixItems", "anyOf", "allOf")
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":",
                 "coerce_one_of": False, "lenient": False}


class GrammarError(TunesmithError):
    """A constraint the grammar engine cannot enforce exactly (or no engine is installed)."""


def grammar_available() -> bool:
    """Whether the grammar engine (llguidance) can be imported."""
    try:
        import llguidance  # noqa: F401
        import llguidance.hf  # noqa: F401
    except ImportError:
        return False
    return True


def _refuse(where: str, what: str, hint: str | None = None) -> GrammarError:
    why = f" ({_WHY[what]})" if what in _WHY else ""
    return GrammarError(f"{where}: {what} cannot be enforced while decoding{why}",
                        hint or f"drop `{what}` from the schema, {WITHOUT}")


def scan_regex(pattern: str, where: str) -> str:
    """`pattern` rewritten from Python's dialect to the engine's (Rust regex): ``\\Z`` -> ``\\z``,
    ``{,n}`` -> ``{0,n}``; raises GrammarError naming a construct the engine lacks."""
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False

    def refuse(construct: str) -> GrammarError:
        return GrammarError(f"{where}: the regex {pattern!r} uses {construct}, which cannot be enforced while "
                            "decoding", f"rewrite the pattern without it, {WITHOUT}")

    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            e = pattern[i + 1]
            if e in "123456789" and not in_class:
                raise refuse(f"a backreference (\\{e})")
            if e.isdigit():
                raise refuse(f"an octal escape (\\{e}); write \\x{{..}} instead")
            if e in "bB" and not in_class:
                raise refuse(f"a word boundary (\\{e})")
            if e == "N":
                raise refuse("a named character escape (\\N{...})")
            out.append("\\z" if e == "Z" and not in_class else c + e)
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":  # a set; a ] right after [ or [^ is a literal one
            j = i + 1 + (pattern[i + 1:i + 2] == "^")
            j += pattern[j:j + 1] == "]"
            out.append(pattern[i:j])
            i, in_class = j, True
            continue
        elif c == "(" and pattern.startswith("?", i + 1):
            rest = pattern[i + 2:]
            for prefix, construct in _GROUPS_REFUSED:
                if rest.startswith(prefix):
                    raise refuse(construct)
            flags = re.match(r"[a-zA-Z-]*", rest).group(0)  # type: ignore[union-attr]
            if set(flags) - set("isxu-") and not rest.startswith("P<"):
                raise refuse(f"the inline flag (?{flags}) (only i, s, x and u carry over)")
        elif c == "+" and i > 0 and pattern[i - 1] in "*+?}" and (i < 2 or pattern[i - 2] != "\\"):
            raise refuse(f"a possessive quantifier ({pattern[i - 1]}+)")
        elif c == "{" and (m := re.match(r"\{,(\d+)\}", pattern[i:])):
            out.append("{0," + m.group(1) + "}")
            i += m.end()
            continue
        out.append(c)
        i += 1
    return "".join(out)


_GROUPS_REFUSED = (("=", "a lookahead (?=...)"), ("!", "a negative lookahead (?!...)"),
                   ("<=", "a lookbehind (?<=...)"), ("<!", "a negative lookbehind (?<!...)"),
                   ("P=", "a backreference (?P=...)"), (">", "an atomic group (?>...)"),
                   ("(", "a conditional group (?(...))"), ("#", "a comment group (?#...)"))


def _checked(node: Any, pointer: str = "#") -> Any:
    """A copy of the schema `node` with its patterns in the engine's dialect; GrammarError, with the
    JSON pointer, for any keyword outside ENFORCED and ANNOTATIONS."""
    if isinstance(node, bool):
        return node
    if not isinstance(node, dict):
        raise GrammarError(f"{pointer}: a schema must be an object or a boolean, not {type(node).__name__}",
                           "fix the schema")
    out: dict[str, Any] = {}
    for key, value in node.items():
        at = f"{pointer}/{_escape(key)}"
        if key in ANNOTATIONS or (key.startswith("x-") and key != "x-guidance"):
            out[key] = value
            continue
        if key in CHECKED_AT_END:
            continue  # the final validator applies it (see CHECKED_AT_END)
        if key not in ENFORCED:
            raise _refuse(pointer, key)
        if key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            value = {(scan_regex(name, at) if key == "patternProperties" else name): _checked(sub, f"{at}/{_escape(name)}")
                     for name, sub in value.items()}
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            value = [_checked(sub, f"{at}/{k}") for k, sub in enumerate(value)]
        elif key in ("additionalProperties", "items"):
            if isinstance(value, list):
                raise _refuse(pointer, "items as an array", "write the tuple form as prefixItems (Draft 2020-12)")
            value = _checked(value, at)
        elif key == "pattern" and isinstance(value, str):
            value = scan_regex(value, at)
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
            raise _refuse(pointer, f"{key} as a boolean (draft-04)", f"write `{key}: <number>` (Draft 2020-12)")
        elif key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
            raise _refuse(pointer, f"$ref to {value!r}", f"inline the referenced schema under $defs, {WITHOUT}")
        out[key] = value
    return out


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def _engine_schema(constraint: Constraint) -> Any:
    """The schema the engine compiles: the constraint's, checked, with patterns in the engine's
    dialect and the top level narrowed to an object or array (what the answer checker accepts)."""
    if constraint.kind == JSON_OBJECT:
        return {"type": "object"}
    if constraint.kind == JSON_ANY:
        return {"type": ["object", "array"]}
    schema = constraint.schema_dict
    if schema is False:
        raise GrammarError("#: the schema is `false`: no answer satisfies it", "fix the schema")
    schema = {} if schema is True else _checked(schema)
    declared = schema.get("type", ["object", "array"])
    types = [t for t in ("object", "array") if t in ([declared] if isinstance(declared, str) else declared)]
    if not types:
        raise GrammarError(f"#/type: the schema's top level is {declared!r}, but an answer must be a JSON object "
                           "or array", "make the top level of the schema an object or an array")
    schema["type"] = types if len(types) > 1 else types[0]
    return schema


class CompiledGrammar:
    """A constraint compiled for one tokenizer; `matcher()` starts a row (a cheap copy)."""

    def __init__(self, compiler: GrammarCompiler, constraint: Constraint, template: Any,
                 verify: Callable[[str], bool]) -> None:
        self.compiler = compiler
        self.constraint = constraint
        self._template = template
        self._verify = verify
        self._lock = threading.Lock()

    def matcher(self) -> RowMatcher:
        with self._lock:
            return RowMatcher(self, self._template.deep_copy())


class RowMatcher:
    """One decoding row's grammar state. ``reason`` says why the row is at a dead end, once it is."""

    __slots__ = ("grammar", "_m", "_ids", "_checked", "reason")

    def __init__(self, grammar: CompiledGrammar, engine_matcher: Any) -> None:
        self.grammar = grammar
        self._m = engine_matcher
        self._ids: list[int] = []
        self._checked: tuple[int, bool] = (-1, False)
        self.reason: str | None = None

    def mask_logits(self, logits: torch.Tensor) -> bool:
        """Set the logits of disallowed tokens to -inf, in place; False when no token is allowed."""
        return mask_batch(logits.unsqueeze(0), [self])[0]

    def accept(self, token: int) -> bool:
        """Advance by `token`; False (and the row is spent) when the grammar does not allow it."""
        if token in self.grammar.compiler.stop_ids and not (self._m.is_accepting() and self._complete()):
            self.reason = "the end-of-turn token came before the answer was complete"
            return False
        if not self._m.consume_token(token):
            self.reason = f"token {token} is not allowed here: {self._m.get_error().splitlines()[0][:200]}"
            return False
        if token not in self.grammar.compiler.stop_ids:
            self._ids.append(token)
        return True

    @property
    def done(self) -> bool:
        """The answer is complete: the end-of-turn token was accepted, or nothing more can follow."""
        return self._m.is_stopped() and not self._m.is_error() and self._complete()

    def text(self, errors: str = "replace") -> str:
        """The answer so far (without the end-of-turn token)."""
        return self.grammar.compiler.engine_tokenizer.decode_bytes(self._ids).decode("utf-8", errors=errors)

    def _complete(self) -> bool:
        """Python's own verdict on the answer so far (cached per length): the contract check."""
        if self._checked[0] != len(self._ids):
            try:
                ok = self.grammar._verify(self.text(errors="strict"))
            except UnicodeDecodeError:  # a character split between tokens: not an answer yet
                ok = False
            self._checked = (len(self._ids), ok)
        return self._checked[1]


class GrammarCompiler:
    """Compiles constraints for one tokenizer and logits width; compiled grammars are cached."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Iterable[int]) -> None:
        self.stop_ids = frozenset(int(t) for t in stop_ids)
        self.vocab_size = int(vocab_size)
        if not grammar_available():
            raise GrammarError("constrained decoding needs the llguidance package, which is not installed",
                               f"pip install 'llguidance>=1.9,<2' (or run scripts/setup.sh), {WITHOUT}")
        if not self.stop_ids:
            raise GrammarError("constrained decoding needs the model's end-of-turn token ids, and there are none",
                               "set eos_token in the model's tokenizer_config.json")
        import llguidance.hf

        try:  # the engine's vocabulary covers the tokenizer; logits narrower than it are cut in mask_batch
            self.engine_vocab = max(self.vocab_size, len(tokenizer))
            self.engine_tokenizer = llguidance.hf.from_tokenizer(
                tokenizer, n_vocab=self.engine_vocab, eos_token=sorted(self.stop_ids))
        except Exception as exc:  # noqa: BLE001 - a slow (Python) tokenizer, a broken tokenizer.json
            raise GrammarError(f"the tokenizer cannot drive the grammar engine: {exc}",
                               f"use a fast tokenizer (tokenizer.json), {WITHOUT}") from None
        #: (bitmask word, AND-mask clearing the token's bit) per end-of-turn id
        self.stop_bits = [(t >> 5, np.array([~(1 << (t & 31)) & 0xFFFFFFFF], dtype=np.uint32).view(np.int32)[0])
                          for t in sorted(self.stop_ids)]
        self._cache: dict[str, CompiledGrammar | GrammarError] = {}
        self._lock = threading.Lock()

    def check(self, constraint: Constraint) -> None:
        """Compile `constraint` or raise GrammarError (request and start-up validation)."""
        self.compile(constraint)

    def compile(self, constraint: Constraint) -> CompiledGrammar:
        """The compiled grammar for `constraint` (cached by its key); GrammarError when it cannot be."""
        key = constraint.key()
        with self._lock:
            found = self._cache.get(key)
            if found is None:
                try:
                    found = self._compile(constraint)
                except GrammarError as exc:
                    found = exc
                except Exception as exc:  # noqa: BLE001 - whatever the engine raises, the caller gets one type
                    found = GrammarError(f"{_what(constraint)} cannot be enforced while decoding: {exc}",
                                         "evaluate without --constrained")
                except BaseException as exc:
                    # a Rust panic inside llguidance reaches Python as pyo3's PanicException, a BaseException
                    # (seen: a schema whose error message llguidance cut inside a multi-byte character)
                    if type(exc).__name__ != "PanicException":
                        raise
                    found = GrammarError(f"{_what(constraint)} cannot be enforced while decoding: the grammar "
                                         f"engine failed on it ({one_line(exc)[:200]})",
                                         f"simplify the {'pattern' if constraint.kind == REGEX else 'schema'}, "
                                         f"{WITHOUT}")
                self._cache[key] = found
        if isinstance(found, GrammarError):
            raise found
        return found

    def _compile(self, constraint: Constraint) -> CompiledGrammar:
        import llguidance

        if constraint.kind == REGEX:
            if constraint.pattern is None:
                raise GrammarError("a regex constraint without a pattern", "give the pattern")
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                re.purge()  # a cached pattern would not warn again
                try:
                    python = re.compile(constraint.pattern, re.DOTALL)
                except (re.error, FutureWarning, DeprecationWarning) as exc:
                    raise GrammarError(f"the regex {constraint.pattern!r} is ambiguous or invalid in Python: {exc}",
                                       "escape a literal [ inside a set as \\[ and fix the pattern") from None
            grammar = llguidance.LLMatcher.grammar_from_regex(f"(?s:{scan_regex(constraint.pattern, 'regex')})")
            verify: Callable[[str], bool] = lambda text: python.fullmatch(text) is not None  # noqa: E731
        elif constraint.kind in (JSON_OBJECT, JSON_ANY, JSON_SCHEMA):
            schema = _engine_schema(constraint)
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=_JSON_OPTIONS)  # type: ignore[arg-type]
            verify = _json_verifier(constraint)
        else:
            raise GrammarError(f"unknown constraint kind {constraint.kind!r}", "use json_object, json, json_schema or regex")
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.engine_tokenizer)
        if failed:
            raise _engine_error(constraint, messages[0])
        template = llguidance.LLMatcher(self.engine_tokenizer, grammar, log_level=0)
        probe = np.zeros((1, (self.engine_vocab + 31) // 32), dtype=np.int32)
        template.unsafe_compute_mask_ptr(probe.ctypes.data, probe.nbytes)  # builds the lexer now, not mid-decode
        if template.is_error():
            raise _engine_error(constraint, template.get_error())
        _cut(probe, self.vocab_size)
        if not probe.any():
            raise GrammarError(f"{_what(constraint)} admits no answer this model can write: no token may start it",
                               "fix the schema or pattern: its constraints contradict each other")
        return CompiledGrammar(self, constraint, template, verify)


def _engine_error(constraint: Constraint, message: str) -> GrammarError:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()] or ["unknown error"]
    detail = next((line[len("error: "):] for line in lines if line.startswith("error: ")), lines[0])[:300]
    if detail.startswith(("Unsatisfiable schema", "NoExtension")):
        reason = detail.partition(": ")[2] if detail.startswith("Unsatisfiable") else "no text matches it"
        return GrammarError(f"{_what(constraint)} admits no answer: {reason}",
                            "fix the schema or pattern: its constraints contradict each other")
    m = re.search(r"Unimplemented keys: \[(.*?)\]", detail)
    if m:
        return _refuse("#", m.group(1).replace('"', ""))
    m = re.search(r"Unknown format: (\S+)", detail)
    if m:
        return _refuse("#", f"format {m.group(1)!r}", f"drop this `format` (the answer checker does not assert "
                       f"formats), {WITHOUT}")
    return GrammarError(f"{_what(constraint)} cannot be enforced while decoding: {detail}",
                        f"simplify the {'pattern' if constraint.kind == REGEX else 'schema'}, {WITHOUT}")


def _what(constraint: Constraint) -> str:
    if constraint.kind == REGEX:
        return f"the regex {constraint.pattern!r}"
    return "the output schema" if constraint.kind == JSON_SCHEMA else "JSON"


def _json_verifier(constraint: Constraint) -> Callable[[str], bool]:
    from jsonschema import validators

    from tunesmith.io import loads_strict_json

    schema = constraint.schema_dict
    validator = validators.validator_for(schema)(schema) if constraint.kind == JSON_SCHEMA else None
    kinds = (dict,) if constraint.kind == JSON_OBJECT else (dict, list)

    def verify(text: str) -> bool:
        try:
            value = loads_strict_json(text)
        except (ValueError, RecursionError):
            return False
        return isinstance(value, kinds) and (validator is None or validator.is_valid(value))

    return verify


def _cut(words: np.ndarray, width: int) -> None:
    """Clear the bits of tokens at or past `width`: a model whose logits are narrower than its
    tokenizer (added tokens the model never learnt) cannot write them."""
    if words.shape[1] * 32 > width:
        words[:, (width + 31) // 32:] = 0
        if width % 32:
            words[:, width // 32] &= np.array([(1 << (width % 32)) - 1], dtype=np.uint32).view(np.int32)[0]


_executor: list[Any] = []
_executor_lock = threading.Lock()


def _parallel() -> Any:
    """One engine thread pool per process, a thread per core up to 8: masks are computed between
    forward passes, while the cores the model uses are idle."""
    with _executor_lock:
        if not _executor:
            import llguidance

            _executor.append(llguidance.LLExecutor(num_threads=max(1, min(8, os.cpu_count() or 1))))
        return _executor[0]


def mask_batch(logits: torch.Tensor, matchers: Sequence[RowMatcher | None]) -> list[bool]:
    """Mask the logits ([rows, vocab], in place) of every row that has a matcher, in one parallel
    mask computation and one masking pass; per row, whether any token is allowed (True for None)."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    allowed = [True] * len(matchers)
    if not rows:
        return allowed
    compiler = matchers[rows[0]].grammar.compiler  # type: ignore[union-attr]
    width = logits.shape[-1]
    if width > compiler.engine_vocab:
        raise ValueError(f"logits are {width} wide, the grammar compiler's vocab_size is {compiler.vocab_size}")
    words = np.zeros((len(rows), (compiler.engine_vocab + 31) // 32), dtype=np.int32)
    one = words.shape[1] * 4
    if len(rows) == 1:
        matchers[rows[0]]._m.unsafe_compute_mask_ptr(words.ctypes.data, one)  # type: ignore[union-attr]
    else:
        _parallel().unsafe_compute_mask_ptr([(matchers[i]._m, k) for k, i in enumerate(rows)],  # type: ignore[union-attr]
                                            words.ctypes.data, one, len(rows))
    vetoed = set()
    for k, i in enumerate(rows):
        m: RowMatcher = matchers[i]  # type: ignore[assignment]
        if m._m.is_error():
            m.reason = m.reason or f"the grammar failed: {m._m.get_error().splitlines()[0][:200]}"
            words[k] = 0
        elif m._m.is_accepting() and not m._complete():  # the engine would let the answer end here;
            vetoed.add(k)                                 # Python's check of the contract does not
            for word, keep in compiler.stop_bits:
                words[k, word] &= keep
    _cut(words, width)
    for k, ok in enumerate(words.any(axis=1).tolist()):
        allowed[rows[k]] = ok
        m = matchers[rows[k]]  # type: ignore[assignment]
        if not ok and not m.reason:
            m.reason = (f"the engine took {m.text()[-80:]!r} as a complete answer, and Python's check of the "
                        "contract does not (the engine's regex dialect is Rust's)" if k in vetoed else
                        "no token can continue the answer (the grammar is at a dead end)")
    if sys.byteorder != "little":  # pragma: no cover - unpackbits below reads little-endian words
        words = words.byteswap()
    # one bool per token, True = disallowed; numpy does the masking: single-threaded, where torch's
    # OpenMP threads would wait on each other (and on the forward pass's) for a 50k-float row
    banned = np.unpackbits((~words).view(np.uint8), axis=1, bitorder="little").view(np.bool_)[:, :width]
    everyone = len(rows) == logits.shape[0]
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float16, torch.float64):
        array = logits.detach().numpy()
        for k, i in [(slice(None), slice(None))] if everyone else enumerate(rows):
            np.copyto(array[i], -np.inf, where=banned[k])
    else:  # an accelerator's logits, or bfloat16 (no numpy type)
        mask = torch.from_numpy(banned).to(logits.device)
        for k, i in [(slice(None), slice(None))] if everyone else enumerate(rows):
            logits[i].masked_fill_(mask[k], float("-inf"))
    return allowed
