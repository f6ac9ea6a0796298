"""The comparison report: MLflow runs -> statistics over seeds, verdicts, tables (CSV + Markdown), plots
(PNG) and one HTML page that a person reads in a minute.

Reads MLflow only (never local side files), so the report is the same wherever the runs were
trained, and it works against the local SQLite store and a remote ``mlflow server`` alike.
Metric names follow the platform's naming contract (step = tokens seen for every metric):
``val/<domain>/loss``, ``val/<domain>/bpb``, ``val/bpb``, ``val/elapsed_s``, ``train/tokens_per_s``,
``train/mfu_bf16``, ``train/mfu_fp8``, ``train/peak_mem_gib``, ``train/elapsed_s``,
``train/spike_grad_norm`` and ``train/spike_loss`` (logged at the tokens of each spike).

How the numbers are made (also printed in the report, see ``METHOD``):

- **Arms and seeds.** An *arm* is a variant label without its ``seed=`` / ``sample=`` parts; its runs
  are seed replicates (``run.seed``). Statistics use the arm's *finished* runs; every other run (failed,
  stopped early, not runnable) is listed with its status and reason, never silently dropped.
- **Per arm**: mean and 95% Student-t interval across seeds of final ``val/bpb``, per-domain bpb,
  tokens and seconds to the target (over the seeds that reached it: "reached k/n"), tokens/s
  (median of a run's logged intervals). One seed: "1 seed: no interval".
- **Target bits/byte**: ``--target-bpb``, else the sweep file's ``target_bpb``, else the reference
  arm's mean final ``val/bpb``; the report says which. *To target*: the first validation point at or
  below the target, linearly interpolated with the point before it (``t = t0 + (b0 - target) /
  (b0 - b1) x (t1 - t0)``); seconds use the same fraction of ``val/elapsed_s`` (training clock,
  validation excluded). A run that never reaches it is "not reached", never its budget.
- **Comparisons** (arm vs reference): each arm that differs from the reference arm in one axis, and
  each FP8 arm vs the non-FP8 arm of its precision pair (``yxanul.pair``). Per seed both arms ran
  (finished): the bpb gap at the last token count both validated at (arm - reference, lower is better),
  the tokens/s ratio arm / reference and the time-to-target speedup reference seconds / arm seconds.
  Mean over seeds with a paired 95% t interval; verdict better / worse / within noise (interval
  contains 0, resp. 1), for quality and speed separately; one seed gives no verdict.
- **Noise floor**: the seed standard deviation of the reference arm's final ``val/bpb``.
- **Spikes**: a run whose loss or gradient norm spiked (``yxanul.spikes``) is marked; a verdict that
  rests on such a run says so.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import os
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yxanul.errors import TrackingError, first_line
from yxanul.stats import Estimate, mean_interval, paired_ratio, verdict
from yxanul.text import table as text_table
from yxanul.tracking import REASON_TAG, STATUS_TAG

__all__ = ["ArmSummary", "Comparison", "ComparisonReport", "PairRow", "Provenance", "RunRow", "RunSeries",
           "build_report", "compare_runs", "fetch_runs", "format_summary", "interpolate_crossing", "log_report",
           "value_at_tokens", "write_report"]

Series = list[tuple[int, float]]
"""(tokens, value) points sorted by tokens."""

PLOTS = ("val_bpb_vs_tokens.png", "val_bpb_vs_seconds.png", "throughput.png")
SPIKE_METRICS = ("train/spike_grad_norm", "train/spike_loss")
_PART = re.compile(r",(?=[A-Za-z_][\w.\-]*=)")
"""Splits a variant label into its ``axis=value`` parts (a value may itself contain commas)."""


def label_parts(label: str) -> list[str]:
    return [p for p in _PART.split(label) if p]


def arm_of(label: str) -> str:
    """The variant label without ``seed=`` and ``sample=`` parts: the arm whose replicates the runs are."""
    kept = [p for p in label_parts(label) if not p.startswith(("seed=", "sample="))]
    return ",".join(kept) or label


def _seed_of(label: str) -> int | None:
    for part in label_parts(label):
        if part.startswith("seed=") and part[5:].lstrip("-").isdigit():
            return int(part[5:])
    return None


@dataclass
class RunSeries:
    """One MLflow run as the report needs it."""

    run_id: str
    name: str
    variant: str
    pair: str | None
    precision: str | None
    status: str
    """yxanul.status tag when set (finished, stopped_early, not_runnable, ...), else MLflow's status."""
    reason: str = ""
    """Why the run is not runnable / was stopped (yxanul.reason)."""
    metrics: dict[str, Series] = field(default_factory=dict)
    seed: int | None = None
    """run.seed (param), else the label's seed=, else None (treated as seed 0)."""
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    start_time_ms: int | None = None

    def __post_init__(self) -> None:
        if self.seed is None:
            self.seed = _seed_of(self.variant)

    def series(self, key: str) -> Series:
        return self.metrics.get(key, [])

    @property
    def arm(self) -> str:
        return arm_of(self.variant)

    @property
    def pair_arm(self) -> str | None:
        """The precision-pair group without the seed (arms of one FP8/BF16 pair share it)."""
        return None if self.pair is None else arm_of(self.pair)

    @property
    def replicate(self) -> int:
        return self.seed if self.seed is not None else 0

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def domains(self) -> list[str]:
        return sorted(k.split("/")[1] for k in self.metrics
                      if k.startswith("val/") and k.endswith("/bpb") and k.count("/") == 2)

    @property
    def spikes(self) -> list[tuple[str, int, float]]:
        """(kind, tokens, size) of every logged spike: size is x median (grad norm) or nats above it (loss)."""
        out = [(key.removeprefix("train/spike_"), t, v) for key in SPIKE_METRICS for t, v in self.series(key)]
        return sorted(out, key=lambda s: s[1])

    @property
    def card(self) -> str:
        name = self.tags.get("yxanul.gpu_name")
        if not name:
            return "unknown card"
        if name in ("none", "unavailable"):
            return "CPU"
        from yxanul.accelerators import spec_for_device_name

        spec = spec_for_device_name(name)
        return spec.name if spec else name


@dataclass
class RunRow:
    run: RunSeries
    final_tokens: int | None
    val_bpb: float | None
    domain_loss: dict[str, float]
    domain_bpb: dict[str, float]
    tokens_to_target: float | None
    """None: not reached (or no target)."""
    seconds_to_target: float | None
    tokens_per_s: float | None
    mfu_bf16: float | None
    mfu_fp8: float | None
    peak_mem_gib: float | None
    train_seconds: float | None


@dataclass
class PairRow:
    """One seed of a comparison: both arms finished at this seed."""

    pair: str
    reference: RunSeries
    arm: RunSeries
    tokens: int | None
    """Tokens at which the gap is measured (the last validation point both arms reached)."""
    loss_gap: float | None
    """arm - reference mean validation loss (nats/token) at ``tokens``."""
    bpb_gap: float | None
    speedup: float | None
    """arm tokens/s / reference tokens/s."""
    time_to_target_speedup: float | None
    """reference seconds to target / arm seconds to target (None when either did not reach it)."""

    @property
    def seed(self) -> int:
        return self.reference.replicate


@dataclass
class ArmSummary:
    """An arm's seed replicates and their statistics (finished runs only)."""

    arm: str
    precision: str | None
    runs: list[RunSeries]
    """Every run of the arm, finished or not."""
    rows: list[RunRow]
    """Measured rows of its finished runs, one per seed (the latest run of a seed)."""
    val_bpb: Estimate | None
    domain_bpb: dict[str, Estimate]
    tokens_to_target: Estimate | None
    seconds_to_target: Estimate | None
    reached: int
    """Finished seeds that reached the target."""
    tokens_per_s: Estimate | None

    @property
    def seeds(self) -> list[int]:
        return [r.run.replicate for r in self.rows]

    @property
    def unfinished(self) -> list[RunSeries]:
        used = {r.run.run_id for r in self.rows}
        return [r for r in self.runs if r.run_id not in used]

    @property
    def spiking(self) -> list[RunSeries]:
        return [r.run for r in self.rows if r.run.spikes]


@dataclass
class Comparison:
    """Arm vs reference over the seeds both finished: paired differences and verdicts."""

    reference: ArmSummary
    arm: ArmSummary
    kind: str
    """``precision pair`` (FP8 vs the non-FP8 arm of its pair) or ``vs reference`` (one axis from the reference arm)."""
    pairs: list[PairRow]
    bpb_gap: Estimate | None
    loss_gap: Estimate | None
    speedup: Estimate | None
    time_to_target_speedup: Estimate | None
    time_pairs: int
    """Seeds where both arms reached the target (the time-to-target speedup's n)."""
    unpaired: list[str]
    """Seeds left out of the pairing and why (a failed or missing run of either arm)."""

    @property
    def quality_verdict(self) -> str:
        return verdict(self.bpb_gap, lower_is_better=True)

    @property
    def speed_verdict(self) -> str:
        return verdict(self.speedup, lower_is_better=False, null=1.0, words=("faster", "slower"))

    @property
    def time_verdict(self) -> str:
        return verdict(self.time_to_target_speedup, lower_is_better=False, null=1.0, words=("faster", "slower"))

    @property
    def spiking(self) -> list[RunSeries]:
        seeds = {p.seed for p in self.pairs}
        return [r for r in (*self.reference.spiking, *self.arm.spiking) if r.replicate in seeds]

    def names(self) -> tuple[str, str, str]:
        """(arm, reference, shared context): the label parts that differ, and those both have."""
        a, r = label_parts(self.arm.arm), label_parts(self.reference.arm)
        shared = [p for p in a if p in r]
        return (",".join(p for p in a if p not in shared) or self.arm.arm,
                ",".join(p for p in r if p not in shared) or self.reference.arm, ",".join(shared))


@dataclass
class Provenance:
    """Where the numbers come from (shown in the report's header)."""

    question: str = ""
    """The sweep's description (what it compares)."""
    sweep_command: str = ""
    compare_command: str = ""
    tracking_uri: str = ""
    sweep_git_sha: str = ""


@dataclass
class ComparisonReport:
    title: str
    target_bpb: float | None
    target_source: str
    rows: list[RunRow]
    pairs: list[PairRow]
    """Every seed pair of every comparison."""
    skipped: list[RunSeries]
    """Runs without validation metrics (not runnable, failed early): listed with their status."""
    domains: list[str]
    parent_run_id: str | None
    arms: list[ArmSummary] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    reference: str | None = None
    """Arm label of the reference arm."""
    provenance: Provenance = field(default_factory=Provenance)
    runs: list[RunSeries] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted({r.replicate for r in self.runs})

    @property
    def reference_arm(self) -> ArmSummary | None:
        return next((a for a in self.arms if a.arm == self.reference), None)

    @property
    def simulation_note(self) -> str | None:
        """A warning when runs trained under scaling.simulate_accelerators (fp32 on CPU, logical GPUs)."""
        simulated = [r for r in self.runs if r.tags.get("yxanul.simulated_accelerators") == "true"]
        if not simulated:
            return None
        return (f"{len(simulated)} of {len(self.runs)} runs are simulated (scaling.simulate_accelerators): they "
                "trained in fp32 on CPU with logical GPUs, whatever their precision.mode, so their speed, memory "
                "and precision differences say nothing about GPUs")

    @property
    def noise_floor(self) -> float | None:
        """Seed standard deviation of the reference arm's final val/bpb (None with fewer than 2 seeds)."""
        ref = self.reference_arm
        return ref.val_bpb.std if ref and ref.val_bpb else None

    @property
    def cards(self) -> list[str]:
        return sorted({r.card for r in self.runs if r.tags.get("yxanul.gpu_name")})


# ---------------------------------------------------------------------------------------------------
# Numbers


def interpolate_crossing(points: Series, target: float, clock: Series | None = None) -> tuple[float | None, float | None]:
    """(tokens, seconds) at which a decreasing-is-better curve first reaches ``target``.

    Linear interpolation between the first point at or below the target and the point before it
    (none before: that point itself). ``clock`` holds the training seconds at the same tokens
    (``val/elapsed_s``); seconds use the same fraction. (None, None) when never reached.
    """
    seconds_at = dict(clock or [])
    for i, (tokens, value) in enumerate(points):
        if value <= target:
            if i == 0 or points[i - 1][1] == value:
                return float(tokens), seconds_at.get(tokens)
            t0, v0 = points[i - 1]
            frac = (v0 - target) / (v0 - value)
            at_tokens = t0 + frac * (tokens - t0)
            s0, s1 = seconds_at.get(t0), seconds_at.get(tokens)
            seconds = s0 + frac * (s1 - s0) if s0 is not None and s1 is not None else None
            return at_tokens, seconds
    return None, None


def value_at_tokens(points: Series, tokens: float) -> float | None:
    """The curve's value at ``tokens``: exact at a point, linear between points, None outside."""
    for i, (t, v) in enumerate(points):
        if t == tokens:
            return v
        if t > tokens:
            if i == 0:
                return None
            t0, v0 = points[i - 1]
            return v0 + (tokens - t0) / (t - t0) * (v - v0)
    return None


def _median(points: Series) -> float | None:
    values = [v for _, v in points if math.isfinite(v)]
    return statistics.median(values) if values else None


def _last(points: Series) -> float | None:
    return points[-1][1] if points else None


def _mean_loss(run: RunSeries) -> Series:
    """Mean over domains of val/<domain>/loss at the tokens where every domain has a value."""
    per = [dict(run.series(f"val/{d}/loss")) for d in run.domains]
    if not per or not all(per):
        return []
    common = sorted(set.intersection(*(set(p) for p in per)))
    return [(t, sum(p[t] for p in per) / len(per)) for t in common]


def _row(run: RunSeries, target_bpb: float | None) -> RunRow:
    bpb = run.series("val/bpb")
    tokens, seconds = (interpolate_crossing(bpb, target_bpb, run.series("val/elapsed_s"))
                       if target_bpb is not None else (None, None))
    peak = run.series("train/peak_mem_gib")
    return RunRow(
        run=run, final_tokens=bpb[-1][0], val_bpb=bpb[-1][1],
        domain_loss={d: v for d in run.domains if (v := _last(run.series(f"val/{d}/loss"))) is not None},
        domain_bpb={d: v for d in run.domains if (v := _last(run.series(f"val/{d}/bpb"))) is not None},
        tokens_to_target=tokens, seconds_to_target=seconds,
        # per GPU (what MFU is computed from), so arms with different worker counts compare; runs logged
        # before the per-GPU metric existed have only the global rate
        tokens_per_s=_median(run.series("train/tokens_per_s_per_gpu") or run.series("train/tokens_per_s")),
        mfu_bf16=_median(run.series("train/mfu_bf16")), mfu_fp8=_median(run.series("train/mfu_fp8")),
        peak_mem_gib=max(v for _, v in peak) if peak else None,
        train_seconds=_last(run.series("train/elapsed_s")))


def _arm_summary(arm: str, runs: list[RunSeries], rows_by_id: dict[str, RunRow]) -> ArmSummary:
    by_seed: dict[int, RunRow] = {}
    for run in runs:  # runs are in start order: a later run of the same seed replaces an earlier one
        if run.finished and run.run_id in rows_by_id:
            by_seed[run.replicate] = rows_by_id[run.run_id]
    rows = [by_seed[s] for s in sorted(by_seed)]
    domains = sorted({d for r in rows for d in r.domain_bpb})
    reached = [r for r in rows if r.tokens_to_target is not None]
    timed = [r.seconds_to_target for r in reached if r.seconds_to_target is not None]
    return ArmSummary(
        arm=arm, precision=runs[0].precision, runs=runs, rows=rows,
        val_bpb=mean_interval([r.val_bpb for r in rows if r.val_bpb is not None]),
        domain_bpb={d: e for d in domains if (e := mean_interval([r.domain_bpb[d] for r in rows if d in r.domain_bpb]))},
        tokens_to_target=mean_interval([r.tokens_to_target for r in reached]),
        seconds_to_target=mean_interval(timed), reached=len(reached),
        tokens_per_s=mean_interval([r.tokens_per_s for r in rows if r.tokens_per_s is not None]))


def _pair_row(pair: str, ref_row: RunRow, arm_row: RunRow) -> PairRow:
    ref, arm = ref_row.run, arm_row.run
    ref_loss, arm_loss = _mean_loss(ref), _mean_loss(arm)
    ref_bpb, arm_bpb = ref.series("val/bpb"), arm.series("val/bpb")
    # The last reference validation point the arm's curve also covers.
    limit = min(ref_bpb[-1][0], arm_bpb[-1][0])
    candidates = [t for t, _ in ref_bpb if t <= limit]
    tokens = candidates[-1] if candidates else None

    def gap(a: Series, r: Series) -> float | None:
        if tokens is None:
            return None
        va, vr = value_at_tokens(a, tokens), value_at_tokens(r, tokens)
        return va - vr if va is not None and vr is not None else None

    speed = (arm_row.tokens_per_s / ref_row.tokens_per_s
             if arm_row.tokens_per_s and ref_row.tokens_per_s else None)
    time_speed = (ref_row.seconds_to_target / arm_row.seconds_to_target
                  if ref_row.seconds_to_target and arm_row.seconds_to_target else None)
    return PairRow(pair, ref, arm, tokens, gap(arm_loss, ref_loss), gap(arm_bpb, ref_bpb), speed, time_speed)


def _why_missing(summary: ArmSummary, seed: int) -> str:
    runs = [r for r in summary.runs if r.replicate == seed]
    if not runs:
        return "no run"
    run = runs[-1]
    if run.reason.startswith(run.status.replace("_", " ")):  # "not runnable: <why>" says it already
        return run.reason
    return run.status + (f" ({run.reason})" if run.reason else "")


def _compare(ref: ArmSummary, arm: ArmSummary, kind: str) -> Comparison:
    ref_rows = {r.run.replicate: r for r in ref.rows}
    arm_rows = {r.run.replicate: r for r in arm.rows}
    seeds = sorted(set(ref_rows) & set(arm_rows))
    label = arm.runs[0].pair_arm if kind == "precision pair" else f"{arm.arm} vs {ref.arm}"
    pairs = [_pair_row(label or "", ref_rows[s], arm_rows[s]) for s in seeds]
    unpaired = []
    for seed in sorted({r.replicate for r in (*ref.runs, *arm.runs)} - set(seeds)):
        sides = [f"{name}: {_why_missing(s, seed)}"
                 for name, s, rows in (("reference", ref, ref_rows), ("arm", arm, arm_rows)) if seed not in rows]
        unpaired.append(f"seed {seed}: " + "; ".join(sides))

    def est(values: dict[int, float | None]) -> dict[int, float]:
        return {s: v for s, v in values.items() if v is not None}

    time_pairs = est({p.seed: p.time_to_target_speedup for p in pairs})
    return Comparison(
        ref, arm, kind, pairs,
        bpb_gap=mean_interval([p.bpb_gap for p in pairs if p.bpb_gap is not None]),
        loss_gap=mean_interval([p.loss_gap for p in pairs if p.loss_gap is not None]),
        speedup=paired_ratio(est({s: arm_rows[s].tokens_per_s for s in seeds}),
                             est({s: ref_rows[s].tokens_per_s for s in seeds})),
        time_to_target_speedup=mean_interval(list(time_pairs.values())), time_pairs=len(time_pairs),
        unpaired=unpaired)


def _one_axis_apart(a: str, b: str) -> bool:
    pa, pb = label_parts(a), label_parts(b)
    keys_a = [p.split("=", 1)[0] for p in pa]
    keys_b = [p.split("=", 1)[0] for p in pb]
    if keys_a != keys_b or not all("=" in p for p in pa + pb):
        return True  # not sweep labels (runs of an experiment): every arm is compared with the reference
    return sum(x != y for x, y in zip(pa, pb)) == 1


def build_report(runs: Sequence[RunSeries], title: str, target_bpb: float | None = None,
                 parent_run_id: str | None = None, *, reference: str | None = None,
                 target_source: str | None = None, provenance: Provenance | None = None) -> ComparisonReport:
    """Compute every number of the report from the runs' metric series.

    ``reference``: the reference arm's label (default: the arm of the first run); ``target_bpb``:
    given by the user or the sweep (``target_source`` says which), else the reference arm's mean final
    val/bpb over its finished runs.
    """
    runs = list(runs)
    measured = [r for r in runs if r.series("val/bpb")]
    skipped = [r for r in runs if not r.series("val/bpb")]
    grouped: dict[str, list[RunSeries]] = {}
    for run in runs:
        grouped.setdefault(run.arm, []).append(run)
    if reference is not None and reference not in grouped:
        raise TrackingError(f"reference arm {reference!r} is not among the runs' arms: {', '.join(grouped)}")
    reference = reference if reference is not None else (runs[0].arm if runs else None)

    if target_bpb is not None:
        source = target_source or "given"
    else:
        ref_runs = [r for r in grouped.get(reference or "", []) if r.finished and r.series("val/bpb")]
        finals = {r.replicate: _last(r.series("val/bpb")) for r in ref_runs}
        if finals:
            target_bpb = statistics.fmean(finals.values())
            n = len(finals)
            source = f"the mean final val/bpb of the reference arm {reference} over {n} seed{'s' if n > 1 else ''}"
        else:
            source = f"none: the reference arm ({reference}) has no finished run with val/bpb"

    rows = [_row(run, target_bpb) for run in measured]
    by_id = {row.run.run_id: row for row in rows}
    arms = {name: _arm_summary(name, members, by_id) for name, members in grouped.items()}
    domains = sorted({d for r in measured for d in r.domains})

    comparisons: list[Comparison] = []
    seen: set[tuple[str, str]] = set()
    ref_arm = arms.get(reference or "")
    if ref_arm is not None:
        for name, summary in arms.items():
            if name != reference and _one_axis_apart(name, reference or ""):
                seen.add((reference or "", name))
                comparisons.append(_compare(ref_arm, summary, "vs reference"))
    groups: dict[str, list[ArmSummary]] = {}
    for summary in arms.values():
        if summary.runs[0].pair_arm is not None:
            groups.setdefault(summary.runs[0].pair_arm or "", []).append(summary)
    for members in groups.values():
        if len(members) < 2:
            continue
        ref = next((m for m in members if m.precision != "fp8"), members[0])
        for other in members:
            if other is not ref and (ref.arm, other.arm) not in seen:
                seen.add((ref.arm, other.arm))
                comparisons.append(_compare(ref, other, "precision pair"))
    for c in comparisons:  # precision pairs keep their own kind when they are also one axis apart
        pair = c.arm.runs[0].pair_arm
        if c.kind == "vs reference" and pair is not None and pair == c.reference.runs[0].pair_arm:
            c.kind = "precision pair"
    pairs = [p for c in comparisons for p in c.pairs]
    return ComparisonReport(title, target_bpb, source, rows, pairs, skipped, domains, parent_run_id,
                            arms=list(arms.values()), comparisons=comparisons, reference=reference,
                            provenance=provenance or Provenance(), runs=runs)


# ---------------------------------------------------------------------------------------------------
# MLflow


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    from yxanul.tracking import check_reachable

    check_reachable(tracking_uri, timeout_s=10.0)  # fail in seconds, not after MLflow's retries
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite://")).is_file():
        raise TrackingError(f"no MLflow store at {tracking_uri} (the file does not exist); check --tracking-uri")
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises many types (MlflowException, OperationalError, requests errors)
        raise TrackingError(f"cannot read the MLflow tracking store {tracking_uri}: {first_line(exc)}") from None
    return client


_PARAMS = ("run.seed", "train.max_tokens", "precision.mode", "precision.fp8_layers", "precision.recipe",
           "scaling.accelerator_type", "model.preset")


def _run_series(client: Any, run: Any) -> RunSeries:
    tags, params = run.data.tags, run.data.params
    wanted = [k for k in run.data.metrics if k.startswith("val/") or k in (
        "train/tokens_per_s", "train/tokens_per_s_per_gpu", "train/mfu_bf16", "train/mfu_fp8", "train/peak_mem_gib", "train/elapsed_s",
        *SPIKE_METRICS)]
    metrics: dict[str, Series] = {}
    for key in wanted:
        history = client.get_metric_history(run.info.run_id, key)
        points: dict[int, float] = {}
        for m in sorted(history, key=lambda m: (m.step, m.timestamp)):
            points[int(m.step)] = float(m.value)  # a step logged twice (after a restart): the latest wins
        metrics[key] = sorted(points.items())
    seed = params.get("run.seed")
    return RunSeries(
        run_id=run.info.run_id, name=run.info.run_name or run.info.run_id,
        variant=tags.get("yxanul.variant") or run.info.run_name or run.info.run_id,
        pair=tags.get("yxanul.pair"), precision=params.get("precision.mode"),
        status=tags.get(STATUS_TAG) or run.info.status.lower(), reason=tags.get(REASON_TAG, ""),
        metrics=metrics, seed=int(seed) if seed is not None and seed.lstrip("-").isdigit() else None,
        tags={k: v for k, v in tags.items() if k.startswith("yxanul.")},
        params={k: params[k] for k in _PARAMS if k in params}, start_time_ms=run.info.start_time)


def fetch_runs(tracking_uri: str, *, sweep: str | None = None, experiment: str | None = None,
               parent_run_id: str | None = None) -> tuple[list[RunSeries], str | None, str]:
    """Runs of a sweep (children of its latest parent run, or of ``parent_run_id`` when the caller holds
    it) or of an experiment, in trial order.

    Returns (runs, parent run id or None, title). Raises TrackingError when nothing matches.
    """
    if (sweep is None) == (experiment is None):
        raise TrackingError("give exactly one of --sweep NAME or --experiment NAME")
    client = _client(tracking_uri)
    parent_id: str | None = None
    if sweep is not None and parent_run_id is not None:
        try:
            parent = client.get_run(parent_run_id)
        except Exception as exc:  # MLflow raises MlflowException (or a REST error) for an unknown id
            raise TrackingError(f"no parent run {parent_run_id} in {tracking_uri} ({first_line(exc)}); check "
                                "--parent-run-id and --tracking-uri") from None
        if parent.data.tags.get("yxanul.sweep") != sweep:
            raise TrackingError(f"run {parent_run_id} is not the parent run of sweep {sweep!r} (its yxanul.sweep tag "
                                f"is {parent.data.tags.get('yxanul.sweep')!r}); check --sweep and --parent-run-id")
        parent_id = parent_run_id
        children = client.search_runs([parent.info.experiment_id], max_results=5000,
                                      filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
        title = f"sweep {sweep}"
    elif sweep is not None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
        quoted = sweep.replace("'", "\\'")
        found = client.search_runs(experiment_ids, filter_string=f"tags.`yxanul.sweep` = '{quoted}'",
                                   order_by=["attributes.start_time DESC"], max_results=5000)
        parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
        if not parents:
            raise TrackingError(f"no sweep named {sweep!r} in {tracking_uri} "
                                "(no run tagged yxanul.sweep without a parent); check the name and --tracking-uri")
        parent = parents[0]  # the latest run of this sweep name
        parent_id = parent.info.run_id
        children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent_id]
        title = f"sweep {sweep}"
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise TrackingError(f"no MLflow experiment named {experiment!r}; experiments: {', '.join(names) or 'none'}")
        found = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=5000)
        has_children = {r.data.tags.get("mlflow.parentRunId") for r in found}
        children = [r for r in found if r.info.run_id not in has_children]
        parents = {r.data.tags.get("mlflow.parentRunId") for r in children} - {None}
        parent_id = parents.pop() if len(parents) == 1 else None
        title = f"experiment {experiment}"
    if not children:
        raise TrackingError(f"{title} has no runs to compare")

    def order(r: Any) -> tuple:
        trial = r.data.tags.get("yxanul.trial", "")
        return (int(trial) if trial.isdigit() else 1 << 30, r.info.start_time or 0, r.info.run_name or "")

    children.sort(key=order)
    return [_run_series(client, r) for r in children], parent_id, title


def compare_runs(tracking_uri: str, *, sweep: str | None = None, experiment: str | None = None,
                 target_bpb: float | None = None, reference: str | None = None,
                 command: str = "", parent_run_id: str | None = None) -> ComparisonReport:
    """Fetch the runs and build the report, with the sweep's own reference arm, target and provenance
    (from its parent run: ``parent_run_id``, else the latest of the sweep's name) unless ``target_bpb`` /
    ``reference`` are given."""
    runs, parent_id, title = fetch_runs(tracking_uri, sweep=sweep, experiment=experiment,
                                        parent_run_id=parent_run_id)
    provenance = Provenance(compare_command=command, tracking_uri=tracking_uri)
    source = "given by --target-bpb" if target_bpb is not None else None
    if parent_id is not None:
        parent = _client(tracking_uri).get_run(parent_id)
        params, tags = parent.data.params, parent.data.tags
        provenance.question = tags.get("mlflow.note.content", "")
        provenance.sweep_command = tags.get("yxanul.command", "")
        provenance.sweep_git_sha = tags.get("yxanul.git_sha", "")
        if reference is None and params.get("sweep.reference"):
            reference = params["sweep.reference"]
        if target_bpb is None and params.get("sweep.target_bpb"):
            target_bpb, source = float(params["sweep.target_bpb"]), "fixed in the sweep file (target_bpb)"
    return build_report(runs, title, target_bpb, parent_id, reference=reference, target_source=source,
                        provenance=provenance)


# ---------------------------------------------------------------------------------------------------
# Words and numbers people read


def human(value: float | None, unit: str = "") -> str:
    """6248990 -> '6.25M', 132500 -> '132.5k', 0.375 -> '0.375' (3-4 significant digits)."""
    if value is None or not math.isfinite(value):
        return ""
    for suffix, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            v = value / scale
            return f"{v:.4g}{suffix}{unit}" if abs(v) >= 100 else f"{v:.3g}{suffix}{unit}"
    return f"{value:.4g}{unit}"


def _seconds(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return ""
    if value >= 3600:
        return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"
    if value >= 60:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{value:.3g} s"


def _est(e: Estimate | None, fmt: Any, sign: bool = False) -> str:
    """'2.791 ± 0.011' (95% interval), '2.791 (1 seed: no interval)', or ''. Human counts put the half
    width in the mean's unit: '2.97M ± 0.13M'."""
    if e is None:
        return ""
    mean = fmt(e.mean)
    if sign and e.mean > 0:
        mean = "+" + mean
    if e.half_width is None:
        return f"{mean} (1 seed: no interval)"
    if fmt is human:
        scale, suffix = next(((s, u) for u, s in (("B", 1e9), ("M", 1e6), ("k", 1e3)) if abs(e.mean) >= s), (1.0, ""))
        return f"{mean} ± {e.half_width / scale:.2g}{suffix}"
    return f"{mean} ± {fmt(e.half_width).lstrip('+')}"


def _bpb(v: float) -> str:
    return f"{v:.4f}" if abs(v) >= 0.0005 or v == 0 else f"{v:.2g}"


def _ratio(v: float) -> str:
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def _ratio_x(e: Estimate | None) -> str:
    if e is None:
        return ""
    if e.half_width is None:
        return f"{_ratio(e.mean)}x (1 seed: no interval)"
    return f"{_ratio(e.mean)}x ± {_ratio(e.half_width)}"


def _seeds_text(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _cards(runs: Sequence[RunSeries]) -> str:
    cards = sorted({r.card for r in runs})
    return " / ".join(cards) if cards else "unknown card"


def sentence(c: Comparison, target_bpb: float | None) -> str:
    """One sentence of answer, e.g. 'precision.mode=fp8 vs precision.mode=bf16 on H200, 3 seeds: final
    val/bpb -0.0040 ± 0.0110 (within noise); tokens/s 1.040x ± 0.010 (faster); ...'."""
    arm, ref, shared = c.names()
    runs = [p.arm for p in c.pairs] + [p.reference for p in c.pairs]
    head = f"{arm} vs {ref}" + (f" ({shared})" if shared else "") + (f" on {_cards(runs)}" if runs else "")
    n = len(c.pairs)
    if n == 0:
        why = "; ".join(c.unpaired) or "no finished runs"
        return f"{head}: no seed where both arms finished ({why}): no comparison."
    def said(what: str, e: Estimate | None, text: str, word: str, extra: str = "") -> str:
        if e is not None and e.half_width is None:  # one seed: the number, never a verdict
            return f"{what} {text.replace(' (1 seed: no interval)', '')} (1 seed: no interval, no verdict{extra})"
        return f"{what} {text} ({word}{extra})"

    parts = [said("final val/bpb", c.bpb_gap, _est(c.bpb_gap, _bpb, sign=True), c.quality_verdict)]
    if c.speedup is not None:
        parts.append(said("tokens/s", c.speedup, _ratio_x(c.speedup), c.speed_verdict))
    if target_bpb is not None:
        if c.time_to_target_speedup is not None:
            extra = f"; {c.time_pairs} of {n} seeds reached it in both arms" if c.time_pairs < n else ""
            parts.append(said(f"time to {target_bpb:.4f} bpb", c.time_to_target_speedup,
                              _ratio_x(c.time_to_target_speedup), c.time_verdict, extra))
        else:
            parts.append(f"time to {target_bpb:.4f} bpb: not reached by both arms at any seed")
    text = f"{head}, {_seeds_text(n)}: " + "; ".join(parts) + "."
    if c.unpaired:
        text += " Not paired: " + "; ".join(c.unpaired) + "."
    spiking = c.spiking
    if spiking:
        text += " Rests on a run with a spike: " + "; ".join(
            f"{r.arm} seed {r.replicate} ({_spike_text(r)})" for r in spiking) + "."
    return text


def _spike_text(run: RunSeries) -> str:
    out = [f"{kind} at {human(tokens)} tokens ({size:.1f}x median)" if kind == "grad_norm" else
           f"{kind} at {human(tokens)} tokens (+{size:.2f} nats)" for kind, tokens, size in run.spikes[:3]]
    if len(run.spikes) > 3:
        out.append(f"{len(run.spikes) - 3} more")
    return ", ".join(out)


def _noise_text(report: ComparisonReport) -> str:
    ref = report.reference_arm
    if ref is None or ref.val_bpb is None:
        return "noise floor: unknown (the reference arm has no finished run)"
    if ref.val_bpb.std is None:
        return "noise floor: unknown (1 seed: the seed-to-seed variation was not measured; verdicts need 2+ seeds)"
    return (f"noise floor: {ref.val_bpb.std:.4f} bits/byte (seed standard deviation of the reference arm's final "
            f"val/bpb, {_seeds_text(ref.val_bpb.n)})")


def _target_text(report: ComparisonReport) -> str:
    if report.target_bpb is None:
        return f"target: {report.target_source}"
    return f"target: {report.target_bpb:.4f} bits/byte ({report.target_source})"


def _provenance_lines(report: ComparisonReport) -> list[tuple[str, str]]:
    runs = [r for r in report.runs if r.start_time_ms]
    dates = ""
    if runs:
        first = min(r.start_time_ms for r in runs) / 1000
        last = max(r.start_time_ms for r in runs) / 1000
        fmt = "%Y-%m-%d %H:%M"
        dates = time.strftime(fmt, time.gmtime(first)) + (
            f" to {time.strftime(fmt, time.gmtime(last))}" if last - first >= 60 else "") + " UTC (run starts)"
    shas = sorted({r.tags.get("yxanul.git_sha", "")[:12] + (" (dirty)" if r.tags.get("yxanul.git_dirty") == "true" else "")
                   for r in report.runs if r.tags.get("yxanul.git_sha")})
    budgets = sorted({int(r.params["train.max_tokens"]) for r in report.runs
                      if r.params.get("train.max_tokens", "").isdigit()})
    trained = sum(row.final_tokens or 0 for row in report.rows)
    p = report.provenance
    out = [("card", ", ".join(report.cards) or "unknown"), ("date", dates),
           ("git SHA", ", ".join(shas) or (p.sweep_git_sha[:12] if p.sweep_git_sha else "unknown")),
           ("seeds", ", ".join(map(str, report.seeds)) + f" ({_seeds_text(len(report.seeds))}, shared by the arms)"),
           ("token budget", (" / ".join(human(b) for b in budgets) + " per run; " if budgets else "")
            + f"{human(trained)} trained in all ({len(report.runs)} runs)"),
           ("sweep command", p.sweep_command), ("report command", p.compare_command),
           ("MLflow", f"{p.tracking_uri} parent run {report.parent_run_id}" if report.parent_run_id else p.tracking_uri)]
    return [(k, v) for k, v in out if v]


# ---------------------------------------------------------------------------------------------------
# Tables


def _num(value: float | None, digits: int = 4, raw: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if raw:  # CSV: full precision
        return str(int(value)) if isinstance(value, int) or float(value).is_integer() else repr(float(value))
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1000:
        return str(int(value))
    return f"{value:.{digits}g}"


def _reached(row: RunRow, value: float | None, raw: bool, fmt: Any) -> str:
    if row.tokens_to_target is None:
        return "not reached"
    return _num(value, raw=True) if raw else fmt(value)


def _run_table(report: ComparisonReport, raw: bool = False) -> tuple[list[str], list[list[str]]]:
    """Every measured run. raw: full-precision CSV columns; else human numbers."""
    head = ["variant", "seed", "precision", "status", "tokens", "val_bpb"]
    for d in report.domains:
        head += [f"val_{d}_loss", f"val_{d}_bpb"]
    head += ["tokens_to_target", "seconds_to_target", "tokens_per_s", "mfu_bf16", "mfu_fp8", "peak_mem_gib",
             "train_seconds", "spikes", "run_id"]
    body = []
    for row in report.rows:
        r = row.run
        spikes = (f"{len(r.spikes)}: " + _spike_text(r)) if r.spikes else ""
        if raw:
            cells = [r.variant, str(r.replicate), r.precision or "", r.status, _num(row.final_tokens, raw=True),
                     _num(row.val_bpb, raw=True)]
            for d in report.domains:
                cells += [_num(row.domain_loss.get(d), raw=True), _num(row.domain_bpb.get(d), raw=True)]
            cells += [_reached(row, row.tokens_to_target, True, None), _reached(row, row.seconds_to_target, True, None),
                      _num(row.tokens_per_s, raw=True), _num(row.mfu_bf16, raw=True), _num(row.mfu_fp8, raw=True),
                      _num(row.peak_mem_gib, raw=True), _num(row.train_seconds, raw=True), spikes, r.run_id]
        else:
            cells = [r.arm, str(r.replicate), r.precision or "", r.status, human(row.final_tokens),
                     _num(row.val_bpb)]
            for d in report.domains:
                cells += [_num(row.domain_loss.get(d)), _num(row.domain_bpb.get(d))]
            cells += [_reached(row, row.tokens_to_target, False, human),
                      _reached(row, row.seconds_to_target, False, _seconds),
                      human(row.tokens_per_s), _num(row.mfu_bf16, 3), _num(row.mfu_fp8, 3), _num(row.peak_mem_gib, 3),
                      _seconds(row.train_seconds), spikes, r.run_id[:12]]
        body.append(cells)
    return head, body


def _pair_table(report: ComparisonReport, raw: bool = False) -> tuple[list[str], list[list[str]]]:
    head = ["pair", "seed", "arm", "reference", "at_tokens", "loss_gap", "bpb_gap", "speedup_tokens_per_s",
            "speedup_time_to_target"]
    body = [[p.pair or "(all)", str(p.seed), p.arm.variant, p.reference.variant, _num(p.tokens, raw=raw),
             _num(p.loss_gap, raw=raw), _num(p.bpb_gap, raw=raw), _num(p.speedup, raw=raw),
             _num(p.time_to_target_speedup, raw=raw) if p.time_to_target_speedup is not None else "not reached"]
            for p in report.pairs]
    return head, body


def _arm_table(report: ComparisonReport) -> tuple[list[str], list[list[str]]]:
    """The headline table: one row per arm, means ± 95% interval across seeds."""
    target = f"{report.target_bpb:.4f}" if report.target_bpb is not None else "target"
    head = ["arm", "seeds", "final val/bpb", f"tokens to {target}", f"seconds to {target}", "tokens/s", "flags"]
    body = []
    for a in report.arms:
        n = len(a.rows)
        flags = []
        if a.arm == report.reference:
            flags.append("reference")
        if a.spiking:
            flags.append("spike: seed " + ", ".join(str(r.replicate) for r in a.spiking))
        if a.unfinished:
            flags.append("; ".join(f"seed {r.replicate} {r.status}" for r in a.unfinished))
        def to_target(e: Estimate | None, fmt: Any) -> str:
            if report.target_bpb is None or n == 0:
                return ""
            if a.reached == 0 or e is None:
                return "not reached"
            return one(_est(e, fmt)) + (f" (reached {a.reached}/{n})" if a.reached < n else "")

        def one(text: str) -> str:  # with one seed the seeds column says "no interval", once
            return text.replace(" (1 seed: no interval)", "")

        body.append([
            a.arm, f"{n}" + (f" of {len(a.runs)}" if len(a.runs) != n else "") + (": no interval" if n == 1 else ""),
            one(_est(a.val_bpb, _bpb)), to_target(a.tokens_to_target, human), to_target(a.seconds_to_target, _seconds),
            one(_est(a.tokens_per_s, human)), "; ".join(flags)])
    return head, body


def _domain_table(report: ComparisonReport) -> tuple[list[str], list[list[str]]]:
    head = ["arm", *(f"{d} bpb" for d in report.domains)]
    body = [[a.arm, *(_est(a.domain_bpb.get(d), _bpb) for d in report.domains)] for a in report.arms]
    return head, body


def _comparison_table(report: ComparisonReport, raw: bool = False) -> tuple[list[str], list[list[str]]]:
    head = ["arm", "vs", "seeds", "Δ val/bpb", "quality", "tokens/s", "speed", "time to target", "time"]
    if raw:
        head = ["arm", "reference", "kind", "seeds_paired", "bpb_gap_mean", "bpb_gap_half_width", "quality_verdict",
                "loss_gap_mean", "loss_gap_half_width", "speedup_mean", "speedup_half_width", "speed_verdict",
                "time_to_target_speedup_mean", "time_to_target_speedup_half_width", "time_pairs", "time_verdict",
                "unpaired", "spiking_runs"]
    body = []
    for c in report.comparisons:
        if raw:
            def e(x: Estimate | None) -> list[str]:
                return ["", ""] if x is None else [_num(x.mean, raw=True), _num(x.half_width, raw=True)]
            body.append([c.arm.arm, c.reference.arm, c.kind, str(len(c.pairs)), *e(c.bpb_gap), c.quality_verdict,
                         *e(c.loss_gap), *e(c.speedup), c.speed_verdict, *e(c.time_to_target_speedup), str(c.time_pairs),
                         c.time_verdict, "; ".join(c.unpaired), " ".join(r.run_id for r in c.spiking)])
        else:
            arm, ref, _ = c.names()
            body.append([arm, ref, f"{len(c.pairs)}" + (f" of {len(c.pairs) + len(c.unpaired)}" if c.unpaired else ""),
                         _est(c.bpb_gap, _bpb, sign=True).replace(" (1 seed: no interval)", ""), c.quality_verdict,
                         _ratio_x(c.speedup).replace(" (1 seed: no interval)", ""), c.speed_verdict if c.speedup else "",
                         _ratio_x(c.time_to_target_speedup).replace(" (1 seed: no interval)", "")
                         or ("not reached" if c.pairs else ""), c.time_verdict if c.time_to_target_speedup else ""])
    return head, body


def _md_table(head: list[str], body: list[list[str]]) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


METHOD = """\
- arms and seeds: an arm is a variant label without its seed; its runs are seed replicates shared with the other
  arms (same initialisation and data order per seed). Statistics use finished runs; other runs are listed.
- per arm: mean ± half width of the two-sided 95% Student-t interval across seeds; with 1 seed, no interval.
- {target}.
- tokens/seconds to target: first validation point at or below the target, linearly interpolated with the
  validation point before it (seconds: same fraction of the training clock `val/elapsed_s`, validation excluded);
  a run that never reaches it is "not reached" (means are over the seeds that reached it).
- tokens/s and MFU: medians of a run's logged intervals, tokens/s per GPU (train/tokens_per_s_per_gpu; the
  global rate for runs that predate it), MFU from that per-GPU rate; peak memory: maximum logged.
- comparisons: every arm one axis apart from the reference arm, and each FP8 arm vs the non-FP8 arm of its
  precision pair. Per seed both arms finished: val/bpb gap = arm - reference at the last token count both
  validated at; tokens/s ratio = arm / reference; time-to-target speedup = reference seconds / arm seconds.
  Mean over seeds with a paired 95% t interval; verdict better/worse (faster/slower) when the interval excludes
  0 (1 for ratios), else within noise; 1 seed: no verdict.
- spikes: gradient norm > 5x its running median or loss > 0.5 nats above its running median (after 10 logging
  points), detected in training and logged as `train/spike_*` and the `yxanul.spikes` tag."""


def _markdown(report: ComparisonReport) -> str:
    parts = [f"# Comparison: {report.title}", ""]
    if report.simulation_note:
        parts += [f"**Simulated:** {report.simulation_note}.", ""]
    if report.provenance.question:
        parts += [f"**Question:** {report.provenance.question}", ""]
    if report.comparisons:
        parts += ["**Answer:**", ""] + [f"- {sentence(c, report.target_bpb)}" for c in report.comparisons] + [""]
    parts += [f"{_seeds_text(len(report.seeds))} ({', '.join(map(str, report.seeds))}); {_noise_text(report)}; "
              f"{_target_text(report)}.", ""]
    parts += ["## Arms (mean ± 95% interval across seeds)", "", _md_table(*_arm_table(report)), ""]
    if report.comparisons:
        parts += ["## Comparisons (seed-paired)", "", _md_table(*_comparison_table(report)), ""]
    if report.domains:
        parts += ["## Validation bits/byte per domain", "", _md_table(*_domain_table(report)), ""]
    parts += ["## Provenance", "", *(f"- {k}: {v}" for k, v in _provenance_lines(report)), ""]
    parts += ["## Runs", "", _md_table(*_run_table(report)), ""]
    if report.pairs:
        parts += ["## Seed pairs", "", _md_table(*_pair_table(report)), ""]
    if report.skipped:
        parts += ["## Runs without validation results", "",
                  _md_table(["variant", "status", "reason", "run_id"],
                            [[r.variant, r.status, r.reason, r.run_id] for r in report.skipped]), ""]
    parts += ["## How the numbers are made", "", METHOD.format(target=_target_text(report)), ""]
    return "\n".join(parts)


def _arm_curves(arm: ArmSummary, xkey: str | None) -> tuple[list[float], list[float], list[float], list[float]]:
    """(x, mean, min, max) of val/bpb across the arm's seeds at the tokens every seed validated at; x is tokens,
    or the mean over seeds of ``xkey`` (e.g. val/elapsed_s) at those tokens."""
    runs = [r.run for r in arm.rows] or [r for r in arm.runs if r.series("val/bpb")][:1]
    curves = [dict(r.series("val/bpb")) for r in runs]
    if not curves:
        return [], [], [], []
    clocks = [dict(r.series(xkey)) for r in runs] if xkey else []
    common = sorted(set.intersection(*(set(c) for c in curves)))
    if xkey:
        common = [t for t in common if all(t in c for c in clocks)]
    xs = [statistics.fmean(c[t] for c in clocks) if xkey else float(t) for t in common]
    values = [[c[t] for c in curves] for t in common]
    return xs, [statistics.fmean(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def _plots(report: ComparisonReport, out: Path) -> list[Path]:
    """Write the PNGs with matplotlib's object API (no pyplot, no global backend state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = []
    arms = [a for a in report.arms if any(r.series("val/bpb") for r in a.runs)]
    for name, xkey, xlabel in (("val_bpb_vs_tokens.png", None, "training tokens"),
                               ("val_bpb_vs_seconds.png", "val/elapsed_s", "training seconds (validation excluded)")):
        fig = Figure(figsize=(7, 4.5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for arm in arms:
            xs, mean, lo, hi = _arm_curves(arm, xkey)
            n = len(arm.rows) or 1
            (line,) = ax.plot(xs, mean, marker="o", markersize=3, label=f"{arm.arm} ({_seeds_text(n)})")
            if n > 1:
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        if report.target_bpb is not None:
            ax.axhline(report.target_bpb, color="grey", linestyle="--", linewidth=1, label="target")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation bits/byte (mean over domains)")
        ax.set_title("mean over seeds; band: min-max across seeds", fontsize=9)
        ax.grid(alpha=0.3)
        if arms:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name)
        paths.append(out / name)
    fig = Figure(figsize=(7, max(2.5, 0.45 * len(report.arms) + 1.2)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = [a.arm for a in report.arms]
    values = [a.tokens_per_s.mean if a.tokens_per_s else 0.0 for a in report.arms]
    lows = [v - min((r.tokens_per_s or v) for r in a.rows) if a.rows else 0.0 for v, a in zip(values, report.arms)]
    highs = [max((r.tokens_per_s or v) for r in a.rows) - v if a.rows else 0.0 for v, a in zip(values, report.arms)]
    ax.barh(range(len(labels)), values, xerr=[lows, highs], color="tab:blue", ecolor="black", capsize=3)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("training tokens/s (mean over seeds of each run's median; whiskers: min-max)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "throughput.png")
    paths.append(out / "throughput.png")
    return paths


def _html(report: ComparisonReport, plots: list[Path]) -> str:
    def table(head: list[str], body: list[list[str]]) -> str:
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
        return ("<div class='scroll'><table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
                + f"</tr></thead><tbody>{rows}</tbody></table></div>")

    def details(summary: str, inner: str) -> str:
        return f"<details><summary>{html.escape(summary)}</summary>{inner}</details>"

    e = html.escape
    parts = [f"<h1>Comparison: {e(report.title)}</h1>"]
    if report.simulation_note:
        parts.append(f"<p class='question'><b>Simulated:</b> {e(report.simulation_note)}.</p>")
    if report.provenance.question:
        parts.append(f"<p class='question'><b>Question:</b> {e(report.provenance.question)}</p>")
    if report.comparisons:
        parts.append("<ul class='verdicts'>" + "".join(f"<li class='verdict'>{e(sentence(c, report.target_bpb))}</li>"
                                                      for c in report.comparisons) + "</ul>")
    else:
        parts.append("<p>No comparison: the runs form no pair with the reference arm.</p>")
    parts.append(f"<p class='floor'>{e(_seeds_text(len(report.seeds)))} ({e(', '.join(map(str, report.seeds)))}); "
                 f"{e(_noise_text(report))}; {e(_target_text(report))}.</p>")
    parts.append("<dl class='prov'>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in _provenance_lines(report))
                 + "</dl>")
    parts += ["<h2>Arms</h2><p class='note'>mean ± 95% interval across seeds</p>", table(*_arm_table(report))]
    if report.comparisons:
        parts += ["<h2>Comparisons</h2><p class='note'>seed-paired: mean difference or ratio ± 95% interval</p>",
                  table(*_comparison_table(report))]
    parts.append("<h2>Plots</h2>")
    for path in plots:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f'<figure><img alt="{e(path.stem)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{e(path.stem.replace('_', ' '))}</figcaption></figure>")
    parts.append("<h2>Details</h2>")
    if report.domains:
        parts.append(details("Validation bits/byte per domain", table(*_domain_table(report))))
    parts.append(details(f"Runs ({len(report.rows)} with validation results)", table(*_run_table(report))))
    if report.pairs:
        parts.append(details(f"Seed pairs ({len(report.pairs)})", table(*_pair_table(report))))
    if report.skipped:
        parts.append(details(f"Runs without validation results ({len(report.skipped)})",
                             table(["variant", "status", "reason", "run_id"],
                                   [[r.variant, r.status, r.reason, r.run_id] for r in report.skipped])))
    method = METHOD.format(target=_target_text(report))
    parts.append(details("How the numbers are made", "<ul>" + "".join(
        f"<li>{e(' '.join(item.split()))}</li>" for item in method.removeprefix("- ").split("\n- ")) + "</ul>"))
    style = ("body{font-family:sans-serif;margin:1.5em auto;max-width:72em;padding:0 1em;line-height:1.35}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;"
             "text-align:right;white-space:nowrap}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}"
             ".scroll{overflow-x:auto;max-width:100%}img{max-width:100%}figure{margin:1em 0}"
             ".verdict{margin:.4em 0}.note{color:#555;font-size:12px;margin:.2em 0}"
             "dl.prov{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:13px}"
             "dl.prov dt{color:#555}dl.prov dd{margin:0;overflow-wrap:anywhere}summary{cursor:pointer;margin:.5em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>{e(report.title)}</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(report: ComparisonReport, out_dir: str | Path) -> list[Path]:
    """Write comparison.csv (runs), arms.csv, comparisons.csv, pairs.csv (seed pairs), comparison.md, the
    PNGs and report.html into ``out_dir`` (report.html last in the returned list).

    Everything is written to a temporary folder beside ``out_dir`` first and moved into place file by
    file only when all of it succeeded, so a failure never leaves a half-written report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".report-") as tmp_name:
        tmp = Path(tmp_name)
        for name, (head, body) in (("comparison.csv", _run_table(report, raw=True)),
                                   ("arms.csv", _arms_csv(report)),
                                   ("comparisons.csv", _comparison_table(report, raw=True)),
                                   ("pairs.csv", _pair_table(report, raw=True))):
            with open(tmp / name, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(head)
                writer.writerows(body)
        (tmp / "comparison.md").write_text(_markdown(report))
        plots = _plots(report, tmp)
        (tmp / "report.html").write_text(_html(report, plots))
        names = ["comparison.csv", "arms.csv", "comparisons.csv", "pairs.csv", "comparison.md", *PLOTS, "report.html"]
        for name in names:
            os.replace(tmp / name, out / name)
    return [out / name for name in names]


def _arms_csv(report: ComparisonReport) -> tuple[list[str], list[list[str]]]:
    metrics = ["val_bpb", *(f"val_{d}_bpb" for d in report.domains), "tokens_to_target", "seconds_to_target",
               "tokens_per_s"]
    head = ["arm", "precision", "seeds", "runs", "reached_target", "spiking_seeds"]
    for m in metrics:
        head += [f"{m}_mean", f"{m}_half_width", f"{m}_std", f"{m}_n"]
    body = []
    for a in report.arms:
        row = [a.arm, a.precision or "", " ".join(map(str, a.seeds)), str(len(a.runs)), str(a.reached),
               " ".join(str(r.replicate) for r in a.spiking)]
        for est in (a.val_bpb, *(a.domain_bpb.get(d) for d in report.domains), a.tokens_to_target,
                    a.seconds_to_target, a.tokens_per_s):
            row += (["", "", "", "0"] if est is None else
                    [_num(est.mean, raw=True), _num(est.half_width, raw=True), _num(est.std, raw=True), str(est.n)])
        body.append(row)
    return head, body


def log_report(tracking_uri: str, parent_run_id: str, files: Sequence[Path]) -> None:
    """Attach the report files to the sweep's parent run (artifact folder ``comparison/``)."""
    client = _client(tracking_uri)
    try:
        for path in files:
            client.log_artifact(parent_run_id, str(path), artifact_path="comparison")
    except Exception as exc:  # MLflow raises many types; the report files are already written
        raise TrackingError(f"the report was written, but logging it to MLflow run {parent_run_id} at {tracking_uri} "
                            f"failed: {first_line(exc)} (use --no-log to skip)") from None


def format_summary(report: ComparisonReport) -> str:
    """The console view: a short per-run table, the target, the noise floor and one sentence per comparison."""
    head = ["variant", "status", "tokens", "val_bpb", "tokens_to_target", "tokens_per_s"]
    body = [[r.run.variant, r.run.status, _num(r.final_tokens), _num(r.val_bpb),
             (_num(r.tokens_to_target, 6) if r.tokens_to_target is not None else
              "not reached" if report.target_bpb is not None else ""), human(r.tokens_per_s)] for r in report.rows]
    body += [[r.variant, r.reason or r.status, "", "", "", ""] for r in report.skipped]
    lines = text_table([head, *body])
    lines.append(f"{_seeds_text(len(report.seeds))}; {_noise_text(report)}")
    lines.append(_target_text(report))
    lines += [sentence(c, report.target_bpb) for c in report.comparisons]
    if report.simulation_note:
        lines.append(f"simulated: {report.simulation_note}")
    return "\n".join(lines)
