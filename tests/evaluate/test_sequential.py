"""The stopping rule `baseline` answers the test set under: the interval, the looks, the decision, and
its error rate measured on simulated test sets."""

import random
from statistics import NormalDist

import pytest

from tunesmith.evaluate import sequential as S
from tunesmith.evaluate.stats import wilson_interval


def test_wilson_interval_textbook_values_and_edges():
    lo, hi = wilson_interval(8, 10, level=0.95)  # the usual worked example: 8 of 10 at 95 %
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    z2 = NormalDist().inv_cdf(0.995) ** 2
    assert wilson_interval(0, 16, level=0.99) == (0.0, pytest.approx(z2 / (16 + z2)))  # 0.293
    assert wilson_interval(16, 16, level=0.99) == (pytest.approx(16 / (16 + z2)), 1.0)
    lo, hi = wilson_interval(3, 20, level=0.9)
    mirror = wilson_interval(17, 20, level=0.9)
    assert (lo, hi) == (pytest.approx(1 - mirror[1]), pytest.approx(1 - mirror[0]))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    strict, loose = wilson_interval(5, 20, level=0.99), wilson_interval(5, 20, level=0.95)
    assert strict[0] < loose[0] < 0.25 < loose[1] < strict[1]  # a stricter level: a wider interval
    for bad in ((3, 2), (-1, 4)):
        with pytest.raises(ValueError, match="0 <= passed <= n"):
            wilson_interval(*bad)
    with pytest.raises(ValueError, match="level must be between 0 and 1"):
        wilson_interval(1, 2, level=1.0)


def test_looks_and_the_bonferroni_level():
    assert S.looks(91) == [16, 32, 48, 64, 80] and S.look_level(91) == pytest.approx(0.99)
    assert S.looks(100) == [16, 32, 48, 64, 80, 96] and S.look_level(100) == pytest.approx(1 - 0.05 / 6)
    assert S.looks(16) == [] and S.looks(17) == [16] and S.look_level(17) == pytest.approx(0.95)
    assert S.looks(91, chunk=16, minimum=30) == [32, 48, 64, 80]  # never before the minimum sample
    assert S.percent(0.99) == "99 %" and S.percent(1 - 0.05 / 3) == "98.3 %"


def test_decide_below_above_and_straddling_the_bar():
    below = S.decide(0, 16, 0.8, 0.99)
    assert below.side == "below" and below.why == "the 99 % interval [0.00, 0.29] is below the 0.80 bar"
    above = S.decide(32, 32, 0.8, 0.99)
    assert above.side == "above" and above.lo >= 0.8
    assert above.why == f"the 99 % interval [{above.lo:.2f}, 1.00] is above the 0.80 bar"
    across = S.decide(13, 16, 0.8, 0.99)
    assert across.side is None and across.lo < 0.8 < across.hi and "straddles the 0.80 bar" in across.why
    assert S.decide(16, 16, 0.8, 0.99).side is None  # 16 of 16 is not yet enough for 80 % at 99 %
    assert S.decide(8, 16, 0.8, 0.99).side == "below" and S.decide(9, 16, 0.8, 0.99).side is None
    # `rate >= threshold` passes: an interval whose lower end is exactly the bar is above it
    lo = wilson_interval(40, 40, level=0.95)[0]
    assert S.decide(40, 40, lo, 0.95).side == "above"


def test_run_rule_answers_the_seeded_order_and_stops_at_the_first_clear_look():
    order = S.sample_order(91)
    assert sorted(order) == list(range(91)) and order != list(range(91)) and order == S.sample_order(91)
    asked: list[list[int]] = []

    def never(indices):
        asked.append(indices)
        return [False] * len(indices)

    sample = S.run_rule(91, never, 0.8)
    assert asked == [order[:16]]  # the minimum sample, in the seeded order, then the interval decided
    assert (sample.evaluated, sample.of) == (16, 91)
    assert sample.stopped == "the 99 % interval [0.00, 0.29] is below the 0.80 bar"
    assert sample.to_dict() == {"evaluated": 16, "of": 91, "stopped": sample.stopped,
                                "look": {"passed": 0, "n": 16, "interval": [0.0, sample.look.hi], "level": 0.99,
                                         "side": "below"}}
    always = S.run_rule(91, lambda idx: [True] * len(idx), 0.8)
    assert always.evaluated == 32 and always.look.side == "above"  # 16/16 cannot tell at 99 %, 32/32 can
    # a generation error answers nothing: it is not counted as a failure
    errors = S.run_rule(91, lambda idx: [None] * len(idx), 0.8)
    assert errors.evaluated == 91 and errors.stopped is None and errors.look.n == 0


def test_run_rule_that_cannot_decide_answers_everything():
    fails = set(range(0, 91, 5))  # one in five fails: an 80 % test set sits on the bar

    sample = S.run_rule(91, lambda idx: [i not in fails for i in idx], 0.8)
    assert sample.evaluated == 91 and sample.stopped is None
    assert sample.look.n == 80 and sample.look.side is None  # the last look still straddled the bar
    assert S.run_rule(10, lambda idx: [False] * len(idx), 0.8).look is None  # too small to look at all


def test_early_stops_rarely_disagree_with_the_whole_test_set():
    """The point of the stricter interval: whatever the test set's pass rate, stopping early gives the
    answer the whole test set would give at least 95 % of the time (simulated test sets of 91 items,
    near the bar where a wrong stop is likeliest; far from it every run stops, and rightly)."""
    rng = random.Random(7)
    runs, worst, stopped = 150, 0.0, 0
    for k in range(58, 92, 3):
        population = [True] * k + [False] * (91 - k)
        full_passes = k / 91 >= 0.8
        wrong = 0
        for _ in range(runs):
            rng.shuffle(population)
            sample = S.run_rule(91, lambda idx: [population[i] for i in idx], 0.8)
            if sample.stopped:
                stopped += 1
                wrong += (sample.look.side == "above") != full_passes
        worst = max(worst, wrong / runs)
    assert stopped > runs  # the rule does stop in this range (far below the bar, at 58/91, nearly always)
    assert worst <= S.ALPHA
