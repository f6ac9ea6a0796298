"""The sweep's MLflow runs: the parent run, one child run per trial (trials that cannot run and trials that
fail before their run exists recorded too), and the Tune callback that records a stopped or lost trial's
verdict. Every run is created, reopened and ended through :mod:`yxanul.tracking`."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from yxanul.errors import ConfigError
from yxanul.interrupt import received, record_restart, record_resume
from yxanul.sweep.spec import spec_yaml
from yxanul.sweep.text import format_plan
from yxanul.sweep.trials import TOKENS_ATTR, SweepPlan, trial_tags
from yxanul.tags import (
    ARM_TAG,
    COMMAND_TAG,
    ERROR_TAG,
    GIT_DIRTY_TAG,
    GIT_SHA_TAG,
    NOTE_TAG,
    PARENT_RUN_ID_TAG,
    PRECISION_TAG,
    REASON_TAG,
    RESUMES_TAG,
    ROLE_SWEEP,
    ROLE_TAG,
    RUN_NAME_TAG,
    STATUS_TAG,
    STOPPED_AT_TOKENS_TAG,
    SWEEP_HASH_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    TUNE_PATH_TAG,
    VARIANT_TAG,
)
from yxanul.timeline import PREFIX
from yxanul.tracking import (
    GIT_DIFF_ARTIFACT,
    Status,
    client,
    create_run,
    end_run,
    git_diff_tags,
    git_state,
    reopen_run,
)

__all__ = ["STOPPING_RULE_ARTIFACT", "child_run_ids", "dead_pid", "end_parent", "end_running_children",
           "end_trial_run_callback", "fingerprint", "finished_children", "log_parent_timeline", "open_parent",
           "record_not_runnable", "set_parent_tags", "summarize", "trial_timelines"]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def _children(uri: str, experiment_id: str, parent_id: str) -> list[Any]:
    return client(uri).search_runs([experiment_id], filter_string=f"tags.`{PARENT_RUN_ID_TAG}` = {_quote(parent_id)}",
                                   max_results=5000)


def fingerprint(plan: SweepPlan) -> str:
    """A hash of the base and the trials: a resumed sweep must have the same."""
    # arm and axes follow from the label; left out so that sweeps started before they were carried still resume
    trials = [{k: v for k, v in t.to_param().items() if k not in ("arm", "axes")} for t in plan.trials]
    blob = json.dumps({"base": str(plan.base_path), "base_overrides": plan.base_overrides,
                       "trials": trials}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


STOPPING_RULE_ARTIFACT = "stopping_rule.txt"
"""On the parent run of a ``seeds: auto`` sweep: the rule and its error rates, in words (the report shows it)."""


def open_parent(plan: SweepPlan, uri: str, experiment_id: str, tune_path: str, resume: bool,
                budget_text: str = "") -> str:
    """The sweep's parent MLflow run: the one a resumed sweep already has (reopened), else a new one (with the
    trial table, and the time / cost / power plan ``budget_text`` of the dry run)."""
    mlflow = client(uri)
    digest = fingerprint(plan)
    if resume:
        found = mlflow.search_runs(
            [experiment_id], order_by=["attributes.start_time DESC"], max_results=1,
            filter_string=f"tags.`{SWEEP_TAG}` = {_quote(plan.name)} and tags.`{TUNE_PATH_TAG}` = {_quote(tune_path)}")
        if found:
            parent = found[0]
            if parent.data.tags.get(SWEEP_HASH_TAG) != digest:
                raise ConfigError(
                    f"sweep {plan.name!r} at {tune_path} was started with different trials (other axes, overrides "
                    "or base config); resuming would mix them. Start a new sweep with sweep.name=<new name>")
            reopen_run(uri, parent.info.run_id)
            if parent.data.tags.get(STATUS_TAG) != Status.FINISHED:  # a finished sweep run again resumes nothing
                record_resume(uri, parent.info.run_id)
            return parent.info.run_id
        raise ConfigError(
            f"sweep {plan.name!r} has a Ray Tune experiment at {tune_path} but no parent run in {uri} "
            f"(tag {TUNE_PATH_TAG}); its trials would log to a missing run. Start a new sweep with "
            "sweep.name=<new name>, or point tracking.uri at the store it used")
    spec = plan.spec
    git = git_state()
    tags = {SWEEP_TAG: plan.name, ROLE_TAG: ROLE_SWEEP, TUNE_PATH_TAG: tune_path,
            SWEEP_HASH_TAG: digest, NOTE_TAG: spec.description,
            GIT_SHA_TAG: git["sha"], GIT_DIRTY_TAG: git["dirty"], COMMAND_TAG: _command_line(), **git_diff_tags(git)}
    params = {"sweep.metric": spec.metric, "sweep.mode": spec.mode, "sweep.trials": str(len(plan.trials)),
              "sweep.reference": plan.reference,
              "sweep.seeds": json.dumps(spec.seeds), "sweep.base": str(plan.base_path or "defaults"),
              "sweep.base_overrides": " ".join(plan.base_overrides),
              # what the command line changed on top of the sweep file (the report lists it)
              "sweep.command_overrides": json.dumps(plan.run_overrides),
              "sweep.milestones_tokens": json.dumps(plan.milestones)}
    if spec.target_bpb is not None:
        params["sweep.target_bpb"] = repr(spec.target_bpb)
    if spec.target_effect is not None:
        params["sweep.target_effect"] = repr(spec.target_effect)
    if spec.seeds == "auto":
        params["sweep.max_seeds"] = str(spec.max_seeds)
        if spec.equivalence_margin is not None:
            params["sweep.equivalence_margin"] = repr(spec.equivalence_margin)
    rid = create_run(uri, experiment_id, f"sweep-{plan.name}", tags=tags, params=params)
    mlflow.log_text(rid, spec_yaml(spec), "sweep.yaml")
    mlflow.log_text(rid, format_plan(plan) + "\n", "trials.txt")
    if budget_text:
        mlflow.log_text(rid, budget_text + "\n", "budget.txt")
    if spec.seeds == "auto":
        mlflow.log_text(rid, spec.sequential().describe() + "\n", STOPPING_RULE_ARTIFACT)
    if git.get("diff"):
        mlflow.log_text(rid, git["diff"], GIT_DIFF_ARTIFACT)
    return rid


def _command_line() -> str:
    """The command that started this process, as a user would type it (``python -m jobs.sweep ...``)."""
    import shlex
    import sys
    from pathlib import Path

    argv = list(sys.argv)
    head = Path(argv[0]) if argv else Path("?")
    if head.parent.name == "jobs" and head.suffix == ".py":
        argv[0:1] = ["python", "-m", f"jobs.{head.stem}"]
    return shlex.join(argv)[:5000]


def set_parent_tags(uri: str, parent_id: str, tags: dict[str, str]) -> None:
    """Tags the sweep learns while it runs (e.g. where ``seeds: auto`` stood at the end)."""
    mlflow = client(uri)
    for key, value in tags.items():
        mlflow.set_tag(parent_id, key, value)


def end_parent(uri: str, parent_id: str, status: str, results: str | None = None) -> None:
    """End the parent run with ``status``, after logging the results table (results.txt) if given."""
    if results is not None:
        client(uri).log_text(parent_id, results + "\n", "results.txt")
    end_run(uri, parent_id, status)


def end_running_children(uri: str, experiment_id: str, parent_id: str, status: str) -> None:
    """End the child runs still RUNNING (the sweep itself was interrupted) with ``status``."""
    for run in _children(uri, experiment_id, parent_id):
        if run.info.status == "RUNNING":
            end_run(uri, run.info.run_id, status, reason="the sweep was interrupted")


def record_not_runnable(plan: SweepPlan, uri: str, experiment_id: str, parent_id: str) -> None:
    """One ended child run per trial that cannot run here, with the reason (never silently run in BF16)."""
    existing = {r.data.tags.get(RUN_NAME_TAG) for r in _children(uri, experiment_id, parent_id)}
    for trial in plan.trials:
        if trial.runnable or trial.run_name in existing:
            continue
        rid = create_run(uri, experiment_id, trial.run_name, tags={
            PARENT_RUN_ID_TAG: parent_id, SWEEP_TAG: plan.name, **trial.identity_tags(),
            PRECISION_TAG: trial.cfg.precision.mode}, params=trial.cfg.flat_params())
        end_run(uri, rid, Status.NOT_RUNNABLE, reason=trial.reason)


def end_trial_run_callback(uri: str, experiment_id: str, parent_id: str, horizons: dict[str, tuple[int, int]],
                           announce: Callable[[str, str, str, dict[str, float]], None] | None = None,
                           markers: dict[str, str | None] | None = None,
                           restart_point: Callable[[Any], str] | None = None) -> Any:
    """A Tune callback (driver side, the scheduler's side) that records the verdict of a trial's MLflow run.

    ``horizons``: run name -> (train.max_tokens as planned, tokens where the run stops by itself). The
    verdict follows from the tokens the trial last reported to Tune, which only Tune holds: at the end,
    ``finished`` (the trial ended it itself; here only if it is still running); short of where it stops by
    itself, ``stopped_early`` by the scheduler. Sweep trials leave an unfinished run RUNNING
    (``train(end_unfinished=False)``), so this is the only writer of that verdict: no race, no wait.
    ``announce(run name, status, reason, timeline)`` is told every verdict (the console's trial lines), with the
    ``timeline/*`` metrics the trial's run holds by then ({} if none): the driver prints the trial's timeline line
    itself, in order, where a line printed in the trial's process would come through Ray's log forwarding late or,
    at the end of a sweep, not at all.

    ``markers``: run name -> its workers' marker folder, where a training process that died of a fatal error left
    its stack (:mod:`yxanul.fatal`): the reason of a trial whose process died. A trial Tune starts again
    (``trial_restarts``) is announced as ``restarting`` with where from (``restart_point(trial)``) and why, and its run
    counts the restart (:func:`yxanul.interrupt.record_restart`)."""
    from ray.tune import Callback

    class _EndTrialRuns(Callback):
        def __init__(self) -> None:
            super().__init__()
            self._unrecorded: dict[str, list[tuple[float, str]]] = {}
            """run name -> (when, what) of each restart of a trial whose process died before its run existed:
            counted on the run when the trial ends (a restarted trial opens its run again)."""

        def _run_of(self, name: str) -> list:
            """The trial's MLflow run ([] before it exists)."""
            return client(uri).search_runs([experiment_id], max_results=1, filter_string=(
                f"tags.`{PARENT_RUN_ID_TAG}` = {_quote(parent_id)} and tags.`{RUN_NAME_TAG}` = {_quote(name)}"))

        def _finish(self, trial: Any, error: bool) -> None:
            name = trial.config["trial"]["run_name"]
            found = self._run_of(name)
            status, reason = self._verdict(trial, name, error, found)
            if name in self._unrecorded:
                for run in found or self._run_of(name):  # a trial that failed again has the run _verdict recorded
                    for at, what in self._unrecorded.pop(name):
                        record_restart(uri, run.info.run_id, what, at=at)
            if announce is not None:
                announce(name, status, reason, _timeline(found[0]) if found else {})

        def _verdict(self, trial: Any, name: str, error: bool, found: list) -> tuple[str, str]:
            tokens = int((trial.last_result or {}).get(TOKENS_ATTR, 0) or 0)
            if error:
                reason = self._why(trial, name, found)
                if found:
                    end_run(uri, found[0].info.run_id, Status.FAILED, reason=reason)
                else:  # failed before its run was created (bad data, config): record it anyway
                    _record_failed(uri, experiment_id, parent_id, trial, reason)
                return Status.FAILED, reason
            total, own_stop = horizons.get(name, (0, 0))
            if total and tokens >= total:  # finished training; Tune may end the trial before the trial does
                if found:
                    end_run(uri, found[0].info.run_id, Status.FINISHED, only_if_running=True)
                return Status.FINISHED, f"at {tokens} tokens"
            from yxanul.sweep.auto import stopped_by_rule

            if own_stop and tokens >= own_stop:
                status, reason, tags = Status.STOPPED, f"train.stop_after_tokens at {tokens} tokens", {}
            elif stopped_by_rule(trial.config["sweep"]["name"]):
                status, reason = Status.NOT_NEEDED, f"seeds: auto had decided; stopped at {tokens} tokens"
                tags = {STOPPED_AT_TOKENS_TAG: str(tokens)}
            else:
                status, reason = Status.STOPPED_EARLY, f"stopped by the ASHA scheduler at {tokens} tokens"
                tags = {STOPPED_AT_TOKENS_TAG: str(tokens)}
            if found:
                end_run(uri, found[0].info.run_id, status, tags=tags, reason=reason)
            return status, reason

        def _why(self, trial: Any, name: str, found: list) -> str:
            """Why the trial failed: the error its own run recorded (launch.train; Tune's copy of it may not be
            synced to storage yet when this callback runs), else its process's fatal error (a process that died
            records nothing itself: the one Ray names as dead, else the trial's latest), else Tune's error."""
            from yxanul.fatal import summary

            recorded = _last_line(found[0].data.tags.get(ERROR_TAG, "")) if found else ""
            if recorded and found[0].data.tags.get(STATUS_TAG) == Status.FAILED:
                return recorded
            pid = dead_pid(_error_text(trial))
            fatal = summary((markers or {}).get(name), rank=0, pid=pid, latest=pid is None)
            return f"its process died: {fatal}" if fatal else _error_line(trial)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._finish(trial, error=False)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if received() is not None:  # lost to the job's signal: the sweep records it as interrupted, not failed
                return
            self._finish(trial, error=True)

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if received() is not None:
                return
            name = trial.config["trial"]["run_name"]
            found = self._run_of(name)
            why = self._why(trial, name, found)
            where = restart_point(trial) if restart_point is not None else "from its latest checkpoint"
            failures = getattr(getattr(trial, "run_metadata", None), "num_failures", 0)
            count = f" (restart {failures} of {trial.max_failures})" if failures and trial.max_failures > 0 else ""
            text = f"{where}{count}, after: {why}"
            if found:
                record_restart(uri, found[0].info.run_id, text)
            else:  # its process died before the run was opened (H100, 2026-12-07): counted once the run exists
                self._unrecorded.setdefault(name, []).append((time.time(), text))
            if announce is not None:
                announce(name, "restarting", text, {})

    return _EndTrialRuns()


def _last_line(text: str) -> str:
    """The last non-empty line of ``text`` (the user-facing message of a YxanulError), stripped; "" if none."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:2000] if lines else ""


def dead_pid(text: str) -> int | None:
    """The pid of the process whose death Ray's error ``text`` reports ("The actor died unexpectedly before finishing
    this task." and its ``pid: N`` line), or None: an in-process trial's process, which may have died before its
    training loop wrote the marker that says which process was the trial's latest (H100, 2026-12-07: in the garbage
    collector at a reused process's next trial)."""
    import re

    if "actor died unexpectedly" not in text:
        return None
    found = re.search(r"^\s*pid: (\d+)\s*$", text, re.M)
    return int(found[1]) if found else None


def _error_line(trial: Any) -> str:
    """The last line of a trial's error as Tune stored it; for a process that died (Ray's "The actor died
    unexpectedly ..." paragraph), "its process died: " and Ray's exit detail."""
    text = _error_text(trial)
    if "actor died unexpectedly" in text or "The actor is dead" in text:
        import re

        detail = re.search(r"Worker exit detail: (.*?)(?:\. Some common causes|$)", text, re.S)
        return ("its process died" + (f": {' '.join(detail[1].split())}" if detail else "")
                + " (no fatal error was recorded: killed by a signal Python cannot catch, e.g. SIGKILL or the OOM "
                "killer, or before the trial began recording faults)")
    return _last_line(text) or "failed (see the trial's error file in the Ray Tune folder)"


def _error_text(trial: Any) -> str:
    """Tune's text of the trial's errors: the driver's own copy (``trial.error_file``, which Tune appends to just
    before it calls the callbacks), else the copy in the sweep's storage (``get_error``, synced later: empty when a
    callback asks, which left a restarted trial's line saying only "see the trial's error file"); "" if neither."""
    try:
        if trial.error_file:
            text = Path(trial.error_file).read_text(errors="replace")
            if text.strip():
                return text
    except Exception:  # noqa: BLE001 - no such file, an older Tune without the property: the storage's copy
        pass
    try:
        return str(trial.get_error() or "")
    except Exception:  # the error file may be gone; the status still says failed
        return ""


def _record_failed(uri: str, experiment_id: str, parent_id: str, trial: Any, reason: str) -> None:
    params = trial.config["trial"]
    rid = create_run(uri, experiment_id, params["run_name"], tags={
        PARENT_RUN_ID_TAG: parent_id, SWEEP_TAG: trial.config["sweep"]["name"], **trial_tags(params)})
    end_run(uri, rid, Status.FAILED, reason=reason)


def finished_children(uri: str, experiment_id: str, parent_id: str, metric: str) -> list[tuple[str, int, float]]:
    """(arm, seed, final ``metric``) of the sweep's finished child runs (what ``seeds: auto`` decides on)."""
    out = []
    for run in _children(uri, experiment_id, parent_id):
        tags = run.data.tags
        if tags.get(STATUS_TAG) == Status.FINISHED and metric in run.data.metrics and "run.seed" in run.data.params:
            out.append((tags.get(ARM_TAG, ""), int(run.data.params["run.seed"]), run.data.metrics[metric]))
    return out


def child_run_ids(uri: str, experiment_id: str, parent_id: str) -> dict[str, str]:
    """Run name -> MLflow run id of the sweep's child runs."""
    return {r.data.tags.get(RUN_NAME_TAG, ""): r.info.run_id for r in _children(uri, experiment_id, parent_id)}


def trial_timelines(uri: str, experiment_id: str, parent_id: str, run_names: list[str]) -> dict[str, dict[str, float]]:
    """The latest ``timeline/*`` metrics of the named child runs (their latest start), by run name; a trial that
    logged none (interrupted, failed) is left out."""
    wanted = set(run_names)
    out = {}
    for run in _children(uri, experiment_id, parent_id):
        name = run.data.tags.get(RUN_NAME_TAG)
        timeline = _timeline(run)
        if name in wanted and timeline:
            out[name] = timeline
    return out


def _timeline(run: Any) -> dict[str, float]:
    """An MLflow run's latest ``timeline/*`` metrics ({} if it logged none)."""
    return {k: v for k, v in run.data.metrics.items() if k.startswith(PREFIX)}


def log_parent_timeline(uri: str, parent_id: str, metrics: dict[str, float]) -> None:
    """The sweep's timeline on its parent run, at step = this start of the sweep (1, then 2 after a resume, ...)."""
    from mlflow.entities import Metric

    mlflow = client(uri)
    step = int(mlflow.get_run(parent_id).data.tags.get(RESUMES_TAG) or 0) + 1
    now = int(time.time() * 1000)
    mlflow.log_batch(parent_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def summarize(uri: str, experiment_id: str, parent_id: str, metric: str) -> list[dict[str, Any]]:
    """Per child run of the sweep: index, variant, status, tokens, final metric, reason, run id."""
    mlflow = client(uri)
    rows = []
    for run in _children(uri, experiment_id, parent_id):
        tags = run.data.tags
        tokens = None
        history = mlflow.get_metric_history(run.info.run_id, metric) if metric in run.data.metrics else []
        if history:
            tokens = max(m.step for m in history)
        rows.append({"index": int(tags.get(TRIAL_TAG, -1)), "variant": tags.get(VARIANT_TAG, ""),
                     "status": tags.get(STATUS_TAG) or run.info.status.lower(),
                     "tokens": tokens, metric: run.data.metrics.get(metric),
                     "reason": tags.get(REASON_TAG, ""), "run_id": run.info.run_id})
    return sorted(rows, key=lambda r: r["index"])
