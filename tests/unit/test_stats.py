"""Seed statistics: Student t quantiles against published values, means with 95% intervals, paired
ratios and verdicts (better / worse / within noise / no verdict with one seed)."""

from __future__ import annotations

import math

import pytest

from yxanul.stats import mean_interval, paired_ratio, t_quantile, verdict


@pytest.mark.parametrize(("p", "df", "expected"), [
    (0.975, 1, 12.706205), (0.975, 2, 4.302653), (0.975, 3, 3.182446), (0.975, 4, 2.776445),
    (0.975, 9, 2.262157), (0.975, 30, 2.042272), (0.995, 3, 5.840909), (0.95, 10, 1.812461),
    (0.975, 1000, 1.962339), (0.5, 7, 0.0), (0.025, 2, -4.302653)])
def test_t_quantiles_match_published_tables(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=5e-7)


def test_t_quantile_rejects_nonsense():
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        t_quantile(0.9, 0)


def test_mean_interval_is_the_student_t_interval():
    est = mean_interval([2.80, 2.82, 2.78])
    assert est.n == 3 and est.mean == pytest.approx(2.80, abs=1e-12)
    assert est.std == pytest.approx(0.02, abs=1e-12)
    assert est.half_width == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    assert est.low == pytest.approx(2.80 - est.half_width) and est.high == pytest.approx(2.80 + est.half_width)
    one = mean_interval([2.5])
    assert (one.mean, one.half_width, one.std, one.n) == (2.5, None, None, 1)
    assert one.contains(2.5) is None
    assert mean_interval([]) is None


def test_verdicts():
    better = mean_interval([-0.10, -0.09, -0.11])  # every seed lower: interval [-0.125, -0.075]
    assert verdict(better, lower_is_better=True) == "better"
    assert verdict(better, lower_is_better=False) == "worse"
    noise = mean_interval([0.01, -0.02, 0.01])  # contains 0
    assert verdict(noise, lower_is_better=True) == "within noise"
    assert verdict(mean_interval([-0.1]), lower_is_better=True) == "1 seed: no verdict"
    assert verdict(None, lower_is_better=True) == "no data"


def test_paired_ratio_pairs_by_seed_and_skips_unshared_seeds():
    est = paired_ratio({0: 104.0, 1: 115.5, 2: 92.7, 3: 50.0}, {0: 100.0, 1: 110.0, 2: 90.0})
    assert est.n == 3 and est.mean == pytest.approx(1.04, abs=1e-12)
    assert est.std == pytest.approx(0.01, abs=1e-12)
    assert verdict(est, lower_is_better=False, null=1.0, words=("faster", "slower")) == "faster"
    slower = paired_ratio({0: 90.0, 1: 99.0}, {0: 100.0, 1: 100.0})
    assert verdict(slower, lower_is_better=False, null=1.0, words=("faster", "slower")) == "within noise"
    assert slower.mean == pytest.approx(0.945) and slower.half_width == pytest.approx(12.706205 * 0.045, rel=1e-6)
