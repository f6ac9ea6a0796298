"""``seeds: auto``: a group-sequential stopping rule for seed-paired comparisons.

A sweep with ``seeds: auto`` runs one seed of every arm at a time and, from the third seed on, looks at the
per-seed differences (arm - reference) of its metric after each seed:

- **different**: the paired t test rejects "no difference" at this look's level ``alpha_k``;
- **equivalent within ±m** (only with ``sweep.equivalence_margin`` m): both one-sided t tests (TOST) reject
  "the difference is at least m" at ``alpha_k``, i.e. the ``1 - 2 alpha_k`` interval lies inside (-m, m);
- otherwise one more seed, up to ``max_seeds``; a comparison still open there is **undecided**.

Looking after every seed and stopping at the first success would inflate the false-positive rate far above
alpha (with 6 looks at 5% each, to ~15-20%). The levels are spent instead: ``alpha_k = alpha x (k/K)^2 -
alpha x ((k-1)/K)^2`` at the k-th of K looks (quadratic alpha spending: little at the early, noisy looks,
most at the last), so they sum to alpha, and by the union bound the chance of ever declaring a difference
that is not there is at most alpha (5%), whatever the looks' correlation; the same holds for declaring
equivalence when the true difference is at least m. The bound is conservative (the looks are correlated);
:func:`simulate` measures the real rates, and tests hold them to the bound.

Pure (numpy only in :func:`simulate`).

    design = SequentialDesign(max_seeds=6, margin=0.01)
    design.decide([-0.021, -0.018, -0.025])   # Decision(state="different", n=3, ...) or "continue"
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from yxanul.stats import t_quantile

__all__ = ["FIRST_LOOK", "Decision", "SequentialDesign", "simulate"]

FIRST_LOOK = 3
"""Seeds at the first look: with 2, t(0.975, 1) = 12.7 and a test spends alpha for almost no power."""


@dataclass(frozen=True)
class Decision:
    state: str
    """``different``, ``equivalent``, ``continue`` (look again after one more seed) or ``undecided`` (max_seeds
    reached)."""
    n: int
    """Seeds (pairs) the decision rests on."""
    mean: float
    low: float | None
    high: float | None
    """The interval of this look's test: ``1 - alpha_k`` two-sided for a difference, ``1 - 2 alpha_k`` for
    equivalence; None before the first look."""
    alpha: float | None
    """The level spent at this look (None before the first look)."""

    @property
    def final(self) -> bool:
        return self.state in ("different", "equivalent", "undecided")


@dataclass(frozen=True)
class SequentialDesign:
    max_seeds: int = 6
    """The most seeds per arm; the last look is there."""
    margin: float | None = None
    """Equivalence margin in the metric's unit (None: no equivalence stop)."""
    alpha: float = 0.05
    """Overall false-positive rate (and false-equivalence rate) the design keeps to."""

    def __post_init__(self) -> None:
        if self.max_seeds < FIRST_LOOK:
            raise ValueError(f"max_seeds must be at least {FIRST_LOOK} (the first look), got {self.max_seeds}")

    @property
    def looks(self) -> list[int]:
        """The seed counts at which the rule looks: 3, 4, ..., max_seeds."""
        return list(range(FIRST_LOOK, self.max_seeds + 1))

    def alpha_at(self, n: int) -> float:
        """The level spent at the look with ``n`` seeds (quadratic spending over the looks)."""
        looks = self.looks
        k, total = looks.index(n) + 1, len(looks)
        return self.alpha * ((k / total) ** 2 - ((k - 1) / total) ** 2)

    def decide(self, diffs: Sequence[float]) -> Decision:
        """The decision after the per-seed differences ``diffs`` (one per seed pair, in seed order)."""
        xs = [float(d) for d in diffs]
        n = len(xs)
        mean = sum(xs) / n if n else float("nan")
        if n < FIRST_LOOK:
            return Decision("continue", n, mean, None, None, None)
        look = min(n, self.max_seeds)
        xs = xs[:look]
        mean = sum(xs) / look
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (look - 1))
        se = sd / math.sqrt(look)
        alpha = self.alpha_at(look)
        t_two = t_quantile(1 - alpha / 2, look - 1)
        low, high = mean - t_two * se, mean + t_two * se
        if low > 0 or high < 0:
            return Decision("different", look, mean, low, high, alpha)
        if self.margin is not None:
            t_one = t_quantile(1 - alpha, look - 1)
            e_low, e_high = mean - t_one * se, mean + t_one * se
            if -self.margin < e_low and e_high < self.margin:
                return Decision("equivalent", look, mean, e_low, e_high, alpha)
        return Decision("undecided" if look >= self.max_seeds else "continue", look, mean, low, high, alpha)

    def describe(self) -> str:
        """The rule and its error rates in one paragraph (the dry run, the parent run, the report)."""
        spent = ", ".join(f"{n}: {self.alpha_at(n):.4f}" for n in self.looks)
        equivalence = (f"; or as equivalent within ±{self.margin:g} when both one-sided t tests (TOST) at the "
                       f"look's level reject a difference of {self.margin:g} or more" if self.margin is not None
                       else "")
        return (f"seeds: auto: one seed of every arm at a time; from {FIRST_LOOK} seeds on, after each seed a "
                f"comparison stops as different when the paired t test rejects no difference at the look's "
                f"level{equivalence}; else one more seed, up to {self.max_seeds} (then undecided). Levels spent "
                f"per look (seeds: alpha) {spent}: they sum to {self.alpha:g}, so the chance of a false "
                f"'different' (and of a false 'equivalent') over all looks is at most {self.alpha:.0%} (union "
                f"bound). The report's 95% intervals are the usual fixed-sample ones, not adjusted for the looks.")


def simulate(design: SequentialDesign, effect_sd: float, sims: int = 20000, seed: int = 0) -> dict[str, float]:
    """Run the rule on ``sims`` simulated comparisons whose per-seed differences are normal with standard
    deviation 1 and mean ``effect_sd``: the share ending in each state and the mean seeds used.

    The same arithmetic as :meth:`SequentialDesign.decide`, vectorised (numpy)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    diffs = rng.normal(effect_sd, 1.0, size=(sims, design.max_seeds))
    state = np.zeros(sims, dtype=np.int8)  # 0 open, 1 different, 2 equivalent
    used = np.full(sims, design.max_seeds)
    for n in design.looks:
        xs = diffs[:, :n]
        mean = xs.mean(axis=1)
        se = xs.std(axis=1, ddof=1) / math.sqrt(n)
        alpha = design.alpha_at(n)
        t_two = t_quantile(1 - alpha / 2, n - 1)
        open_ = state == 0
        different = open_ & ((mean - t_two * se > 0) | (mean + t_two * se < 0))
        state[different] = 1
        used[different] = n
        if design.margin is not None:
            t_one = t_quantile(1 - alpha, n - 1)
            equivalent = (state == 0) & (mean - t_one * se > -design.margin) & (mean + t_one * se < design.margin)
            state[equivalent] = 2
            used[equivalent] = n
    return {"different": float((state == 1).mean()), "equivalent": float((state == 2).mean()),
            "undecided": float((state == 0).mean()), "mean_seeds": float(used.mean())}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m yxanul.sequential [--max-seeds N] [--margin SD]``: the rule's error rates and power by simulation
    (per-seed differences in units of their standard deviation), the numbers docs/sweeps.md quotes."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--max-seeds", type=int, nargs="+", default=[4, 6, 8])
    parser.add_argument("--margin", type=float, default=None, help="equivalence margin in standard deviations")
    parser.add_argument("--sims", type=int, default=20000)
    args = parser.parse_args(argv)
    print("max_seeds  true effect (sd)  different  equivalent  undecided  mean seeds")
    for max_seeds in args.max_seeds:
        design = SequentialDesign(max_seeds=max_seeds, margin=args.margin)
        for effect in (0.0, 1.0, 2.0):
            r = simulate(design, effect, args.sims)
            print(f"{max_seeds:9d}  {effect:16.1f}  {r['different']:9.2%}  {r['equivalent']:10.2%}  "
                  f"{r['undecided']:9.2%}  {r['mean_seeds']:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
