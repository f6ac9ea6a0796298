"""MLflow -> the runs of a sweep (children of its parent run) or of an experiment, and the sweep's parent run.

Reads MLflow only (never local side files), so a report is the same wherever the runs trained, and it works
against the local SQLite store and a remote ``mlflow server`` alike. Tag names come from :mod:`yxanul.tags`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yxanul.errors import TrackingError, first_line
from yxanul.report.runs import RunSeries, arm_and_axes, legacy_seed
from yxanul.tags import (
    ATTENTION_SHARE_METRIC,
    COMMAND_TAG,
    GIT_DIFF_SHA256_TAG,
    GIT_DIRTY_TAG,
    GIT_SHA_TAG,
    NOTE_TAG,
    PAIR_TAG,
    PARENT_RUN_ID_TAG,
    REASON_TAG,
    STATUS_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    UNIGRAM_BPB_METRIC,
    VARIANT_TAG,
)

__all__ = ["Fetched", "SweepRecord", "fetch_runs", "mlflow_client"]

_TRAIN_METRICS = ("train/tokens_per_s", "train/tokens_per_s_per_gpu", "train/mfu_bf16", "train/mfu_fp8",
                  "train/peak_mem_gib", "train/elapsed_s", "train/compile_s", "train/loss", "train/grad_norm",
                  "train/grad_norm_max", "train/loss_max", "train/spike_grad_norm", "train/spike_loss", "train/stage",
                  "train/seq_len", ATTENTION_SHARE_METRIC)


@dataclass
class SweepRecord:
    """The sweep's parent run: what the sweep recorded about itself."""

    run_id: str
    name: str
    experiment_id: str
    status: str
    """``yxanul.status`` (``finished``, ``failed``, ``interrupted``, ``running``), else MLflow's status."""
    running: bool
    """MLflow still says RUNNING (the sweep's driver may be alive)."""
    description: str = ""
    command: str = ""
    git_sha: str = ""
    git_dirty: str = ""
    git_diff_sha256: str = ""
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    start_time_ms: int | None = None
    end_time_ms: int | None = None

    @property
    def reference(self) -> str | None:
        return self.params.get("sweep.reference") or None

    @property
    def target_bpb(self) -> float | None:
        text = self.params.get("sweep.target_bpb")
        return float(text) if text else None

    @property
    def target_effect(self) -> float | None:
        """``sweep.target_effect``: the smallest difference in the sweep's metric the design is meant to detect."""
        text = self.params.get("sweep.target_effect")
        return float(text) if text else None

    @property
    def command_overrides(self) -> list[str] | None:
        """The command line's overrides on top of the sweep file (None: the sweep predates this param)."""
        text = self.params.get("sweep.command_overrides")
        return list(json.loads(text)) if text else None


@dataclass
class Fetched:
    runs: list[RunSeries]
    parents: list[SweepRecord]
    """The sweeps' parent runs, in the order asked (an experiment's: by start time); empty for loose runs."""
    source: str
    """``sweep fp8-vs-bf16``, ``sweeps fp8-vs-bf16 + fp8-vs-bf16-seed2`` or ``experiment yxanul``."""
    tracking_uri: str

    @property
    def parent(self) -> SweepRecord | None:
        """The one sweep's parent run (None for several, or none)."""
        return self.parents[0] if len(self.parents) == 1 else None


def mlflow_client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` that answered, or a :class:`TrackingError` naming the URI and the fix (in seconds)."""
    from mlflow.tracking import MlflowClient

    from yxanul.tracking import check_reachable

    check_reachable(tracking_uri, timeout_s=10.0)  # fail in seconds, not after MLflow's retries
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise TrackingError(f"no MLflow store at {tracking_uri} (the file does not exist); check --tracking-uri")
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises many types (MlflowException, OperationalError, requests errors)
        raise TrackingError(f"cannot read the MLflow tracking store {tracking_uri}: {first_line(exc)}") from None
    return client


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def _sweep_record(run: Any) -> SweepRecord:
    tags, params = run.data.tags, run.data.params
    return SweepRecord(
        run_id=run.info.run_id, name=tags.get(SWEEP_TAG, ""), experiment_id=run.info.experiment_id,
        status=tags.get(STATUS_TAG) or run.info.status.lower(), running=run.info.status == "RUNNING",
        description=tags.get(NOTE_TAG, ""), command=tags.get(COMMAND_TAG, ""), git_sha=tags.get(GIT_SHA_TAG, ""),
        git_dirty=tags.get(GIT_DIRTY_TAG, ""), git_diff_sha256=tags.get(GIT_DIFF_SHA256_TAG, ""), params=dict(params),
        tags={k: v for k, v in tags.items() if k.startswith(("yxanul.", "mlflow."))},
        start_time_ms=run.info.start_time, end_time_ms=run.info.end_time)


def _run_series(client: Any, run: Any, parent: SweepRecord | None) -> RunSeries:
    tags, params = run.data.tags, run.data.params
    wanted = [k for k in run.data.metrics if k.startswith("val/") or k in _TRAIN_METRICS or k == UNIGRAM_BPB_METRIC]
    metrics, logged_ms = {}, {}
    for key in wanted:
        points: dict[int, tuple[float, int]] = {}
        for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp)):
            points[int(m.step)] = (float(m.value), int(m.timestamp))  # logged twice (a restart): the latest wins
        ordered = sorted(points.items())
        metrics[key] = [(step, value) for step, (value, _) in ordered]
        if key == "train/compile_s":  # when each point was logged: a restart's segment is found by it
            logged_ms[key] = [ms for _, (_, ms) in ordered]
    variant = tags.get(VARIANT_TAG) or run.info.run_name or run.info.run_id
    arm, axes = arm_and_axes(tags, variant)
    seed_text = params.get("run.seed", "")
    seed = int(seed_text) if seed_text.lstrip("-").isdigit() else legacy_seed(variant)
    status, reason = _real_status(run, parent)
    return RunSeries(
        run_id=run.info.run_id, name=run.info.run_name or run.info.run_id, variant=variant, arm=arm,
        pair=tags.get(PAIR_TAG), axes=axes, seed=seed, status=status, reason=reason, metrics=metrics,
        tags={k: v for k, v in tags.items() if k.startswith(("yxanul.", "mlflow."))}, params=dict(params),
        start_time_ms=run.info.start_time, end_time_ms=run.info.end_time, experiment_id=run.info.experiment_id,
        logged_ms=logged_ms)


DID_NOT_FINISH = "did_not_finish"
"""The report's status for a run still marked running whose sweep is over: nobody is training it any more."""


def _real_status(run: Any, parent: SweepRecord | None) -> tuple[str, str]:
    """The run's verdict (``yxanul.status``, else MLflow's) and reason. A run the sweep left ``running``
    after the sweep itself ended (its driver was killed, the machine taken back) is not running: it did not
    finish, and the sweep's own status says why."""
    status = run.data.tags.get(STATUS_TAG) or run.info.status.lower()
    reason = run.data.tags.get(REASON_TAG, "")
    if status == "running" and parent is not None and not parent.running:
        why = "sweep interrupted" if parent.status in ("interrupted", "killed") else f"the sweep ended ({parent.status})"
        return DID_NOT_FINISH, why
    return status, reason


def fetch_runs(tracking_uri: str, *, sweep: str | Sequence[str] | None = None, experiment: str | None = None,
               parent_run_id: str | None = None) -> Fetched:
    """Runs of one sweep or several (children of each one's latest parent run, or of ``parent_run_id`` when the
    caller holds the one sweep's) or of an experiment (every run that is not a parent), in sweep then trial order.
    Several sweeps are one comparison run in parts (seeds 0-1, then seed 2 on another day or machine, in the same
    MLflow store). Raises :class:`TrackingError` when nothing matches."""
    sweeps = [sweep] if isinstance(sweep, str) else list(dict.fromkeys(sweep)) if sweep is not None else []
    if bool(sweeps) == (experiment is not None):
        raise TrackingError("give --sweep NAME (one or more) or --experiment NAME, not both")
    if parent_run_id is not None and len(sweeps) != 1:
        raise TrackingError("--parent-run-id names the parent run of one sweep: give exactly one --sweep with it")
    client = mlflow_client(tracking_uri)
    parents: list[Any] = []
    children: list[Any] = []
    if parent_run_id is not None:
        try:
            parent = client.get_run(parent_run_id)
        except Exception as exc:  # MLflow raises MlflowException (or a REST error) for an unknown id
            raise TrackingError(f"no parent run {parent_run_id} in {tracking_uri} ({first_line(exc)}); check "
                                "--parent-run-id and --tracking-uri") from None
        if parent.data.tags.get(SWEEP_TAG) != sweeps[0]:
            raise TrackingError(f"run {parent_run_id} is not the parent run of sweep {sweeps[0]!r} (its {SWEEP_TAG} "
                                f"tag is {parent.data.tags.get(SWEEP_TAG)!r}); check --sweep and --parent-run-id")
        parents = [parent]
        children = client.search_runs([parent.info.experiment_id], max_results=5000,
                                      filter_string=f"tags.`{PARENT_RUN_ID_TAG}` = {_quote(parent_run_id)}")
    elif sweeps:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
        for name in sweeps:
            found = client.search_runs(experiment_ids, filter_string=f"tags.`{SWEEP_TAG}` = {_quote(name)}",
                                       order_by=["attributes.start_time DESC"], max_results=5000)
            latest = [r for r in found if PARENT_RUN_ID_TAG not in r.data.tags]
            if not latest:
                raise TrackingError(f"no sweep named {name!r} in {tracking_uri} (no run tagged {SWEEP_TAG} without a "
                                    "parent); check the name and --tracking-uri")
            parents.append(latest[0])  # the latest run of this sweep name
            children += [r for r in found if r.data.tags.get(PARENT_RUN_ID_TAG) == latest[0].info.run_id]
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise TrackingError(f"no MLflow experiment named {experiment!r}; experiments: {', '.join(names) or 'none'}")
        found = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=5000)
        has_children = {r.data.tags.get(PARENT_RUN_ID_TAG) for r in found}
        children = [r for r in found if r.info.run_id not in has_children]
        by_id = {r.info.run_id: r for r in found}
        parents = [by_id.get(i) or client.get_run(i)
                   for i in dict.fromkeys(r.data.tags[PARENT_RUN_ID_TAG] for r in children
                                          if PARENT_RUN_ID_TAG in r.data.tags)]
    source = f"experiment {experiment}" if experiment is not None else (
        f"sweep {sweeps[0]}" if len(sweeps) == 1 else "sweeps " + " + ".join(sweeps))
    if not children:
        raise TrackingError(f"{source} has no runs to compare")

    records = {p.info.run_id: _sweep_record(p) for p in parents}
    parent_order = {run_id: i for i, run_id in enumerate(records)}

    def order(r: Any) -> tuple:
        trial = r.data.tags.get(TRIAL_TAG, "")
        return (parent_order.get(r.data.tags.get(PARENT_RUN_ID_TAG), len(parent_order)),
                int(trial) if trial.isdigit() else 1 << 30, r.info.start_time or 0, r.info.run_name or "")

    runs = [_run_series(client, r, records.get(r.data.tags.get(PARENT_RUN_ID_TAG, "")))
            for r in sorted(children, key=order)]
    return Fetched(runs, list(records.values()), source, tracking_uri)
