"""Where a run's wall-clock goes: a timeline of phases, measured where each phase happens, summed per sweep.

A training run (one sweep trial, or ``jobs.train``) splits its wall-clock, from the moment the trial (or the
job's ``train`` call) starts until its MLflow run is ended, into exclusive phases:

    imports      a sweep trial's imports before anything else (with ``sweep.in_process``, Transformer Engine's
                 preload too): paid by the first trial of a process; ~0 for the trials that reuse it
    data         the driver opens the dataset and checks the curriculum; the workers open it, load the
                 validation rows and compute the unigram baseline
    mlflow       every MLflow call: the driver's run creation or reopening and ending, rank 0's logging
                 (metrics, tags, artifacts, the exported model)
    worker_start from ``TorchTrainer.fit()`` to the training function starting on rank 0 (Ray Train's
                 controller, placement, worker processes, their imports, the process group); ~0 for a sweep
                 trial that trains in its own process (``sweep.in_process``)
    build        model, micro-batch measurement, precision swap, compile wrapping, DDP/FSDP, optimizer
    fp8_plan     measuring the FP8 plan (0 when it came from the cache)
    restore      loading a checkpoint (a resumed run)
    compile      the first step of each batch shape (compilation + warm-up; kept out of tokens/s)
    profile      rank 0's one profiled step per curriculum stage (``train.profile_attention``): the profiler's
                 start and stop, the step, parsing its events (kept out of tokens/s)
    steps        training steps: the loop's training clock (``train/elapsed_s``) less the first-of-shape and
                 profiled steps and less rank 0's MLflow calls at logging intervals (they run while the clock runs)
    validation   validation passes
    checkpoint   writing checkpoints and Ray Train's reports (each one a barrier across workers)
    teardown     from rank 0's training function returning to ``fit()`` returning (worker shutdown; in process,
                 the last MLflow send and releasing the model, the CUDA cache and Dynamo's state)
    other        the wall-clock no phase above covers (the rest of the driver's work; restarted workers)

Phases are exclusive: a phase measured inside another (MLflow inside validation) is taken out of the outer
one, so the phases add up to the wall-clock (``other`` is what is left). Efficiency is ``steps / wall``.

A sweep sums its trials and adds ``outside_trials`` (wall-clock when no trial ran: Ray start-up, planning,
Tune's scheduling gaps, the end); sweep efficiency = the trials' step seconds / (wall seconds x trials run at
once). Metrics: ``timeline/<phase>_s``, ``timeline/wall_s``, ``timeline/efficiency`` on each run (step = its
tokens) and on the sweep's parent run (step = the sweep's start count: 1, then 2 after a resume, ...).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

from yxanul.formatting import percent, seconds

__all__ = ["EFFICIENCY_METRIC", "OUTSIDE", "PHASES", "PREFIX", "WALL_METRIC", "Timeline", "format_timeline",
           "metric_name", "sweep_metrics", "timed", "timeline_metrics"]

PHASES: tuple[str, ...] = ("imports", "data", "mlflow", "worker_start", "build", "fp8_plan", "restore", "compile", "profile",
                           "steps", "validation", "checkpoint", "teardown", "other")
"""Per-run phases, in the order a run goes through them (``other`` last)."""
PREFIX = "timeline/"
WALL_METRIC = f"{PREFIX}wall_s"
EFFICIENCY_METRIC = f"{PREFIX}efficiency"


def metric_name(phase: str) -> str:
    """``timeline/<phase>_s``."""
    return f"{PREFIX}{phase}_s"


class Timeline:
    """Seconds per phase, measured with ``with timeline.phase(name):`` (exclusive of nested phases) or added."""

    def __init__(self, clock: Any = time.perf_counter) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = clock
        self._inner: list[float] = []  # per open phase: the seconds its nested phases took

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = self._clock()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed = self._clock() - start
            nested = self._inner.pop()
            self.add(name, elapsed - nested)
            if self._inner:
                self._inner[-1] += elapsed

    def add(self, name: str, value: float) -> None:
        """Add ``value`` seconds to ``name`` (outside any open phase: nothing is taken out of an outer one)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + value

    def took(self, name: str, value: float) -> None:
        """``value`` seconds of ``name`` measured by hand inside the open phase (taken out of it, as if nested)."""
        self.add(name, value)
        if self._inner:
            self._inner[-1] += value

    def merge(self, other: Mapping[str, float]) -> None:
        for name, value in other.items():
            self.add(name, value)

    def to_json(self) -> str:
        return json.dumps({k: round(v, 4) for k, v in self.seconds.items()})


def timeline_metrics(phases: Mapping[str, float], wall_s: float) -> dict[str, float]:
    """The MLflow metrics of a timeline: every phase (``other`` = wall minus the rest), the wall and the
    efficiency (steps / wall)."""
    known = {p: float(phases.get(p, 0.0)) for p in PHASES if p != "other"}
    extra = {p: float(v) for p, v in phases.items() if p not in PHASES and p != OUTSIDE}
    out = {metric_name(p): v for p, v in {**known, **extra}.items()}
    out[metric_name("other")] = wall_s - sum(known.values()) - sum(extra.values())
    out[WALL_METRIC] = wall_s
    out[EFFICIENCY_METRIC] = known["steps"] / wall_s if wall_s > 0 else 0.0
    return out


OUTSIDE = "outside_trials"
"""A sweep's wall-clock when none of its trials ran (Ray start-up, planning, Tune's gaps between trials, the end)."""


def sweep_metrics(trials: list[Mapping[str, float]], intervals: list[tuple[float, float]], wall_s: float,
                  slots: int) -> dict[str, float]:
    """A sweep's timeline: the sum of its trials' ``timeline/*`` metrics (those that ran in this start of the
    sweep), ``outside_trials`` = wall minus the union of the trials' ``(start, end)`` intervals, and the efficiency
    = the trials' step seconds / (wall x ``slots``, the trials that can run at once: one per GPU)."""
    total: dict[str, float] = {}
    for metrics in trials:
        for key, value in metrics.items():
            if key.endswith("_s") and key != WALL_METRIC:
                total[key] = total.get(key, 0.0) + value
    covered, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        start = max(start, end)
        if stop > start:
            covered += stop - start
        end = max(end, stop)
    total[metric_name(OUTSIDE)] = max(0.0, wall_s - covered)
    total[WALL_METRIC] = wall_s
    total[f"{PREFIX}trials"] = float(len(trials))
    steps = total.get(metric_name("steps"), 0.0)
    total[EFFICIENCY_METRIC] = steps / (wall_s * max(1, slots)) if wall_s > 0 else 0.0
    return total


def format_timeline(metrics: Mapping[str, float]) -> str:
    """One line: ``wall 95.2 s: steps 52.1 s (54.7%), compile 12.0 s, worker start 8.1 s, ...`` (phases by
    size, those under 0.05 s left out)."""
    wall = metrics.get(WALL_METRIC, 0.0)
    steps = metrics.get(metric_name("steps"), 0.0)
    rest = sorted(((k.removeprefix(PREFIX).removesuffix("_s"), v) for k, v in metrics.items()
                   if k.endswith("_s") and k not in (WALL_METRIC, metric_name("steps"))),
                  key=lambda kv: -kv[1])
    parts = [f"{name.replace('_', ' ')} {seconds(v)}" for name, v in rest if abs(v) >= 0.05]
    return (f"wall {seconds(wall)}: steps {seconds(steps)} ({percent(metrics.get(EFFICIENCY_METRIC))})"
            + (", " + ", ".join(parts) if parts else ""))


class _Timed:
    """``obj`` whose method calls are timed as ``phase`` of ``timeline`` (attributes pass through)."""

    def __init__(self, obj: Any, timeline: Timeline, phase: str) -> None:
        self._obj, self._timeline, self._phase = obj, timeline, phase

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._obj, name)
        if not callable(attr):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self._timeline.phase(self._phase):
                return attr(*args, **kwargs)

        return timed


def timed(obj: Any, timeline: Timeline, phase: str) -> Any:
    """A stand-in for ``obj`` (e.g. the loop's tracker) that times every method call as ``phase``."""
    return _Timed(obj, timeline, phase)
