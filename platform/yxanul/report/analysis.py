"""Every number of the report, from the runs' metric series: per run, per arm (matched seeds), per comparison
(seed-paired), the time-to-target with censoring, the minimal detectable effect, and what differs between
the arms. Pure (no MLflow, no I/O): tests call :func:`build_report` on synthetic runs.

How the numbers are made (the report prints this method too, :data:`yxanul.report.words.METHOD`):

- **Arms and matched seeds.** An arm's runs are seed replicates (``yxanul.arm``). The arm summaries and the
  plots use the *matched* seeds: those at which every arm that has a finished run finished. Every other run
  is listed apart with its real status (``did not finish: sweep interrupted``, ``failed: ...``).
- **Comparisons** (seed-paired): each arm one axis from the reference arm, and each FP8 arm against the
  non-FP8 arm of its precision pair, over the seeds both arms finished. bpb gaps are arithmetic means with a
  t interval; ratios (tokens/s, time to target) are geometric means with the t interval of the log ratios.
- **Minimal detectable effect** of the design: ``(t(0.975, n-1) + t(0.80, n-1)) x sd / sqrt(n)``, with ``sd``
  the standard deviation of the per-seed differences (of the log ratios for speed).
- **Time to target**: the target is fixed before the results (``--target-bpb``, else the sweep's
  ``target_bpb``), else by a stated rule: the worst final val/bpb among the reference arm's matched runs, so that
  every reference run reaches it. The clock is the training clock without compilation (``val/elapsed_s`` minus
  the cumulative ``train/compile_s``). A run that never reaches the target is censored at its budget: a seed
  where only one arm reached it gives a bound on the speedup, never a dropped pair.
- **Evaluated in BF16** (runs that logged ``val/bpb_bf16_eval``: an FP8 run's final weights through its BF16 path):
  beside each such arm's final val/bpb (its training numerics), the same weights' BF16 number; a run without FP8
  layers has one number, its val/bpb. The comparisons pair these BF16 numbers by seed as they pair val/bpb, so
  what remains is the quality of the weights, not the arithmetic of their evaluation.
- **Curriculum stages** (why a curriculum is faster or not): per arm and stage, over the matched seeds pooled, the
  tokens trained in the stage, the analytic FLOPs per token and their attention share at the stage's length
  (:func:`yxanul.metrics.flops_split`), the median tokens/s per GPU of the logging intervals that lie wholly in the
  stage, and the median measured attention share of the stage's profiled step (``train/attention_share``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from yxanul.errors import TrackingError
from yxanul.formatting import parse_timestamp, shown_paths
from yxanul.report.fetch import DID_NOT_FINISH, SweepRecord
from yxanul.report.runs import (
    RanPrecision,
    RunSeries,
    RunStage,
    Series,
    model_config,
    ran_precision,
    run_spikes,
    run_stages,
    vocabularies,
)
from yxanul.sequential import Decision, SequentialDesign
from yxanul.stats import (
    Estimate,
    geometric_interval,
    mean_interval,
    minimal_detectable_effect,
    paired_ratio,
    verdict,
)
from yxanul.tags import (
    ATTENTION_SHARE_METRIC,
    BF16_EVAL_BPB_METRIC,
    COMPILE_SCOPE_TAG,
    LAST_RESUME_TAG,
    UNIGRAM_BPB_METRIC,
)

if TYPE_CHECKING:
    from yxanul.metrics import FlopsSplit  # imports torch: only where FLOPs are computed

__all__ = ["ArmSummary", "Comparison", "ComparisonReport", "RunRow", "SeedPair", "StageRow", "build_report",
           "interpolate_crossing", "stage_rows", "training_clock", "value_at_tokens"]


# ---------------------------------------------------------------------------------------------------
# Curves


def interpolate_crossing(points: Series, target: float, clock: Series | None = None) -> tuple[float | None, float | None]:
    """(tokens, seconds) at which a decreasing-is-better curve first reaches ``target``.

    Linear interpolation between the first point at or below the target and the point before it
    (none before: that point itself). ``clock`` holds the training seconds at the same tokens; seconds
    use the same fraction. (None, None) when never reached.
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


def _compile_cumulative(run: RunSeries) -> Series:
    """``train/compile_s`` over the whole run. Runs tagged ``yxanul.compile_s_scope=run`` log it so (the counter is
    checkpointed with the clock); earlier runs logged each process's own seconds from 0, so a restart begins a new
    segment that adds to what the earlier ones had reached. Such a segment starts where the value drops, or at the
    first point logged after the run's last resume (``yxanul.last_resume``): a resumed process that compiled longer
    than its predecessor had by its last point shows no drop (a decomposition trial on an H100, 2026-12-07: 11.5 s
    after 10.3 s, which left 10.3 s of compilation on its training clock). A run-scope series is taken as logged, a
    drop included: a resume never logs a step twice, so the steps between its checkpoint and the stop keep the earlier
    process's values, and the resumed process's first new point can be lower (it continues from the checkpoint's
    counter, not from the earlier process's last)."""
    if run.tags.get(COMPILE_SCOPE_TAG) == "run":
        return list(run.series("train/compile_s"))
    out: Series = []
    done, last = 0.0, 0.0
    resumed_ms = _resumed_ms(run.tags.get(LAST_RESUME_TAG))
    logged = run.logged_ms.get("train/compile_s") or []
    for i, (tokens, value) in enumerate(run.series("train/compile_s")):
        after_resume = resumed_ms is not None and i < len(logged) and logged[i] >= resumed_ms
        if value < last or (after_resume and (i == 0 or logged[i - 1] < resumed_ms)):
            done += last
        last = value
        out.append((tokens, done + value))
    return out


def _resumed_ms(text: str | None) -> int | None:
    """``2026-12-07T04:04:30Z`` (:func:`yxanul.formatting.timestamp`) in ms since the epoch; None when absent or
    unreadable. The tag has whole seconds and the resumed process logs its first point after it took it."""
    seconds = parse_timestamp(text)
    return None if seconds is None else int(seconds) * 1000


def _step_value(points: Series, tokens: int) -> float:
    """The last value at or before ``tokens`` (0 before the first point)."""
    value = 0.0
    for t, v in points:
        if t > tokens:
            break
        value = v
    return value


def training_clock(run: RunSeries) -> Series:
    """(tokens, training seconds without compilation) at each validation point: ``val/elapsed_s`` (the training
    clock, validation excluded) minus the compilation and warm-up seconds up to that point (``train/compile_s``,
    the first step of each batch shape), which tokens/s leaves out too."""
    compiled = _compile_cumulative(run)
    return [(t, s - _step_value(compiled, t)) for t, s in run.series("val/elapsed_s")]


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


# ---------------------------------------------------------------------------------------------------
# Per run


@dataclass
class RunRow:
    """A run with validation results, measured."""

    run: RunSeries
    final_tokens: int
    val_bpb: float
    domain_loss: dict[str, float]
    domain_bpb: dict[str, float]
    reached: bool | None
    """Whether val/bpb reached the target (None: no target)."""
    tokens_to_target: float | None
    seconds_to_target: float | None
    """Training seconds without compilation (None: not reached, or no clock recorded)."""
    tokens_per_s: float | None
    mfu_bf16: float | None
    mfu_fp8: float | None
    peak_mem_gib: float | None
    train_seconds: float | None
    """The training clock at the last validation point, compilation excluded."""
    compile_seconds: float | None
    """Compilation and warm-up seconds in all (None: the run did not log ``train/compile_s``)."""
    bf16_eval_bpb: float | None = None
    """``val/bpb_bf16_eval`` at the final validation point: the final weights through the BF16 path (FP8 runs with
    ``eval.bf16_eval``; None where not logged)."""

    @property
    def seed(self) -> int:
        return self.run.replicate

    @property
    def bf16_path_bpb(self) -> float | None:
        """The final val/bpb as a run without FP8 computes it: ``val/bpb_bf16_eval`` where logged; else val/bpb for a
        run that trained without FP8 layers (its own validation has no FP8 to turn off); None for an FP8 run that
        did not log it (its only number is in FP8 arithmetic)."""
        if self.bf16_eval_bpb is not None:
            return self.bf16_eval_bpb
        return None if ran_precision(self.run).fp8_used else self.val_bpb


def _rate_series(run: RunSeries) -> Series:
    """tokens/s per GPU at each logging point (what MFU is computed from), so arms with different worker counts
    compare; runs logged before the per-GPU metric existed have only the global rate."""
    return run.series("train/tokens_per_s_per_gpu") or run.series("train/tokens_per_s")


def _row(run: RunSeries, target_bpb: float | None) -> RunRow:
    bpb = run.series("val/bpb")
    clock = training_clock(run)
    tokens, seconds = interpolate_crossing(bpb, target_bpb, clock) if target_bpb is not None else (None, None)
    peak = run.series("train/peak_mem_gib")
    compiled = _compile_cumulative(run)
    return RunRow(
        run=run, final_tokens=bpb[-1][0], val_bpb=bpb[-1][1],
        domain_loss={d: v for d in run.domains if (v := _last(run.series(f"val/{d}/loss"))) is not None},
        domain_bpb={d: v for d in run.domains if (v := _last(run.series(f"val/{d}/bpb"))) is not None},
        reached=None if target_bpb is None else tokens is not None, tokens_to_target=tokens,
        seconds_to_target=seconds,
        tokens_per_s=_median(_rate_series(run)),
        mfu_bf16=_median(run.series("train/mfu_bf16")), mfu_fp8=_median(run.series("train/mfu_fp8")),
        peak_mem_gib=max(v for _, v in peak) if peak else None,
        train_seconds=_last(clock), compile_seconds=_last(compiled),
        bf16_eval_bpb=dict(run.series(BF16_EVAL_BPB_METRIC)).get(bpb[-1][0]))


# ---------------------------------------------------------------------------------------------------
# Per arm


@dataclass
class ArmSummary:
    """An arm's runs and its statistics over the matched seeds."""

    arm: str
    runs: list[RunSeries]
    """Every run of the arm, finished or not."""
    rows: list[RunRow]
    """The measured rows of its matched seeds, one per seed (the latest finished run of a seed)."""
    finished_rows: list[RunRow]
    """Every seed it finished (a comparison pairs these)."""
    val_bpb: Estimate | None
    domain_bpb: dict[str, Estimate]
    tokens_to_target: Estimate | None
    """Geometric mean over the matched seeds that reached the target."""
    seconds_to_target: Estimate | None
    tokens_per_s: Estimate | None
    """Geometric mean over the matched seeds of each run's median tokens/s per GPU."""
    precision: list[RanPrecision]
    """What each matched run trained in (one entry per distinct description)."""
    bf16_eval_bpb: Estimate | None = None
    """Over the matched seeds that logged ``val/bpb_bf16_eval``: the final weights evaluated in BF16 (None: none
    did)."""
    eval_numerics: Estimate | None = None
    """Over the same seeds, val/bpb - val/bpb_bf16_eval: what evaluating in the run's FP8 arithmetic adds to the
    BF16 number of the same weights."""

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.rows]

    @property
    def reached(self) -> int:
        return sum(1 for r in self.rows if r.reached)

    @property
    def axes(self) -> dict[str, str] | None:
        return self.runs[0].axes

    @property
    def pair_group(self) -> str | None:
        return self.runs[0].pair_group

    @property
    def asked_precision(self) -> str | None:
        return self.runs[0].precision

    @property
    def precision_text(self) -> str:
        """What the arm trained in; an arm whose seeds ran different plans says so."""
        texts = list(dict.fromkeys(p.describe() for p in self.precision))
        if not texts:
            texts = list(dict.fromkeys(ran_precision(r).describe() for r in self.runs))
        return texts[0] if len(texts) == 1 else " / ".join(texts) + " (differs between seeds)"

    @property
    def spiking(self) -> list[RunSeries]:
        return [r.run for r in self.rows if run_spikes(r.run)]


def _latest_by_seed(rows: list[RunRow]) -> dict[int, RunRow]:
    by_seed: dict[int, RunRow] = {}
    for row in rows:  # in start order: a later run of the same seed replaces an earlier one
        by_seed[row.seed] = row
    return by_seed


def _arm_summary(arm: str, runs: list[RunSeries], finished: dict[int, RunRow], matched: list[int]) -> ArmSummary:
    rows = [finished[s] for s in matched if s in finished]
    domains = sorted({d for r in rows for d in r.domain_bpb})
    reached = [r for r in rows if r.reached]
    timed = [r.seconds_to_target for r in reached if r.seconds_to_target is not None and r.seconds_to_target > 0]
    evaluated = [r for r in rows if r.bf16_eval_bpb is not None]
    return ArmSummary(
        arm=arm, runs=runs, rows=rows, finished_rows=[finished[s] for s in sorted(finished)],
        val_bpb=mean_interval([r.val_bpb for r in rows]),
        domain_bpb={d: e for d in domains if (e := mean_interval([r.domain_bpb[d] for r in rows if d in r.domain_bpb]))},
        tokens_to_target=geometric_interval([r.tokens_to_target for r in reached if r.tokens_to_target]),
        seconds_to_target=geometric_interval(timed),
        tokens_per_s=geometric_interval([r.tokens_per_s for r in rows if r.tokens_per_s]),
        precision=list({p.describe(): p for p in (ran_precision(r.run) for r in rows)}.values()),
        bf16_eval_bpb=mean_interval([r.bf16_eval_bpb for r in evaluated]),
        eval_numerics=mean_interval([r.val_bpb - r.bf16_eval_bpb for r in evaluated]))


# ---------------------------------------------------------------------------------------------------
# Comparisons


@dataclass
class SeedPair:
    """One seed of a comparison: both arms finished at this seed."""

    reference: RunRow
    arm: RunRow
    tokens: int | None
    """Tokens at which the gap is measured (the last validation point both arms reached)."""
    bpb_gap: float | None
    """arm - reference val/bpb at ``tokens`` (lower is better)."""
    loss_gap: float | None
    speed_ratio: float | None
    """arm tokens/s / reference tokens/s."""
    bf16_gap: float | None = None
    """arm - reference final val/bpb both evaluated in BF16 (:attr:`RunRow.bf16_path_bpb`), where either run logged
    ``val/bpb_bf16_eval`` and both ended at the same tokens; None otherwise (without FP8 it is :attr:`bpb_gap`)."""

    @property
    def seed(self) -> int:
        return self.reference.seed

    @property
    def time_ratio(self) -> float | None:
        """reference seconds / arm seconds to the target (> 1: the arm got there faster); both must reach it."""
        r, a = self.reference.seconds_to_target, self.arm.seconds_to_target
        return r / a if self.reference.reached and self.arm.reached and r and a else None

    @property
    def time_bound(self) -> tuple[str, float] | None:
        """Where one arm reached the target and the other did not within its whole run: ``(">=", x)`` (the arm
        is at least x times faster: the reference's whole training time over the arm's time to target) or
        ``("<=", x)``; None when both or neither reached it."""
        ref, arm = self.reference, self.arm
        if arm.reached and not ref.reached and arm.seconds_to_target and ref.train_seconds:
            return ">=", ref.train_seconds / arm.seconds_to_target
        if ref.reached and not arm.reached and ref.seconds_to_target and arm.train_seconds:
            return "<=", ref.seconds_to_target / arm.train_seconds
        return None


@dataclass
class Comparison:
    """Arm vs reference over the seeds both finished: paired differences, ratios, verdicts, the design's MDE."""

    reference: ArmSummary
    arm: ArmSummary
    kind: str
    """``precision pair`` (an FP8 arm vs the non-FP8 arm of its pair) or ``vs reference`` (one axis apart)."""
    pairs: list[SeedPair]
    unpaired: list[str]
    """Seeds left out of the pairing, each with both arms' real status."""
    bpb_gap: Estimate | None = None
    loss_gap: Estimate | None = None
    speedup: Estimate | None = None
    time_speedup: Estimate | None = None
    """Geometric mean of the time ratios over the seeds where both arms reached the target."""
    bf16_gap: Estimate | None = None
    """The final val/bpb gap with both arms evaluated in BF16 (:attr:`SeedPair.bf16_gap`); None when no pair has one."""

    @property
    def n(self) -> int:
        return len(self.pairs)

    @property
    def bf16_verdict(self) -> str:
        return verdict(self.bf16_gap, lower_is_better=True)

    @property
    def mde_bf16(self) -> float | None:
        """:attr:`mde_bpb` for the gap evaluated in BF16 (over the seed pairs that have one)."""
        return minimal_detectable_effect(self.bf16_gap.std, self.bf16_gap.n) if self.bf16_gap else None

    @property
    def quality_verdict(self) -> str:
        return verdict(self.bpb_gap, lower_is_better=True)

    @property
    def speed_verdict(self) -> str:
        return verdict(self.speedup, lower_is_better=False, null=1.0, words=("faster", "slower"))

    @property
    def time_verdict(self) -> str:
        return verdict(self.time_speedup, lower_is_better=False, null=1.0, words=("faster", "slower"))

    @property
    def mde_bpb(self) -> float | None:
        """The smallest bpb gap this many seed pairs detect (95%, 80% power) at the measured spread of the gaps."""
        return minimal_detectable_effect(self.bpb_gap.std if self.bpb_gap else None, self.n)

    @property
    def mde_speed(self) -> float | None:
        """The same for the tokens/s ratio, as a share (0.05: a 5% change)."""
        mde = minimal_detectable_effect(self.speedup.std if self.speedup else None, self.n)
        return None if mde is None else math.exp(mde) - 1

    @property
    def reached(self) -> tuple[int, int]:
        """(arm, reference): seeds of the pairing at which each reached the target."""
        return sum(1 for p in self.pairs if p.arm.reached), sum(1 for p in self.pairs if p.reference.reached)

    @property
    def spiking(self) -> list[RunSeries]:
        return [r for p in self.pairs for r in (p.reference.run, p.arm.run) if run_spikes(r)]

    def decision(self, design: SequentialDesign) -> Decision:
        """What the ``seeds: auto`` rule says of this comparison's per-seed val/bpb gaps, in seed order (the
        sweep's driver stops on the same call)."""
        gaps = [p.bpb_gap for p in sorted(self.pairs, key=lambda p: p.seed) if p.bpb_gap is not None]
        return design.decide(gaps)


def _pair(ref: RunRow, arm: RunRow) -> SeedPair:
    ref_bpb, arm_bpb = ref.run.series("val/bpb"), arm.run.series("val/bpb")
    limit = min(ref_bpb[-1][0], arm_bpb[-1][0])  # the last reference validation point the arm's curve covers
    candidates = [t for t, _ in ref_bpb if t <= limit]
    tokens = candidates[-1] if candidates else None

    def gap(a: Series, r: Series) -> float | None:
        if tokens is None:
            return None
        va, vr = value_at_tokens(a, tokens), value_at_tokens(r, tokens)
        return va - vr if va is not None and vr is not None else None

    speed = arm.tokens_per_s / ref.tokens_per_s if arm.tokens_per_s and ref.tokens_per_s else None
    in_bf16 = (arm.bf16_path_bpb, ref.bf16_path_bpb)
    bf16_gap = (in_bf16[0] - in_bf16[1] if None not in in_bf16 and arm.final_tokens == ref.final_tokens
                and (arm.bf16_eval_bpb is not None or ref.bf16_eval_bpb is not None) else None)
    return SeedPair(ref, arm, tokens, gap(arm_bpb, ref_bpb), gap(_mean_loss(arm.run), _mean_loss(ref.run)), speed,
                    bf16_gap)


def status_text(run: RunSeries) -> str:
    """A run's real status in words: ``finished``, ``did not finish: sweep interrupted``, ``failed: <why>``."""
    words = "did not finish" if run.status == DID_NOT_FINISH else run.status.replace("_", " ")
    if run.reason.startswith(words):  # "not runnable: <why>" says it already
        return shown_paths(run.reason)
    return words + (f": {shown_paths(run.reason)}" if run.reason else "")


def _why_missing(summary: ArmSummary, seed: int) -> str:
    runs = [r for r in summary.runs if r.replicate == seed]
    if not runs:
        return "no run"
    run = runs[-1]
    if run.finished and not run.series("val/bpb"):
        return "finished without validation results"
    return status_text(run)


def _compare(ref: ArmSummary, arm: ArmSummary, kind: str) -> Comparison:
    ref_rows = {r.seed: r for r in ref.finished_rows}
    arm_rows = {r.seed: r for r in arm.finished_rows}
    seeds = sorted(set(ref_rows) & set(arm_rows))
    pairs = [_pair(ref_rows[s], arm_rows[s]) for s in seeds]
    unpaired = []
    for seed in sorted({r.replicate for r in (*ref.runs, *arm.runs)} - set(seeds)):
        sides = [f"{which} {_why_missing(s, seed)}" for which, s, rows in
                 (("reference", ref, ref_rows), ("arm", arm, arm_rows)) if seed not in rows]
        unpaired.append(f"seed {seed}: " + "; ".join(sides))
    return Comparison(
        ref, arm, kind, pairs, unpaired,
        bpb_gap=mean_interval([p.bpb_gap for p in pairs if p.bpb_gap is not None]),
        loss_gap=mean_interval([p.loss_gap for p in pairs if p.loss_gap is not None]),
        speedup=paired_ratio({p.seed: p.arm.tokens_per_s for p in pairs if p.arm.tokens_per_s},
                             {p.seed: p.reference.tokens_per_s for p in pairs if p.reference.tokens_per_s}),
        time_speedup=geometric_interval([t for p in pairs if (t := p.time_ratio) is not None]),
        bf16_gap=mean_interval([p.bf16_gap for p in pairs if p.bf16_gap is not None]))


def _one_axis_apart(a: ArmSummary, b: ArmSummary) -> bool:
    """Whether two arms differ in exactly one axis. Runs that did not record their grid point (an experiment's
    runs, sweeps from before ``yxanul.axes``) are all compared with the reference."""
    if a.axes is None or b.axes is None or list(a.axes) != list(b.axes):
        return True
    return sum(a.axes[k] != b.axes[k] for k in a.axes) == 1


# ---------------------------------------------------------------------------------------------------
# Curriculum stages


@dataclass
class StageRow:
    """One curriculum stage of an arm, its matched seeds pooled: what a token cost there, and what ran."""

    arm: str
    index: int
    seq_len: int
    seeds: int
    """Runs (matched seeds) that trained this stage."""
    tokens: float
    """Tokens trained in the stage (mean over those runs; one plan gives them all the same)."""
    exact: bool
    """Stage bounds from the runs' ``yxanul.curriculum_stages`` tag; False: read off the logging points (runs
    recorded before the tag), to within a logging interval."""
    flops: FlopsSplit | None
    """Training FLOPs per token at the stage's length (None: the runs recorded no usable model params)."""
    tokens_per_s: float | None
    """Median tokens/s per GPU over the pooled logging intervals lying wholly in the stage (None: none did)."""
    rate_points: int
    attention_share: float | None
    """Median over the pooled profiled steps of the stage (None: not recorded)."""
    attention_points: int


def _stage_of(stages: list[RunStage], tokens: float) -> RunStage | None:
    """The stage whose span ``(start, end]`` holds the step that ended at ``tokens``."""
    return next((s for s in stages if s.start_tokens < tokens <= s.end_tokens), None)


def _stage_flops(run: RunSeries, seq_len: int) -> FlopsSplit | None:
    from yxanul.metrics import flops_split

    model = model_config(run)
    if model is None:
        return None
    vocab = None if model.vocab_size is not None else vocabularies(run)[0]
    try:
        return flops_split(model, seq_len, vocab)
    except Exception:  # no vocabulary recorded (ConfigError): FLOPs "not recorded" rather than a guess
        return None


def stage_rows(arm: ArmSummary) -> list[StageRow]:
    """The arm's curriculum stages over its matched seeds (see the module docstring). A tokens/s point covers the
    logging interval since the point before it (``train/stage`` is logged at every logging point), so a point is
    kept for a stage only when that whole interval lies in the stage: an interval across a stage boundary mixes two
    batch shapes. The first step of each batch shape and the profiled step are not in any rate (the loop keeps them
    out)."""
    pooled: dict[int, dict[str, list]] = {}
    first_run: dict[int, RunSeries] = {}  # whose model params give the stage's FLOPs (one model per arm)
    for row in arm.rows:
        run = row.run
        stages, exact = run_stages(run)
        points = run.series("train/stage")
        trained_to = points[-1][0] if points else 0
        for stage in stages:
            first_run.setdefault(stage.index, run)
            into = pooled.setdefault(stage.index, {"seq_len": [], "tokens": [], "exact": [], "rates": [], "shares": []})
            into["seq_len"].append(stage.seq_len)
            into["tokens"].append(max(0, min(stage.end_tokens, trained_to) - stage.start_tokens))
            into["exact"].append(exact)
        previous = dict(zip([t for t, _ in points[1:]], [t for t, _ in points[:-1]]))
        for tokens, rate in _rate_series(run):
            start = previous.get(tokens, 0)
            stage = _stage_of(stages, tokens)
            if stage is not None and stage.start_tokens <= start and math.isfinite(rate):
                pooled[stage.index]["rates"].append(rate)
        for tokens, share in run.series(ATTENTION_SHARE_METRIC):
            stage = _stage_of(stages, tokens)
            if stage is not None and math.isfinite(share):
                pooled[stage.index]["shares"].append(share)
    out = []
    for index in sorted(pooled):
        got = pooled[index]
        seq_len = got["seq_len"][0]
        out.append(StageRow(
            arm=arm.arm, index=index, seq_len=seq_len, seeds=len(got["tokens"]),
            tokens=sum(got["tokens"]) / len(got["tokens"]), exact=all(got["exact"]),
            flops=_stage_flops(first_run[index], seq_len),
            tokens_per_s=statistics.median(got["rates"]) if got["rates"] else None, rate_points=len(got["rates"]),
            attention_share=statistics.median(got["shares"]) if got["shares"] else None,
            attention_points=len(got["shares"])))
    return out


# ---------------------------------------------------------------------------------------------------
# The report


@dataclass
class ComparisonReport:
    source: str
    """``sweep fp8-vs-bf16`` or ``experiment yxanul``."""
    runs: list[RunSeries]
    rows: list[RunRow]
    """Every finished run with validation results."""
    arms: list[ArmSummary]
    reference: str | None
    matched_seeds: list[int]
    unmatched: list[tuple[RunSeries, str]]
    """Runs outside the arm summaries, each with why (its real status, or the seed another arm lacks)."""
    comparisons: list[Comparison]
    target_bpb: float | None
    target_source: str
    domains: list[str]
    parents: list[SweepRecord] = field(default_factory=list)
    """The parent runs of the sweeps compared (several: one comparison run in parts), in the order asked."""
    tracking_uri: str = ""
    compare_command: str = ""
    unigram_bpb: list[float] = field(default_factory=list)
    """The unigram baseline's val bits/byte the runs logged (``val/unigram_bpb``; one value per dataset)."""
    stages: list[StageRow] = field(default_factory=list)
    """Every measured arm's curriculum stages (a run without a curriculum has one)."""

    @property
    def parent(self) -> SweepRecord | None:
        """The sweep's parent run when one sweep is compared (None for several, or loose runs)."""
        return self.parents[0] if len(self.parents) == 1 else None

    @property
    def target_effect(self) -> float | None:
        """The sweeps' ``target_effect`` (the smallest difference worth detecting) when they state one alike."""
        return _agreed(self.parents, "target_effect")

    @property
    def curriculum(self) -> bool:
        """Whether some measured arm trained more than one stage (the report then shows the stages)."""
        counts: dict[str, int] = {}
        for row in self.stages:
            counts[row.arm] = counts.get(row.arm, 0) + 1
        return any(n > 1 for n in counts.values())

    @property
    def seeds(self) -> list[int]:
        """Every seed any run has."""
        return sorted({r.replicate for r in self.runs})

    @property
    def reference_arm(self) -> ArmSummary | None:
        return next((a for a in self.arms if a.arm == self.reference), None)

    @property
    def measured_arms(self) -> list[ArmSummary]:
        """Arms with matched rows (what the tables and plots show)."""
        return [a for a in self.arms if a.rows]

    @property
    def noise_floor(self) -> Estimate | None:
        """The reference arm's final val/bpb over every seed it finished (its ``std`` is the noise floor): the
        seed-to-seed spread is a property of the arm, and a seed another arm lost still measures it."""
        ref = self.reference_arm
        return mean_interval([r.val_bpb for r in ref.finished_rows]) if ref else None

    @property
    def sequential(self) -> SequentialDesign | None:
        """The stopping rule of a ``seeds: auto`` sweep, from what its parent run recorded (None otherwise)."""
        params = self.parent.params if self.parent else {}
        if params.get("sweep.seeds") != '"auto"':
            return None
        margin = params.get("sweep.equivalence_margin")
        return SequentialDesign(max_seeds=int(params.get("sweep.max_seeds", 6)),
                                margin=float(margin) if margin else None)

    @property
    def bf16_eval(self) -> bool:
        """Whether some run logged ``val/bpb_bf16_eval`` (the report then shows both numbers; else it reads as
        before the metric existed)."""
        return any(r.bf16_eval_bpb is not None for r in self.rows)

    @property
    def simulated(self) -> list[RunSeries]:
        return [r for r in self.runs if ran_precision(r).simulated]

    @property
    def description(self) -> str:
        return " / ".join(dict.fromkeys(p.description for p in self.parents if p.description))


def _agreed(parents: Sequence[SweepRecord], attribute: str, flag: str = "") -> Any:
    """What the sweeps' parent runs say about ``attribute`` (``reference``, ``target_bpb``, ``target_effect``):
    the one value those that say it share, None when none says it. Sweeps that disagree are not one comparison:
    with ``flag`` (the option that decides instead) that is a :class:`TrackingError`, else None."""
    said = {p.name: value for p in parents if (value := getattr(p, attribute)) is not None}
    if len(set(said.values())) <= 1:
        return next(iter(said.values()), None)
    if not flag:
        return None
    raise TrackingError(f"the sweeps disagree on their {attribute}: "
                        + ", ".join(f"{name}: {value}" for name, value in said.items())
                        + f"; give {flag} to compare them anyway")


def _target(target_bpb: float | None, target_source: str | None, ref: ArmSummary | None) -> tuple[float | None, str]:
    if target_bpb is not None:
        return target_bpb, target_source or "given"
    rows = (ref.rows or ref.finished_rows) if ref else []
    if not rows:
        return None, "none: the reference arm has no finished run with val/bpb"
    worst = max(rows, key=lambda r: r.val_bpb)
    return worst.val_bpb, (f"by rule: the worst final val/bpb of the reference arm's {len(rows)} "
                           f"run{'s' if len(rows) != 1 else ''} (seed {worst.seed}), so every reference run reaches it")


def build_report(runs: Sequence[RunSeries], source: str = "runs", *, reference: str | None = None,
                 target_bpb: float | None = None, target_source: str | None = None,
                 parents: Sequence[SweepRecord] = (), tracking_uri: str = "",
                 compare_command: str = "") -> ComparisonReport:
    """Compute every number of the report from the runs' series.

    ``reference``: the reference arm (default: the sweep's, else the arm of the first run). ``target_bpb``: given
    (``target_source`` says by whom) or the sweep's; else the stated default rule (:func:`_target`).
    """
    runs = list(runs)
    grouped: dict[str, list[RunSeries]] = {}
    for run in runs:
        grouped.setdefault(run.arm, []).append(run)
    parents = list(parents)
    if reference is None:
        said = _agreed(parents, "reference", "--reference")
        reference = said if said in grouped else None
    if reference is not None and reference not in grouped:
        raise TrackingError(f"reference arm {reference!r} is not among the runs' arms: {', '.join(grouped)}; "
                            "check --reference")
    reference = reference if reference is not None else (runs[0].arm if runs else None)
    if target_bpb is None and (said := _agreed(parents, "target_bpb", "--target-bpb")) is not None:
        target_bpb, target_source = said, "fixed in the sweep file (target_bpb)"

    def finished_rows(members: list[RunSeries], target: float | None) -> dict[int, RunRow]:
        measured = [_row(r, target) for r in members if r.finished and r.series("val/bpb")]
        return _latest_by_seed(measured)

    # the default target needs the reference arm's matched rows, which need no target: two passes
    first = {arm: finished_rows(members, None) for arm, members in grouped.items()}
    with_runs = [rows for rows in first.values() if rows]
    matched = sorted(set.intersection(*(set(rows) for rows in with_runs))) if with_runs else []
    ref_first = _arm_summary(reference or "", grouped.get(reference or "", []), first.get(reference or "", {}), matched)
    target_bpb, source_text = _target(target_bpb, target_source, ref_first)

    finished = {arm: finished_rows(members, target_bpb) for arm, members in grouped.items()}
    arms = {arm: _arm_summary(arm, members, finished[arm], matched) for arm, members in grouped.items()}
    rows = [row for arm in finished.values() for row in arm.values()]
    rows.sort(key=lambda r: runs.index(r.run))

    used = {row.run.run_id for a in arms.values() for row in a.rows}
    unmatched = []
    for run in runs:
        if run.run_id in used:
            continue
        latest = finished[run.arm].get(run.replicate)
        if not run.finished or not run.series("val/bpb"):
            why = status_text(run) if not run.finished else "finished without validation results"
        elif latest is not None and latest.run is not run:
            why = f"finished; a later run of seed {run.replicate} is used"
        else:
            lacking = [f"{a.arm}: {_why_missing(a, run.replicate)}" for a in arms.values()
                       if a.finished_rows and run.replicate not in finished[a.arm]]
            why = f"finished; seed {run.replicate} not matched (" + "; ".join(lacking) + ")"
        unmatched.append((run, why))

    comparisons: list[Comparison] = []
    seen: set[tuple[str, str]] = set()
    ref_arm = arms.get(reference or "")
    if ref_arm is not None:
        for name, summary in arms.items():
            if name != reference and _one_axis_apart(summary, ref_arm):
                seen.add((ref_arm.arm, name))
                kind = ("precision pair" if summary.pair_group is not None and summary.pair_group == ref_arm.pair_group
                        else "vs reference")
                comparisons.append(_compare(ref_arm, summary, kind))
    groups: dict[str, list[ArmSummary]] = {}
    for summary in arms.values():
        if summary.pair_group is not None:
            groups.setdefault(summary.pair_group, []).append(summary)
    for members in groups.values():
        if len(members) < 2:
            continue
        base = next((m for m in members if m.asked_precision != "fp8"), members[0])
        for other in members:
            if other is not base and (base.arm, other.arm) not in seen:
                seen.add((base.arm, other.arm))
                comparisons.append(_compare(base, other, "precision pair"))

    unigram = sorted({round(v, 6) for r in runs if (v := _last(r.series(UNIGRAM_BPB_METRIC))) is not None})
    return ComparisonReport(
        source=source, runs=runs, rows=rows, arms=list(arms.values()), reference=reference, matched_seeds=matched,
        unmatched=unmatched, comparisons=comparisons, target_bpb=target_bpb, target_source=source_text,
        domains=sorted({d for r in rows for d in r.domain_bpb}), parents=parents, tracking_uri=tracking_uri,
        compare_command=compare_command, unigram_bpb=unigram,
        stages=[row for a in arms.values() if a.rows for row in stage_rows(a)])
