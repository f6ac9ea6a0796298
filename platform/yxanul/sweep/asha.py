"""ASHA early stopping with milestones in tokens, which must fall on every trial's validation points."""

from __future__ import annotations

from typing import Any

from yxanul.errors import ConfigError
from yxanul.sweep.spec import SweepSpec
from yxanul.sweep.trials import TOKENS_ATTR, SweepPlan, Trial

__all__ = ["milestones", "scheduler"]


def milestones(spec: SweepSpec, trials: list[Trial]) -> list[int]:
    """Milestones in tokens: grace_tokens, then times reduction_factor below the horizon (empty without a
    scheduler). Each must be a validation point of every trial, so trials are compared at equal tokens."""
    if spec.scheduler is None:
        return []
    budgets = {t.cfg.train.max_tokens for t in trials}
    if len(budgets) > 1 and spec.scheduler.max_tokens is None:
        raise ConfigError(f"scheduler: trials have different train.max_tokens ({sorted(budgets)}); "
                          "ASHA needs one horizon: set scheduler.max_tokens")
    horizon = spec.scheduler.max_tokens or budgets.pop()
    rf, m = spec.scheduler.reduction_factor, spec.scheduler.grace_tokens
    if m <= 0 or m >= horizon:
        raise ConfigError(f"scheduler.grace_tokens ({m}) must be above 0 and below the horizon ({horizon})")
    milestones = []
    while m < horizon:
        milestones.append(int(round(m)))
        m *= rf
    for trial in trials:
        every = trial.cfg.eval.every_tokens
        bad = [x for x in milestones if every == 0 or x % every]
        if bad:
            raise ConfigError(
                f"scheduler milestones {', '.join(map(str, bad))} tokens are not validation points of trial "
                f"{trial.label!r} (eval.every_tokens={every}); trials are cut at validation points, so make "
                "scheduler.grace_tokens a multiple of eval.every_tokens and reduction_factor an integer")
    return milestones


def scheduler(plan: SweepPlan) -> Any:
    """Ray Tune's ASHA scheduler at the plan's milestones (``time_attr`` = the reported tokens); None without."""
    if not plan.milestones or plan.spec.scheduler is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr=TOKENS_ATTR, grace_period=plan.milestones[0],
                         reduction_factor=plan.spec.scheduler.reduction_factor,
                         max_t=plan.milestones[-1] + 1, stop_last_trials=False)
