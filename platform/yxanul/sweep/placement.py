"""Placement: which accelerator type each trial runs on; FP8 trials (and their pair partners) pinned to an
FP8-capable type; trials that cannot run recorded as not runnable with the reason."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from yxanul.sweep.cluster import ClusterView
from yxanul.sweep.spec import SweepSpec
from yxanul.sweep.trials import Trial, build_config

__all__ = ["place", "planned_concurrency"]


def place(trials: list[Trial], spec: SweepSpec, cluster: ClusterView,
          base_path: Path | None, base_overrides: list[str]) -> None:
    """Decide where each trial runs; pin FP8 trials (and their pair partners) to an FP8-capable type."""
    from yxanul.accelerators import fp8_capable_types, placement_for

    available = list(cluster.accelerator_types)
    groups: dict[str, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(trial.pair, []).append(trial)
    for members in groups.values():
        fp8 = [t for t in members if t.cfg.precision.mode == "fp8"]
        pinned = spec.resources.accelerator_type or (fp8[0].cfg.scaling.accelerator_type if fp8 else None)
        if fp8 and pinned is None:
            recipes = {t.cfg.precision.recipe for t in fp8}
            capable = [a for a in available if a in fp8_capable_types()
                       and all(placement_for("fp8", a, available, recipe=r)[0] for r in recipes)]
            pinned = capable[0] if capable else None
        for trial in members:
            mode = trial.cfg.precision.mode
            if (pinned is not None and trial.cfg.scaling.use_gpu and trial.cfg.scaling.accelerator_type != pinned
                    and (fp8 or spec.resources.accelerator_type)):
                trial.overrides["scaling.accelerator_type"] = pinned
                trial.cfg = build_config(base_path, base_overrides, trial.overrides)
            accel = trial.cfg.scaling.accelerator_type
            recipe = trial.cfg.precision.recipe if mode == "fp8" else None
            if mode == "fp8" and not trial.cfg.scaling.use_gpu and available:
                # On a GPU cluster the fix is the sweep's resources; without GPUs placement_for says so.
                ok, reason = False, ("not runnable: precision.mode=fp8 needs GPU workers; set "
                                     "resources.gpus_per_worker: 1 in the sweep (scaling.use_gpu=true)")
            elif (mode == "fp8" and cluster.transformer_engine is False and available
                  and not trial.cfg.scaling.simulate_accelerators):  # simulated: trains in fp32 (tagged)
                ok, reason = False, ("not runnable: precision.mode=fp8 needs Transformer Engine, which is not "
                                     "installed (pip install -e '.[gpu]')")
            else:
                ok, reason = placement_for(mode, accel, available, recipe=recipe)
            if ok and trial.cfg.scaling.use_gpu and not available:
                ok, reason = False, "not runnable: scaling.use_gpu=true but the cluster has no GPU"
            trial.runnable, trial.reason = ok, reason


def planned_concurrency(trials: list[Trial], resources: Mapping[str, float], cap: int | None = None) -> int:
    """Trials that run at once. A sweep's ``max_concurrent_trials`` (``cap``) is used as it is: on an autoscaling
    cluster the nodes it needs do not exist yet. Without it: as many as the cluster's resources hold side by side
    now (a GPU trial of W workers takes W GPUs, a CPU trial W x cpus_per_worker CPUs), for the hungriest runnable
    trial, at least 1. On one host with 2 GPUs, two 1-GPU trials run at once, one per GPU (Ray gives each Train
    worker its own device). Train workers are not Tune trial resources, so Tune itself would not limit this."""
    if cap:
        return cap
    counts = []
    for trial in trials:
        sc = trial.cfg.scaling
        if sc.use_gpu:
            counts.append(int(resources.get("GPU", 0) // sc.num_workers))
        else:
            counts.append(int(resources.get("CPU", 0) // (sc.num_workers * sc.cpus_per_worker)))
    return max(1, min(counts)) if counts else 1

