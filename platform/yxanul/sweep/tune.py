"""Running a sweep: Ray Tune over one training run per trial (yxanul.train.launch.train): inside the trial's own
process for one-worker trials (``in_process: auto``), else on a TorchTrainer."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yxanul import interrupt
from yxanul.console import name_run, say
from yxanul.errors import ConfigError, first_line
from yxanul.fatal import recording
from yxanul.formatting import human_count, percent, seconds
from yxanul.layout import Layout
from yxanul.ray_session import ensure_ray
from yxanul.sweep import asha, records
from yxanul.sweep.cluster import ray_cluster_view
from yxanul.sweep.plan import check_data, plan_sweep, sweep_layout
from yxanul.sweep.spec import SweepSpec
from yxanul.sweep.text import format_plan, format_rows
from yxanul.sweep.trials import SweepPlan, build_config, runs_in_process, total_tokens, trial_tags
from yxanul.tags import SEEDS_AUTO_TAG, SWEEP_TAG, TUNE_TRIAL_ID_TAG
from yxanul.timeline import EFFICIENCY_METRIC, PREFIX, WALL_METRIC, format_timeline, metric_name, sweep_metrics
from yxanul.tracking import Status

__all__ = ["HEAD_TOKEN", "SweepOutcome", "param_space", "run_sweep", "sweep_consts", "trial_params", "trial_resources",
           "tune_config"]


HEAD_TOKEN = {"CPU": 0, "node:__internal_head__": 0.01}
"""What a trial that waits on its TorchTrainer asks for: a token share of the resource only the head has (Tune
refuses an empty request). Asking for CPU instead would make an autoscaling cluster, whose head has no CPUs, launch
a CPU node just to host trial drivers (seen with the simulated cluster, yxanul.cluster_sim)."""


def trial_resources(cfg: Any, in_process: bool) -> dict[str, float]:
    """What the trial asks Tune for. In process it is the training worker, so it asks what a TorchTrainer's worker
    would (:func:`yxanul.train.launch.worker_resources`, and the ``accelerator_type:<type>`` share that
    ``ScalingConfig(accelerator_type=...)`` adds), and Tune places it on a node that has them; otherwise the
    TorchTrainer's workers hold the real resources and the trial only waits (:data:`HEAD_TOKEN`)."""
    if not in_process:
        return dict(HEAD_TOKEN)
    from yxanul.train.launch import worker_resources

    resources = worker_resources(cfg)
    if cfg.scaling.accelerator_type:
        resources[f"accelerator_type:{cfg.scaling.accelerator_type}"] = 0.001
    return resources


def trial_params(plan: SweepPlan) -> list[dict[str, Any]]:
    """What Ray Tune gets for each runnable trial, in the plan's run order (:func:`yxanul.sweep.plan.plan_sweep`:
    seed by seed, the arms rotated): the trial, where it trains and what it asks for."""
    params = []
    for t in plan.runnable:
        in_process = runs_in_process(t.cfg, plan.spec.in_process)
        params.append({**t.to_param(), "in_process": in_process, "resources": trial_resources(t.cfg, in_process)})
    return params


def _placement(config: dict[str, Any]) -> Any:
    """The trial's Tune resources, from its params (:func:`trial_params`; a sweep started before they were carried
    waits on TorchTrainers)."""
    from ray import tune

    return tune.PlacementGroupFactory([config["trial"].get("resources") or HEAD_TOKEN])


def sweep_consts(plan: SweepPlan, parent_run_id: str) -> dict[str, Any]:
    """What every trial of the sweep is told besides its own params: the sweep's name, base config and overrides,
    the MLflow parent run, and whether any runnable trial trains in FP8 (``fp8``: only then does an in-process trial
    load Transformer Engine before anything else, :func:`_trial_fn`)."""
    return {"name": plan.name, "base_path": str(plan.base_path) if plan.base_path else None,
            "base_overrides": plan.base_overrides, "parent_run_id": parent_run_id,
            "fp8": any(t.cfg.precision.mode == "fp8" for t in plan.runnable)}


def param_space(plan: SweepPlan, consts: dict[str, Any]) -> dict[str, Any]:
    """Tune's param space: the sweep's constants and one grid value per trial. Tune's default search algorithm
    (BasicVariantGenerator) makes the trials of a grid in the list's order and starts pending trials in the order
    they were made, so with one trial at a time (one GPU) they run exactly in the planned order
    (tests/integration/test_sweep.py checks it on a real Tune)."""
    from ray import tune

    return {"sweep": consts, "trial": tune.grid_search(trial_params(plan))}


def _tune_report_callback() -> Any:
    """Ray Train -> Ray Tune bridge (rank 0's reports become trial results, ``done`` forwarded as ``finished``:
    :func:`yxanul.train.session.for_tune`)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from yxanul.train.session import for_tune

    class _SweepReport(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            super().after_report(run_context, [for_tune(m) for m in metrics], checkpoint)

    return _SweepReport()


def _trial_fn(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one training run (yxanul.train.launch.train) per trial, in this process with
    Tune's session (:func:`trial_params` decided it), or on a TorchTrainer reporting to Tune."""
    started_at = time.time()  # the trial's timeline starts here (imports and config included)
    from ray import tune

    from yxanul.train.launch import train
    from yxanul.train.session import TuneSession

    sweep, trial = config["sweep"], config["trial"]
    if trial.get("in_process") and sweep.get("fp8", True):
        from yxanul.precision import preload_te

        # This process trains trial after trial (reuse_actors): once a BF16 trial's attention has loaded torch's
        # cuDNN, Transformer Engine's libraries fail to load in a later FP8 trial ("libcudnn_cnn.so.9: undefined
        # symbol": both fp8-auto trials after BF16 ones, H100, 2026-12-06). TE loaded first, where installed, is safe.
        # A sweep without FP8 trials never loads it (sweeps started before this key was carried: as before).
        preload_te()
    imports_s = time.time() - started_at  # ~0 once this process has served a trial
    base = Path(sweep["base_path"]) if sweep["base_path"] else None
    cfg = build_config(base, sweep["base_overrides"], trial["overrides"])
    tags = {SWEEP_TAG: sweep["name"], **trial_tags(trial), TUNE_TRIAL_ID_TAG: tune.get_context().get_trial_id()}
    where: dict[str, Any] = ({"session": TuneSession()} if trial.get("in_process")
                             else {"run_config_callbacks": [_tune_report_callback()]})
    # A fault that kills an in-process trial's process before its loop records one (opening the MLflow run: H100,
    # 2026-12-07) leaves its stack where the driver reads it (yxanul.fatal); the loop's own recording is then a no-op.
    marker_dir = Layout.of(cfg).worker_markers(cfg.run.name) if trial.get("in_process") else None
    with recording(marker_dir, rank=0):
        # end_unfinished=False: a trial Tune stops is recorded by the driver's callback
        # (records.end_trial_run_callback); print_timeline=False: that callback prints the trial's timeline line
        # with its verdict.
        train(cfg, extra_tags=tags, parent_run_id=sweep["parent_run_id"], end_unfinished=False,
              started_at=started_at, before={"imports": imports_s}, print_timeline=False, **where)


def tune_config(plan: SweepPlan, spec: SweepSpec) -> Any:
    """The sweep's ``tune.TuneConfig``: its metric, ASHA where the sweep asks for it, the trial slots, and
    ``reuse_actors``: a trial's process (the function trainable that opens the MLflow run and trains, or waits on
    the TorchTrainer) serves the next trial too, so its imports and MLflow client (and in process, its CUDA context)
    are warm. Measured on the 2-core CPU VM (2026-12-06, 4 one-worker trials on TorchTrainers, 2 at a time): the
    driver's MLflow phase fell from 7.3-7.7 s to 3.8-4.4 s a trial once a process was reused. Tune hands a process to the next trial only if the previous trial's thread
    has ended within 2 s (``TUNE_FUNCTION_THREAD_TIMEOUT_S``); a trial stopped while its TorchTrainer still runs
    (ASHA) loses its process, and its TorchTrainer with it, as without reuse."""
    from ray import tune

    return tune.TuneConfig(metric=spec.metric, mode=spec.mode, scheduler=asha.scheduler(plan),
                           max_concurrent_trials=_slots(plan, spec), reuse_actors=True)


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

    sweep_start = time.time()
    local = ensure_ray()
    plan = plan_sweep(spec, run_overrides, cluster=ray_cluster_view(local))
    check_data(plan)
    first = plan.trials[0].cfg
    if not first.tracking.enabled:
        raise ConfigError("sweeps record every trial in MLflow: tracking.enabled=false is not supported here")
    uri = first.tracking.uri or ""
    experiment_id = connect(uri, first.tracking.experiment)
    layout = sweep_layout(spec, run_overrides)
    tune_path = layout.sweep_dir(plan.name)
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
    if interrupt.active():  # the job handles SIGINT like SIGTERM and hands Tune a SIGUSR1 (yxanul.interrupt)
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    errored = False
    events = _EVENTS[plan.name] = _Events()
    slots = 1
    auto = _auto_seeds(plan, uri, experiment_id, parent_id) if spec.seeds == "auto" else None
    if plan.runnable:
        horizons = {t.run_name: _horizon(t.cfg) for t in plan.runnable}
        trainable = tune.with_resources(_trial_fn, _placement)  # per trial: trial_resources
        if resume:
            tuner = tune.Tuner.restore(tune_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            consts = sweep_consts(plan, parent_id)
            markers = {t.run_name: Layout.of(t.cfg).worker_markers(t.run_name) for t in plan.runnable}
            callbacks = [_trial_events_callback()(shown, plan.name), records.end_trial_run_callback(
                uri, experiment_id, parent_id, horizons, announce=_announcer(shown), markers=markers,
                restart_point=_restart_point(plan))]
            stop = None
            if auto is not None:  # after the verdicts are recorded: the rule reads them from MLflow
                from yxanul.sweep.auto import AutoStop, AutoWatch

                callbacks.append(AutoWatch(auto))
                stop = AutoStop(plan.name)
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(plan, consts),
                tune_config=tune_config(plan, spec),
                run_config=tune.RunConfig(name=plan.name, storage_path=layout.sweeps, verbose=1, stop=stop,
                                          callbacks=callbacks, checkpoint_config=_checkpoint_config(plan),
                                          failure_config=tune.FailureConfig(max_failures=spec.trial_restarts)))
        try:
            with interrupt.forwarding(signal.SIGUSR1):  # Tune's graceful stop: state saved, trials stopped
                results = tuner.fit()
        except BaseException:
            if interrupt.received() is not None:
                raise _interrupted(plan, events, uri, experiment_id, parent_id) from None
            records.end_running_children(uri, experiment_id, parent_id, Status.KILLED)
            records.end_parent(uri, parent_id, Status.INTERRUPTED)
            raise
        if interrupt.received() is not None:
            raise _interrupted(plan, events, uri, experiment_id, parent_id)
        errored = any(r.error is not None for r in results)
        slots = min(_slots(plan, spec), len(plan.runnable))
    if auto is not None:
        from yxanul.sweep.auto import decided

        done, line = decided(auto)
        say(line if done else line + f"; not decided within max_seeds={spec.max_seeds} seeds")
        records.set_parent_tags(uri, parent_id, {SEEDS_AUTO_TAG: line})
    try:
        _sweep_timeline(uri, experiment_id, parent_id, events, time.time() - sweep_start, slots)
    except Exception as exc:  # a measurement: MLflow refusing it must not fail the sweep
        say(f"warning: the sweep's timeline was not recorded ({first_line(exc)})", err=True)
    rows = records.summarize(uri, experiment_id, parent_id, spec.metric)
    records.end_parent(uri, parent_id, Status.FAILED if errored else Status.FINISHED, format_rows(rows))
    return SweepOutcome(parent_id, experiment_id, uri, tune_path, resume, rows)


def _checkpoint_config(plan: SweepPlan) -> Any:
    """Tune keeps the checkpoints of in-process trials (in their trial folders) as a TorchTrainer keeps its own:
    the latest ``checkpoint.keep_last`` (the largest any trial asks for). TorchTrainer trials hand Tune no
    checkpoint."""
    from ray import tune

    return tune.CheckpointConfig(num_to_keep=max(t.cfg.checkpoint.keep_last for t in plan.runnable))


def _slots(plan: SweepPlan, spec: SweepSpec) -> int:
    """Trials at once: one per GPU (or the sweep's cap); under ``seeds: auto`` at most one seed's worth."""
    slots = _concurrency(plan, spec)
    if spec.seeds != "auto":
        return slots
    from yxanul.sweep.auto import concurrency

    return concurrency(slots, len({t.arm for t in plan.runnable}))


def _auto_seeds(plan: SweepPlan, uri: str, experiment_id: str, parent_id: str) -> Any:
    from yxanul.sweep.auto import _DONE, AutoSeeds

    _DONE.pop(plan.name, None)
    arms = tuple(dict.fromkeys(t.arm for t in plan.runnable))
    return AutoSeeds(plan.name, uri, experiment_id, parent_id, plan.spec.metric, plan.reference, arms,
                     plan.spec.max_seeds, plan.spec.equivalence_margin)


def _interrupted(plan: SweepPlan, events: _Events, uri: str, experiment_id: str,
                 parent_id: str) -> interrupt.Interrupted:
    """The sweep was stopped by a signal: record where each running trial will resume (its latest checkpoint) on
    its run and on the parent run, end them ``killed`` and the parent ``interrupted``; the one-line exception."""
    by_name = {t.run_name: t for t in plan.trials}
    runs = records.child_run_ids(uri, experiment_id, parent_id)
    places = []
    for name, tune_trial in events.running.items():
        trial = by_name[name]
        where = interrupt.resume_point(_checkpoints_dir(tune_trial, trial), f"trial t{trial.index:02d}")
        places.append(where)
        if name in runs:
            interrupt.record_interruption(uri, runs[name], where)
    text = ", ".join(places) or "with no trial running"
    interrupt.record_interruption(uri, parent_id, text)
    records.end_running_children(uri, experiment_id, parent_id, Status.KILLED)
    records.end_parent(uri, parent_id, Status.INTERRUPTED)
    return interrupt.Interrupted(interrupt.received() or signal.SIGINT, f"interrupted {text}; the same command resumes")


def _restart_point(plan: SweepPlan) -> Any:
    """For the callback that announces a restarted trial: ``from 6.55M tokens`` (its latest checkpoint) or ``from
    the start`` (none yet)."""
    by_name = {t.run_name: t for t in plan.trials}

    def point(tune_trial: Any) -> str:
        trial = by_name.get(tune_trial.config["trial"]["run_name"])
        if tune_trial.config["trial"].get("in_process"):  # Tune restores the checkpoint it registered last
            registered = getattr(tune_trial, "checkpoint", None)
            tokens = interrupt.checkpoint_tokens(registered.path) if registered is not None else None
        else:  # the TorchTrainer resumes from its run folder's latest
            tokens = interrupt.latest_checkpoint_tokens(_checkpoints_dir(tune_trial, trial)) if trial else None
        return f"from {human_count(tokens)} tokens (its latest checkpoint)" if tokens else "from the start"

    return point


def _checkpoints_dir(tune_trial: Any, trial: Any) -> str:
    """Where a trial's checkpoints are: Tune's trial folder in process, else its TorchTrainer's run folder."""
    return tune_trial.path if tune_trial.config["trial"].get("in_process") else Layout.of(trial.cfg).run_dir(trial.run_name)


def _sweep_timeline(uri: str, experiment_id: str, parent_id: str, events: Any, wall_s: float, slots: int) -> None:
    """The sweep's timeline (:func:`yxanul.timeline.sweep_metrics`) over the trials that ran in this start of the
    sweep, logged on the parent run (step = this start's number) and printed as one line."""
    trials = records.trial_timelines(uri, experiment_id, parent_id, list(events.intervals))
    metrics = sweep_metrics(list(trials.values()), list(events.intervals.values()), wall_s, slots)
    records.log_parent_timeline(uri, parent_id, metrics)
    shares = ", ".join(f"{k.removeprefix(PREFIX).removesuffix('_s').replace('_', ' ')} {seconds(v)}"
                       for k, v in sorted(metrics.items(), key=lambda kv: -kv[1])
                       if k.endswith("_s") and k not in (WALL_METRIC, metric_name("steps")) and v >= 0.05)
    say(f"sweep efficiency {percent(metrics[EFFICIENCY_METRIC])}: training steps "
        f"{seconds(metrics.get(metric_name('steps'), 0.0))} of {seconds(wall_s)} wall x {slots} trial slot(s), "
        f"{len(trials)} trial(s) timed" + (f"; {shares}" if shares else ""))


def _horizon(cfg: Any) -> tuple[int, int]:
    """(tokens at the end of training, tokens where the run stops by itself: train.stop_after_tokens or the end)."""
    total = total_tokens(cfg)
    stop = cfg.train.stop_after_tokens
    return total, min(total, stop) if stop else total


def _announcer(shown: dict[str, str]) -> Any:
    """The console lines of a trial's end: its timeline, when its run holds one
    (``t01 curriculum=none | timeline: wall 95.2 s: steps 52.1 s (54.7%), ...``), then its verdict
    (``t01 curriculum=none | finished: at 32768 tokens``)."""
    def announce(run_name: str, status: str, reason: str, timeline: dict[str, float]) -> None:
        label = shown.get(run_name, run_name)
        if timeline:
            say(f"{label} | timeline: {format_timeline(timeline)}")
        say(f"{label} | {status}" + (f": {reason}" if reason else ""))

    return announce


@dataclass
class _Events:
    """What the driver saw of its trials in this start of the sweep (kept by :class:`TrialEvents`)."""

    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    """run name -> (start, end) on this machine's clock (the end = the start while it runs)."""
    running: dict[str, Any] = field(default_factory=dict)
    """run name -> Tune trial, for the trials running now."""


_EVENTS: dict[str, _Events] = {}
"""Sweep name -> its :class:`_Events` in this process. A module-level record because ``Tuner.restore`` runs the
callbacks it unpickles from the experiment, not the objects this start of the sweep made."""


def _trial_events_callback() -> Any:
    from ray.tune import Callback

    class TrialEvents(Callback):
        """Console lines for the Tune events that are not verdicts (a trial started, or restarted), and the
        trials' start and end times and which are running (:data:`_EVENTS`)."""

        def __init__(self, shown: dict[str, str], sweep: str = "") -> None:
            self.shown = shown
            self.sweep = sweep

        def _events(self) -> _Events:
            # Through the module, not the global: cloudpickle copies a local class's globals by value, and a
            # restored sweep runs the unpickled callback.
            from yxanul.sweep import tune as module

            return module._EVENTS.setdefault(self.sweep, _Events())

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            name = trial.config["trial"]["run_name"]
            now = time.time()
            self._events().intervals[name] = (now, now)
            self._events().running[name] = trial
            say(f"{self.shown.get(name, name)} | started")

        def _ended(self, trial: Any) -> None:
            name = trial.config["trial"]["run_name"]
            events = self._events()
            events.running.pop(name, None)
            if name in events.intervals:
                events.intervals[name] = (events.intervals[name][0], time.time())

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._ended(trial)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if interrupt.received() is None:  # a trial lost to the signal stays "running": it was interrupted
                self._ended(trial)

    return TrialEvents
