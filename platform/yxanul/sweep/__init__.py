"""Sweeps: a base run config, the axes to vary, and a Ray Tune run of one training run per trial.

A sweep file (``experiments/sweeps/<name>.yaml``) is a :class:`SweepSpec`. It expands,
deterministically and before anything starts, into a list of :class:`Trial` s: one resolved
:class:`~yxanul.config.ExperimentConfig` per (grid point x seed x sample). The dry-run table, the
fairness checks and the Ray Tune run all use that same list, so what ``--dry-run`` prints is what
runs.

    spec = load_sweep("experiments/sweeps/fp8-vs-bf16.yaml", ["train.max_tokens=2e6"])
    plan = plan_sweep(spec, cluster=local_cluster_view())
    print(format_plan(plan))
    run_sweep(spec)                     # Ray Tune; MLflow parent run + one child run per trial

Fairness rules enforced here (see docs/sweeps.md):

- Trials whose labels differ only in precision keys form a *pair* (tag ``yxanul.pair``). Their
  resolved configs must be identical outside ``precision.*`` (same seed, so the same data order;
  same learning rate and schedule; same token budget) or the sweep is refused.
- All arms of a pair that contains an FP8 arm run on the same accelerator type, chosen among the
  FP8-capable ones, so the speedup is not confounded with the card.
- ASHA milestones are in tokens and must fall on validation points, so trials are cut at equal
  tokens (``time_attr`` is the reported ``tokens``), whatever their curriculum's batch shapes.
- An FP8 trial that cannot run on the cluster is never run in BF16: it is recorded as not runnable
  (trial table and an MLflow child run tagged ``yxanul.status=not_runnable``) with the reason.

Modules: ``spec`` (the sweep file), ``cluster`` (where trials can run), ``plan`` (trials, pair checks,
data check), ``placement`` (accelerator types per trial), ``asha`` (milestones in tokens, the
scheduler), ``text`` (the trial and result tables), ``records`` (the sweep's MLflow runs, through
:mod:`yxanul.tracking`), ``tune`` (the Ray Tune run).
"""

from yxanul.sweep.cluster import ClusterView, local_cluster_view, ray_cluster_view
from yxanul.sweep.plan import check_data, plan_sweep, prepare_command, sweep_layout
from yxanul.sweep.records import summarize
from yxanul.sweep.spec import (
    AxisSpec,
    BaseSpec,
    ResourcesSpec,
    SchedulerSpec,
    SweepSpec,
    find_sweep,
    load_sweep,
    spec_yaml,
)
from yxanul.sweep.text import format_plan, format_rows
from yxanul.sweep.trials import SweepPlan, Trial
from yxanul.sweep.tune import SweepOutcome, run_sweep

__all__ = [
    "AxisSpec",
    "BaseSpec",
    "ClusterView",
    "ResourcesSpec",
    "SchedulerSpec",
    "SweepOutcome",
    "SweepPlan",
    "SweepSpec",
    "Trial",
    "check_data",
    "find_sweep",
    "format_plan",
    "format_rows",
    "load_sweep",
    "local_cluster_view",
    "plan_sweep",
    "prepare_command",
    "ray_cluster_view",
    "run_sweep",
    "spec_yaml",
    "summarize",
    "sweep_layout",
]
