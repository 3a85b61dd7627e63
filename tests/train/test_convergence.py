"""Convergence: stop once validation loss and answer match stop improving; the answer-match count."""

from __future__ import annotations

import pytest
import torch

from tunesmith.train.convergence import Plateau
from tunesmith.train.trainer import AnswerMatch


def test_still_improving_loss_keeps_training():
    rule = Plateau(window=2, min_delta=0.01)
    assert not any(rule.add(loss, None) for loss in (1.0, 0.8, 0.7, 0.65, 0.62, 0.60))


def test_a_flat_loss_and_flat_answer_match_stop():
    rule = Plateau(window=2, min_delta=0.01)
    results = [rule.add(loss, match) for loss, match in ((1.0, 0.1), (0.5, 0.4), (0.499, 0.4), (0.498, 0.38))]
    assert results == [False, False, False, True]
    assert "did not improve over the last 2 evaluations" in rule.why() and "best 40%" in rule.why()


def test_a_rising_answer_match_keeps_training_on_a_flat_loss():
    rule = Plateau(window=2, min_delta=0.01)
    assert not rule.add(0.5, 0.40)
    assert not rule.add(0.5, 0.40)
    assert not rule.add(0.499, 0.42)  # loss flat, but more answers right than ever
    assert not rule.add(0.499, 0.45)


def test_a_small_loss_gain_is_not_progress():
    rule = Plateau(window=1, min_delta=0.05)
    rule.add(1.0, None)
    assert rule.add(0.97, None)  # 3 % better: under the 5 % it takes
    assert not rule.add(0.90, None)


def test_answer_match_counts_rows_whose_every_labelled_token_is_right():
    match = AnswerMatch()
    keep = torch.tensor([[False, True, True], [True, True, False], [False, False, False]])
    # flattened labelled positions: row 0 has 2, row 1 has 2; row 2 has none (not counted)
    correct = torch.tensor([True, True, True, False])
    match.add(keep, correct)
    assert (match.rows, match.exact) == (2, 1)
    assert match.take() == pytest.approx(0.5)
    assert match.take() is None  # reset after taking

