"""tunesmith.evaluate.stats against hand-computed values."""

from __future__ import annotations

import math

import pytest

from tunesmith.evaluate.stats import (
    Comparison,
    McNemar,
    bootstrap_ci,
    compare,
    mcnemar_exact,
    min_detectable_difference,
    paired_bootstrap,
)
from tunesmith.evaluate.types import Estimate


def _pairs(b_only: int, a_only: int, both: int = 0, neither: int = 0) -> tuple[list[bool], list[bool]]:
    """Pass lists with the given discordant / concordant counts."""
    a = [False] * b_only + [True] * a_only + [True] * both + [False] * neither
    b = [True] * b_only + [False] * a_only + [True] * both + [False] * neither
    return a, b


# --- McNemar --------------------------------------------------------------------------------------


def test_mcnemar_one_versus_nine() -> None:
    # n_d = 10, k = min(1, 9) = 1: P(X <= 1) = (C(10,0) + C(10,1)) / 2^10 = (1 + 10) / 1024
    # p = 2 * 11 / 1024 = 22 / 1024 = 0.021484375
    a, b = _pairs(b_only=1, a_only=9, both=5, neither=7)
    result = mcnemar_exact(a, b)
    assert result == McNemar(b_only=1, a_only=9, p_value=0.021484375)
    assert result.discordant == 10
    assert result.to_dict() == {"b_only": 1, "a_only": 9, "p_value": 0.021484375}


def test_mcnemar_is_symmetric() -> None:
    a, b = _pairs(b_only=9, a_only=1)
    assert mcnemar_exact(a, b) == McNemar(9, 1, 0.021484375)


def test_mcnemar_no_discordant_pairs() -> None:
    a, b = _pairs(b_only=0, a_only=0, both=4, neither=3)
    assert mcnemar_exact(a, b) == McNemar(0, 0, 1.0)
    assert mcnemar_exact([], []) == McNemar(0, 0, 1.0)


def test_mcnemar_balanced_discordance_caps_at_one() -> None:
    # n_d = 6, k = 3: P(X <= 3) = (1 + 6 + 15 + 20) / 64 = 42/64; 2 * 42/64 = 1.3125 -> capped at 1
    a, b = _pairs(b_only=3, a_only=3)
    assert mcnemar_exact(a, b) == McNemar(3, 3, 1.0)


def test_mcnemar_zero_versus_five() -> None:
    # n_d = 5, k = 0: P(X <= 0) = 1/32; p = 2/32 = 0.0625 (not significant at 0.05)
    a, b = _pairs(b_only=5, a_only=0, both=10)
    assert mcnemar_exact(a, b).p_value == 0.0625


def test_mcnemar_accepts_zero_one_and_rejects_other_values() -> None:
    assert mcnemar_exact([0, 1, 1], [1, 1, 0]) == McNemar(1, 1, 1.0)
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])
    with pytest.raises(ValueError):
        mcnemar_exact([0.5], [1])


# --- bootstrap ------------------------------------------------------------------------------------


def test_bootstrap_constant_values_have_zero_width() -> None:
    assert bootstrap_ci([1, 1, 1]) == Estimate(1.0, 1.0, 1.0, 3)
    assert bootstrap_ci([0.1] * 7) == Estimate(0.1, 0.1, 0.1, 7)


def test_bootstrap_empty_and_single() -> None:
    e = bootstrap_ci([])
    assert e.n == 0 and math.isnan(e.mean) and math.isnan(e.lo) and math.isnan(e.hi)
    assert bootstrap_ci([0.25]) == Estimate(0.25, 0.25, 0.25, 1)


def test_bootstrap_half_ones() -> None:
    # mean = 50/100 = 0.5; standard error sqrt(0.5 * 0.5 / 100) = 0.05, so the 95 % interval is
    # about 0.5 -/+ 1.96 * 0.05 = (0.402, 0.598)
    values = [1] * 50 + [0] * 50
    e = bootstrap_ci(values)
    assert e.mean == 0.5 and e.n == 100
    assert 0.38 < e.lo < 0.45
    assert 0.55 < e.hi < 0.62
    assert e.lo <= e.mean <= e.hi


def test_bootstrap_is_deterministic_given_seed() -> None:
    values = [0.1, 0.5, 0.9, 0.3, 0.7, 0.2, 0.8]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)
    # blocks of resamples do not change the answer's determinism for larger n
    big = [i % 7 / 7 for i in range(3000)]
    assert bootstrap_ci(big, seed=1) == bootstrap_ci(big, seed=1)


def test_bootstrap_level_widens_interval() -> None:
    values = [1] * 30 + [0] * 70
    narrow, wide = bootstrap_ci(values, level=0.5), bootstrap_ci(values, level=0.99)
    assert wide.lo < narrow.lo and narrow.hi < wide.hi


def test_bootstrap_rejects_nan_and_bad_level() -> None:
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], level=1.0)


def test_paired_bootstrap_is_bootstrap_of_differences() -> None:
    a = [0, 0, 1, 1, 0.5, 0.2]
    b = [1, 1, 1, 1, 0.5, 0.4]
    # differences b - a = [1, 1, 0, 0, 0, 0.2]; mean = 2.2 / 6 = 0.3666...
    e = paired_bootstrap(a, b, seed=7)
    assert e.n == 6
    assert e.mean == pytest.approx(2.2 / 6)
    assert 0.0 <= e.lo <= e.mean <= e.hi <= 1.0
    assert e == bootstrap_ci([1, 1, 0, 0, 0, 0.2], seed=7)


def test_paired_bootstrap_needs_same_length() -> None:
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([1, 2, 3], [1, 2])


# --- minimum detectable difference ----------------------------------------------------------------


def test_mde_hand_value() -> None:
    # psi = 2 * 0.5 * 0.5 = 0.5; z_0.975 = 1.959964, z_0.8 = 0.841621, sum = 2.801585
    # MDE = 2.801585 * sqrt(0.5 / 100) = 2.801585 * 0.0707107 = 0.198101
    assert min_detectable_difference(100) == pytest.approx(0.198101, abs=1e-6)


def test_mde_with_given_discordance_and_scaling() -> None:
    # psi = 0.2, n = 50: 2.801585 * sqrt(0.2 / 50) = 2.801585 * 0.0632456 = 0.177187
    assert min_detectable_difference(50, discordance=0.2) == pytest.approx(0.177187, abs=1e-6)
    # p = 0.9: psi = 2 * 0.9 * 0.1 = 0.18; n = 400: 2.801585 * sqrt(0.18 / 400) = 2.801585 * 0.0212132 = 0.059431
    assert min_detectable_difference(400, p=0.9) == pytest.approx(0.059431, abs=1e-6)
    # four times the items, half the MDE
    assert min_detectable_difference(400) == pytest.approx(min_detectable_difference(100) / 2)
    assert min_detectable_difference(0) == math.inf
    with pytest.raises(ValueError):
        min_detectable_difference(-1)


# --- compare --------------------------------------------------------------------------------------


def test_compare_binary_better() -> None:
    # b_only = 12, a_only = 0: p = 2 * (1 / 2^12) = 0.00048828125; diff = 12 / 40 = 0.3
    a, b = _pairs(b_only=12, a_only=0, both=10, neither=18)
    c = compare(a, b, kind="binary")
    assert isinstance(c, Comparison)
    assert c.verdict == "better"
    assert c.p_value == 0.00048828125
    assert c.diff.mean == pytest.approx(0.3) and c.diff.n == 40 and c.n == 40
    assert c.diff.lo > 0
    # psi = 0.5 at p = 0.5, n = 40: 2.801585 * sqrt(0.5 / 40) = 2.801585 * 0.1118034 = 0.313227
    assert c.mde == pytest.approx(0.313227, abs=1e-6)


def test_compare_binary_worse() -> None:
    # b_only = 1, a_only = 9: p = 0.021484375; diff = (1 - 9) / 30 = -0.2667
    a, b = _pairs(b_only=1, a_only=9, both=10, neither=10)
    c = compare(a, b, kind="binary")
    assert c.verdict == "worse"
    assert c.p_value == 0.021484375
    assert c.diff.mean == pytest.approx(-8 / 30)


def test_compare_binary_no_difference() -> None:
    a, b = _pairs(b_only=3, a_only=3, both=10, neither=4)
    c = compare(a, b, kind="binary")
    assert c.verdict == "no detectable difference"
    assert c.p_value == 1.0 and c.diff.mean == 0.0
    # a positive difference that is not significant: p = 0.0625 (see above) -> no verdict
    a, b = _pairs(b_only=5, a_only=0, both=10)
    assert compare(a, b, kind="binary").verdict == "no detectable difference"


def test_compare_scores() -> None:
    a = [0.2, 0.4, 0.6, 0.3, 0.5, 0.7, 0.1, 0.8, 0.4, 0.6]
    better = [x + 0.1 + 0.01 * (i % 3) for i, x in enumerate(a)]  # every item up by 0.10-0.12
    c = compare(a, better, kind="score")
    assert c.verdict == "better" and c.p_value is None and c.n == 10 and c.diff.lo > 0
    assert compare(better, a, kind="score").verdict == "worse"
    mixed = [x + (0.3 if i % 2 else -0.3) for i, x in enumerate(a)]  # diffs +-0.3, mean 0
    c = compare(a, mixed, kind="score")
    assert c.verdict == "no detectable difference"
    assert c.diff.lo < 0 < c.diff.hi
    # sd of the diffs (+-0.3, n = 10, ddof = 1) = 0.3 * sqrt(10/9) = 0.316228
    # MDE = 2.801585 * 0.316228 / sqrt(10) = 2.801585 * 0.1 = 0.280158
    assert c.mde == pytest.approx(0.280158, abs=1e-6)


def test_compare_single_item_never_decides() -> None:
    c = compare([0.0], [1.0], kind="score")
    assert c.verdict == "no detectable difference" and c.mde == math.inf


def test_compare_is_deterministic_and_serialisable() -> None:
    a, b = _pairs(b_only=6, a_only=2, both=5, neither=7)
    c1, c2 = compare(a, b, kind="binary", seed=5), compare(a, b, kind="binary", seed=5)
    assert c1 == c2
    d = c1.to_dict()
    assert set(d) == {"diff", "p_value", "mde", "verdict", "n"}
    assert set(d["diff"]) == {"mean", "lo", "hi", "n"}
    with pytest.raises(ValueError):
        compare(a, b, kind="ordinal")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        compare(a, b[:-1], kind="binary")
