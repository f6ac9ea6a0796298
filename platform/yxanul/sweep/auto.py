"""``seeds: auto`` in a running sweep: stop the Tune experiment once the stopping rule has decided every comparison.

The plan holds every seed up to ``max_seeds``, in run order (seed by seed, :func:`yxanul.sweep.plan.plan_sweep`).
After a trial completes, the driver reads the sweep's finished child runs from MLflow, takes the seeds at which
every arm finished (0, 1, ... without gaps), and asks the rule (:class:`yxanul.sequential.SequentialDesign`) about
each arm's per-seed gap to the reference arm in the sweep's metric. When every comparison is ``different``,
``equivalent`` or ``undecided`` (max_seeds), :class:`AutoStop` tells Tune to end the experiment: pending trials
never start, and a trial of a later seed already running is stopped and recorded ``not_needed``.

The decision is a function of the finished runs in MLflow alone, so a resumed sweep (a new process, Tune's
restored callbacks) reaches the same one; the report (``yxanul.report``) makes the same call on the same gaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray.tune import Callback, Stopper

from yxanul.sequential import Decision, SequentialDesign

__all__ = ["AutoSeeds", "AutoStop", "AutoWatch", "concurrency", "decided", "stopped_by_rule"]


@dataclass(frozen=True)
class AutoSeeds:
    """What the driver needs to decide (plain data: Tune pickles it with the experiment)."""

    sweep: str
    uri: str
    experiment_id: str
    parent_id: str
    metric: str
    reference: str
    arms: tuple[str, ...]
    max_seeds: int
    margin: float | None

    @property
    def design(self) -> SequentialDesign:
        return SequentialDesign(max_seeds=self.max_seeds, margin=self.margin)

    def finals(self) -> dict[str, dict[int, float]]:
        """arm -> seed -> the final ``metric`` of the sweep's finished child runs."""
        from yxanul.sweep.records import finished_children

        out: dict[str, dict[int, float]] = {}
        for arm, seed, value in finished_children(self.uri, self.experiment_id, self.parent_id, self.metric):
            out.setdefault(arm, {})[seed] = value
        return out

    def decisions(self) -> tuple[int, dict[str, Decision]]:
        """(seeds every arm finished, counting 0, 1, ... up to the first gap; the rule's decision per arm)."""
        finals = self.finals()
        seeds = 0
        while seeds < self.max_seeds and all(seeds in finals.get(arm, {}) for arm in self.arms):
            seeds += 1
        ref = finals.get(self.reference, {})
        # arm - reference per seed; the tests are two-sided and the margin symmetric, so the metric's direction
        # does not change the decision
        out = {arm: self.design.decide([finals[arm][s] - ref[s] for s in range(seeds)])
               for arm in self.arms if arm != self.reference}
        return seeds, out


def decided(auto: AutoSeeds) -> tuple[bool, str]:
    """Whether every comparison is decided, and one line saying where the rule stands."""
    seeds, decisions = auto.decisions()
    parts = []
    for arm, d in decisions.items():
        where = f" ({d.low:+.4f} to {d.high:+.4f} at level {d.alpha:.4f})" if d.alpha is not None else ""
        parts.append(f"{arm} vs {auto.reference}: {d.state}{where}")
    done = bool(decisions) and all(d.final for d in decisions.values())
    return done, f"seeds: auto after {seeds} seed{'s' if seeds != 1 else ''}: " + "; ".join(parts)


_DONE: dict[str, bool] = {}
"""Sweep name -> decided, in this driver process (filled by :class:`AutoWatch`, read by :class:`AutoStop`)."""


class AutoWatch(Callback):
    """After each completed trial: ask the rule, say where it stands, remember whether to stop."""

    def __init__(self, auto: AutoSeeds) -> None:
        self.auto = auto
        self._said = ""

    def setup(self, **info: Any) -> None:
        _DONE[self.auto.sweep] = decided(self.auto)[0]  # a resumed sweep: decide from what already finished

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from yxanul.console import say

        done, line = decided(self.auto)
        _DONE[self.auto.sweep] = done
        if line != self._said:
            say(line + ("; the remaining trials are not run" if done else ""))
            self._said = line


class AutoStop(Stopper):
    """Tune's experiment-wide stop once :class:`AutoWatch` found every comparison decided."""

    def __init__(self, sweep: str) -> None:
        self.sweep = sweep

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return _DONE.get(self.sweep, False)


def stopped_by_rule(sweep: str) -> bool:
    """Whether this driver stopped ``sweep`` because the rule decided (a trial Tune stopped then was not needed)."""
    return _DONE.get(sweep, False)


def concurrency(slots: int, arms: int) -> int:
    """Trials at once under ``seeds: auto``: at most one seed's worth, so a decision wastes at most what is
    already running of the next seed."""
    return max(1, min(slots, arms))
