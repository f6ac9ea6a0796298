"""Seed statistics for comparisons: means with Student-t 95% intervals, seed-paired differences and
ratios (geometric means with log-scale intervals), the minimal detectable effect of a design, and the verdict
a comparison may state. Pure Python (no scipy, no numpy): the report and its tests call it on plain lists.

    est = mean_interval([2.79, 2.81, 2.80])           # Estimate(mean, low, high, n, std)
    gap = mean_interval([-0.11, -0.10, -0.12])        # per-seed differences arm - reference (paired)
    verdict(gap, lower_is_better=True)                # "better" / "worse" / "no difference detected" / no verdict
    speed = paired_ratio({0: 1.3e5, 1: 1.4e5}, {0: 1.0e5, 1: 1.1e5})   # geometric mean of per-seed ratios
    minimal_detectable_effect(gap.std, gap.n)         # the smallest effect 3 seeds detect at 80% power

Seeds are replicates: the arms of a comparison share each seed (same initialisation, same data order),
so the difference is taken per seed and the interval is over those differences (a paired t interval),
which removes the between-seed variation that both arms share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["MOST_SEEDS", "NO_DIFFERENCE", "POWER", "Estimate", "geometric_interval", "mean_interval",
           "minimal_detectable_effect", "paired_ratio", "seeds_needed", "t_quantile", "verdict"]

LEVEL = 0.95
"""Two-sided confidence level of every interval the report prints."""


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (e.g. t_quantile(0.975, 2) = 4.302653).

    Inverts the CDF (regularized incomplete beta) by bisection to ~1e-12; accurate for df >= 1.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"df must be positive, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its two-sided 95% Student-t interval ``[low, high]``.

    On the log scale (``log_scale=True``, for ratios and other positive quantities whose spread is a factor:
    tokens/s, times, tokens to a target) the mean is the geometric mean and the interval is the t interval of
    the logs, exponentiated: it is never negative and a ratio's interval is symmetric in its reciprocal.
    """

    mean: float
    low: float | None
    """Lower bound of the interval; None with one value (no interval)."""
    high: float | None
    n: int
    std: float | None
    """Sample standard deviation across seeds (n-1 denominator) of the values, or of their natural logs on the
    log scale; None with one value."""
    log_scale: bool = False

    @property
    def half_width(self) -> float | None:
        """Half width of a linear-scale interval (mean ± half_width); None on the log scale or without one."""
        if self.log_scale or self.low is None or self.high is None:
            return None
        return (self.high - self.low) / 2

    def contains(self, value: float) -> bool | None:
        """Whether the interval contains ``value`` (None without an interval)."""
        if self.low is None or self.high is None:
            return None
        return self.low <= value <= self.high


def _t_interval(xs: list[float], level: float) -> tuple[float, float | None, float | None]:
    """(mean, half width, std) of the Student-t interval of ``xs`` (None, None with one value)."""
    n = len(xs)
    mean = sum(xs) / n
    if n == 1:
        return mean, None, None
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n), std


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Estimate | None:
    """Mean and Student-t interval of ``values`` (None when there are none)."""
    xs = [float(v) for v in values]
    if not xs:
        return None
    mean, half, std = _t_interval(xs, level)
    if half is None:
        return Estimate(mean, None, None, 1, None)
    return Estimate(mean, mean - half, mean + half, len(xs), std)


def geometric_interval(values: Sequence[float], level: float = LEVEL) -> Estimate | None:
    """Geometric mean of positive ``values`` and the t interval of their logs, exponentiated (None when there
    are none). Non-positive values have no logarithm: a ValueError names them."""
    xs = [float(v) for v in values]
    if not xs:
        return None
    if any(x <= 0 for x in xs):
        raise ValueError(f"a geometric mean needs positive values, got {xs}")
    mean, half, std = _t_interval([math.log(x) for x in xs], level)
    if half is None:
        return Estimate(math.exp(mean), None, None, 1, None, log_scale=True)
    return Estimate(math.exp(mean), math.exp(mean - half), math.exp(mean + half), len(xs), std, log_scale=True)


def paired_ratio(numerator: Mapping[int, float], denominator: Mapping[int, float],
                 level: float = LEVEL) -> Estimate | None:
    """Geometric mean of ``numerator[s] / denominator[s]`` over the seeds both have (e.g. FP8 tokens/s over BF16
    tokens/s per seed), with the t interval of the log ratios: the paired test of a ratio."""
    seeds = sorted(s for s in set(numerator) & set(denominator) if denominator[s] and numerator[s])
    return geometric_interval([numerator[s] / denominator[s] for s in seeds], level)


POWER = 0.8
"""The power at which the report states the minimal detectable effect."""


def minimal_detectable_effect(std: float | None, n: int, level: float = LEVEL, power: float = POWER) -> float | None:
    """The smallest true effect a paired t test of ``n`` seeds detects with probability ``power`` at the two-sided
    ``level``, given the standard deviation ``std`` of the per-seed differences:

        MDE = (t(1 - alpha/2, n - 1) + t(power, n - 1)) x std / sqrt(n),   alpha = 1 - level

    (the usual normal-approximation formula with t quantiles in place of z, as for a one-sample t test). For a
    ratio, pass the standard deviation of the log ratios: the MDE is then a log factor (``exp(MDE) - 1`` as a
    share). None with fewer than 2 seeds or no standard deviation."""
    if std is None or n < 2:
        return None
    return (t_quantile(0.5 + level / 2.0, n - 1) + t_quantile(power, n - 1)) * std / math.sqrt(n)


MOST_SEEDS = 1000
"""The most seed pairs :func:`seeds_needed` counts up to."""


def seeds_needed(std: float, effect: float, level: float = LEVEL, power: float = POWER,
                 most: int = MOST_SEEDS) -> int | None:
    """The fewest seed pairs whose :func:`minimal_detectable_effect` is at most ``effect`` (the same formula,
    so the two agree); None when even ``most`` are not enough."""
    if std <= 0:
        return 2
    for n in range(2, most + 1):
        mde = minimal_detectable_effect(std, n, level, power)
        if mde is not None and mde <= effect:
            return n
    return None


NO_DIFFERENCE = "no difference detected"
"""The verdict when the interval contains the null: the data allow every value in it, no difference included."""


def verdict(estimate: Estimate | None, *, lower_is_better: bool, null: float = 0.0,
            words: tuple[str, str] = ("better", "worse")) -> str:
    """better / worse when the interval excludes ``null`` (0 for a difference, 1 for a ratio), else "no
    difference detected" (which is not "no difference": read the interval); one seed gives no interval and so
    no verdict."""
    if estimate is None:
        return "no data"
    inside = estimate.contains(null)
    if inside is None:
        return "1 seed: no verdict"
    if inside:
        return NO_DIFFERENCE
    good = estimate.mean < null if lower_is_better else estimate.mean > null
    return words[0] if good else words[1]
