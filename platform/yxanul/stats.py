"""Seed statistics for comparisons: means with Student-t 95% intervals, seed-paired differences and
ratios, and the verdict a comparison may state. Pure Python (no scipy, no numpy): the report and its
tests call it on plain lists.

    est = mean_interval([2.79, 2.81, 2.80])           # Estimate(mean, half_width, n, std)
    gap = mean_interval([-0.11, -0.10, -0.12])        # per-seed differences arm - reference (paired)
    verdict(gap, lower_is_better=True)                # "better" / "worse" / "within noise" / "1 seed: no verdict"
    speed = paired_ratio({0: 1.3e5, 1: 1.4e5}, {0: 1.0e5, 1: 1.1e5})   # per-seed ratios, mean and interval

Seeds are replicates: the arms of a comparison share each seed (same initialisation, same data order),
so the difference is taken per seed and the interval is over those differences (a paired t interval),
which removes the between-seed variation that both arms share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Estimate", "mean_interval", "paired_ratio", "t_quantile", "verdict"]

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
    """A mean over seeds with its two-sided 95% Student-t interval."""

    mean: float
    half_width: float | None
    """Half width of the interval (mean ± half_width); None with one value (no interval)."""
    n: int
    std: float | None
    """Sample standard deviation across seeds (n-1 denominator); None with one value."""

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def contains(self, value: float) -> bool | None:
        """Whether the interval contains ``value`` (None without an interval)."""
        if self.half_width is None:
            return None
        return self.mean - self.half_width <= value <= self.mean + self.half_width


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Estimate | None:
    """Mean and Student-t interval of ``values`` (None when there are none)."""
    xs = [float(v) for v in values]
    if not xs:
        return None
    n = len(xs)
    mean = sum(xs) / n
    if n == 1:
        return Estimate(mean, None, 1, None)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    return Estimate(mean, half, n, std)


def paired_ratio(numerator: Mapping[int, float], denominator: Mapping[int, float],
                 level: float = LEVEL) -> Estimate | None:
    """Mean of ``numerator[s] / denominator[s]`` over the seeds both have (e.g. FP8 tokens/s over BF16
    tokens/s per seed), with a t interval over the per-seed ratios."""
    seeds = sorted(s for s in set(numerator) & set(denominator) if denominator[s])
    return mean_interval([numerator[s] / denominator[s] for s in seeds], level)


def verdict(estimate: Estimate | None, *, lower_is_better: bool, null: float = 0.0,
            words: tuple[str, str] = ("better", "worse")) -> str:
    """better / worse when the interval excludes ``null`` (0 for a difference, 1 for a ratio), else
    "within noise"; with one seed there is no interval and so no verdict."""
    if estimate is None:
        return "no data"
    inside = estimate.contains(null)
    if inside is None:
        return "1 seed: no verdict"
    if inside:
        return "within noise"
    good = estimate.mean < null if lower_is_better else estimate.mean > null
    return words[0] if good else words[1]
