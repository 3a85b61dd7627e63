"""Grammar-constrained decoding: every completed answer satisfies the contract as `check` applies it.

The decoding tests run a greedy loop over tiny random models (the hardest case: unconstrained, they
write garbage), so every token of a valid answer comes from the mask, not from the model.
"""

from __future__ import annotations

import inspect
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from tunesmith.data.checks.contract import AnswerContract
from tunesmith.inference import grammar
from tunesmith.inference.constraints import Constraint
from tunesmith.inference.grammar import ENFORCED, GrammarCompiler, GrammarError, mask_batch

pytestmark = pytest.mark.skipif(not grammar.grammar_available(), reason="llguidance is not installed")


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def gc(tok: Any) -> GrammarCompiler:
    return GrammarCompiler(tok, len(tok), [tok.eos_token_id])


def feed(gc: GrammarCompiler, tok: Any, c: Constraint, text: str) -> tuple[Any, bool]:
    """A matcher after the tokens of `text` and whether all of them were accepted."""
    m = gc.compile(c).matcher()
    return m, all(m.accept(t) for t in tok.encode(text))


def allowed_ids(m: Any, width: int) -> list[int]:
    logits = torch.zeros(width)
    m.mask_logits(logits)
    return torch.isfinite(logits).nonzero().flatten().tolist()


# -- compiling -------------------------------------------------------------------------------------

PYFUNC_SCHEMA = {  # examples/pyfunc-json's schema, less uniqueItems (checked at the end, see below)
    "$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "https://tunesmith.invalid/s.json",
    "title": "Python function facts", "type": "object",
    "properties": {"name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$", "description": "d"},
                   "params": {"type": "array", "items": {"type": "string", "minLength": 1}},
                   "returns": {"type": ["string", "null"]},
                   "raises": {"type": "array", "items": {"type": "string", "minLength": 1}},
                   "is_async": {"type": "boolean"}},
    "required": ["name", "params", "returns", "raises", "is_async"], "additionalProperties": False,
}


@pytest.mark.parametrize("c", [Constraint.json_object(), Constraint.json_value(), Constraint.json_schema(PYFUNC_SCHEMA),
                               Constraint.json_schema(True), Constraint.regex(r"\d{4}-\d{2}-\d{2}")],
                         ids=["json_object", "json", "json_schema", "schema_true", "regex"])
def test_each_kind_compiles_and_starts(gc: GrammarCompiler, tok: Any, c: Constraint) -> None:
    gc.check(c)
    assert allowed_ids(gc.compile(c).matcher(), len(tok))


def test_compile_is_cached_and_errors_are_too(gc: GrammarCompiler) -> None:
    c = Constraint.regex("(yes|no)")
    assert gc.compile(c) is gc.compile(Constraint.regex("(yes|no)"))
    bad = Constraint.regex("a(?=b)")
    for _ in range(2):
        with pytest.raises(GrammarError, match="lookahead"):
            gc.compile(bad)


def test_compile_is_thread_safe(tok: Any) -> None:
    fresh = GrammarCompiler(tok, len(tok), [tok.eos_token_id])
    c = Constraint.json_schema(PYFUNC_SCHEMA)
    barrier, got = threading.Barrier(4), []

    def work() -> None:
        barrier.wait()
        compiled = fresh.compile(c)
        got.append((compiled, compiled.matcher()))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and len({id(g) for g, _ in got}) == 1
    assert len({id(m) for _, m in got}) == 4


def test_properties_come_in_the_declared_order(gc: GrammarCompiler, tok: Any) -> None:
    """The constraint keeps the schema's key order (not sorted): the order the model was trained on."""
    c = Constraint.json_schema({"type": "object", "properties": {"zeta": {"type": "integer"}, "alpha": {"type": "integer"}},
                                "required": ["zeta", "alpha"], "additionalProperties": False})
    assert feed(gc, tok, c, '{"zeta":1,"alpha":2}')[1]
    assert not feed(gc, tok, c, '{"alpha":2,"zeta":1}')[1]


# -- what the keywords on the allow-list do: each one refuses a violating answer ----------------------

def _wrap(sub: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"v": sub}, "required": ["v"], "additionalProperties": False}


ENFORCEMENT = [  # (keywords, schema, valid answers, violating answers)
    ({"type"}, _wrap({"type": "boolean"}), ['{"v":true}'], ['{"v":1}']),
    ({"enum"}, _wrap({"enum": ["a", 1]}), ['{"v":"a"}', '{"v":1}'], ['{"v":"b"}']),
    ({"const"}, _wrap({"const": {"k": [1]}}), ['{"v":{"k":[1]}}'], ['{"v":{"k":[2]}}']),
    ({"properties", "required", "additionalProperties"}, {"type": "object", "properties": {"a": {"type": "integer"}},
                                                          "required": ["a"], "additionalProperties": False},
     ['{"a":1}'], ['{"a":"x"}', "{}", '{"a":1,"b":2}']),
    ({"additionalProperties"}, {"type": "object", "additionalProperties": {"type": "integer"}}, ['{"q":1}'], ['{"q":"x"}']),
    ({"patternProperties"}, {"type": "object", "patternProperties": {"^a": {"type": "integer"}}}, ['{"ab":1}'],
     ['{"ab":"x"}']),
    ({"items"}, {"type": "array", "items": {"type": "integer"}}, ["[1,2]"], ['["x"]']),
    ({"prefixItems"}, {"type": "array", "prefixItems": [{"type": "integer"}], "items": False}, ["[1]"], ["[1,2]", '["x"]']),
    ({"minItems", "maxItems"}, {"type": "array", "minItems": 1, "maxItems": 2}, ["[1]", "[1,2]"], ["[]", "[1,2,3]"]),
    ({"minLength", "maxLength"}, _wrap({"type": "string", "minLength": 2, "maxLength": 3}), ['{"v":"ab"}'],
     ['{"v":"a"}', '{"v":"abcd"}']),
    ({"pattern"}, _wrap({"type": "string", "pattern": "^[a-z]+$"}), ['{"v":"ab"}'], ['{"v":"aB"}']),
    ({"pattern"}, _wrap({"type": "string", "pattern": "b"}), ['{"v":"abc"}'], ['{"v":"ac"}']),  # a search, as in jsonschema
    ({"format"}, _wrap({"type": "string", "format": "date"}), ['{"v":"2024-02-29"}'], ['{"v":"soon"}']),
    ({"minimum", "exclusiveMaximum"}, _wrap({"type": "integer", "minimum": 1, "exclusiveMaximum": 5}), ['{"v":4}'],
     ['{"v":0}', '{"v":5}', '{"v":1.5}']),
    ({"maximum", "exclusiveMinimum"}, _wrap({"type": "number", "exclusiveMinimum": 0, "maximum": 1}), ['{"v":0.5}'],
     ['{"v":0}', '{"v":1.5}']),
    ({"multipleOf"}, _wrap({"type": "integer", "multipleOf": 3}), ['{"v":6}'], ['{"v":4}']),
    ({"minProperties", "maxProperties"}, {"type": "object", "minProperties": 1, "maxProperties": 1}, ['{"a":1}'],
     ["{}", '{"a":1,"b":2}']),
    ({"anyOf"}, _wrap({"anyOf": [{"type": "integer"}, {"type": "boolean"}]}), ['{"v":true}', '{"v":2}'], ['{"v":"x"}']),
    ({"allOf"}, _wrap({"allOf": [{"type": "integer"}, {"minimum": 5}]}), ['{"v":6}'], ['{"v":3}']),
    ({"$ref", "$defs"}, {"$defs": {"i": {"type": "integer"}}, **_wrap({"$ref": "#/$defs/i"})}, ['{"v":1}'], ['{"v":"x"}']),
    ({"definitions"}, {"definitions": {"i": {"type": "integer"}}, **_wrap({"$ref": "#/definitions/i"})}, ['{"v":1}'],
     ['{"v":"x"}']),
    ({"$anchor"}, {"$defs": {"i": {"$anchor": "I", "type": "integer"}}, **_wrap({"$ref": "#I"})}, ['{"v":1}'], ['{"v":"x"}']),
]


def test_every_allowed_keyword_has_an_enforcement_case() -> None:
    assert set().union(*(keys for keys, *_ in ENFORCEMENT)) == set(ENFORCED)


@pytest.mark.parametrize("keys,schema,good,bad", ENFORCEMENT, ids=["+".join(sorted(k)) for k, *_ in ENFORCEMENT])
def test_allowed_keyword_is_enforced_by_the_engine(gc: GrammarCompiler, tok: Any, keys: set[str], schema: Any,
                                                   good: list[str], bad: list[str]) -> None:
    from jsonschema import Draft202012Validator

    c = Constraint.json_schema(schema)
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    for text in good:
        assert validator.is_valid(json.loads(text)), text
        m, ok = feed(gc, tok, c, text)
        assert ok and m.accept(tok.eos_token_id) and m.done, text
    for text in bad:
        assert not validator.is_valid(json.loads(text)), text
        m, ok = feed(gc, tok, c, text)
        assert not (ok and m._m.is_accepting()), f"the engine itself accepts {text}"
        assert not (ok and m.accept(tok.eos_token_id)), text


# -- decoding over tiny random models: every finished answer satisfies the contract ----------------

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                      "n": {"type": "integer", "minimum": -5, "maximum": 500}, "ok": {"type": "boolean"}},
     "required": ["name", "n", "ok"], "additionalProperties": False},
    {"type": "object", "properties": {"label": {"enum": ["positive", "negative", "neutral"]},
                                      "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{1,6}$"},
                                               "minItems": 1, "maxItems": 3}},
     "required": ["label", "tags"], "additionalProperties": False},
    {"type": "object", "properties": {"inner": {"type": "object", "properties": {
        "x": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.25},
        "y": {"type": ["string", "null"], "maxLength": 5}}, "required": ["x", "y"], "additionalProperties": False},
        "kind": {"const": "point"}}, "required": ["inner", "kind"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "minItems": 2, "maxItems": 4},
    {"$defs": {"short": {"type": "string", "maxLength": 4}}, "type": "object",
     "properties": {"a": {"$ref": "#/$defs/short"}, "b": {"anyOf": [{"type": "boolean"}, {"type": "null"}]}},
     "required": ["a", "b"], "additionalProperties": False},
]
REGEXES = [r"\d{4}-\d{2}-\d{2}", r"(yes|no)\. .{0,20}", r"Answer: (positive|negative|neutral)\n?",
           r"[A-Z][a-z]{0,8}( [a-z]{1,5}){0,3}\.", r"(?i)yes|no", r"[^{}]{2,6}"]
PROMPTS = ["Extract the facts.", "What is the sentiment?", "hello"]


def greedy(model: Any, tok: Any, m: Any, prompt: str, limit: int = 120) -> tuple[str, bool]:
    from transformers import DynamicCache

    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        for _ in range(limit):
            logits = model(input_ids=ids, use_cache=True, **{kwarg: cache}).logits[0, -1].float().clone()
            assert m.mask_logits(logits), m.reason
            token = int(logits.argmax())
            assert m.accept(token)
            if m.done:
                return m.text(), True
            ids = torch.tensor([[token]])
    return m.text(), False


@pytest.fixture(scope="module", params=["tiny_model_dir", "lively_model"])
def model_and_compiler(request: pytest.FixtureRequest) -> tuple[Any, Any, GrammarCompiler]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = request.getfixturevalue(request.param)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok, GrammarCompiler(tok, model.config.vocab_size, [tok.eos_token_id])


@pytest.mark.parametrize("case", [("schema", s) for s in SCHEMAS] + [("regex", r) for r in REGEXES],
                         ids=[f"schema{i}" for i in range(len(SCHEMAS))] + [f"regex{i}" for i in range(len(REGEXES))])
def test_greedy_answers_satisfy_the_contract(model_and_compiler: Any, case: tuple[str, Any], one_torch_thread: None) -> None:
    model, tok, compiler = model_and_compiler
    kind, spec = case
    c = Constraint.json_schema(spec) if kind == "schema" else Constraint.regex(spec)
    contract = AnswerContract(schema=spec, expects_json=True) if kind == "schema" else AnswerContract(regex=spec)
    for prompt in PROMPTS:
        text, done = greedy(model, tok, compiler.compile(c).matcher(), prompt)
        assert done, f"{prompt!r}: no complete answer in 120 tokens: {text!r}"
        verdict = contract.check(text)
        assert verdict.ok, (prompt, text, verdict.problems)


def test_greedy_free_json_is_valid_when_it_ends(model_and_compiler: Any, one_torch_thread: None) -> None:
    """Free-form JSON can run on (numbers and strings have no bound): whatever ends is valid JSON."""
    model, tok, compiler = model_and_compiler
    ended = 0
    for c, contract in ((Constraint.json_object(), AnswerContract(expects_json=True)),
                        (Constraint.json_value(), AnswerContract(expects_json=True))):
        for prompt in PROMPTS:
            text, done = greedy(model, tok, compiler.compile(c).matcher(), prompt)
            if done:
                ended += 1
                assert contract.check(text).ok, text
                assert isinstance(json.loads(text), dict if c.kind == "json_object" else (dict, list))
    assert ended


# -- the end-of-turn token, whitespace and special tokens -------------------------------------------

def test_end_of_turn_only_when_complete(gc: GrammarCompiler, tok: Any) -> None:
    eos = tok.eos_token_id
    m, ok = feed(gc, tok, Constraint.regex("ab*"), "")
    assert eos not in allowed_ids(m, len(tok))
    assert not m.accept(eos) and "before the answer was complete" in (m.reason or "")
    m, ok = feed(gc, tok, Constraint.regex("ab*"), "a")
    assert ok and eos in allowed_ids(m, len(tok)) and not m.done
    assert m.accept(eos) and m.done and m.text() == "a"
    m, ok = feed(gc, tok, Constraint.json_object(), '{"a":1}')  # nothing can follow the closing brace
    assert ok and m.done and allowed_ids(m, len(tok)) == [eos]


def test_no_whitespace_and_no_special_tokens(gc: GrammarCompiler, tok: Any) -> None:
    specials = {tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|pad|>", "<|endoftext|>")}
    for text in ("", '{"a":', '{"a":1', '{"a":[1', '{"a":[1,'):
        m, ok = feed(gc, tok, Constraint.json_value(), text)
        ids = allowed_ids(m, len(tok))
        assert ok and ids and not specials & set(ids)
        assert not any(tok.decode([i])[:1].isspace() for i in ids), text


def test_disallowed_token_is_refused_with_a_reason(gc: GrammarCompiler, tok: Any) -> None:
    m = gc.compile(Constraint.regex("yes|no")).matcher()
    assert not m.accept(tok.encode("x")[0])
    assert m.reason is not None and m.reason.startswith(f"token {tok.encode('x')[0]} is not allowed here")
    assert not m.mask_logits(torch.zeros(len(tok)))  # spent: nothing more
    engine_failed = gc.compile(Constraint.regex("yes|no")).matcher()
    engine_failed._m.consume_token(tok.encode("x")[0])  # the engine's own error state, behind accept's back
    assert not engine_failed.mask_logits(torch.zeros(len(tok)))
    assert (engine_failed.reason or "").startswith("the grammar failed: ")


def test_python_check_has_the_last_word(gc: GrammarCompiler, tok: Any) -> None:
    """Rust's \\S takes U+001C, Python's does not: the engine would end the answer, the check refuses."""
    m, ok = feed(gc, tok, Constraint.regex(r"\S"), "\x1c")
    assert ok and not m.done
    assert not m.mask_logits(torch.zeros(len(tok)))
    assert "Python's check of the contract does not" in (m.reason or "")
    assert not m.accept(tok.eos_token_id)


# -- batches: constrained and free rows together; dead ends -----------------------------------------

def test_mask_batch_leaves_free_rows_alone_and_matches_per_row_masks(gc: GrammarCompiler, tok: Any) -> None:
    width = len(tok)
    a = feed(gc, tok, Constraint.json_schema(SCHEMAS[0]), '{"name":"x')[0]
    b = feed(gc, tok, Constraint.regex(r"\d{4}-\d{2}"), "20")[0]
    c = feed(gc, tok, Constraint.json_object(), "")[0]
    gen = torch.Generator().manual_seed(0)
    full = torch.randn(5, 3, width, generator=gen)
    logits = full[:, -1, :]  # a non-contiguous view, as a decoding loop slices it
    before = logits.clone()
    rows = [None, a, None, b, c]
    assert mask_batch(logits, rows) == [True] * 5
    for j in (0, 2):
        assert torch.equal(logits[j], before[j])
    for j, m in ((1, a), (3, b), (4, c)):
        alone = before[j].clone()
        assert m.mask_logits(alone)
        assert torch.equal(logits[j], alone)
        assert torch.isinf(logits[j]).any() and torch.isfinite(logits[j]).any()
    assert torch.equal(full[:, -1, :], logits)  # written through to the tensor the view came from
    assert mask_batch(before[:2].clone(), [None, None]) == [True, True]
    half = before[:2].to(torch.bfloat16)  # no numpy type: the torch path
    assert mask_batch(half, [None, c]) == [True, True]
    assert torch.equal(half[0], before[0].to(torch.bfloat16))
    assert torch.equal(torch.isinf(half[1]), torch.isinf(logits[4]))


def test_dead_end_ends_that_row_and_the_others_go_on(tok: Any) -> None:
    """Logits narrower than the tokenizer (90 of 768 tokens: no 'z'): after 'a', "az" cannot go on."""
    narrow = GrammarCompiler(tok, 90, [tok.eos_token_id])
    assert tok.convert_tokens_to_ids("z") >= 90 > tok.convert_tokens_to_ids("a")
    dead = narrow.compile(Constraint.regex("az")).matcher()
    assert dead.accept(tok.convert_tokens_to_ids("a"))
    free = narrow.compile(Constraint.regex("a[a-c]*")).matcher()
    logits = torch.zeros(3, 90)
    assert mask_batch(logits, [dead, None, free]) == [False, True, True]
    assert torch.isinf(logits[0]).all() and torch.equal(logits[1], torch.zeros(90))
    assert "dead end" in (dead.reason or "") and not dead.done
    with pytest.raises(GrammarError, match="admits no answer this model can write"):
        narrow.compile(Constraint.regex("z+"))
    with pytest.raises(ValueError, match="logits are 800 wide"):
        mask_batch(torch.zeros(1, 800), [free])


# -- what cannot be enforced: a GrammarError that names it ------------------------------------------

REFUSED_SCHEMAS = [
    ({"type": "object", "properties": {"tags": {"type": "array", "contains": {"const": 1}}}}, "#/properties/tags: contains"),
    ({"type": "object", "not": {"required": ["a"]}}, "#: not cannot be enforced"),
    ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, "#: if"),
    ({"type": "array", "items": {"type": "array", "contains": {"type": "integer"}}}, "#/items: contains"),
    ({"type": "object", "dependentRequired": {"a": ["b"]}}, "#: dependentRequired"),
    ({"type": "object", "dependentSchemas": {"a": {}}}, "#: dependentSchemas"),
    ({"type": "object", "propertyNames": {"pattern": "^a"}}, "#: propertyNames"),
    ({"type": "object", "unevaluatedProperties": False}, "#: unevaluatedProperties"),
    ({"type": "object", "properties": {"v": {"oneOf": [{"type": "integer"}]}}}, "#/properties/v: oneOf"),
    ({"$defs": {"a/b": {"not": {}}}, "type": "object"}, "#/$defs/a~1b: not"),
    ({"type": "object", "patternProperties": {"^x": {"type": "object", "not": {}}}},
     "#/patternProperties/^x: not"),
    ({"type": "object", "x-guidance": {"lenient": True}}, "#: x-guidance"),
    ({"type": "array", "items": [{"type": "integer"}]}, "#: items as an array"),
    ({"type": "array", "items": {"maximum": 5, "exclusiveMaximum": True}}, "#/items: exclusiveMaximum as a boolean"),
    ({"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}},
     "#/properties/a: $ref to 'https://example.com/a.json'"),
    ({"type": "object", "properties": {"a": 3}}, "#/properties/a: a schema must be an object or a boolean, not int"),
    ({"type": "object", "properties": {"a": {"type": "string", "format": "bogus"}}}, "format 'bogus'"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^(?=x)x$"}}},
     "#/properties/a/pattern: the regex '^(?=x)x$' uses a lookahead"),
    ({"type": "object", "patternProperties": {"(a)\\1": {}}}, "#/patternProperties: the regex '(a)\\\\1' uses a backreference"),
    (False, "the schema is `false`"),
    ({"type": "string"}, "#/type: the schema's top level is 'string', but an answer must be a JSON object or array"),
    ({"type": "object", "minProperties": 2, "maxProperties": 1}, "the output schema admits no answer: minProperties > maxProperties"),
]


@pytest.mark.parametrize("schema,message", REFUSED_SCHEMAS, ids=[m[:40] for _, m in REFUSED_SCHEMAS])
def test_unsupported_schema_is_refused_by_name(gc: GrammarCompiler, schema: Any, message: str) -> None:
    with pytest.raises(GrammarError) as info:
        gc.compile(Constraint.json_schema(schema))
    assert message in info.value.message
    assert info.value.hint


def test_refused_keyword_hint_says_what_to_do(gc: GrammarCompiler) -> None:
    with pytest.raises(GrammarError) as info:
        gc.check(Constraint.json_schema({"type": "object", "properties": {"t": {"type": "object", "not": {}}}}))
    assert "cannot express a negation" in info.value.message
    assert info.value.hint == "drop `not` from the schema, or evaluate without --constrained"


def test_unique_items_is_checked_when_the_answer_ends(gc: GrammarCompiler, tok: Any) -> None:
    schema = {"type": "object", "properties": {"t": {"type": "array", "items": {"enum": ["a", "b"]},
                                                     "uniqueItems": True}},
              "required": ["t"], "additionalProperties": False}
    stop = min(gc.stop_ids)
    unique, ok = feed(gc, tok, Constraint.json_schema(schema), '{"t":["a","b"]}')
    assert ok and unique.accept(stop) and unique.done
    repeated, ok = feed(gc, tok, Constraint.json_schema(schema), '{"t":["a","a"]}')
    assert ok  # the grammar itself cannot tell ...
    assert allowed_ids(repeated, gc.vocab_size) == []  # ... but the answer can never end: a dead end
    assert not repeated.accept(stop) and "before the answer was complete" in repeated.reason


REFUSED_REGEXES = [
    ("a(?=b)b", "a lookahead (?=...)"), ("a(?!b)", "a negative lookahead"), ("(?<=a)b", "a lookbehind (?<=...)"),
    ("(?<!a)b", "a negative lookbehind"), (r"(a)\1", r"a backreference (\1)"), ("(?P<x>a)(?P=x)", "a backreference (?P=...)"),
    ("(?>a)", "an atomic group"), ("(a)?(?(1)b|c)", "a conditional group"), ("(?#note)a", "a comment group"),
    (r"\0", r"an octal escape (\0)"), (r"\bword\b", r"a word boundary (\b)"),
    (r"\N{LATIN SMALL LETTER A}", r"a named character escape"), ("(?m)^a$", "the inline flag (?m)"),
    ("(?a)\\w", "the inline flag (?a)"), ("a++", "a possessive quantifier (++)"),
]


@pytest.mark.parametrize("pattern,construct", REFUSED_REGEXES, ids=[p for p, _ in REFUSED_REGEXES])
def test_unsupported_regex_is_refused_by_name(gc: GrammarCompiler, pattern: str, construct: str) -> None:
    with pytest.raises(GrammarError) as info:
        gc.compile(Constraint.regex(pattern))
    assert f"regex: the regex {pattern!r} uses {construct}" in info.value.message
    assert info.value.hint == "rewrite the pattern without it, or evaluate without --constrained"


@pytest.mark.parametrize("pattern,message", [
    ("(", "the regex '(' is ambiguous or invalid in Python: missing ), unterminated subpattern"),
    ("[[:alpha:]]", "ambiguous or invalid in Python: Possible nested set"),
    ("a{b", "the regex 'a{b' cannot be enforced while decoding: repetition quantifier expects a valid decimal"),
    ("[^\\s\\S]", "the regex '[^\\\\s\\\\S]' admits no answer: no text matches it"),
])
def test_regex_the_engine_or_python_rejects(gc: GrammarCompiler, pattern: str, message: str) -> None:
    with pytest.raises(GrammarError) as info:
        gc.compile(Constraint.regex(pattern))
    assert message in info.value.message and info.value.hint


def test_python_dialect_is_translated(gc: GrammarCompiler, tok: Any) -> None:
    assert grammar.scan_regex(r"a{,2}\Z[\Z]", "r") == r"a{0,2}\z[\Z]"
    assert grammar.scan_regex(r"[]a]\++(?i:x)(?P<n>y)", "r") == r"[]a]\++(?i:x)(?P<n>y)"
    m, ok = feed(gc, tok, Constraint.regex(r"a{,2}b\Z"), "aab")
    assert ok and m.accept(tok.eos_token_id)
    m, ok = feed(gc, tok, Constraint.regex("x.y"), "x\ny")  # . matches a newline too (re.DOTALL)
    assert ok and m.accept(tok.eos_token_id)


def test_bad_constraints_and_setups(tok: Any, gc: GrammarCompiler, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(GrammarError, match="a regex constraint without a pattern"):
        gc.compile(Constraint("regex"))
    with pytest.raises(GrammarError, match="unknown constraint kind 'xml'"):
        gc.compile(Constraint("xml"))
    with pytest.raises(GrammarError, match="needs the model's end-of-turn token ids, and there are none"):
        GrammarCompiler(tok, len(tok), [])
    with pytest.raises(GrammarError, match="the tokenizer cannot drive the grammar engine") as info:
        GrammarCompiler(object(), 10, [1])
    assert "fast tokenizer" in info.value.hint
    monkeypatch.setattr(grammar, "grammar_available", lambda: False)
    with pytest.raises(GrammarError, match="needs the llguidance package, which is not installed") as info:
        GrammarCompiler(tok, len(tok), [tok.eos_token_id])
    assert "pip install" in info.value.hint


def test_engine_failures_become_grammar_errors(tok: Any, gc: GrammarCompiler, monkeypatch: pytest.MonkeyPatch) -> None:
    import llguidance

    fresh = GrammarCompiler(tok, len(tok), [tok.eos_token_id])
    for compiler in (gc, fresh):  # Python's re caches patterns: the warning must count the second time too
        with pytest.raises(GrammarError, match="Possible nested set"):
            compiler.compile(Constraint.regex("[[:digit:]]"))

    def boom(*_: Any, **__: Any) -> str:
        raise RuntimeError("engine exploded")

    monkeypatch.setattr(llguidance.LLMatcher, "grammar_from_regex", boom)
    with pytest.raises(GrammarError, match="the regex 'abc' cannot be enforced while decoding: engine exploded"):
        fresh.compile(Constraint.regex("abc"))
    c = Constraint.json_object()
    err = grammar._engine_error(c, 'Unimplemented keys: ["contains"]')
    assert err.message.startswith("#: contains cannot be enforced while decoding")
    err = grammar._engine_error(c, "Unknown format: my-format")
    assert "format 'my-format'" in err.message and "does not assert formats" in err.hint


def test_a_panic_inside_the_engine_becomes_a_grammar_error(tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Rust panic in llguidance arrives as pyo3's PanicException, which is a BaseException, not an
    Exception (the server fuzz test met one: llguidance cut an error message inside a multi-byte
    character). It is one more schema that cannot be enforced, a 400 rather than a 500; an interrupt
    still goes through."""
    import llguidance

    class PanicException(BaseException):  # pyo3's runtime class has this name and base
        pass

    def panic(*_: Any, **__: Any) -> Any:
        raise PanicException("end byte index 100 is not a char boundary")

    compiler = GrammarCompiler(tok, len(tok), [tok.eos_token_id])
    monkeypatch.setattr(llguidance.LLMatcher, "validate_grammar_with_warnings", panic)
    schema = Constraint.json_schema({"type": "object", "properties": {"a": {"type": "string"}}})
    for _ in range(2):  # and the failure is cached like any other
        with pytest.raises(GrammarError) as info:
            compiler.check(schema)
        assert info.value.message == ("the output schema cannot be enforced while decoding: the grammar engine "
                                      "failed on it (PanicException: end byte index 100 is not a char boundary)")
        assert info.value.hint == f"simplify the schema, {grammar.WITHOUT}"

    def interrupted(*_: Any, **__: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(llguidance.LLMatcher, "validate_grammar_with_warnings", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compiler.check(Constraint.regex("abc"))
