"""Paired statistics for evaluation: bootstrap intervals, McNemar's exact test, detectable differences.

Every function here is pure and deterministic given its `seed` (numpy's PCG64 via
`numpy.random.default_rng(seed)`), so the same inputs always give the same report.

* `bootstrap_ci` – the mean of a list with a percentile-bootstrap interval and its n.
* `paired_bootstrap` – the same for the per-item difference `b - a` (items paired by position).
* `mcnemar_exact` – McNemar's exact (binomial) test on the discordant pairs of two pass/fail lists.
* `min_detectable_difference` – the smallest paired pass-rate difference a test set of n items
  detects with the given power (normal approximation; formula in its docstring).
* `compare` – all of the above turned into one verdict: "better", "worse" or
  "no detectable difference".
* `wilson_interval` – the Wilson score interval of a pass rate (k passes of n), for deciding on a
  sample while it grows (`evaluate.sequential`): unlike the bootstrap it does not collapse to zero
  width when every item so far failed (or passed).

Only numpy and the standard library are used (no scipy): the binomial tail is summed exactly with
`math.comb` and normal quantiles come from `statistics.NormalDist`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

from tunesmith.evaluate.types import Estimate

__all__ = [
    "Comparison",
    "McNemar",
    "bootstrap_ci",
    "compare",
    "mcnemar_exact",
    "min_detectable_difference",
    "paired_bootstrap",
    "wilson_interval",
]

#: Bootstrap resamples are drawn in blocks of at most this many indices, to bound memory.
_BLOCK_ELEMENTS = 1 << 20

_NAN = float("nan")


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on two paired pass/fail lists.

    `b_only`: items only B passes; `a_only`: items only A passes (the discordant pairs).
    """

    b_only: int
    a_only: int
    p_value: float

    @property
    def discordant(self) -> int:
        return self.b_only + self.a_only

    def to_dict(self) -> dict[str, Any]:
        return {"b_only": self.b_only, "a_only": self.a_only, "p_value": self.p_value}


@dataclass(frozen=True)
class Comparison:
    """B compared with A on the same items.

    `diff`: mean of `b - a` with its bootstrap interval and n (positive: B scores higher);
    `p_value`: McNemar's exact p for binary metrics, None for scores (the verdict then comes from the
    interval); `mde`: the minimum detectable difference at this n (see `min_detectable_difference`);
    `n`: the number of paired items.
    """

    diff: Estimate
    p_value: float | None
    mde: float
    #: "better" / "worse" / "no detectable difference"; "higher" / "lower" for descriptive metrics
    verdict: Literal["better", "worse", "no detectable difference", "higher", "lower"]
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"diff": self.diff.to_dict(), "p_value": self.p_value, "mde": self.mde,
                "verdict": self.verdict, "n": self.n}


def _as_array(values: Sequence[float | bool] | np.ndarray, what: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a flat list of numbers, got shape {arr.shape}")
    if arr.size and not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or infinite values; drop undefined items before computing statistics")
    return arr


def _check_level(level: float, n_boot: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1 (exclusive), got {level!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot!r}")


def bootstrap_ci(
    values: Sequence[float | bool] | np.ndarray,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """The mean of `values` with a percentile-bootstrap interval at `level`, and n.

    `n_boot` resamples of size n are drawn with replacement; the interval is the
    `(1 - level) / 2` and `(1 + level) / 2` percentiles (numpy's linear interpolation) of the
    resampled means. Edge cases: n = 0 gives `Estimate(nan, nan, nan, 0)`; n = 1 and all-equal
    values give a zero-width interval at the value. The interval is widened, if ever needed, to
    contain the mean. Booleans count as 0/1; NaN or infinite values raise ValueError.
    """
    _check_level(level, n_boot)
    arr = _as_array(values)
    n = int(arr.size)
    if n == 0:
        return Estimate(_NAN, _NAN, _NAN, 0)
    mean = float(arr.mean())
    if n == 1 or bool(np.all(arr == arr[0])):
        v = float(arr[0])
        return Estimate(v, v, v, n)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot, dtype=float)
    block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = arr[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return Estimate(mean, min(float(lo), mean), max(float(hi), mean), n)


def paired_bootstrap(
    a: Sequence[float | bool] | np.ndarray,
    b: Sequence[float | bool] | np.ndarray,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Mean of the per-item difference `b[i] - a[i]` with a percentile-bootstrap interval.

    Items are paired by position, and whole pairs are resampled, so the interval accounts for the
    correlation between the two systems on the same item. `a` and `b` must have the same length
    (ValueError otherwise).
    """
    arr_a, arr_b = _as_array(a, "a"), _as_array(b, "b")
    if arr_a.size != arr_b.size:
        raise ValueError("paired comparison needs the same items on both sides: "
                         f"got {arr_a.size} and {arr_b.size} values")
    return bootstrap_ci(arr_b - arr_a, n_boot=n_boot, level=level, seed=seed)


def _as_bools(values: Sequence[bool | int | float], what: str) -> list[bool]:
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)):
            out.append(bool(v))
        elif v in (0, 1):
            out.append(bool(v))
        else:
            raise ValueError(f"{what} must hold pass/fail values (True/False or 0/1), got {v!r}")
    return out


def mcnemar_exact(a_pass: Sequence[bool], b_pass: Sequence[bool]) -> McNemar:
    """McNemar's exact two-sided test for paired pass/fail results.

    With `b_only` = #items only B passes and `a_only` = #items only A passes, under the null
    hypothesis each discordant pair is equally likely to go either way, so with
    n_d = b_only + a_only and X ~ Binomial(n_d, 1/2):

        p = min(1, 2 * P(X <= min(b_only, a_only)))

    computed exactly (`math.comb`, rational arithmetic). No discordant pairs → p = 1.0.
    """
    a, b = _as_bools(a_pass, "a_pass"), _as_bools(b_pass, "b_pass")
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same items on both sides: got {len(a)} and {len(b)} values")
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    n_d = b_only + a_only
    if n_d == 0:
        return McNemar(b_only, a_only, 1.0)
    k = min(b_only, a_only)
    tail = Fraction(sum(math.comb(n_d, i) for i in range(k + 1)), 2 ** n_d)
    return McNemar(b_only, a_only, float(min(Fraction(1), 2 * tail)))


def min_detectable_difference(
    n: int,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    p: float = 0.5,
    discordance: float | None = None,
) -> float:
    """Smallest difference in pass rate between two systems on the same n items that a two-sided
    paired test at `alpha` detects with probability `power` (normal approximation).

    Each item contributes d = b - a in {-1, 0, +1}. For a small true difference the variance of d
    is about the discordance psi = P(a != b), so the mean difference has standard error
    sqrt(psi / n) and

        MDE = (z_{1 - alpha/2} + z_{power}) * sqrt(psi / n).

    Unless `discordance` is given, psi is taken as 2 p (1 - p): the discordance of two systems that
    each pass with probability `p` and fail independently. Real fine-tunes of the same base are
    positively correlated (lower psi), so this is conservative, and p = 0.5 is the worst case.

    Worked example: n = 100, alpha = 0.05, power = 0.8, p = 0.5 → psi = 0.5,
    z_0.975 = 1.959964, z_0.8 = 0.841621, MDE = 2.801585 * sqrt(0.005) = 0.198101.

    n = 0 gives infinity (nothing is detectable).
    """
    if n < 0:
        raise ValueError(f"n must not be negative, got {n!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1 (exclusive), got {alpha!r}")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be between 0 and 1 (exclusive), got {power!r}")
    if discordance is None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be between 0 and 1, got {p!r}")
        psi = 2.0 * p * (1.0 - p)
    else:
        if not 0.0 <= discordance <= 1.0:
            raise ValueError(f"discordance must be between 0 and 1, got {discordance!r}")
        psi = float(discordance)
    if n == 0:
        return math.inf
    z = NormalDist()
    return (z.inv_cdf(1.0 - alpha / 2.0) + z.inv_cdf(power)) * math.sqrt(psi / n)


def _score_mde(diffs: np.ndarray, alpha: float, power: float) -> float:
    """MDE for a mean paired score difference: (z_{1-alpha/2} + z_power) * sd(d) / sqrt(n)."""
    n = int(diffs.size)
    if n < 2:
        return math.inf
    z = NormalDist()
    sd = float(np.std(diffs, ddof=1))
    return (z.inv_cdf(1.0 - alpha / 2.0) + z.inv_cdf(power)) * sd / math.sqrt(n)


def compare(
    a_values: Sequence[float | bool],
    b_values: Sequence[float | bool],
    *,
    kind: Literal["binary", "score"],
    seed: int = 0,
    n_boot: int = 2000,
    alpha: float = 0.05,
    power: float = 0.8,
) -> Comparison:
    """Is B better than A on the same items?

    `kind="binary"` (pass/fail per item): McNemar's exact p-value, plus a paired-bootstrap interval
    for the difference in pass rate; "better" iff p < alpha and the mean difference is > 0, "worse"
    iff p < alpha and it is < 0. The MDE is `min_detectable_difference(n, p=0.5)` (worst case).

    `kind="score"` (a number per item): a paired-bootstrap interval at level 1 - alpha for the mean
    of `b - a`; "better" iff the whole interval is above 0, "worse" iff it is below 0; `p_value` is
    None. One item never gives a verdict (its interval has zero width but says nothing about
    spread). The MDE is (z_{1-alpha/2} + z_power) * sd(b - a) / sqrt(n) (infinite below 2 items).

    Anything else is "no detectable difference" – which is not evidence that the two are equal:
    compare the interval and the MDE with the difference that would matter.
    """
    level = 1.0 - alpha
    if kind == "binary":
        a, b = _as_bools(a_values, "a_values"), _as_bools(b_values, "b_values")
        test = mcnemar_exact(a, b)
        diff = paired_bootstrap(a, b, n_boot=n_boot, level=level, seed=seed)
        verdict: Literal["better", "worse", "no detectable difference"] = "no detectable difference"
        if test.p_value < alpha and diff.mean > 0:
            verdict = "better"
        elif test.p_value < alpha and diff.mean < 0:
            verdict = "worse"
        mde = min_detectable_difference(len(a), alpha=alpha, power=power)
        return Comparison(diff, test.p_value, mde, verdict, len(a))
    if kind == "score":
        arr_a, arr_b = _as_array(a_values, "a_values"), _as_array(b_values, "b_values")
        diff = paired_bootstrap(arr_a, arr_b, n_boot=n_boot, level=level, seed=seed)
        verdict = "no detectable difference"
        if diff.n >= 2 and diff.lo > 0:
            verdict = "better"
        elif diff.n >= 2 and diff.hi < 0:
            verdict = "worse"
        return Comparison(diff, None, _score_mde(arr_b - arr_a, alpha, power), verdict, diff.n)
    raise ValueError(f"kind must be 'binary' or 'score', got {kind!r}")


def wilson_interval(passed: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval at `level` for a pass rate of `passed` out of `n`.

    With p = passed / n and z = z_{(1 + level) / 2}:

        centre = (p + z^2 / 2n) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

    Worked example: 0 of 16 at 99 % (z = 2.575829): centre = half = z^2 / (2 (n + z^2)), so the
    interval is [0, z^2 / (n + z^2)] = [0, 0.293127]. n = 0 gives [0, 1] (nothing is known).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1 (exclusive), got {level!r}")
    if n < 0 or not 0 <= passed <= n:
        raise ValueError(f"need 0 <= passed <= n, got passed={passed!r}, n={n!r}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf((1.0 + level) / 2.0)
    p, z2 = passed / n, z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n))
    # exactly 0 (1) when nothing (everything) passed: rounding must not put the bar's side in doubt
    lo = 0.0 if passed == 0 else max(0.0, centre - half)
    hi = 1.0 if passed == n else min(1.0, centre + half)
    return lo, hi
