"""Paired t intervals and Holm's correction against hand-computed examples."""

from __future__ import annotations

import math

import pytest

from experiments.grounding.stats import holm, paired


def test_paired_t_interval_of_six_seeds_by_hand():
    # Differences 1..6: mean 3.5, sd sqrt(3.5) = 1.8708, se 0.76376; t(5) at 0.975 is 2.5706.
    found = paired([1, 2, 3, 4, 5, 6])
    assert found.n == 6 and found.mean == pytest.approx(3.5) and found.std == pytest.approx(math.sqrt(3.5))
    assert found.t == pytest.approx(3.5 / 0.763763, rel=1e-5)
    lo, hi = found.interval(0.05)
    assert lo == pytest.approx(3.5 - 2.570582 * 0.763763, abs=1e-4) and hi == pytest.approx(5.4634, abs=1e-3)
    # A stricter level widens it: t(5) at 1 - 0.05/6 is 3.5341 (alpha / 3, two-sided).
    lo3, hi3 = found.interval(0.05 / 3)
    assert hi3 - 3.5 == pytest.approx(3.53412 * 0.763763, abs=1e-3)
    # Two-sided p of t = 4.5826 on 5 df: 0.00594.
    assert found.p == pytest.approx(0.00594, abs=5e-5)


def test_holm_steps_down_and_stops_at_the_first_p_above_its_level():
    # Sorted: 0.01 (x3 = 0.03 <= 0.05, level 0.0167: rejected), 0.03 (level 0.025: stop; x2 = 0.06),
    # 0.04 (not rejected after the stop; running max 0.06).
    found = holm([0.01, 0.04, 0.03], alpha=0.05)
    assert [round(a.p, 6) for a in found] == [0.03, 0.06, 0.06]
    assert [a.rejected for a in found] == [True, False, False]
    # Interval levels: alpha / 3 for the rejected one; the stop's alpha / 2 for both after it.
    assert [a.alpha for a in found] == pytest.approx([0.05 / 3, 0.025, 0.025])


def test_holm_rejects_all_when_each_p_clears_its_level_and_caps_at_one():
    found = holm([0.001, 0.02, 0.049])
    assert [a.rejected for a in found] == [True, True, True]
    assert [a.alpha for a in found] == pytest.approx([0.05 / 3, 0.025, 0.05])
    assert [a.p for a in holm([0.6, 0.9])] == [1.0, 1.0]


def test_an_interval_excludes_zero_exactly_when_holm_rejects():
    tests = [paired([3, 4, 5, 6, 5, 4]), paired([0.5, -1, 2, 1, -0.5, 1.5]), paired([1, 2, 1.5, 2.5, 1, 2])]
    for test, adjusted in zip(tests, holm([t.p for t in tests])):
        lo, hi = test.interval(adjusted.alpha)
        assert (lo > 0 or hi < 0) == adjusted.rejected
