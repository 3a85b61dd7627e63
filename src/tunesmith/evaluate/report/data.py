"""What the report shows, as typed data: `ReportData.from_mapping` reads a JSON-like dict and names the bad field.

Missing sections render as "not available"; a section of the wrong type is a `UsageError`. An estimate
(``base``, ``tuned``, ``diff``, rubric values) is an `Estimate`, its ``to_dict()``, or anything else
to show as text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunesmith.evaluate.report.format import finite, require

Point = tuple[float, float]


@dataclass(frozen=True)
class Seal:
    scored_on: str | None = None  # SHA-256 of the test seal this evaluation was scored on
    trained_on: str | None = None  # ... and of the one the run was trained with
    warning: str | None = None  # shown above the metrics when the two differ


@dataclass(frozen=True)
class LossCurve:
    """[step, loss] points sorted by step; NaN / inf losses (a diverged step) are left out."""

    train: list[Point] = field(default_factory=list)
    eval: list[Point] = field(default_factory=list)

    @classmethod
    def from_mapping(cls, curve: Mapping[str, Any]) -> LossCurve:
        return cls(_points(curve.get("train"), "train"), _points(curve.get("eval"), "eval"))


@dataclass(frozen=True)
class MetricRow:
    name: str
    base: Any = None
    tuned: Any = None
    diff: Any = None  # tuned - base, paired
    p_value: float | None = None
    verdict: str | None = None  # "better" | "worse" | "no detectable difference"


@dataclass(frozen=True)
class Rubric:
    base: Mapping[str, Any]  # criterion -> value
    tuned: Mapping[str, Any]


@dataclass(frozen=True)
class Pairwise:
    wins_base: int = 0
    wins_tuned: int = 0
    ties: int = 0
    position_consistency_rate: float | None = None
    failures: int | None = None


@dataclass(frozen=True)
class Judge:
    rubric: Rubric | None = None
    pairwise: Pairwise | None = None

    @classmethod
    def from_mapping(cls, judge: Mapping[str, Any]) -> Judge:
        rubric, pw = judge.get("rubric"), judge.get("pairwise")
        if rubric:
            require(isinstance(rubric, Mapping), "judge.rubric must be an object with 'base' and 'tuned'")
            base, tuned = rubric.get("base") or {}, rubric.get("tuned") or {}
            require(isinstance(base, Mapping) and isinstance(tuned, Mapping), "judge.rubric.base/tuned must be objects")
        if pw:
            require(isinstance(pw, Mapping), "judge.pairwise must be an object")
        return cls(
            rubric=Rubric(base, tuned) if rubric else None,
            pairwise=Pairwise(*(int(pw.get(k) or 0) for k in ("wins_base", "wins_tuned", "ties")),
                              position_consistency_rate=pw.get("position_consistency_rate"),
                              failures=pw.get("failures")) if pw else None,
        )


@dataclass(frozen=True)
class Flip:
    id: str
    before: bool  # passed before?
    after: bool


@dataclass(frozen=True)
class Regression:
    passed: int | None
    total: int | None
    flips: list[Flip] = field(default_factory=list)
    gate: str | None = None  # "pass" | "fail"

    @classmethod
    def from_mapping(cls, reg: Mapping[str, Any]) -> Regression:
        flips = reg.get("flips") or []
        require(
            isinstance(flips, list) and all(isinstance(f, Mapping) for f in flips),
            "regression.flips must be a list of {id, before, after} objects",
        )
        return cls(passed=reg.get("passed"), total=reg.get("total"), gate=reg.get("gate"),
                   flips=[Flip(f.get("id"), bool(f.get("before")), bool(f.get("after"))) for f in flips])


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str | None = None
    expected: str | None = None
    base_output: str | None = None
    tuned_output: str | None = None
    passed: bool | None = None  # None: unknown
    failures: list[str] = field(default_factory=list)
    scores: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportData:
    """Everything on the page. ``created`` is ISO 8601 text or a Unix timestamp (shown in UTC)."""

    title: str = "Evaluation report"
    run_id: str | None = None
    created: str | float | None = None
    task: str | None = None
    base_model: str | None = None
    training_data: str | None = None  # where teacher-generated training rows came from
    seal: Seal | None = None
    #: who answered, by role ("tuned", "base"): the evaluation summary's "engine" (`evaluate.api._engines`)
    engines: Mapping[str, Mapping[str, Any]] | None = None
    loss_curve: LossCurve | None = None
    metrics: list[MetricRow] = field(default_factory=list)
    variants: Mapping[str, Any] | None = None  # `evaluate.constrained.variants_table`; see report.variants
    judge: Judge | None = None
    regression: Regression | None = None
    items: list[Item] = field(default_factory=list)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ReportData:
        require(isinstance(data, Mapping), f"expected an object, got {type(data).__name__}")
        curve = _section(data, "loss_curve", Mapping, "an object")
        seal = _section(data, "seal", Mapping, "an object")
        engines = _section(data, "engines", Mapping, "an object")
        require(engines is None or all(isinstance(e, Mapping) for e in engines.values()),
                "each 'engines' entry must be an object such as {\"engine\": \"llamacpp\", \"quant\": \"f16\"}")
        metrics = _section(data, "metrics", list, "a list")
        variants = _section(data, "variants", Mapping, "an object")
        judge = _section(data, "judge", Mapping, "an object")
        regression = _section(data, "regression", Mapping, "an object")
        items = _section(data, "items", list, "a list")
        return cls(
            title=data.get("title") or "Evaluation report",
            run_id=data.get("run_id"), created=data.get("created"), task=data.get("task"),
            base_model=data.get("base_model"), training_data=data.get("training_data") or None,
            seal=Seal(seal.get("scored_on"), seal.get("trained_on"), seal.get("warning")) if seal else None,
            engines=engines or None,
            loss_curve=LossCurve.from_mapping(curve) if curve else None,
            metrics=[_metric(m) for m in metrics or []],
            variants=variants or None,
            judge=Judge.from_mapping(judge) if judge else None,
            regression=Regression.from_mapping(regression) if regression else None,
            items=[_item(it) for it in items or []],
        )


def _section(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = data.get(key)
    require(value is None or isinstance(value, kind), f"{key!r} must be {what} or null, got {type(value).__name__}")
    return value


def _points(raw: Any, name: str) -> list[Point]:
    if raw is None:
        return []
    require(isinstance(raw, Sequence) and not isinstance(raw, str), f"loss_curve.{name} must be a list of [step, loss]")
    out: list[Point] = []
    for pt in raw:
        require(
            isinstance(pt, Sequence) and not isinstance(pt, str) and len(pt) == 2,
            f"loss_curve.{name} entries must be [step, loss] pairs, got {pt!r}"[:200],
        )
        step, loss = pt
        if finite(step) and finite(loss):
            out.append((float(step), float(loss)))
    out.sort(key=lambda p: p[0])
    return out


def _metric(m: Any) -> MetricRow:
    require(isinstance(m, Mapping), f"each metrics entry must be an object, got {type(m).__name__}")
    return MetricRow(m.get("name"), m.get("base"), m.get("tuned"), m.get("diff"), m.get("p_value"), m.get("verdict"))



def _item(it: Any) -> Item:
    require(isinstance(it, Mapping), f"each items entry must be an object, got {type(it).__name__}")
    passed, scores = it.get("passed"), it.get("scores")
    return Item(
        id=it.get("id"), prompt=it.get("prompt"), expected=it.get("expected"),
        base_output=it.get("base_output"), tuned_output=it.get("tuned_output"),
        passed=passed if isinstance(passed, bool) else None,
        failures=list(it.get("failures") or []),
        scores=dict(scores) if isinstance(scores, Mapping) else {},
    )
