"""Paired comparisons, one per metric: what `eval` reports base vs tuned and `compare` reports run vs run.

Both commands call `compare_scores`, so they report the same metrics (user scorers included) with the
same kind rule, whether the scores come fresh from generation or back from the evaluation store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from tunesmith.evaluate.metrics import DESCRIPTIVE_METRICS, ItemScore, metric_kind, metric_value
from tunesmith.evaluate.stats import Comparison, compare


def compare_scores(a: Sequence[ItemScore], b: Sequence[ItemScore], metrics: Iterable[str]) -> dict[str, Comparison]:
    """Per metric: the paired difference b - a on the items both scored, and the verdict.

    A metric neither side defines on a common item is left out. Length metrics describe, they do not
    judge: their verdict is "higher"/"lower", never "better"/"worse".
    """
    out: dict[str, Comparison] = {}
    for name in metrics:
        _, a_vals, b_vals = paired_values(a, b, name)
        if not a_vals:
            continue
        result = compare(a_vals, b_vals, kind=metric_kind(name))
        if name in DESCRIPTIVE_METRICS:
            plain = {"better": "higher", "worse": "lower"}.get(result.verdict, result.verdict)
            result = dataclasses.replace(result, verdict=plain)
        out[name] = result
    return out


def paired_values(
    a: Sequence[ItemScore], b: Sequence[ItemScore], metric: str,
) -> tuple[list[str], list[float | bool], list[float | bool]]:
    """(ids, a values, b values) for the items both runs scored and where the metric is defined on
    both sides, in `a`'s order – ready for `stats.compare`."""
    b_by_id = {s.id: s for s in b}
    ids, va, vb = [], [], []
    for sa in a:
        sb = b_by_id.get(sa.id)
        if sb is None:
            continue
        x, y = metric_value(sa, metric), metric_value(sb, metric)
        if x is None or y is None:
            continue
        ids.append(sa.id)
        va.append(x)
        vb.append(y)
    return ids, va, vb


def stored_scores(items: dict[str, dict]) -> list[ItemScore]:
    """Item scores as the evaluation store keeps them (`ItemScore.to_dict()` per test id)."""
    return [ItemScore.from_dict({**scores, "id": item_id}) for item_id, scores in items.items()]
