"""Running a sweep: Ray Tune over one TorchTrainer run per trial (yxanul.train.launch.train)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yxanul.console import log_path, name_run, say
from yxanul.errors import ConfigError
from yxanul.files import absolute_path
from yxanul.ray_session import ensure_ray
from yxanul.sweep import asha, records
from yxanul.sweep.cluster import ray_cluster_view
from yxanul.sweep.plan import check_data, plan_sweep
from yxanul.sweep.spec import SweepSpec
from yxanul.sweep.text import format_plan, format_rows
from yxanul.sweep.trials import SweepPlan, build_config, total_tokens, trial_tags
from yxanul.tags import SWEEP_TAG, TUNE_TRIAL_ID_TAG
from yxanul.tracking import Status

__all__ = ["SweepOutcome", "run_sweep", "sweep_log_path", "sweep_storage"]


def sweep_storage(plan: SweepPlan) -> str:
    """Ray Tune experiment folder of the sweep: ``<base run.storage_path>/sweeps/<sweep name>``."""
    base = build_config(plan.base_path, plan.base_overrides, {})
    return f"{absolute_path(base.run.storage_path).rstrip('/')}/sweeps"


def sweep_log_path(plan: SweepPlan) -> Path:
    """The sweep's log of Ray's and Tune's own output: ``<storage>/sweeps/<sweep name>.log`` (beside its Tune
    folder), appended to when the sweep resumes."""
    return log_path(sweep_storage(plan), plan.name)


def _tune_report_callback() -> Any:
    """Ray Train -> Ray Tune bridge (rank 0's reports become trial results).

    The training loop reports ``done`` (1.0 at the last step); in Tune, ``done`` is the reserved key that
    ends a trial, so a true value would stop the trial before the run is finished and its MLflow run
    ended. It is forwarded as ``finished`` instead."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class _SweepReport(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            renamed = [{("finished" if k == "done" else k): v for k, v in m.items()} for m in metrics]
            super().after_report(run_context, renamed, checkpoint)

    return _SweepReport()


def _trial_fn(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one TorchTrainer run (via yxanul.train.launch.train) per trial."""
    from ray import tune

    from yxanul.train.launch import train

    sweep, trial = config["sweep"], config["trial"]
    base = Path(sweep["base_path"]) if sweep["base_path"] else None
    cfg = build_config(base, sweep["base_overrides"], trial["overrides"])
    tags = {SWEEP_TAG: sweep["name"], **trial_tags(trial), TUNE_TRIAL_ID_TAG: tune.get_context().get_trial_id()}
    # end_unfinished=False: a trial Tune stops is recorded by the driver's callback (records.end_trial_run_callback).
    train(cfg, run_config_callbacks=[_tune_report_callback()], extra_tags=tags, parent_run_id=sweep["parent_run_id"],
          end_unfinished=False)


def _concurrency(plan: SweepPlan, spec: SweepSpec) -> int:
    import ray

    from yxanul.sweep.placement import planned_concurrency

    return planned_concurrency(plan.runnable, ray.cluster_resources(), spec.max_concurrent_trials)


@dataclass
class SweepOutcome:
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    tune_path: str
    resumed: bool
    rows: list[dict[str, Any]]
    """Per trial (MLflow's view): index, variant, status, tokens, metric value, reason, run id."""


def run_sweep(spec: SweepSpec, run_overrides: list[str] | None = None, budget_text: str = "") -> SweepOutcome:
    """Plan against the Ray cluster, open the MLflow parent run (with ``budget_text``, the dry run's time, cost
    and power plan, as an artifact), run (or resume) the Tune experiment, end every trial's MLflow run, and
    return the per-trial outcome."""
    import os

    from ray import tune

    from yxanul.tracking import connect

    local = ensure_ray()
    plan = plan_sweep(spec, run_overrides, cluster=ray_cluster_view(local))
    check_data(plan)
    first = plan.trials[0].cfg
    if not first.tracking.enabled:
        raise ConfigError("sweeps record every trial in MLflow: tracking.enabled=false is not supported here")
    uri = first.tracking.uri or ""
    experiment_id = connect(uri, first.tracking.experiment)
    storage = sweep_storage(plan)
    tune_path = f"{storage}/{plan.name}"
    resume = tune.Tuner.can_restore(tune_path)
    parent_id = records.open_parent(plan, uri, experiment_id, tune_path, resume, budget_text)
    records.record_not_runnable(plan, uri, experiment_id, parent_id)
    say(format_plan(plan))
    if budget_text:
        say(budget_text)
    say(f"MLflow parent run {parent_id} ({uri}); Ray Tune folder {tune_path}" + (" (resuming)" if resume else ""))
    shown = {t.run_name: f"t{t.index:02d} {t.label}" for t in plan.trials}
    for run_name, text in shown.items():
        name_run(run_name, text)

    # Log-only reports carry train/* but not the metric; Tune's strict check would reject them.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    errored = False
    if plan.runnable:
        horizons = {t.run_name: _horizon(t.cfg) for t in plan.runnable}
        # The trial itself only waits on its TorchTrainer, whose workers hold the real resources. It runs on
        # the head (a token share of the resource only the head has; Tune refuses an empty request): asking
        # for CPU instead would make an autoscaling cluster, whose head has no CPUs, launch a CPU node just
        # to host trial drivers (seen with the simulated cluster, yxanul.cluster_sim).
        trainable = tune.with_resources(_trial_fn, {"cpu": 0, "node:__internal_head__": 0.01})
        if resume:
            tuner = tune.Tuner.restore(tune_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            consts = {"name": plan.name, "base_path": str(plan.base_path) if plan.base_path else None,
                      "base_overrides": plan.base_overrides, "parent_run_id": parent_id}
            tuner = tune.Tuner(
                trainable,
                param_space={"sweep": consts, "trial": tune.grid_search([t.to_param() for t in plan.runnable])},
                tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, scheduler=asha.scheduler(plan),
                                            max_concurrent_trials=_concurrency(plan, spec)),
                run_config=tune.RunConfig(name=plan.name, storage_path=storage, verbose=1, callbacks=[
                    _trial_events_callback()(shown), records.end_trial_run_callback(
                        uri, experiment_id, parent_id, horizons, announce=_announcer(shown))]))
        try:
            results = tuner.fit()
        except BaseException:
            records.end_running_children(uri, experiment_id, parent_id, Status.KILLED)
            records.end_parent(uri, parent_id, Status.INTERRUPTED)
            raise
        errored = any(r.error is not None for r in results)
    rows = records.summarize(uri, experiment_id, parent_id, spec.metric)
    records.end_parent(uri, parent_id, Status.FAILED if errored else Status.FINISHED, format_rows(rows))
    return SweepOutcome(parent_id, experiment_id, uri, tune_path, resume, rows)


def _horizon(cfg: Any) -> tuple[int, int]:
    """(tokens at the end of training, tokens where the run stops by itself: train.stop_after_tokens or the end)."""
    total = total_tokens(cfg)
    stop = cfg.train.stop_after_tokens
    return total, min(total, stop) if stop else total


def _announcer(shown: dict[str, str]) -> Any:
    """The console line of a trial's verdict: ``t01 curriculum=none | finished: at 32768 tokens``."""
    def announce(run_name: str, status: str, reason: str) -> None:
        say(f"{shown.get(run_name, run_name)} | {status}" + (f": {reason}" if reason else ""))

    return announce


def _trial_events_callback() -> Any:
    from ray.tune import Callback

    class TrialEvents(Callback):
        """Console lines for the Tune events that are not verdicts: a trial started (or restarted)."""

        def __init__(self, shown: dict[str, str]) -> None:
            self.shown = shown

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            name = trial.config["trial"]["run_name"]
            say(f"{self.shown.get(name, name)} | started")

    return TrialEvents
