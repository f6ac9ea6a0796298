"""Seed statistics: Student t quantiles against published values, means with 95% intervals, paired ratios as
geometric means with log-scale intervals, the minimal detectable effect, and verdicts (better / worse / no
difference detected / no verdict with one seed)."""

from __future__ import annotations

import math

import pytest

from yxanul.stats import geometric_interval, mean_interval, minimal_detectable_effect, paired_ratio, t_quantile, verdict


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
    assert (one.mean, one.low, one.high, one.std, one.n, one.half_width) == (2.5, None, None, None, 1, None)
    assert one.contains(2.5) is None
    assert mean_interval([]) is None


def test_verdicts():
    better = mean_interval([-0.10, -0.09, -0.11])  # every seed lower: interval [-0.125, -0.075]
    assert verdict(better, lower_is_better=True) == "better"
    assert verdict(better, lower_is_better=False) == "worse"
    noise = mean_interval([0.01, -0.02, 0.01])  # contains 0
    assert verdict(noise, lower_is_better=True) == "no difference detected"
    assert verdict(mean_interval([-0.1]), lower_is_better=True) == "1 seed: no verdict"
    assert verdict(None, lower_is_better=True) == "no data"


def test_ratios_are_geometric_means_with_log_scale_intervals():
    """Ratios never get a negative lower bound: the interval is the t interval of the log ratios, exponentiated."""
    est = paired_ratio({0: 104.0, 1: 115.5, 2: 92.7, 3: 50.0}, {0: 100.0, 1: 110.0, 2: 90.0})
    logs = [math.log(1.04), math.log(1.05), math.log(1.03)]
    mean_log = sum(logs) / 3
    sd_log = math.sqrt(sum((x - mean_log) ** 2 for x in logs) / 2)
    half = 4.302653 * sd_log / math.sqrt(3)
    assert est.n == 3 and est.log_scale and est.half_width is None
    assert est.mean == pytest.approx((1.04 * 1.05 * 1.03) ** (1 / 3), rel=1e-12)
    assert est.std == pytest.approx(sd_log, rel=1e-12)
    assert (est.low, est.high) == (pytest.approx(math.exp(mean_log - half), rel=1e-6),
                                   pytest.approx(math.exp(mean_log + half), rel=1e-6))
    assert verdict(est, lower_is_better=False, null=1.0, words=("faster", "slower")) == "faster"
    # two seeds 0.9x and 0.99x: t(0.975, 1) = 12.7 makes the interval wide, but still positive and around 0.944x
    slower = paired_ratio({0: 90.0, 1: 99.0}, {0: 100.0, 1: 100.0})
    assert slower.mean == pytest.approx(math.sqrt(0.9 * 0.99), rel=1e-12)
    assert slower.low > 0 and slower.low * slower.high == pytest.approx(slower.mean ** 2, rel=1e-9)
    assert verdict(slower, lower_is_better=False, null=1.0, words=("faster", "slower")) == "no difference detected"
    # a ratio and its reciprocal have reciprocal intervals
    inverse = paired_ratio({0: 100.0, 1: 100.0}, {0: 90.0, 1: 99.0})
    assert inverse.mean == pytest.approx(1 / slower.mean) and inverse.low == pytest.approx(1 / slower.high)
    assert geometric_interval([2.0]).low is None and geometric_interval([]) is None
    with pytest.raises(ValueError, match="positive values"):
        geometric_interval([1.0, -1.0])


def test_minimal_detectable_effect_of_a_paired_design():
    """MDE = (t(0.975, n-1) + t(0.80, n-1)) x sd / sqrt(n); t(0.80, 1) = tan(0.3 pi), t(0.80, 2) = 0.6 / sqrt(0.32)."""
    assert t_quantile(0.8, 1) == pytest.approx(math.tan(0.3 * math.pi), abs=1e-9)
    assert t_quantile(0.8, 2) == pytest.approx(0.6 / math.sqrt(0.32), abs=1e-9)
    assert minimal_detectable_effect(0.01, 3) == pytest.approx((4.302653 + 0.6 / math.sqrt(0.32)) * 0.01 / math.sqrt(3),
                                                               rel=1e-6)
    two = minimal_detectable_effect(0.01, 2)
    assert two == pytest.approx((12.706205 + math.tan(0.3 * math.pi)) * 0.01 / math.sqrt(2), rel=1e-6)
    assert two > 3 * minimal_detectable_effect(0.01, 3)  # the second degree of freedom is worth a factor 3 here
    assert minimal_detectable_effect(0.01, 1) is None and minimal_detectable_effect(None, 3) is None
