"""Per-item metrics for one generation, user scorers, and their aggregation with bootstrap intervals.

What each metric means (per item, see `score_item`):

* `exact_match` – the output equals the expected answer after stripping surrounding whitespace.
  When both are JSON documents (see `json_valid`) the *parsed* values are compared instead, so key
  order, spacing and number spelling (`1.0` vs `1`) do not matter; booleans never equal numbers.
  None when the item has no expected answer.
* `json_valid` – the stripped output is a JSON object or array that parses: the same rule
  `tunesmith check` applies to training outputs (`tunesmith.data.checks.contract`). Defined only
  where JSON is expected – the project's contract is JSON (`expects_json`, or a schema) or the
  item's expected answer is a JSON document; None otherwise (a classifier's "positive" is not a
  JSON failure).
* `schema_valid` – the output is JSON and valid against the project's JSON Schema, validated with
  the same validator construction as `check` (`validators.validator_for(schema)(schema)`);
  False when the output is not JSON, None when there is no schema.
* `field_accuracy` / `fields` – when the expected answer is a JSON object with at least one field:
  for each of its top-level fields, whether the output object has it with exactly the same value
  (same comparison as `exact_match`); the accuracy is the share that match, 0.0 when the output is
  not a JSON object. None / {} otherwise.
* `regex_ok` – `re.fullmatch(regex, output, re.DOTALL)` on the raw output, as in `check`;
  None without a regex.
* `length_chars`, `output_tokens`, `stopped` (finish_reason == "stop").
* `scores` – one float per user scorer; `scorer_errors` – the error of each scorer that raised
  (or returned something that is not a finite number or bool) on this item.

A generation whose finish_reason is "error" is not scored: its metrics are None, `error` holds the
reason, and `aggregate` leaves it out of every figure and reports how many it left out – a failed
request is never counted as a wrong answer.

User scorers – the closed interface::

    def my_scorer(inp: ScorerInput) -> float | bool: ...

`ScorerInput` carries `id`, `prompt` (the user turns), `output`, `expected` (or None) and a
read-only `metadata` mapping (`line`, `chat`, `assertions` of the item). A bool counts as 1.0/0.0.
Reference one as `module:function` or `path/to/file.py:function` (see `load_scorer`).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import numbers
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Union

import numpy as np

from tunesmith.errors import TunesmithError
from tunesmith.evaluate.stats import bootstrap_ci
from tunesmith.evaluate.types import EvalItem, Estimate, Generation
from tunesmith.io import loads_strict_json
from tunesmith.project import output_pattern

__all__ = [
    "Aggregate",
    "BINARY_METRICS",
    "ItemScore",
    "NamedScorer",
    "SCORE_METRICS",
    "Scorer",
    "ScorerError",
    "ScorerInput",
    "aggregate",
    "load_scorer",
    "metric_kind",
    "metric_value",
    "score_item",
    "scorer_metric",
]


class ScorerError(TunesmithError):
    """A user scorer cannot be loaded (bad spec, missing module/file/function, not callable)."""


SCORER_SIGNATURE_HINT = (
    "a scorer is a function that takes one tunesmith.evaluate.metrics.ScorerInput and returns a float or a bool:\n"
    "    def my_scorer(inp):  # inp.id, inp.prompt, inp.output, inp.expected, inp.metadata\n"
    "        return inp.output.strip() == (inp.expected or '').strip()\n"
    "reference it as 'module:function' (an importable module, or a .py module in the project directory) "
    "or 'path/to/file.py:function' (relative to the project directory)"
)


@dataclass(frozen=True)
class ScorerInput:
    """What a user scorer sees for one item. `metadata` is read-only: line, chat, assertions."""

    id: str
    prompt: str
    output: str
    expected: str | None
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


#: A user scorer: one ScorerInput in, a float (or a bool, counted as 1.0 / 0.0) out.
Scorer = Callable[[ScorerInput], Union[float, bool]]


@dataclass(frozen=True)
class NamedScorer:
    """A scorer with the name its figures are reported under, and the spec it was loaded from."""

    name: str
    fn: Scorer
    spec: str = ""

    def __call__(self, inp: ScorerInput) -> float | bool:
        return self.fn(inp)


@dataclass
class ItemScore:
    id: str
    #: None: no expected answer (or a generation error)
    exact_match: bool | None
    #: None only for a generation error
    json_valid: bool | None
    #: None: no schema (or a generation error)
    schema_valid: bool | None
    #: None: the expected answer is not a JSON object with fields (or a generation error)
    field_accuracy: float | None
    fields: dict[str, bool]
    #: None: no regex (or a generation error)
    regex_ok: bool | None
    length_chars: int
    output_tokens: int
    stopped: bool
    #: set when the generation failed (finish_reason "error"): the item is left out of aggregates
    error: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    scorer_errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemScore:
        """Back from `to_dict` (the evaluation store); keys an older tunesmith did not write are unset."""
        known = {f.name for f in fields(cls)}
        defaults = {"exact_match": None, "json_valid": None, "schema_valid": None, "field_accuracy": None,
                    "fields": {}, "regex_ok": None, "length_chars": 0, "output_tokens": 0, "stopped": False}
        return cls(**{**defaults, **{k: v for k, v in data.items() if k in known}})


# --- comparing JSON values ------------------------------------------------------------------------


_MISSING = object()


def _parse_json_document(text: str) -> Any:
    """The parsed value when `text` (already stripped) is a JSON object or array, else _MISSING."""
    if not text or text[0] not in "{[":
        return _MISSING
    try:
        return loads_strict_json(text)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; absurd nesting recurses
        return _MISSING


def _json_equal(a: Any, b: Any) -> bool:
    """Equality of parsed JSON values: dicts by keys, lists in order, numbers by value, bool ≠ number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# --- validators and patterns, built once ---------------------------------------------------------


_VALIDATORS: dict[str, Any] = {}


def _validator(schema: dict) -> Any:
    """The JSON Schema validator `tunesmith check` uses, cached per schema."""
    key = json.dumps(schema, sort_keys=True, default=str)
    v = _VALIDATORS.get(key)
    if v is None:
        from jsonschema import validators

        v = validators.validator_for(schema)(schema)
        if len(_VALIDATORS) > 64:
            _VALIDATORS.clear()
        _VALIDATORS[key] = v
    return v


# --- scoring one item ----------------------------------------------------------------------------


def _as_named(scorers: Sequence[NamedScorer | Scorer]) -> list[NamedScorer]:
    named = [s if isinstance(s, NamedScorer) else NamedScorer(getattr(s, "__name__", "scorer"), s) for s in scorers]
    seen: set[str] = set()
    for s in named:
        if s.name in seen:
            raise ScorerError(f"two scorers are both named {s.name!r}", hint="give each scorer a distinct name")
        seen.add(s.name)
    return named


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _run_scorer(scorer: NamedScorer, inp: ScorerInput) -> tuple[float | None, str | None]:
    try:
        value = scorer(inp)
    except Exception as e:  # a user scorer failing on one item is that item's problem, not the run's
        return None, _short(e)
    if isinstance(value, (bool, np.bool_)):
        return (1.0 if value else 0.0), None
    if isinstance(value, numbers.Real):
        f = float(value)
        if math.isfinite(f):
            return f, None
        return None, f"returned {f!r}; a scorer must return a finite number or a bool"
    return None, f"returned {type(value).__name__} {value!r:.80}; a scorer must return a float or a bool"


def score_item(
    item: EvalItem,
    gen: Generation,
    *,
    schema: dict | None = None,
    regex: str | None = None,
    scorers: Sequence[NamedScorer | Scorer] = (),
    expects_json: bool = False,
) -> ItemScore:
    """Every metric for one generation (see the module docstring for the definitions)."""
    named = _as_named(scorers)
    text = gen.text or ""
    if gen.finish_reason == "error":
        return ItemScore(
            id=item.id, exact_match=None, json_valid=None, schema_valid=None, field_accuracy=None, fields={},
            regex_ok=None, length_chars=len(text), output_tokens=gen.output_tokens, stopped=False,
            error=gen.error or "generation failed",
        )

    stripped = text.strip()
    parsed = _parse_json_document(stripped)
    is_json = parsed is not _MISSING

    exact: bool | None = None
    expected_parsed: Any = _MISSING
    if item.expected is not None:
        exp = item.expected.strip()
        expected_parsed = _parse_json_document(exp)
        if is_json and expected_parsed is not _MISSING:
            exact = _json_equal(parsed, expected_parsed)
        else:
            exact = stripped == exp

    schema_valid: bool | None = None
    if schema is not None:
        schema_valid = is_json and bool(_validator(schema).is_valid(parsed))

    field_accuracy: float | None = None
    fields: dict[str, bool] = {}
    # nobody asked for JSON here: "not JSON" would be a meaningless zero
    json_valid = is_json if expects_json or schema is not None or expected_parsed is not _MISSING else None

    if isinstance(expected_parsed, dict) and expected_parsed:
        out_obj = parsed if isinstance(parsed, dict) else None
        for k, v in expected_parsed.items():
            fields[k] = out_obj is not None and k in out_obj and _json_equal(out_obj[k], v)
        field_accuracy = sum(fields.values()) / len(fields) if out_obj is not None else 0.0

    regex_ok = None if regex is None else output_pattern(regex).fullmatch(text) is not None

    result = ItemScore(
        id=item.id, exact_match=exact, json_valid=json_valid, schema_valid=schema_valid,
        field_accuracy=field_accuracy, fields=fields, regex_ok=regex_ok, length_chars=len(text),
        output_tokens=gen.output_tokens, stopped=gen.finish_reason == "stop",
    )
    if named:
        meta = MappingProxyType({
            "line": item.line, "chat": copy.deepcopy(item.chat), "assertions": copy.deepcopy(item.assertions),
        })
        inp = ScorerInput(id=item.id, prompt=item.prompt_text(), output=text, expected=item.expected, metadata=meta)
        for s in named:
            value, err = _run_scorer(s, inp)
            if err is None:
                result.scores[s.name] = value  # type: ignore[assignment]
            else:
                result.scorer_errors[s.name] = err
    return result


# --- loading user scorers ------------------------------------------------------------------------


def _fail(message: str) -> ScorerError:
    return ScorerError(message, hint=SCORER_SIGNATURE_HINT)


def _load_file(target: str, base_dir: Path, spec: str) -> Any:
    path = Path(target).expanduser()
    if not path.is_absolute():
        path = Path(base_dir) / path
    if not path.is_file():
        raise _fail(f"scorer {spec!r}: file {path} does not exist")
    if path.suffix != ".py":
        raise _fail(f"scorer {spec!r}: {path} is not a Python (.py) file")
    resolved = path.resolve()
    mod_name = "_tunesmith_scorer_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(mod_name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise _fail(f"scorer {spec!r}: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module  # dataclasses and pickling in the file need to find their module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise _fail(f"scorer {spec!r}: importing {path} failed: {_short(e)}")
    return module


def _load_module(target: str, base_dir: Path, spec: str) -> Any:
    if not all(part.isidentifier() for part in target.split(".")):
        raise _fail(f"scorer {spec!r}: {target!r} is neither a module name nor a path to a .py file")
    extra = str(Path(base_dir).resolve())
    sys.path.insert(0, extra)  # a scorers.py next to tunesmith.yaml is importable as 'scorers:fn'
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing == target or target.startswith(missing + "."):
            raise _fail(f"scorer {spec!r}: no module named {missing!r} (looked on the Python path and in {extra})")
        raise _fail(f"scorer {spec!r}: importing {target} failed: {_short(e)}")
    except Exception as e:
        raise _fail(f"scorer {spec!r}: importing {target} failed: {_short(e)}")
    finally:
        try:
            sys.path.remove(extra)
        except ValueError:
            pass


def load_scorer(spec: str, base_dir: Path, *, name: str | None = None) -> NamedScorer:
    """Load a user scorer from `module:function` or `path/to/file.py:function`.

    A target that ends in `.py` or contains a path separator is a file, relative to `base_dir`
    unless absolute, loaded with `importlib.util.spec_from_file_location`; anything else is a
    module imported with `importlib.import_module` (with `base_dir` on the path while importing).
    `function` may be dotted (`Class.method`). The scorer is reported under `name`, by default the
    function's name. Every failure – malformed spec, missing module/file/function, an import that
    raises, something not callable or not taking one argument – raises ScorerError whose hint
    shows the expected signature.
    """
    target, sep, func = spec.strip().rpartition(":")
    if not sep or not target or not func:
        raise _fail(f"scorer {spec!r} is not in the form 'module:function' or 'path/to/file.py:function'")
    if not all(part.isidentifier() for part in func.split(".")):
        raise _fail(f"scorer {spec!r}: {func!r} is not a function name")
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    module = (_load_file if is_file else _load_module)(target, Path(base_dir), spec)
    obj: Any = module
    for part in func.split("."):
        if not hasattr(obj, part):
            available = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            listing = f" (it defines: {', '.join(available[:12])})" if available else ""
            raise _fail(f"scorer {spec!r}: {target} has no function {func!r}{listing}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise _fail(f"scorer {spec!r}: {func!r} in {target} is a {type(obj).__name__}, not a function")
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(object())
        except TypeError:
            raise _fail(f"scorer {spec!r}: {func}{sig} cannot be called with one ScorerInput argument") from None
    return NamedScorer(name or func.rsplit(".", 1)[-1], obj, spec)


# --- aggregation ---------------------------------------------------------------------------------


#: Pass/fail metrics (compare with kind="binary") and numeric ones (kind="score"), in report order.
BINARY_METRICS: tuple[str, ...] = ("exact_match", "json_valid", "schema_valid", "regex_ok", "stop_rate")
SCORE_METRICS: tuple[str, ...] = ("field_accuracy", "length_chars", "output_tokens")
#: measurements with no better direction (shorter is right for one task, wrong for another): their
#: paired comparison says "higher" or "lower", never "better" or "worse"
DESCRIPTIVE_METRICS: tuple[str, ...] = ("length_chars", "output_tokens")
_REPORT_ORDER = ("exact_match", "json_valid", "schema_valid", "field_accuracy", "regex_ok", "stop_rate",
                 "length_chars", "output_tokens")
#: Present in every aggregate (n may be 0); the others only when defined for at least one item.
_ALWAYS = ("stop_rate", "length_chars", "output_tokens")

_SCORER_PREFIX = "scorer:"


def scorer_metric(name: str) -> str:
    """The aggregate key of a user scorer: 'scorer:<name>' (never clashes with a built-in metric)."""
    return _SCORER_PREFIX + name


def metric_kind(metric: str) -> Literal["binary", "score"]:
    """"binary" for pass/fail metrics, "score" for numbers (field accuracy, lengths, user scorers)."""
    return "binary" if metric in BINARY_METRICS else "score"


def metric_value(score: ItemScore, metric: str) -> float | bool | None:
    """One item's value for an aggregate key; None when undefined there (and for generation errors)."""
    if score.error is not None:
        return None
    if metric.startswith(_SCORER_PREFIX):
        return score.scores.get(metric[len(_SCORER_PREFIX):])
    if metric == "stop_rate":
        return score.stopped
    if metric in ("exact_match", "json_valid", "schema_valid", "field_accuracy", "regex_ok",
                  "length_chars", "output_tokens"):
        return getattr(score, metric)
    raise KeyError(f"unknown metric {metric!r}")


class Aggregate(dict[str, Estimate]):
    """`{metric: Estimate}` plus what was left out.

    `total`: items given; `excluded`: generation errors left out of every figure (`excluded_ids`
    lists them); `scorer_errors`: per scorer, how many items it failed on (also left out of that
    scorer's figure).
    """

    def __init__(self, metrics: dict[str, Estimate], *, total: int, excluded_ids: list[str],
                 scorer_errors: dict[str, int]) -> None:
        super().__init__(metrics)
        self.total = total
        self.excluded_ids = excluded_ids
        self.scorer_errors = scorer_errors

    @property
    def excluded(self) -> int:
        return len(self.excluded_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": {k: v.to_dict() for k, v in self.items()},
            "total": self.total,
            "excluded": self.excluded,
            "excluded_ids": list(self.excluded_ids),
            "scorer_errors": dict(self.scorer_errors),
        }


def aggregate(scores: Sequence[ItemScore], *, seed: int = 0, n_boot: int = 2000) -> Aggregate:
    """The mean of every metric with a 95 % bootstrap interval, over the items where it is defined.

    Keys: exact_match, json_valid, schema_valid, field_accuracy, regex_ok, stop_rate (share that
    finished with "stop"), length_chars and output_tokens (means), and 'scorer:<name>' per user
    scorer. stop_rate, length_chars and output_tokens are always present; the others
    when defined for at least one item (a scorer: when it ran on at least one item). Generation
    errors are left out of everything and counted in `.excluded`.
    """
    kept = [s for s in scores if s.error is None]
    excluded_ids = [s.id for s in scores if s.error is not None]
    scorer_names: list[str] = []
    scorer_errors: dict[str, int] = {}
    for s in kept:
        for nm in list(s.scores) + list(s.scorer_errors):
            if nm not in scorer_names:
                scorer_names.append(nm)
        for nm in s.scorer_errors:
            scorer_errors[nm] = scorer_errors.get(nm, 0) + 1
    metrics: dict[str, Estimate] = {}
    for key in list(_REPORT_ORDER) + [scorer_metric(nm) for nm in scorer_names]:
        values = [v for v in (metric_value(s, key) for s in kept) if v is not None]
        if not values and key not in _ALWAYS and not key.startswith(_SCORER_PREFIX):
            continue
        metrics[key] = bootstrap_ci([float(v) for v in values], n_boot=n_boot, seed=seed)
    return Aggregate(metrics, total=len(scores), excluded_ids=excluded_ids, scorer_errors=scorer_errors)
